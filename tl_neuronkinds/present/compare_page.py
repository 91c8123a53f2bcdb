"""The comparison page (``Comparison.to_html``, ``tl-neuronkinds compare``): the paper's
multi-model figures for runs compared on relative depth, with the tables beside it.

Voita et al. 2024 draw Figures 1a, 1b, 3a, 3b and 4 as one line per model against each layer's
relative depth, Figure 2 and Appendix A as one panel per model, Figure 8 as one row per model
(and so Figures 10 and 11). The page draws them from ``Comparison.tables`` (nothing is
recomputed), after the runs and what differs between them besides the model. Figures are
matplotlib SVG (``plots.py``); the page is self-contained and offline (``render.page``).
Labels and model names are HTML-escaped; each run's own ``report.html`` is linked relatively.
"""

import html
import os
import urllib.parse
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from tl_neuronkinds.atomic import atomic_write, atomic_write_text
from tl_neuronkinds.comparison.comparison import Comparison
from tl_neuronkinds.present import plots
from tl_neuronkinds.present.render import page

_ORDERS = {1: "tokens (unigrams)", 2: "bigrams", 3: "trigrams"}
_CSS = (
    ".nk-compare figure{margin:10px 8px}.nk-compare figcaption{max-width:520px}"
    ".nk-compare .nk-row{gap:0}.nk-compare .nk-row>figure{max-width:520px}"
    ".nk-plot{max-width:100%;height:auto}"
)
#: Line figures: (id, table, column, y label, counts?, caption).
# fmt: off
_LINES = [
    ("fig1a", "fig1a", "pct_dead", "% dead neurons", False,
     "Figure 1a (§3): percentage of dead neurons (never active on the recorded tokens)."),
    ("fig1b", "fig1b", "mean_freq", "activation frequency", False,
     "Figure 1b (§3): mean activation frequency of the non-dead neurons."),
    ("fig3a", "fig3a_n1", "n_detectors", "token detectors", True,
     "Figure 3a (§4.2): token-detecting neurons per layer."),
    ("fig3b", "fig3b_n1", "n_triggers", "tokens", True,
     "Figure 3b (§4.3): tokens that have a detecting neuron in the layer."),
    ("fig3b-cumulative", "fig3b_n1", "n_triggers_cumulative", "tokens", True,
     "Figure 3b (§4.3), cumulative: tokens with a detecting neuron in this or a lower layer "
     "(of those recorded)."),
    ("fig4", "fig4_n1", "new_overall", "tokens", True,
     "Figure 4 (§4.3): a layer's triggers new overall (in no lower recorded layer)."),
    ("fig4-previous", "fig4_n1", "new_vs_previous", "tokens", True,
     "Figure 4 (§4.3): a layer's triggers new compared to the previous recorded layer."),
    ("appendix-a-n2", "fig3a_n2", "n_detectors", "bigram detectors", True,
     "Appendix A (§4.5): bigram-detecting neurons per layer."),
    ("appendix-a-n3", "fig3a_n3", "n_detectors", "trigram detectors", True,
     "Appendix A (§4.5): trigram-detecting neurons per layer."),
]
# fmt: on


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data(frame: pd.DataFrame) -> str:
    table = frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", escape=True)
    return f"<details><summary>data</summary>{table}</details>"


def _figure(fid: str, body: str, caption: str, data: pd.DataFrame | None = None) -> str:
    return (
        f'<figure class="nk-figure" id="{fid}">{body}<figcaption>{caption}</figcaption>'
        f"{'' if data is None else _data(data)}</figure>"
    )


def _series(table: pd.DataFrame, labels: list[str], column: str) -> dict[str, pd.Series]:
    """Each model's ``column`` indexed by relative depth, in the labels' order."""
    out = {}
    for label in labels:
        rows = table[table["model"] == label]
        if len(rows):
            out[label] = pd.Series(rows[column].to_numpy(), index=rows["relative_depth"])
    return out


