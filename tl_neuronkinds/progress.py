"""Progress of long work (a recording, a measurement, a report): one display, whoever is watching.

A terminal or a notebook gets a ``tqdm.auto`` bar; a log (stderr not a terminal: a batch job,
CI, ``2> file``) gets a plain line every ``_LINE_SECONDS`` seconds and one at the end, never a
wall of carriage returns.
"""

import sys
import time
from typing import Any

from tqdm.auto import tqdm

_LINE_SECONDS = 30.0


def _watched() -> bool:
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr is not None and sys.stderr.isatty()


class Progress:
    """Tokens done out of ``total``, across every pass, chunk and checkpoint of a run.

    Args:
        total: Tokens the whole run will process (every pass included).
        initial: Tokens already done (a resumed run).
        enabled: True / False, or None for "unless quiet was asked" (the default shows).
        unit: What is counted (``tok`` for tokens, ``step`` for named steps, ...).
    """

    def __init__(
        self, total: int, *, initial: int = 0, enabled: bool | None = None, unit: str = "tok"
    ) -> None:
        self.total, self.done, self.unit = total, initial, unit
        self.enabled = enabled is not False
        self.phase = "record"
        self._bar: Any = None
        self._start = time.monotonic()
        self._start_done = initial
        self._last_line = self._start
        if self.enabled and _watched():
            self._bar = tqdm(
                total=total, initial=initial, unit=unit, unit_scale=unit == "tok", desc=self.phase
            )

    def set_phase(self, phase: str) -> None:
        """Name what the run is doing now (``plan``, ``record``, ``repair``)."""
        self.phase = phase
        if self._bar is not None:
            self._bar.set_description(phase)

    def extend(self, tokens: int) -> None:
        """The run turned out longer (a repair pass): ``tokens`` more to do."""
        self.total += tokens
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, tokens: int) -> None:
        self.done += tokens
        if self._bar is not None:
            self._bar.update(tokens)
        elif self.enabled and time.monotonic() - self._last_line >= _LINE_SECONDS:
            self._line()

    def note(self, message: str) -> None:
        """A one-line message that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _line(self) -> None:
        now = time.monotonic()
        self._last_line = now
        rate = (self.done - self._start_done) / max(now - self._start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(
            f"{self.phase}: {self.done:,}/{self.total:,} {self.unit} "
            f"({100 * self.done / max(self.total, 1):.0f}%), {rate:,.0f} {self.unit}/s, "
            f"{left:,.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._line()
