"""``show_neuron``: one neuron at a glance, as data (DataFrames) and as offline HTML.

A ``NeuronView`` gathers, for neuron ``(layer, neuron)`` of a profile and the model it was
recorded from:

- its kind and the numbers behind it (``classify``'s row: dead §3, token and n-gram detector
  §4.2 / §4.5, positional §5.1) and its ``k95_n`` with their statuses (``exact``,
  ``undefined``, ``censored`` above the n-gram cap, ``unknown``; SPEC.md "The n-gram cap");
- its triggers for every order it detects, with ``c_g`` (its activations on the trigger),
  ``o_g`` (the trigger's occurrences) and the share of its activations ``A_n`` they cover;
- its promoted and suppressed tokens (``vocab_projection``, §4.4);
- its activation frequency by position, ``f_p`` (§5.1), drawn as an inline SVG line;
- its activation histogram where the profile kept one (``record(..., histogram=True)``);
- with ``tokens``: its max-activating contexts (``max_activating_contexts``), each coloured by
  the neuron's activation with circuitsvis's ``ColoredTokens``.

``fragment()`` is the HTML without the circuitsvis bundle (for ``render.page``), ``save(path)``
a self-contained page and ``_repr_html_`` a notebook output (``render.notebook_html``).
"""

import copy
import html
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

from tl_neuronkinds.atomic import atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.classify import classification
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.ngrams import STATUSES, ngram_tokens
from tl_neuronkinds.loading.identity import check_same_model
from tl_neuronkinds.present.render import (
    bar_plot,
    html_table,
    line_plot,
    notebook_html,
    page,
    token_html,
    token_span,
    widget,
)
from tl_neuronkinds.recording.examples import (
    activation_histogram,
    max_activating_contexts,
    windows_cover,
)
from tl_neuronkinds.recording.keys import Table
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.vocab import vocab_projection

NO_TOKENS = (
    "Max-activating contexts: this profile kept no context windows this wide; pass the tokens "
    "it was recorded on (show_neuron(model, profile, layer, neuron, tokens=tokens)) to see them."
)
TRIGGER_COLUMNS = ["n", "rank", "ids", "tokens", "text", "count", "occurrences", "share"]


@dataclass(frozen=True, eq=False)
class NeuronView:
    """One neuron's data (DataFrames) and its HTML (see the module docstring).

    Attributes:
        layer, neuron: The neuron.
        kinds: Its row of ``classify`` (API.md's columns).
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


def _index(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise NeuronKindsError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError as err:
        raise NeuronKindsError(f"{name} must be an integer, got {value!r}") from err


def _check(model: Any, profile: NeuronProfile, layer: object, neuron: object) -> tuple[int, int]:
    """The neuron as ints; NeuronKindsError for a layer or neuron not in the profile, or a model
    other than the profile's (shapes, config hash and weights fingerprint)."""
    if not isinstance(profile, NeuronProfile):
        raise NeuronKindsError(f"expected a NeuronProfile, got {type(profile).__name__}")
    layer, neuron = _index("layer", layer), _index("neuron", neuron)
    if layer not in profile.counts:
        raise NeuronKindsError(f"layer {layer} was not recorded (recorded: {profile.layers})")
    if not 0 <= neuron < profile.d_mlp:
        raise NeuronKindsError(f"neuron {neuron} is out of range 0..{profile.d_mlp - 1}")
    cfg = model.cfg
    shapes = {"d_mlp": (cfg.d_mlp, profile.d_mlp), "d_vocab": (cfg.d_vocab, profile.d_vocab)}
    for key, (mine, theirs) in shapes.items():
        if mine != theirs:
            raise NeuronKindsError(
                f"the profile was recorded on another model: its {key} is {theirs}, this "
                f"model's {mine}"
            )
    check_same_model(model, profile)
    return layer, neuron


