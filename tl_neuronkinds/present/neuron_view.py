"""One neuron's view: its data (``NeuronView``'s DataFrames, gathered by ``views.show_neuron``)
and its offline HTML.

The HTML shows, in order: the neuron's kind and the numbers behind it (dead §3, detectors §4.2 /
§4.5, positional §5.1), its n-gram coverage and ``k95_n`` statuses (docs/kinds.md, "The n-gram
cap"), its triggers with ``c_g``, ``o_g`` and their share of ``A_n`` (those that make up 95%
of ``A_n``, ``coverage_cut``; the rest folded under "+N more"), its max-activating contexts
(circuitsvis's ``ColoredTokens``, each coloured by the neuron's activation; BOS / separator
tokens marked as not text where ``bos_token_id`` is given), its
promoted and suppressed tokens (§4.4), its activation frequency by position ``f_p`` (§5.1) and
its activation histogram: the two plots as SVG drawn by hand (``svg_plots.py``), so a view
needs no matplotlib.

``fragment()`` is the HTML without the circuitsvis bundle (for ``render.page``), ``save(path)``
a self-contained page and ``_repr_html_`` a notebook output (``render.notebook_html``).
Token strings show as ``pill``: boxed, their spaces as ``␣``.
"""

import html
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_neuronkinds.atomic import atomic_write_text
from tl_neuronkinds.present.render import (
    html_table,
    notebook_html,
    page,
    token_html,
    widget,
)
from tl_neuronkinds.present.svg_plots import bar_plot, line_plot

#: The title of a context token that is the BOS / document separator (docs/kinds.md, "Tokens").
SEPARATOR = "separator, not text (BOS / end of document)"
#: How a separator is marked (inline, so a view outside the report shows it too).
_SEP = f'class="nk-sep" title="{SEPARATOR}" style="outline:1px dashed #b00;color:#b00"'


@dataclass(frozen=True, eq=False)
class NeuronView:
    """One neuron's data (DataFrames) and its HTML (see the module docstring).

    Attributes:
        layer, neuron: The neuron.
        kinds: Its row of ``classify`` (columns: docs/tables.md).
        coverage: One row per n-gram order 1..3: ``n``, ``A`` (its activations at text
            positions where the n-gram is defined; NA for orders not recorded), ``k95``
            (nullable), ``status`` (``exact``, ``undefined``, ``censored``, ``unknown``, or
            ``not recorded``) and ``cap`` (the profile's n-gram cap for n >= 2).
        triggers: One row per trigger of each order it detects: ``n``, ``rank`` (by
            decreasing ``count``), ``ids`` (tuple of token ids), ``tokens`` (tuple of strings),
            ``text`` (the strings joined), ``count`` (``c_g``), ``occurrences`` (``o_g``) and
            ``share`` (``c_g / A_n``).
        positions: One row per position 1..T-1: ``position``, ``active`` (active count at p
            over the sequences with a text token there), ``seqs`` (those sequences) and ``f_p``
            (NaN where ``seqs`` is 0).
        vocab: ``vocab_projection``'s rows for the neuron.
        contexts: ``max_activating_contexts``'s rows, or None without tokens.
        histogram: ``activation_histogram``'s rows, or None where the profile kept none.
        title: The view's heading.
        notes: Lines shown under the heading (what is missing and why).
        bos_token_id: The BOS / separator token (not text, docs/kinds.md "Tokens"): contexts
            centred on it are marked as separators. None: not marked.
    """

    layer: int
    neuron: int
    kinds: pd.DataFrame
    coverage: pd.DataFrame
    triggers: pd.DataFrame
    positions: pd.DataFrame
    vocab: pd.DataFrame
    contexts: pd.DataFrame | None = None
    histogram: pd.DataFrame | None = None
    title: str = ""
    notes: tuple[str, ...] = ()
    bos_token_id: int | None = None

    def fragment(self) -> str:
        """The view as an HTML fragment without the circuitsvis bundle (``render.page`` adds
        it once per page)."""
        return _view_html(self)

    def _repr_html_(self) -> str:
        return notebook_html(self.fragment())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the view as a self-contained HTML page (atomically) and return its path."""
        return atomic_write_text(path, page(self.title, [self.fragment()]))

    def __repr__(self) -> str:
        kind = self.kinds["kind"].iloc[0] if len(self.kinds) else "?"
        return f"NeuronView(layer={self.layer}, neuron={self.neuron}, kind={kind!r})"


def _flag(value: Any) -> str:
    return "undecided" if pd.isna(value) else ("yes" if value else "no")


def _note(text: str) -> str:
    return f'<p class="nk-note">{text}</p>'


def _kind_html(view: NeuronView) -> str:
    row = view.kinds.iloc[0]
    pos = "—" if pd.isna(row["pos_type"]) else f"{row['pos_type']}, {row['pos_strength']}"
    mi = "undefined" if pd.isna(row["pos_mi"]) else f"{row['pos_mi']:.4f} nats"
    status = view.coverage.set_index("n")["status"]
    ngram = [
        "not recorded" if status[n] == "not recorded" else _flag(row[f"ngram_detector_{n}"])
        for n in (2, 3)
    ]
    rows = [
        ["kind", f"<b>{html.escape(str(row['kind']))}</b>"],
        ["active positions", f"{int(row['count']):,} ({row['freq']:.3%} of positions)"],
        ["dead / BOS only (§3)", f"{_flag(row['dead'])} / {_flag(row['bos_only'])}"],
        ["activations at text positions (A₁)", f"{int(row['evidence']):,}"],
        ["token detector (§4.2)", _flag(row["token_detector"])],
        ["bigram / trigram detector (§4.5)", " / ".join(ngram)],
        ["I(act; pos) (§5.1)", f"{mi}; positional: {_flag(row['positional'])}"],
        ["positional type, strength (§5.2)", html.escape(pos)],
    ]  # fmt: skip
    return html_table([], rows)


def _coverage_html(view: NeuronView) -> str:
    rows = []
    for r in view.coverage.itertuples(index=False):
        k95 = {"exact": f"{r.k95}", "censored": f"&gt; {r.cap}"}.get(r.status, "—")
        a = "—" if pd.isna(r.A) else f"{r.A:,}"
        rows.append([f"{r.n}", a, k95, html.escape(str(r.status))])
    return html_table(["n", "A<sub>n</sub>", "k95<sub>n</sub>", "status"], rows)


def pill(token: str) -> str:
    """A token string as a boxed, monospaced HTML span, as ``render.token_span`` but with its
    spaces shown as ``␣`` (so a space-only token is no empty box) and, where any is, the real
    string (``visible``, escaped) in the span's ``title``."""
    text = token_html(token)
    if " " not in token:
        return f'<span class="nk-tok">{text}</span>'
    return f'<span class="nk-tok" title="{text}">{text.replace(" ", "␣")}</span>'


