"""``nk.compare``: several runs side by side on relative depth (the paper's multi-model figures).

Voita et al. 2024 ask how neurons change with scale: Figures 1a, 1b, 3a, 3b and 4 draw one line
per OPT size against each layer's depth relative to the network's, Figure 2 and Appendix A one
panel per model, Figure 8 one row per model (the form Figures 10, a model against its NoPos
twin, and 11, training checkpoints, take too). ``compare`` builds those from runs recorded
separately: every run classified with the same cut-offs, each run's per-layer tables
(``kinds.figure_tables``) stacked in long form with the model's ``relative_depth`` (docs/compare.md).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tl_neuronkinds.comparison import differences as diff
from tl_neuronkinds.comparison.runs import Run, load_model, resolve_runs
from tl_neuronkinds.comparison.tables import massive_table, run_tables, runs_table, stack
from tl_neuronkinds.comparison.tables import suppression_table as fig6_table
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.cutoffs import Cutoffs

#: The tables ``tl-neuronkinds massive --out DIR`` writes, read where a run directory has them.
MASSIVE_FILES = ("massive_top.parquet", "massive_median.parquet")


@dataclass
class Comparison:
    """Runs compared on relative depth (``compare``).

    Attributes:
        labels: The runs' labels, in the order given (the legends' order).
        tables: Long-form DataFrames, each row starting with ``model`` (the label),
            ``n_layers`` (the model's), ``layer`` and ``relative_depth``: ``fig1a``, ``fig1b``,
            ``fig2_n{n}`` (one row per ``bucket``), ``fig3a_n{n}``, ``fig3b_n{n}``,
            ``fig4_n{n}``, ``fig8`` (one row per ``type`` and ``strength``), ``layers``
            (``layer_summary``); ``fig6`` where models were at hand; ``massive`` where massive
            activations were. Every value is that of the run's own ``figure_tables``.
        runs: One row per run: label, model name, depth (and where it was taken from), what it
            recorded, its directory and ``report.html``.
        differences: One row per setting on which the runs differ (``setting``, ``values``,
            ``why``; ``comparison/differences.py``).
        notes: What to know of single runs (layers not recorded, a depth assumed).
        cutoffs: The cut-offs every run was classified with.
        page: What draws the page (``present/compare_page.py``'s ``compare_page``, which
            ``nk.compare`` passes in): compute and drawing stay apart, and nothing here
            imports the drawing.
    """

    labels: list[str]
    tables: dict[str, pd.DataFrame]
    runs: pd.DataFrame
    differences: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    cutoffs: Cutoffs = field(default_factory=Cutoffs)
    page: Callable[..., Path] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"Comparison({', '.join(self.labels)}; tables {', '.join(self.tables)}; "
            f"{len(self.differences)} differences)"
        )

    def to_html(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write the comparison page to ``path`` and its tables beside it
        (``compare_<table>.csv`` and ``.parquet``); returns the page's path.

        The page is self-contained and offline; it needs matplotlib (the ``report`` extra).

        Raises:
            NeuronKindsError: A Comparison built without its page (``compare(..., page=None)``
                from ``tl_neuronkinds.comparison``; ``nk.compare`` gives it one).
        """
        if self.page is None:
            raise NeuronKindsError(
                "this Comparison was built without a page: build it with nk.compare, or draw it "
                "with tl_neuronkinds.present.compare_page.compare_page(comparison, path)"
            )
        return self.page(self, path, title)


def _massive(run: Run, with_massive: bool, device: str | None) -> pd.DataFrame | None:
    """The run's massive activations: the tables its directory holds, else (where asked)
    measured on its model over the first tokens of its ``tokens.safetensors``."""
    if run.directory is not None and all((run.directory / f).is_file() for f in MASSIVE_FILES):
        top, median = (pd.read_parquet(run.directory / f) for f in MASSIVE_FILES)
        return massive_table(run, top, median)
    if not with_massive:
        return None
    from tl_neuronkinds.massive.activations import massive_activations
    from tl_neuronkinds.massive.measure import REPORT_TOKENS
    from tl_neuronkinds.recording.run_dir import TOKENS_FILE, load_tokens

    tokens = None if run.directory is None else load_tokens(run.directory / TOKENS_FILE)
    if tokens is None:
        raise NeuronKindsError(
            f"massive activations of run {run.label!r} need the tokens it was recorded on: a run "
            f"directory with {TOKENS_FILE} (or massive tables from `tl-neuronkinds massive`)"
        )
    rows = max(1, REPORT_TOKENS // tokens.shape[1])
    found = massive_activations(load_model(run, device), tokens[:rows])
    return massive_table(run, found.top, found.median)


def compare(
    runs: Any,
    labels: Any = None,
    cutoffs: Cutoffs | None = None,
    *,
    models: Any = None,
    with_suppression: bool = False,
    with_massive: bool = False,
    device: str | None = None,
    page: Callable[..., Path] | None = None,
) -> Comparison:
    """Compare runs on relative depth, as the paper's multi-model figures do (module docstring).

    Args:
        runs: Two or more runs, each a NeuronProfile, an ``Analysis``, a profile directory or a
            finished run directory (``tl-neuronkinds profile``).
        labels: One name per run (default: each profile's model name).
        cutoffs: The cut-offs every run is classified with (default: those of the Analyses
            given, else the paper's, ``Cutoffs()``).
        models: One model (or None) per run, in order. A model gives its run's depth and, where
            the profile names its model, Figure 6 (do token detectors suppress their triggers,
            §4.4: from the model's weights).
        with_suppression: Figure 6 for every run: runs without a model given load the one
            their ``run.json`` names.
        with_massive: Massive activations (Sun et al. 2024) for every run whose directory has
            no massive tables: measured on its model over its first recorded tokens.
        device: Where models loaded here run.
        page: What ``Comparison.to_html`` draws with (``nk.compare`` passes the package's page).

    Returns:
        A ``Comparison``.

    Raises:
        NeuronKindsError: Fewer than two runs; a run that is none of the kinds above, an
            unfinished run directory or an unreadable profile (the message names it); labels
            missing where two runs share a model name, of the wrong number, or repeated;
            a model that is not its run's; Figure 6 asked for a run with no model at hand or
            with a profile that does not say which model it counts (recorded before profiles
            held the model's identity).
    """
    resolved, chosen = resolve_runs(runs, labels, cutoffs, models)
    per_run = [run_tables(run) for run in resolved]
    tables = stack(per_run)
    fig6 = []
    for run in resolved:
        known = run.profile.meta.get("model_fingerprint") is not None
        if with_suppression or (run.model is not None and known):
            if not known:
                raise NeuronKindsError(
                    f"run {run.label!r}: its profile does not say which model it counts (made "
                    "before profiles held the model's identity), so Figure 6 cannot be drawn "
                    "for it: record it again, or compare without with_suppression"
                )
            fig6.append(fig6_table(run, load_model(run, device)))
    if fig6:
        tables["fig6"] = pd.concat(fig6, ignore_index=True)
    massive = [m for run in resolved if (m := _massive(run, with_massive, device)) is not None]
    if massive:
        tables["massive"] = pd.concat(massive, ignore_index=True)
    return Comparison(
        labels=[run.label for run in resolved],
        tables=tables,
        runs=runs_table(resolved),
        differences=diff.differences(resolved),
        notes=diff.notes(resolved),
        cutoffs=chosen,
        page=page,
    )