def _one_layer(profile: NeuronProfile, layer: int) -> NeuronProfile:
    """``profile`` restricted to ``layer`` (sharing its tensors): every kind of a neuron is a
    function of its layer's counts and the profile-wide ones, so one view classifies one layer."""
    single = copy.copy(profile)
    single.layers, single.counts = [layer], {layer: profile.counts[layer]}
    return single


def _coverage(analysis: Analysis, layer: int, neuron: int) -> pd.DataFrame:
    profile = analysis.profile
    rows = []
    for n in (1, 2, 3):
        row: dict[str, object] = {"n": n, "A": pd.NA, "k95": pd.NA, "status": "not recorded"}
        if n <= profile.ngram_max:
            cov = analysis.coverage(layer, n)
            status = STATUSES[int(cov.status[neuron])]
            row.update(A=int(cov.active[neuron]), status=status)
            if status == "exact":
                row["k95"] = int(cov.k95[neuron])
        row["cap"] = profile.ngram_cap if n >= 2 else None
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("A", "k95", "cap"):
        table[column] = table[column].astype("Int64")
    return table


def _lookup(table: Table, wanted: Int[np.ndarray, " g"]) -> Int[np.ndarray, " g"]:
    """The counts of ``wanted`` keys (each present) in a sorted sparse table."""
    return table.counts.numpy()[np.searchsorted(table.keys.numpy(), wanted)]


def _triggers(analysis: Analysis, layer: int, neuron: int) -> pd.DataFrame:
    profile = analysis.profile
    rows = []
    for n in range(1, profile.ngram_max + 1):
        cov = analysis.coverage(layer, n)
        gids = cov.triggers.get(neuron)
        if gids is None:
            continue
        counts = _lookup(profile.counts[layer].ngrams[n], gids * profile.d_mlp + neuron)
        occ = _lookup(profile.occurrences[n], gids)
        for rank, (ids, c, o) in enumerate(
            zip(ngram_tokens(gids, n, profile.d_vocab), counts, occ, strict=True)
        ):
            strings = tuple(profile.token_strings[t] for t in ids)
            rows.append(
                {
                    "n": n,
                    "rank": rank,
                    "ids": ids,
                    "tokens": strings,
                    "text": "".join(strings),
                    "count": int(c),
                    "occurrences": int(o),
                    "share": int(c) / int(cov.active[neuron]),
                }
            )
    return pd.DataFrame(rows, columns=TRIGGER_COLUMNS)


def _positions(profile: NeuronProfile, layer: int, neuron: int) -> pd.DataFrame:
    active = profile.counts[layer].pos_active[1:, neuron].numpy()
    seqs = profile.pos_text_seqs[1:].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        f_p = np.where(seqs > 0, active / seqs, np.nan)
    return pd.DataFrame(
        {"position": np.arange(1, profile.seq_len), "active": active, "seqs": seqs, "f_p": f_p}
    )