def _wide(rows: pd.DataFrame, columns: str) -> pd.DataFrame:
    """One model's long rows as the single-run table: one row per layer, one column per
    value of ``columns`` in the order the rows give them."""
    order = list(dict.fromkeys(rows[columns]))
    wide = rows.pivot(index="layer", columns=columns, values="neurons")
    return wide[order].rename_axis(columns=None)


def _line_figures(comparison: Comparison) -> list[str]:
    out = []
    for fid, name, column, ylabel, counts, caption in _LINES:
        table = comparison.tables.get(name)
        if table is None:
            continue
        svg = plots.depth_lines(
            f"cmp-{fid}", _series(table, comparison.labels, column), ylabel, counts=counts
        )
        shown = table[["model", "layer", "relative_depth", column]]
        out.append(_figure(f"cmp-{fid}", svg, caption, shown))
    return out


def _panel_figures(comparison: Comparison) -> list[str]:
    """Figure 2 / Appendix A (one panel per model and order) and Figure 8 (one row per model)."""
    out = []
    # Each run's censored bucket for n >= 2 (``>cap``), None where it kept every neuron's counts.
    runs = comparison.runs.set_index("model")["ngram_cap"]
    caps = {label: None if cap == "none" else f">{cap}" for label, cap in runs.items()}
    for n, what in _ORDERS.items():
        table = comparison.tables.get(f"fig2_n{n}")
        if table is None:
            continue
        panels = []
        for i, label in enumerate(comparison.labels):
            rows = table[table["model"] == label]
            if not len(rows):
                continue
            svg = plots.coverage_bars(
                f"cmp-fig2-n{n}-m{i}", _wide(rows, "bucket"), caps[label] if n >= 2 else None
            )
            panels.append(f'<div class="nk-panel"><h3>{_text(label)}</h3>{svg}</div>')
        name = "Figure 2 (§4.1)" if n == 1 else "Appendix A"
        caption = (
            f"{name}: alive neurons of each layer by the number of {what} that cover 95% of "
            "their activations (k95), one panel per model. A last bucket <b>&gt;cap</b> "
            "(hatched) holds the k95 proven above the run's n-gram cap."
        )
        row = f'<div class="nk-row">{"".join(panels)}</div>'
        out.append(_figure(f"cmp-fig2-n{n}", row, caption, table))
    table = comparison.tables["fig8"]
    per_model = {}
    for label in comparison.labels:
        mine = table[table["model"] == label]
        per_model[label] = _wide(mine.assign(c=mine["type"] + "_" + mine["strength"]), "c")
    svg = plots.positional_rows("cmp-fig8", per_model)
    caption = (
        "Figure 8 (§5.3; Figures 10 and 11 take this form): positional neurons (I(act; pos) > "
        "0.05 nats) of each layer by type, one row per model; dark: strong, light: weak."
    )
    out.append(_figure("cmp-fig8", svg, caption, table))
    return out


def _extra_figures(comparison: Comparison) -> list[str]:
    """Figure 6 and massive activations, where the comparison has them."""
    out = []
    fig6 = comparison.tables.get("fig6")
    if fig6 is not None:
        series = _series(fig6, comparison.labels, "suppressing_fraction")
        svg = plots.depth_lines(
            "cmp-fig6",
            series,
            "share of token detectors",
            ylim=(0.0, 1.03),
            reference=(0.8, "OPT-66b (the paper): over 80%"),
        )
        caption = (
            "Figure 6 (§4.4): fraction of each layer's token detectors whose update suppresses "
            "their triggers (mean projection score of the triggers below 0)."
        )
        out.append(_figure("cmp-fig6", svg, caption, fig6))
    massive = comparison.tables.get("massive")
    if massive is not None:
        svg = plots.depth_lines(
            "cmp-massive", _series(massive, comparison.labels, "top_1"), "top-1 |h|", log=True
        )
        caption = (
            "Massive activations (Sun et al. 2024): the largest hidden-state magnitude of each "
            "layer (log scale)."
        )
        out.append(_figure("cmp-massive", svg, caption, massive))
    return out


