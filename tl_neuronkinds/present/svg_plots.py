"""The neuron view's plots as SVG written by hand, so that ``show_neuron`` draws without
matplotlib (the figures of the pages are ``plots.py``'s, with matplotlib, the ``report`` extra).

Two plots, each one ``<svg>`` element with fixed pixel sizes and no ids, deterministic:
``line_plot`` (a neuron's activation frequency by position, §5.1) and ``bar_plot`` (its
activation histogram).
"""

import html
import math
from collections.abc import Sequence


def _num(value: float | int) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _x_label(left: int, plot_w: int, height: int, label: str) -> str:
    """The axis label under a hand-written plot, and the end of its ``<svg>``."""
    return (
        f'<text x="{left + plot_w / 2}" y="{height - 4}" font-size="11" '
        f'text-anchor="middle">{html.escape(label)}</text></svg>'
    )


def line_plot(
    x: Sequence[float | int],
    y: Sequence[float | int],
    *,
    x_label: str,
    y_label: str,
    y_max: float = 1.0,
    reference: float | None = None,
    width: int = 520,
    height: int = 160,
) -> str:
    """A line plot as inline SVG, without matplotlib; NaN values of ``y`` break the line.
    ``reference`` draws a dashed horizontal line (e.g. a mean)."""
    left, top, plot_w, plot_h = 40, 8, width - 50, height - 38
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (x1 - x0) or 1.0

    def px(v: float) -> float:
        return left + (v - x0) / span * plot_w

    def py(v: float) -> float:
        return top + plot_h - min(max(v / y_max, 0.0), 1.0) * plot_h

    lines: list[list[str]] = [[]]
    for xv, yv in zip(xs, ys, strict=True):
        if math.isnan(yv):
            lines.append([])
        else:
            lines[-1].append(f"{_num(px(xv))},{_num(py(yv))}")
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(y_label)} by {html.escape(x_label)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#bbb"/>',
    ]
    parts += [
        f'<text x="{left - 4}" y="{_num(py(frac * y_max))}" font-size="10" text-anchor="end" '
        f'dominant-baseline="middle">{_num(frac * y_max)}</text>'
        for frac in (0.0, 0.5, 1.0)
    ]
    parts += [
        f'<text x="{_num(px(xv))}" y="{top + plot_h + 12}" font-size="10" '
        f'text-anchor="middle">{round(xv)}</text>'
        for xv in sorted({x0, x0 + span / 2, x1})
    ]
    if reference is not None and not math.isnan(reference):
        yy = _num(py(reference))
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy}" y2="{yy}" stroke="#e07000" '
            'stroke-dasharray="4 3"/>'
        )
    parts += [
        f'<polyline fill="none" stroke="#1f4e9c" stroke-width="1.5" points="{" ".join(line)}"/>'
        for line in lines
        if line
    ]
    return "".join(parts) + _x_label(left, plot_w, height, x_label)


def bar_plot(
    labels: Sequence[str],
    values: Sequence[float | int],
    *,
    x_label: str,
    width: int = 520,
    height: int = 140,
) -> str:
    """Equal-width bars as inline SVG, without matplotlib (e.g. a histogram over log-spaced
    bins), each with a tooltip ``label: value``; the first and last labels under the axis."""
    left, top, plot_w, plot_h = 10, 8, width - 20, height - 38
    top_value = max(values, default=0) or 1
    bar_w = plot_w / max(len(values), 1)
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(x_label)}">',
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#999"/>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = value / top_value * plot_h
        parts.append(
            f'<rect x="{_num(left + i * bar_w)}" y="{_num(top + plot_h - h)}" '
            f'width="{_num(max(bar_w - 1, 0.5))}" height="{_num(h)}" fill="#1f4e9c">'
            f"<title>{html.escape(label)}: {value:,}</title></rect>"
        )
    if labels:
        for x, label, anchor in ((left, labels[0], "start"), (left + plot_w, labels[-1], "end")):
            parts.append(
                f'<text x="{_num(x)}" y="{top + plot_h + 12}" font-size="10" '
                f'text-anchor="{anchor}">{html.escape(label)}</text>'
            )
    return "".join(parts) + _x_label(left, plot_w, height, x_label)