def show_neuron(
    model: Any,
    profile: NeuronProfile,
    layer: int | np.integer,
    neuron: int | np.integer,
    tokens: Int[torch.Tensor, "n_seq pos"] | None = None,
    k: int | None = None,
    *,
    vocab_k: int = 10,
    before: int = 12,
    after: int = 4,
    cutoffs: Cutoffs | None = None,
    analysis: Analysis | None = None,
    contexts: pd.DataFrame | None = None,
) -> NeuronView:
    """Everything about one neuron: a ``NeuronView`` that a notebook shows inline (circuitsvis,
    offline) and whose DataFrames hold the data (see ``NeuronView``).

    Args:
        model: The model the profile was recorded from (for the vocabulary projection and the
            contexts' activations).
        profile: Its NeuronProfile.
        layer, neuron: The neuron.
        tokens: The tokens the profile was recorded on. Needed for the max-activating contexts
            only where the profile kept no context windows as wide as ``before`` / ``after``
            (``record(..., window=...)``); without either the view shows everything else, and
            says so.
        k: How many max-activating contexts (default: all the profile kept, ``top_k``).
        vocab_k: Promoted and suppressed tokens shown (10 as in §4.4's examples).
        before, after: Tokens of context before and after the activating one.
        cutoffs: The kinds' cut-offs (the paper's defaults where None).
        analysis: An ``Analysis`` of ``profile`` to reuse: its classification of every layer
            is computed once for all the views made with it (a report of many neurons).
            Without one, the view classifies the neuron's layer only.
        contexts: The neuron's contexts, already computed (``recording.examples.contexts_of``,
            which does many neurons in one pass: a report); ``tokens`` is then not needed.

    Raises:
        NeuronKindsError: A layer the profile did not record, a neuron out of range, a model
            other than the profile's, or tokens other than those it was recorded on.
    """
    layer, neuron = _check(model, profile, layer, neuron)
    if analysis is None:
        analysis = Analysis(_one_layer(profile, layer), cutoffs)
    else:
        analysis = analysis_of(profile, cutoffs, {}, analysis)
    table = analysis.memo(
        "views.classification", lambda: classification(analysis).set_index(["layer", "neuron"])
    )
    kinds = table.loc[[(layer, neuron)]].reset_index()
    counts = profile.counts[layer]
    notes: list[str] = []
    if contexts is None and counts.top_values is None:
        notes.append("Max-activating contexts: this profile kept none (record with top_k > 0).")
    elif contexts is None and (tokens is not None or windows_cover(profile, before, after)):
        contexts = max_activating_contexts(
            model, profile, tokens, layer, neuron, k=k, before=before, after=after
        )
    elif contexts is None:
        notes.append(NO_TOKENS)
    histogram = None
    if counts.hist is not None:
        histogram = activation_histogram(profile, layer, neuron)
    model_name = str(profile.meta.get("model_name") or "")
    return NeuronView(
        layer=layer,
        neuron=neuron,
        kinds=kinds,
        coverage=_coverage(analysis, layer, neuron),
        triggers=_triggers(analysis, layer, neuron),
        positions=_positions(profile, layer, neuron),
        vocab=vocab_projection(model, layer, [neuron], k=vocab_k),
        contexts=contexts,
        histogram=histogram,
        title=f"Layer {layer}, neuron {neuron}: {kinds['kind'].iloc[0]}"
        + (f" ({model_name})" if model_name else ""),
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------- HTML
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


def _triggers_html(view: NeuronView) -> str:
    if view.triggers.empty:
        return _note("No triggers: not a token or n-gram detector.")
    rows = [
        [f"{t.n}", " ".join(token_span(s) for s in t.tokens), f"{t.count:,}", f"{t.occurrences:,}",
         f"{t.share:.1%}"]
        for t in view.triggers.itertuples(index=False)
    ]  # fmt: skip
    head = ["n", "trigger", "c<sub>g</sub> (active on it)", "o<sub>g</sub> (occurrences)",
            "share of A<sub>n</sub>"]  # fmt: skip
    return html_table(head, rows)


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
        plain = "".join(
            f"<b>{token_html(t)}</b>" if i == c.center else token_html(t)
            for i, t in enumerate(c.tokens)
        )
        props = {"tokens": list(c.tokens), "values": [float(v) for v in c.activations],
                 "minValue": lo, "maxValue": hi}  # fmt: skip
        fallback = f'<span class="nk-tok">{plain}</span>'
        rows.append(
            [f"{c.rank}", f"{c.value:.3f}", f"row {c.seq}, pos {c.pos}",
             token_span(c.tokens[c.center]), widget("ColoredTokens", props, fallback)]
        )  # fmt: skip
    scale = f"context (colour: activation, {lo:.3g} to {hi:.3g})"
    return html_table(["#", "activation", "where", "token", scale], rows, "nk-ctx")


def _vocab_html(view: NeuronView) -> str:
    parts = []
    for direction in ("promoted", "suppressed"):
        part = view.vocab[view.vocab["direction"] == direction]
        rows = [
            [f"{r.rank}", token_span(str(r.token)), f"{r.score:.4f}"] for r in part.itertuples()
        ]
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
