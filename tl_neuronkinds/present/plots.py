"""The figures of the report and of the other pages, drawn with matplotlib as SVG to inline in
an HTML page (``report.py``, ``massive_page.py``, ``universal_page.py``, ``compare_page.py``).

Plots come in two engines, one module each, because one view must draw without matplotlib:
this module is matplotlib's (the ``report`` extra: the paper's figures, with axes, legends and
hatching); ``svg_plots.py`` writes the SVG of ``show_neuron``'s two small plots by hand, so
that a view works where only the core dependencies are installed.

Each function takes the tables of ``tl_neuronkinds.kinds`` (``figure_tables``,
``position_teams``, ``position_frequencies``; nothing is recomputed here) and returns one
``<svg>`` element. matplotlib is imported by ``require_matplotlib`` when a figure is drawn,
never when the package is imported; its absence is a NeuronKindsError naming the extra.

No pyplot: figures are ``matplotlib.figure.Figure`` objects saved with the SVG backend, so no
global backend is chosen (headless, as with Agg) and a user's interactive session is left as it
was. Output is deterministic: ``svg.hashsalt`` is fixed, the metadata (date, creator) is dropped,
text stays text (``svg.fonttype = none``: smaller, searchable). Every ``id`` inside a figure is
prefixed with the figure's own id, so many figures share one page without clashing ids.
"""

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from tl_neuronkinds.errors import NeuronKindsError

