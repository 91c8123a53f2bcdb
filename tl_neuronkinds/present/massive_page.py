"""Massive activations as HTML: a section for the report (``nk.report(..., massive=...)``) and a
page of its own (``tl-neuronkinds massive``). Figures are matplotlib SVG (``figures.py``)."""

import os
from pathlib import Path

import pandas as pd

from tl_neuronkinds.massive.activations import MassiveActivations
from tl_neuronkinds.present import plots as figures


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", escape=True)


def magnitude_series(found: MassiveActivations) -> dict[str, pd.Series]:
    """Per layer: ``top-1`` .. ``top-k`` magnitudes and the ``median``."""
    top = found.top.pivot(index="layer", columns="rank", values="magnitude")
    series = {f"top-{rank + 1}": top[rank] for rank in top.columns}
    series["median"] = found.median.set_index("layer")["median"]
    return series


def massive_section(found: MassiveActivations) -> str:
    """The massive-activations section: thresholds, the magnitudes by layer, the top entries,
    the dimensions and tokens holding massive ones, and the effects where computed."""
    n_massive = int(found.top["massive"].sum())
    parts = [
        '<section class="nk-massive" id="massive"><h2>Massive activations</h2>',
        f"<p>Sun et al. 2024: hidden states (<code>hook_resid_post</code>) whose magnitude is "
        f"above {found.magnitude:g} and above {found.ratio:g} × their layer's median. "
        f"{n_massive} of the {len(found.top)} top entries are massive.</p>",
        figures.magnitude_lines("massive-magnitudes", magnitude_series(found)),
        "<p><b>Magnitudes by layer</b>: the largest hidden-state magnitudes and the median "
        "(log scale).</p>",
        f"<details><summary>top entries</summary>{_table(found.top)}</details>",
    ]
    if n_massive:
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
            figures.head_heatmap(
                "massive-attention", found.attention, "share", "attention on massive positions"
            ),
            "<p><b>Attention share</b>: per layer and head, the attention probability on the "
            "positions holding a massive activation, averaged over every query.</p>",
        ]
    parts.append("</section>")
    return "".join(parts)


def massive_page(found: MassiveActivations, out: str | os.PathLike, title: str) -> Path:
    """Write ``massive_section`` as a self-contained HTML page to ``out``, atomically."""
    figures.require_matplotlib()
    return figures.section_page(title, massive_section(found), out)
