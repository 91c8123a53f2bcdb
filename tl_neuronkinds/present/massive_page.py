"""Massive activations as HTML: a section for the report (``nk.report(..., massive=...)``) and a
page of its own (``tl-neuronkinds massive``). Figures are matplotlib SVG (``plots.py``)."""

import html
import os
from pathlib import Path

import pandas as pd

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.massive.activations import MassiveActivations
from tl_neuronkinds.present import plots
from tl_neuronkinds.present.render import section_page


def _table(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table in a box that scrolls sideways where it is wider than the page."""
    table = frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", escape=True)
    return f'<div class="nk-scroll" style="overflow-x:auto;max-width:100%">{table}</div>'


def magnitude_series(found: MassiveActivations) -> dict[str, pd.Series]:
    """Per layer, as Sun et al.'s Figure 2: ``top-1`` .. ``top-k`` and ``median``, each the
    mean over the sequences of that sequence's statistic (``found.by_sequence``)."""
    table = found.by_sequence
    if table is None:
        raise NeuronKindsError("found has no per-sequence table (massive_activations gives it one)")
    table = table.set_index("layer")
    ranks = [c for c in table.columns if c.startswith("top_")]
    series = {f"top-{c.removeprefix('top_')}": table[c] for c in ranks}
    series["median"] = table["median"]
    return series


_TOP_BY = {
    "pooled": "those of every token pooled, with their places",
    "sequence": "these means (an average has no one place)",
}


def _n_seq(found: MassiveActivations) -> int:
    return 0 if found.by_sequence is None else int(found.by_sequence["n_seq"].iloc[0])


def massive_section(found: MassiveActivations) -> str:
    """The massive-activations section: thresholds, the magnitudes by layer, the top entries,
    the dimensions and tokens holding massive ones, and the effects where computed."""
    n_massive = int(found.top["massive"].sum())
    parts = [
        '<section class="nk-massive" id="massive"><h2>Massive activations</h2>',
        f"<p>Sun et al. 2024: hidden states (<code>hook_resid_post</code>) whose magnitude is "
        f"above {found.magnitude:g} and above {found.ratio:g} × their layer's median. "
        f"Found: {html.escape(found.summary())}.</p>",
        plots.layer_line("massive-magnitudes", magnitude_series(found), "magnitude |h|", log=True),
        "<p><b>Magnitudes by layer</b> (log scale), as Sun et al.'s Figure 2 (each line its "
        "own marker and dashes, so lines that coincide stay visible): for each "
        "sequence, its largest hidden-state magnitudes and its median over positions × "
        f"dimensions, averaged over the {_n_seq(found)} sequences. The top entries below "
        f"are {_TOP_BY[found.by]}.</p>",
        f"<details><summary>top entries</summary>{_table(found.top)}</details>",
    ]
    if n_massive and found.by == "pooled":
        parts += [
            f"<h3>Dimensions</h3>{_table(found.dims())}",
            f"<h3>Tokens</h3>{_table(found.tokens())}",
        ]
    if found.intervention is not None:
        parts += [
            "<h3>Setting them to zero or to their mean (§3)</h3>",
            _table(found.intervention),
        ]
    if found.attention is not None:
        parts += [
            "<h3>Attention on them (§4)</h3>",
            plots.head_heatmap(
                "massive-attention", found.attention, "share", "attention on massive positions"
            ),
            "<p><b>Attention share</b>: per layer and head, the attention probability on the "
            "positions holding a massive activation, averaged over every query.</p>",
        ]
    parts.append("</section>")
    return "".join(parts)


def massive_page(found: MassiveActivations, out: str | os.PathLike, title: str) -> Path:
    """Write ``massive_section`` as a self-contained HTML page to ``out``, atomically."""
    plots.require_matplotlib()
    return section_page(title, massive_section(found), out)