#: The pip extra that brings matplotlib.
EXTRA = 'pip install "tl_neuronkinds[report]"'
#: Colours of Figures 7-8: purple oscillatory, red both extremes, green one extreme, yellow
#: other; (strong, weak) shades as the paper's colour intensity (§5.2).
TYPE_COLOURS = {
    "oscillatory": ("#6a3d9a", "#cab2d6"),
    "both_extremes": ("#d7301f", "#fc9272"),
    "one_extreme": ("#238b45", "#a1d99b"),
    "other": ("#d4a100", "#ffe680"),
}
TYPE_ORDER = ["oscillatory", "both_extremes", "one_extreme", "other"]
_RC = {
    "svg.hashsalt": "tl_neuronkinds",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_WIDE, _HIGH = 6.4, 2.6  # inches
#: Markers and dash patterns of successive lines, so that lines that coincide stay apart.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES = ("-", "--", ":", "-.")


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or a NeuronKindsError saying how to install it."""
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.style  # noqa: F401
    except ImportError as err:
        raise NeuronKindsError(
            f"the report's figures need matplotlib, which is not installed: {EXTRA}"
        ) from err
    return matplotlib


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib's defaults and ``_RC`` while a figure is drawn and saved, whatever the user's
    rcParams (styles, a notebook's settings): the same input gives the same SVG."""
    matplotlib = require_matplotlib()
    with matplotlib.style.context(["default", _RC]):
        yield


def _figure(width: float = _WIDE, height: float = _HIGH) -> Any:
    return require_matplotlib().figure.Figure(figsize=(width, height))


def _svg(fig: Any, fid: str) -> str:
    """``fig`` as one ``<svg>`` element: no XML prolog, metadata or global style, ids prefixed
    (called inside ``_style``, for ``svg.hashsalt``)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    text = re.sub(r"\s*<style[^>]*>.*?</style>", "", text, flags=re.DOTALL)
    text = re.sub(r' xmlns(:xlink)?="[^"]*"', "", text)
    text = text.replace('id="', f'id="{fid}-').replace("url(#", f"url(#{fid}-")
    text = text.replace('href="#', f'href="#{fid}-')
    return text.replace("<svg ", f'<svg class="nk-plot" role="img" aria-label="{fid}" ', 1)


def _layer_axis(ax: Any, layers: Sequence[int], counts: bool = False) -> None:
    """The layer x axis (integer ticks); ``counts``: integer ticks on the y axis too."""
    integer = require_matplotlib().ticker.MaxNLocator
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(integer(integer=True))
    if counts:
        ax.yaxis.set_major_locator(integer(integer=True))
    if layers:
        ax.set_xlim(min(layers) - 0.6, max(layers) + 0.6)
    ax.grid(axis="y", alpha=0.3)


def layer_line(
    fid: str,
    series: dict[str, pd.Series],
    ylabel: str,
    *,
    styles: Sequence[str] = (),
    log: bool = False,
    counts: bool = False,
) -> str:
    """One line per named per-layer series (Figures 1a, 1b, 3a, 3b; with ``log``, Sun et al.
    Figure 2's view of massive activations: a log scale, zeros left out); NaN breaks a line.
    Lines that coincide stay visible: each has its own dashes (``styles[i]``, else ``_DASHES``)
    and hollow marker, thinner and smaller than the one before (drawn over it); its ``<g>``
    has the id ``{fid}-series-{i}``. ``counts``: integer ticks on the y axis."""
    with _style():
        fig = _figure()
        ax = fig.add_subplot()
        layers: list[int] = []
        for i, (label, values) in enumerate(series.items()):
            style = styles[i] if i < len(styles) else _DASHES[i % len(_DASHES)]
            y = values.to_numpy(dtype=float)
            y = np.where(y > 0, y, np.nan) if log else y
            look = {"marker": _MARKERS[i % len(_MARKERS)], "ms": max(7 - 1.5 * i, 3), "mfc": "none"}
            look.update(lw=max(2.2 - 0.5 * i, 0.8), label=label, gid=f"series-{i}")
            ax.plot(values.index, y, style, **look)
            layers = list(values.index)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        if not log:
            ax.set_ylim(bottom=0)
        _layer_axis(ax, layers, counts)
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, fid)


def layer_bars(
    fid: str,
    series: dict[str, pd.Series],
    ylabel: str,
    *,
    reference: tuple[float, str] | None = None,
    notes: dict[int, str] | None = None,
    counts: bool = False,
) -> str:
    """Side-by-side bars of per-layer series (Figures 4, 6); ``reference`` draws a dashed
    horizontal line with its label; ``notes`` writes a text above a layer's bars; ``counts``:
    integer ticks on the y axis."""
    with _style():
        fig = _figure()
        ax = fig.add_subplot()
        width = 0.8 / max(len(series), 1)
        layers: list[int] = []
        for i, (label, values) in enumerate(series.items()):
            x = [layer + (i - (len(series) - 1) / 2) * width for layer in values.index]
            ax.bar(x, values.to_numpy(dtype=float), width=width, label=label)
            layers = list(values.index)
        if reference is not None:
            ax.axhline(reference[0], color="#555", ls="--", lw=1, label=reference[1])
        for layer, text in (notes or {}).items():
            top = max(float(np.nan_to_num(v.get(layer, 0.0))) for v in series.values())
            ax.annotate(
                text,
                (layer, top),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
        ax.set_ylabel(ylabel)
        _layer_axis(ax, layers, counts)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, fid)


def coverage_bars(fid: str, table: pd.DataFrame, censored: str | None) -> str:
    """Figure 2 / Appendix A: per layer, alive neurons stacked by bucket of ``k95_n``.

    ``table`` is ``fig2``'s (bucket columns, then ``undefined`` and maybe ``unknown``);
    ``censored`` names its ``>cap`` column (pale blue, hatched: those k95 are only known to pass
    the cap).
    """
    with _style():
        matplotlib = require_matplotlib()
        extra = [c for c in ("undefined", "unknown") if c in table.columns]
        buckets = [c for c in table.columns if c not in extra]
        cmap = matplotlib.colormaps["viridis"]
        fig = _figure(_WIDE, max(_HIGH, 0.9 + 0.22 * len(table)))
        ax = fig.add_subplot()
        left = pd.Series(0.0, index=table.index)
        y = range(len(table))
        for i, column in enumerate([*buckets, *extra]):
            values = table[column].astype(float)
            if column in extra:
                colour, hatch = ("#d9d9d9" if column == "undefined" else "#969696"), None
            else:
                colour = cmap(i / max(len(buckets) - 1, 1))
                hatch = "///" if column == censored else None
            if column == censored:
                colour = "#9ecae1"
            ax.barh(
                y, values, left=left, color=colour, hatch=hatch, edgecolor="white", label=column
            )
            left += values
        ax.set_yticks(list(y), [str(layer) for layer in table.index])
        ax.invert_yaxis()
        ax.set_ylabel("layer")
        ax.set_xlabel("alive neurons")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, fid)


def positional_bars(fid: str, table: pd.DataFrame) -> str:
    """Figure 8: per layer, positional neurons stacked by type and strength (``fig8``'s table)."""
    with _style():
        fig = _figure()
        ax = fig.add_subplot()
        bottom = pd.Series(0.0, index=table.index)
        for kind in TYPE_ORDER:
            for strength, colour in zip(("strong", "weak"), TYPE_COLOURS[kind]):
                values = table[f"{kind}_{strength}"].astype(float)
                ax.bar(
                    table.index, values, bottom=bottom, color=colour, label=f"{kind} ({strength})"
                )
                bottom += values
        ax.set_ylabel("positional neurons")
        _layer_axis(ax, list(table.index), counts=True)
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, fid)


def position_curves(fid: str, curves: dict[tuple[str, str], tuple[str, pd.Series] | None]) -> str:
    """Figure 7: one panel per (type, strength), its example's ``f_p`` over positions (or a note
    that the run has none); rows strong then weak, as the paper's top and bottom rows."""
    with _style():
        fig = _figure(_WIDE * 1.4, 3.6)
        axes = fig.subplots(2, len(TYPE_ORDER), sharey=True)
        for row, strength in enumerate(("strong", "weak")):
            for col, kind in enumerate(TYPE_ORDER):
                ax = axes[row][col]
                chosen = curves.get((kind, strength))
                ax.set_ylim(-0.05, 1.05)
                if chosen is None:
                    ax.text(
                        0.5,
                        0.5,
                        "none in this run",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        color="#777",
                    )
                    ax.set_xticks([])
                    title = f"{kind}, {strength}"
                else:
                    name, f = chosen
                    colour = TYPE_COLOURS[kind][0 if strength == "strong" else 1]
                    ax.plot(f.index, f.to_numpy(dtype=float), color=colour, lw=0.8)
                    title = f"{kind}, {strength}\n{name}"
                ax.set_title(title, fontsize=8)
                if row == 1:
                    ax.set_xlabel("position")
                if col == 0:
                    ax.set_ylabel("activation frequency")
        fig.tight_layout()
        return _svg(fig, fid)


def team_ranges(
    fid: str, neurons: Sequence[int], ranges: Sequence[Sequence[tuple[int, int]]], last: int
) -> str:
    """Figure 9: the position ranges each neuron of a team indicates, one row per neuron."""
    with _style():
        fig = _figure(_WIDE, max(1.6, 0.6 + 0.22 * len(neurons)))
        ax = fig.add_subplot()
        colour = TYPE_COLOURS["oscillatory"][0]
        for row, spans in enumerate(ranges):
            ax.broken_barh(
                [(a - 0.5, b - a + 1) for a, b in spans], (row - 0.35, 0.7), color=colour
            )
        ax.set_yticks(range(len(neurons)), [f"neuron {i}" for i in neurons])
        ax.invert_yaxis()
        ax.set_xlim(0.5, last + 0.5)
        ax.set_xlabel("position")
        ax.grid(axis="x", alpha=0.3)
        return _svg(fig, fid)


def head_heatmap(fid: str, table: pd.DataFrame, value: str, label: str) -> str:
    """A layer x head grid of ``table[value]`` (rows ``layer``, ``head``), 0 to 1."""
    grid = table.pivot(index="layer", columns="head", values=value)
    with _style():
        fig = _figure(height=max(_HIGH, 0.3 * len(grid) + 1))
        ax = fig.add_subplot()
        image = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index])
        fig.colorbar(image, ax=ax, label=label)
        return _svg(fig, fid)