def _report_link(report: str, out: Path) -> str:
    if not report:
        return "–"
    relative = os.path.relpath(Path(report).resolve(), out.resolve().parent)
    href = urllib.parse.quote(Path(relative).as_posix())
    return f'<a href="{_text(href)}">report.html</a>'


def _runs_section(comparison: Comparison, out: Path) -> str:
    head = ["model", "model name", "layers recorded", "tokens", "corpus", "n-gram cap", "report"]
    rows = []
    for run in comparison.runs.itertuples():
        depth = f"{run.layers_recorded} of {run.n_layers}"
        if run.n_layers_from.startswith("assumed"):
            depth += " (assumed)"
        cells = [run.model, run.model_name, depth, f"{run.tokens:,}", run.corpus, run.ngram_cap]
        rows.append(
            "<tr>"
            + "".join(f"<td>{_text(c)}</td>" for c in cells)
            + f"<td>{_report_link(run.report, out)}</td></tr>"
        )
    th = "".join(f"<th>{h}</th>" for h in head)
    return f'<section id="runs"><h2>Runs</h2><table><tr>{th}</tr>{"".join(rows)}</table></section>'


def _differences_section(comparison: Comparison) -> str:
    diffs = comparison.differences
    if len(diffs):
        items = "".join(
            f"<li><b>{_text(d.setting)}</b> ({_text(d.why)}): {_text(d.values)}</li>"
            for d in diffs.itertuples()
        )
        body = f"<ul>{items}</ul>"
    else:
        body = "<p>Nothing else: same corpus, tokenizer, sequence length, n-gram settings and " \
            "threshold, and token counts within a factor of 2.</p>"  # fmt: skip
    digests = set(comparison.runs["tokens_digest"])
    if len(digests) == 1 and "" not in digests:
        body += "<p>Every run was recorded on the same tokens.</p>"
    notes = "".join(f"<li>{_text(note)}</li>" for note in comparison.notes)
    return (
        '<section id="differences"><h2>What differs besides the model</h2>'
        f"{body}{f'<ul class=nk-note>{notes}</ul>' if notes else ''}</section>"
    )


def write_tables(comparison: Comparison, out: Path) -> None:
    """Every table (and ``runs``, ``differences``) beside the page, as
    ``<page stem>_<table>.csv`` and ``.parquet`` (``compare.html``: ``compare_fig1a.csv``, ...)."""
    frames = {**comparison.tables, "runs": comparison.runs, "differences": comparison.differences}
    for name, frame in frames.items():
        base = f"{out.stem}_{name}"
        atomic_write(out.parent / f"{base}.parquet", partial(frame.to_parquet, index=False))
        atomic_write_text(out.parent / f"{base}.csv", frame.to_csv(index=False))


def compare_page(comparison: Comparison, out: str | os.PathLike, title: str | None = None) -> Path:
    """Write the comparison page to ``out`` and its tables beside it (``write_tables``),
    atomically; returns the page's path."""
    plots.require_matplotlib()
    out = Path(out)
    title = title or "Comparing " + ", ".join(comparison.labels)
    intro = (
        f"<p>{len(comparison.labels)} runs on relative depth (layer / (n_layers - 1): 0 is the "
        "first block, 1 the last, whatever the model's size), every run classified with the "
        f"same cut-offs: <code>{_text(comparison.cutoffs)}</code>. Voita et al. 2024; "
        "docs/compare.md.</p>"
    )
    body = [
        f"<style>{_CSS}</style>",
        '<div class="nk-view nk-report nk-compare">',
        f"<h1>{_text(title)}</h1>",
        intro,
        _differences_section(comparison),
        _runs_section(comparison, out),
        '<section id="figures"><h2>Figures</h2>',
        '<div class="nk-row">',
        *_line_figures(comparison),
        "</div>",
        *_panel_figures(comparison),
        *_extra_figures(comparison),
        "</section></div>",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_tables(comparison, out)
    return atomic_write_text(out, page(title, body, widgets=False))