def coverage_cut(counts: Iterable[int], total: int) -> int:
    """How many of ``counts`` (decreasing ``c_g`` of a neuron's triggers) make up its coverage:
    the fewest whose sum is at least 95% of ``total`` (``A_n``), decided in integers as
    ``k95_n`` is (docs/kinds.md); all of them where they never do."""
    values = [int(count) for count in counts]
    running = 0
    for i, count in enumerate(values):
        running += count
        if 100 * running >= 95 * total:
            return i + 1
    return len(values)


_TRIGGER_HEAD = ["n", "trigger", "c<sub>g</sub> (active on it)", "o<sub>g</sub> (occurrences)",
                 "share of A<sub>n</sub>"]  # fmt: skip


def _trigger_rows(triggers: pd.DataFrame) -> list[list[str]]:
    return [
        [f"{t.n}", " ".join(pill(s) for s in t.tokens), f"{t.count:,}", f"{t.occurrences:,}",
         f"{t.share:.1%}"]
        for t in triggers.itertuples(index=False)
    ]  # fmt: skip


def _triggers_html(view: NeuronView) -> str:
    """Per order, the triggers that make up the neuron's coverage (``coverage_cut``); the others
    (each with a small share of ``A_n``) folded under "+N more"."""
    if view.triggers.empty:
        return _note("No triggers: not a token or n-gram detector.")
    active = view.coverage.set_index("n")["A"]
    parts = []
    for n, triggers in view.triggers.groupby("n", sort=True):
        total = active.get(n)
        cut = len(triggers) if pd.isna(total) else coverage_cut(triggers["count"], int(total))
        parts.append(html_table(_TRIGGER_HEAD, _trigger_rows(triggers.iloc[:cut])))
        rest = triggers.iloc[cut:]
        if len(rest):
            parts.append(
                f'<details class="nk-more"><summary>+{len(rest):,} more (n = {n}), '
                f"{int(rest['count'].sum()):,} activations together: beyond the 95% of "
                f"A<sub>{n}</sub> the first {cut} cover</summary>"
                f"{html_table(_TRIGGER_HEAD, _trigger_rows(rest))}</details>"
            )
    return "".join(parts)