# ---------------------------------------------------------------- comparisons (compare_page.py)


def _mpl_text(label: str) -> str:
    """``label`` shown as written by matplotlib: ``$`` is not mathtext, a leading ``_`` does
    not hide a legend entry."""
    text = label.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def depth_lines(
    fid: str,
    series: dict[str, pd.Series],
    ylabel: str,
    *,
    counts: bool = False,
    log: bool = False,
    ylim: tuple[float, float] | None = None,
    reference: tuple[float, str] | None = None,
) -> str:
    """One line per model against relative depth (Voita et al. 2024, Figures 1a, 1b, 3a, 3b, 4).

    ``series`` maps each model's label to its values indexed by relative depth (0: the first
    block, 1: the last), in the legend's order. Each line has its own marker and dash pattern
    (hollow markers, shrinking with each line, so lines that coincide stay visible) and the id
    ``{fid}-model-{i}``. ``counts``: integer ticks; ``log``: a log scale (values <= 0 left
    out); ``reference``: a dashed horizontal line with its label.
    """
    with _style():
        matplotlib = require_matplotlib()
        fig = _figure(_WIDE * 0.7, _HIGH)
        ax = fig.add_subplot()
        for i, (label, values) in enumerate(series.items()):
            y = values.to_numpy(dtype=float)
            ax.plot(
                values.index.to_numpy(dtype=float),
                np.where(y > 0, y, np.nan) if log else y,
                _DASHES[i % len(_DASHES)],
                marker=_MARKERS[i % len(_MARKERS)],
                ms=max(7 - i, 3),
                mfc="none",
                lw=1.3,
                label=_mpl_text(label),
                gid=f"model-{i}",
            )
        if reference is not None:
            ax.axhline(reference[0], color="#555", ls="--", lw=1, label=_mpl_text(reference[1]))
        if log:
            ax.set_yscale("log")
        else:  # from a little below 0, so that a line at 0 is not hidden in the axis
            low, high = ylim if ylim is not None else (0.0, max(ax.get_ylim()[1], 1.0))
            ax.set_ylim(low - 0.04 * (high - low), high)
        if counts:
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlim(-0.04, 1.04)
        ax.set_xlabel("relative depth: layer / (n_layers - 1)")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, fid)


