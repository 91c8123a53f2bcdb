"""Universal neurons as HTML: a section for the report (``nk.report(..., universal=...)``) and
a page of its own (``tl-neuronkinds universal``). Figures are matplotlib SVG (``plots.py``)."""

import html
import os
from pathlib import Path

import pandas as pd

from tl_neuronkinds.present import plots
from tl_neuronkinds.present.render import section_page
from tl_neuronkinds.universal.families import UniversalNeurons

#: Rows of the most universal neurons shown.
SHOWN = 30


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", escape=True)


def universal_section(found: UniversalNeurons) -> str:
    """The universal-neurons section: what was compared (with ``support_warning()`` where too
    few positions support the correlations), the share of universal neurons and the
    correlations by layer, the families against all neurons, and the most universal neurons
    among those active at ``min_active`` text positions at least."""
    layers = found.layers().set_index("layer")
    table = found.table
    n_universal = int(table["universal"].sum())
    others = ", ".join(html.escape(name) for name in found.models[1:])
    supported = table[table["active"] >= found.min_active]
    top = supported.sort_values(["excess", "layer", "neuron"], ascending=[False, True, True])
    warning = found.support_warning()
    shown = [
        "layer",
        "neuron",
        "max_corr",
        "baseline_max_corr",
        "excess",
        "active",
        "act_kurt",
        "sparsity",
        "vocab_kurt",
        "vocab_skew",
    ]
    parts = [
        '<section class="nk-universal" id="universal"><h2>Universal neurons</h2>',
        f"<p>Gurnee et al. 2024: each neuron of {html.escape(found.models[0])} against every "
        f"neuron of {others}, over {found.tokens:,} text tokens. A neuron is universal where "
        f"its best correlation exceeds that against an orthogonally rotated basis by more "
        f"than {found.threshold:g} (averaged over the other models), and it is active at "
        f"{found.min_active:,} text positions at least: {n_universal} of {len(table)} "
        f"neurons. {found.n_unsupported:,} neurons fire at fewer positions and are left "
        "out.</p>",
        f'<p class="nk-note nk-warning">{html.escape(warning)}</p>' if warning else "",
        plots.layer_bars("universal-share", {"universal": layers["share"] * 100}, "% of neurons"),
        "<p><b>Universal neurons by layer</b>: the percentage of each layer's neurons.</p>",
        plots.layer_line(
            "universal-corr",
            {
                "max correlation": layers["max_corr"],
                "rotated baseline": layers["baseline_max_corr"],
            },
            "mean over neurons",
            styles=["-", "--"],
        ),
        "<p><b>Correlations by layer</b>: the mean best correlation, and the same against "
        "the rotated baseline.</p>",
        "<h3>Families</h3><p>Activation moments, sparsity and weight statistics of the "
        "universal neurons against the rest (Gurnee et al. §4; prediction, suppression and "
        "partition: shares).</p>",
        _table(found.families()),
        "<h3>Most universal</h3><p>The neurons active at "
        f"{found.min_active:,} text positions at least, by excess correlation.</p>",
        _table(top[shown].head(SHOWN)),
        "</section>",
    ]
    return "".join(parts)


def universal_page(found: UniversalNeurons, out: str | os.PathLike, title: str) -> Path:
    """Write ``universal_section`` as a self-contained HTML page to ``out``, atomically."""
    plots.require_matplotlib()
    return section_page(title, universal_section(found), out)
