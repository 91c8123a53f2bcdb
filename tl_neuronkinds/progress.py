"""Progress of long work (a recording, a measurement, a report): one display, whoever is watching.

A terminal or a notebook gets a tqdm bar (the notebook widget where ipywidgets is installed); a
log (stderr not a terminal: a batch job, CI, ``2> file``) gets plain lines, never a wall of
carriage returns:

- one when a pass starts, with its name and its total (``record pass 2/2 (record): 0/284,416 tok
  (0%)``; a resumed run says where it resumes, or that nothing is left);
- one every ``LINE_SECONDS`` seconds while it runs, with its rate and the time left; the
  environment variable ``TL_NEURONKINDS_PROGRESS_SECONDS`` (or the ``seconds`` keyword) sets
  another interval;
- one when it ends (at 100%, once), with its time and rate.

A run of several passes names each with its own total (``Progress.set_phase(name, total=...)``),
so that every count shown is out of what that pass really does.
"""

import importlib.util
import math
import os
import sys
import time
from typing import Any

from tl_neuronkinds.errors import NeuronKindsError

#: Seconds between plain lines in a log, where neither ``SECONDS_VARIABLE`` nor ``seconds`` says.
LINE_SECONDS = 30.0
#: The environment variable that sets the seconds between plain lines.
SECONDS_VARIABLE = "TL_NEURONKINDS_PROGRESS_SECONDS"


def _watched() -> bool:
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr is not None and sys.stderr.isatty()


def _bar_class() -> Any:
    """tqdm's notebook widget where a kernel can show it (ipywidgets installed), else its text
    bar: ``tqdm.auto`` without ipywidgets warns ("IProgress not found") in every notebook."""
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as auto

        return auto
    from tqdm.std import tqdm as text

    return text


def line_seconds(seconds: float | None = None) -> float:
    """Seconds between plain lines: ``seconds``, else ``$TL_NEURONKINDS_PROGRESS_SECONDS``, else
    ``LINE_SECONDS``.

    Raises:
        NeuronKindsError: Not a number >= 0.
    """
    source = "seconds"
    if seconds is None:
        raw = os.environ.get(SECONDS_VARIABLE, "").strip()
        if not raw:
            return LINE_SECONDS
        source = SECONDS_VARIABLE
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
    if isinstance(seconds, bool) or not seconds >= 0 or math.isinf(seconds):
        raise NeuronKindsError(f"{source} must be a number of seconds >= 0, got {seconds!r}")
    return float(seconds)


class Progress:
    """Units done out of ``total`` in the current pass of a run, shown as the module says.

    Nothing is shown before the first ``set_phase``, ``update`` or ``close``, so that the first
    line names the pass that starts.

    Args:
        total: Units the (first) pass will process.
        initial: Units already done (a resumed run).
        enabled: True / False, or None for "unless quiet was asked" (the default shows).
        unit: What is counted (``tok`` for tokens, ``step`` for named steps, ...).
        phase: The first pass's name; given, its first line is shown at once.
        seconds: Seconds between plain lines (default: ``line_seconds()``).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        enabled: bool | None = None,
        unit: str = "tok",
        phase: str | None = None,
        seconds: float | None = None,
    ) -> None:
        self.total, self.done, self.unit = total, initial, unit
        self.enabled = enabled is not False
        self.phase = phase or "progress"
        self.seconds = line_seconds(seconds)
        self._plain = self.enabled and not _watched()
        self._bar: Any = None
        self._started = self._ended = False
        self._start = self._last_line = time.monotonic()
        self._start_done = initial
        self._last_text = ""
        if phase is not None:
            self._begin()

    def set_phase(
        self, phase: str, total: int | None = None, *, initial: int = 0, unit: str | None = None
    ) -> None:
        """Name what the run is doing now. Without ``total`` the count goes on under the new
        name; with it a new pass starts, counted from ``initial`` out of ``total`` (in
        ``unit``, default the current one; the previous pass's last line is shown first)."""
        if total is None:
            self.phase = phase
            if not self._started:
                self._begin()
            elif self._bar is not None:
                self._bar.set_description(phase)
            elif self._plain and not self._ended:
                self._line()
            return
        if self._started:
            self._end()
        self.phase, self.total, self.done = phase, total, initial
        self.unit = unit or self.unit
        self._begin()

    def extend(self, units: int) -> None:
        """The pass turned out longer: ``units`` more to do."""
        self.total += units
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()
        if self.done < self.total:
            self._ended = False

    def update(self, units: int) -> None:
        """``units`` more done."""
        if not self._started:
            self._begin()
        self.done += units
        if self._bar is not None:
            self._bar.update(units)
        elif self._plain and not self._ended:
            if self.done >= self.total:
                self._end()
            elif time.monotonic() - self._last_line >= self.seconds:
                self._line()

    def note(self, message: str) -> None:
        """A one-line message that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        """End the display: the current pass's last line (once, however often called)."""
        if self._started:
            self._end()

    def _begin(self) -> None:
        self._started, self._ended = True, False
        self._start = self._last_line = time.monotonic()
        self._start_done = self.done
        if not self.enabled:
            return
        if not self._plain:
            self._bar = _bar_class()(
                total=self.total,
                initial=self.done,
                unit=self.unit,
                unit_scale=self.unit == "tok",
                desc=self.phase,
            )
            if self.done >= self.total:
                self._bar.set_postfix_str("already done")
            return
        if self.done >= self.total:
            self._print(f"{self.phase}: {self._count()}, already done")
            self._ended = True
        elif self.done:
            self._print(f"{self.phase}: resuming at {self._count()}")
        else:
            self._print(f"{self.phase}: {self._count()}")

    def _count(self) -> str:
        """``done/total unit (percent)``, the percent rounded down (100 only when done)."""
        if self.total <= 0 or self.done >= self.total:
            percent = 100
        else:
            percent = min(99, math.floor(100 * self.done / self.total))
        return f"{self.done:,}/{self.total:,} {self.unit} ({percent}%)"

    def _rate(self) -> tuple[float, float]:
        """(seconds since the pass started, units per second in it; 0 when unknown)."""
        elapsed = time.monotonic() - self._start
        counted = self.done - self._start_done
        return elapsed, counted / elapsed if counted > 0 and elapsed > 0 else 0.0

    def _line(self) -> None:
        self._last_line = time.monotonic()
        elapsed, rate = self._rate()
        text = f"{self.phase}: {self._count()}"
        if rate > 0:
            left = max(self.total - self.done, 0) / rate
            text += f", {_speed(rate, self.unit)}, about {left:,.0f} s left"
        self._print(text)

    def _end(self) -> None:
        """The pass's last line (at most one per pass), or the bar closed."""
        if self._ended:
            return
        self._ended = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        if not self._plain:
            return
        elapsed, rate = self._rate()
        stopped = "stopped at " if self.done < self.total else ""
        count = f"{self.phase}: {stopped}{self._count()}"
        speed = f", {_speed(rate, self.unit)}" if rate > 0 else ""
        self._print(f"{count} in {elapsed:,.1f} s{speed}")

    def _print(self, text: str) -> None:
        if text != self._last_text:
            self._last_text = text
            print(text, file=sys.stderr, flush=True)


def _speed(rate: float, unit: str) -> str:
    """``rate`` units per second as ``1,234 tok/s`` (three digits at least), or as seconds per
    unit (``4.2 s/step``) where it is below one."""
    if rate < 1:
        return f"{1 / rate:,.3g} s/{unit}"
    return f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"