def positional_rows(fid: str, tables: dict[str, pd.DataFrame]) -> str:
    """Figure 8 as the paper draws it for several models (and so Figures 10 and 11): one row per
    model, its positional neurons per layer stacked by type and strength (``fig8``'s table
    columns), every row on one y scale from 0; each row's axes has the id ``{fid}-model-{i}``."""
    with _style():
        fig = _figure(_WIDE, 0.5 + 1.6 * len(tables))
        axes = fig.subplots(len(tables), 1, sharey=True, squeeze=False)[:, 0]
        for i, (ax, (label, table)) in enumerate(zip(axes, tables.items(), strict=True)):
            ax.set_gid(f"model-{i}")
            bottom = np.zeros(len(table))
            for kind in TYPE_ORDER:
                for strength, colour in zip(("strong", "weak"), TYPE_COLOURS[kind]):
                    values = table[f"{kind}_{strength}"].to_numpy(dtype=float)
                    name = f"{kind} ({strength})" if i == 0 else None
                    ax.bar(table.index, values, bottom=bottom, color=colour, label=name)
                    bottom += values
            ax.set_title(_mpl_text(label), loc="left", fontsize=9)
            ax.set_ylabel("positional neurons")
            _layer_axis(ax, list(table.index))
        top = max(max(float(t.to_numpy().sum(axis=1).max(initial=0)) for t in tables.values()), 1.0)
        axes[0].set_ylim(0, top * 1.05)
        axes[0].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        return _svg(fig, fid)