def _contexts_html(view: NeuronView) -> str:
    contexts = view.contexts
    if contexts is None:
        return ""
    if contexts.empty:
        return _note("Never active: no contexts.")
    values = [v for acts in contexts["activations"] for v in acts]
    lo, hi = min(0.0, *values), max(0.0, *values) or 1.0
    rows = []
    for c in contexts.itertuples(index=False):
        separators = [view.bos_token_id is not None and i == view.bos_token_id for i in c.token_ids]
        plain = "".join(
            _context_token(t, i == c.center, separators[i]) for i, t in enumerate(c.tokens)
        )
        props = {"tokens": list(c.tokens), "values": [float(v) for v in c.activations],
                 "minValue": lo, "maxValue": hi}  # fmt: skip
        fallback = f'<span class="nk-tok">{plain}</span>'
        center = pill(c.tokens[c.center])
        where = f"row {c.seq}, pos {c.pos}"
        if separators[c.center]:
            center = f"<span {_SEP}>{center}</span>"
            where += f"<br><span {_SEP}>separator</span>"
        tokens = widget("ColoredTokens", props, fallback)
        if any(separators):
            marked = " ".join(str(i) for i, sep in enumerate(separators) if sep)
            tokens = f'<div data-nk-separators="{marked}">{tokens}</div>'
        rows.append([f"{c.rank}", f"{c.value:.3f}", where, center, tokens])
    scale = f"context (colour: activation, {lo:.3g} to {hi:.3g})"
    return html_table(["#", "activation", "where", "token", scale], rows, "nk-ctx")


def _context_token(token: str, center: bool, separator: bool) -> str:
    text = token_html(token)
    if separator:
        text = f"<span {_SEP}>{text}</span>"
    return f"<b>{text}</b>" if center else text


def _vocab_html(view: NeuronView) -> str:
    parts = []
    for direction in ("promoted", "suppressed"):
        part = view.vocab[view.vocab["direction"] == direction]
        rows = [[f"{r.rank}", pill(str(r.token)), f"{r.score:.4f}"] for r in part.itertuples()]
        parts.append(f"<div><h3>{direction.capitalize()} tokens (§4.4)</h3>"
                     f"{html_table(['rank', 'token', 'score'], rows)}</div>")  # fmt: skip
    return f'<div class="nk-row">{"".join(parts)}</div>'


def _positions_html(view: NeuronView) -> str:
    pos = view.positions
    f_p = pos["f_p"].to_numpy(dtype=float)
    if np.isnan(f_p).all():
        return _note("No position holds a text token.")
    svg = line_plot(
        pos["position"].tolist(), f_p.tolist(), x_label="position p", y_label="f_p",
        reference=float(np.nanmean(f_p)),
    )  # fmt: skip
    return svg + _note(
        "f<sub>p</sub>: the share of sequences with a text token at p in which the neuron is "
        "active there (§5.1); dashed: its mean f."
    )


def _histogram_html(view: NeuronView) -> str:
    hist = view.histogram
    if hist is None:
        return ""
    used = np.flatnonzero(hist["count"].to_numpy() > 0)
    if used.size == 0:
        return _note("Never active: an empty histogram.")
    part = hist.iloc[used[0] : used[-1] + 1]
    labels = [f"[{lo:.3g}, {hi:.3g})" for lo, hi in zip(part["lo"], part["hi"], strict=True)]
    counts = [int(c) for c in part["count"]]
    svg = bar_plot(labels, counts, x_label="activation (log-spaced bins)")
    return f"<h3>Activation histogram</h3>{svg}"


def _view_html(view: NeuronView) -> str:
    notes = "".join(_note(html.escape(n)) for n in view.notes)
    contexts = _contexts_html(view)
    return (
        f'<div class="nk-view" data-layer="{view.layer}" data-neuron="{view.neuron}">'
        f"<h2>{html.escape(view.title)}</h2>{notes}"
        f'<div class="nk-row"><div><h3>Kind</h3>{_kind_html(view)}</div>'
        f"<div><h3>N-gram coverage (§4.1)</h3>{_coverage_html(view)}</div></div>"
        f"<h3>Triggers (§4.2, §4.5)</h3>{_triggers_html(view)}"
        + (f"<h3>Max-activating contexts</h3>{contexts}" if contexts else "")
        + _vocab_html(view)
        + f"<h3>Activation frequency by position</h3>{_positions_html(view)}"
        + _histogram_html(view)
        + "</div>"
    )
