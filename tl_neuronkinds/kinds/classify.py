"""One table of every neuron's kind: dead, token detector, n-gram detector, positional, other."""

import contextvars
import warnings
import weakref

import numpy as np
import pandas as pd
from jaxtyping import Int

from tl_neuronkinds.kinds._common import (
    EVIDENCE_TOKENS,
    PAPER_TOKENS,
    EvidenceWarning,
    UndecidableWarning,
    warn,
)
from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.ngrams import k95_column, status_column, trigger_labels
from tl_neuronkinds.kinds.positional import type_labels
from tl_neuronkinds.recording.profile import NeuronProfile

COLUMNS = [
    "layer",
    "neuron",
    "count",
    "freq",
    "dead",
    "bos_only",
    "evidence",
    "k95_1",
    "k95_2",
    "k95_3",
    "k95_2_status",
    "k95_3_status",
    "token_detector",
    "triggers",
    "trigger_n",
    "ngram_detector_2",
    "ngram_detector_3",
    "pos_mi",
    "positional",
    "pos_type",
    "pos_strength",
    "kind",
]
#: The labels of ``kind`` (the columns ``kind_{kind}`` of ``layer_summary``, in this order).
KINDS = ["dead", "token_detector", "ngram_detector", "positional", "other", "unknown"]
#: The order in which the kinds are tried: a neuron gets the first that holds.
PRECEDENCE = ["dead", "token_detector", "ngram_detector", "unknown", "positional", "other"]
#: The profiles ``classify`` has warned about (``EvidenceWarning``, once per profile).
_WARNED: "weakref.WeakSet[NeuronProfile]" = weakref.WeakSet()
#: Set while ``classify_with_cautions`` collects every caution, warned before or not.
_COLLECTING = contextvars.ContextVar("collecting_cautions", default=False)


def classify(
    profile: NeuronProfile | Analysis,
    cutoffs: Cutoffs | None = None,
    *,
    analysis: Analysis | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Every recorded neuron's kind, from the profile alone (docs/kinds.md, docs/tables.md).

    ``kind`` is the first that holds of: ``dead`` (never active, §3), ``token_detector`` (§4.2),
    ``ngram_detector`` (a bigram or trigram detector, §4.5), ``unknown`` (an n-gram detector test
    that a capped profile cannot decide, see below), ``positional`` (§5.1), ``other``.
    Re-running with other cut-offs needs no model: everything comes from the counts.

    Args:
        profile: A NeuronProfile, or an ``Analysis`` of one (then its cut-offs are used, and
            what this call computes is kept for ``figure_tables`` and the other tables).
        cutoffs: The cut-offs (``Cutoffs``; the paper's defaults where None): ``k_max`` and
            ``coverage`` (5 and 95% in §4.2), ``min_count``, and the positional ones
            (``mi_threshold`` 0.05 nats in §5.1, ``min_run``, ``delta``, ``smooth_r2``).
        analysis: An ``Analysis`` of ``profile`` to use (the same as passing it as ``profile``):
            ``a = Analysis(profile); classify(profile, analysis=a); figure_tables(profile,
            analysis=a)`` computes each layer's statistics once for both.
        **overrides: Fields of ``Cutoffs`` to override, e.g. ``k_max=10, coverage=90``.

    Returns:
        One row per (layer, neuron) with exactly the columns ``COLUMNS``:

        - ``evidence``: ``A_1``, the neuron's activations at text positions, on which its
          detector tests rest (a token detector on 3 activations rests on little).
        - ``k95_n`` (nullable Int64): the exact value, or NA where its status ``k95_n_status``
          (n = 2, 3) is ``undefined`` (no activation where the n-gram is defined), ``censored``
          (``k95_n > ngram_cap``, proven without the counts; docs/kinds.md, "The n-gram cap") or
          ``unknown``. Orders above ``profile.ngram_max`` were not recorded: NA, status NA.
        - ``token_detector``, ``ngram_detector_n``: bool. On a capped profile a neuron without
          order-n counts is decided by a certificate where one exists (censored with
          ``k_max <= cap``, its unigram bound above ``k_max``, or ``A_n < min_count``); where
          none exists (``k_max`` above the cap, or counts a merge of profiles did not keep) the
          column becomes nullable ``boolean`` with NA there, the neuron's ``kind`` is
          ``unknown`` (unless it is dead or a token or n-gram detector) and an
          ``UndecidableWarning`` says how many. With the default cut-offs a profile made by
          ``record`` decides every neuron, exactly as an exhaustive one.
        - ``triggers``: a token detector's trigger strings; for a neuron that is only an
          n-gram detector, the triggers of its lowest detecting order as n-gram strings (the
          token strings joined: " the cat"); empty otherwise. ``trigger_n`` (nullable Int64)
          is that order, NA where there are none.
        - ``pos_type`` / ``pos_strength``: NA for neurons that are not positional.

    Warns:
        EvidenceWarning: The profile holds fewer than 1,000,000 text tokens (the paper uses
            5M, §2); once per profile, however often it is classified.
        UndecidableWarning: Some n-gram detector tests are undecidable (above).
    """
    analysis = analysis_of(profile, cutoffs, overrides, analysis)
    table = classification(analysis)
    _warn_evidence(analysis.profile)
    _warn_undecidable(analysis, table)
    return table


def classify_with_cautions(analysis: Analysis) -> tuple[pd.DataFrame, list[str]]:
    """``classify(analysis)`` and the messages of its cautions (``EvidenceWarning``,
    ``UndecidableWarning``), for a page or a command line that shows them as notes rather than
    as warnings with a source line; any other warning is re-emitted as it was raised."""
    collecting = _COLLECTING.set(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EvidenceWarning)
            warnings.simplefilter("always", UndecidableWarning)
            table = classify(analysis)
    finally:
        _COLLECTING.reset(collecting)
    cautions = []
    for warning in caught:
        if issubclass(warning.category, EvidenceWarning | UndecidableWarning):
            cautions.append(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return table, cautions


def classification(analysis: Analysis) -> pd.DataFrame:
    """``classify``'s table, without its warnings (kept on ``analysis``; a copy is returned)."""
    table = analysis.memo("classification", lambda: _build(analysis))
    return table.copy()


def _build(analysis: Analysis) -> pd.DataFrame:
    table = pd.concat(
        [_layer_table(analysis, layer) for layer in analysis.profile.layers], ignore_index=True
    )
    for n in (2, 3):
        undecided = table.pop(f"_undecided_{n}").to_numpy(dtype=bool)
        if undecided.any():
            values = table[f"ngram_detector_{n}"].to_numpy(dtype=bool)
            table[f"ngram_detector_{n}"] = pd.arrays.BooleanArray(values, undecided)
    return table[COLUMNS]


def _trigger_strings(analysis: Analysis, gids: Int[np.ndarray, " g"], n: int) -> list[str]:
    """A detector's triggers as strings: tokens for n = 1, n-grams' tokens joined for n >= 2."""
    strings, _ = trigger_labels(analysis.profile, gids, n)
    return [s if isinstance(s, str) else "".join(s) for s in strings]


def _layer_table(analysis: Analysis, layer: int) -> pd.DataFrame:
    profile = analysis.profile
    d_mlp = profile.d_mlp
    counts = profile.counts[layer]
    count = counts.active.numpy()
    dead = count == 0
    orders = range(1, profile.ngram_max + 1)
    cov = {n: analysis.coverage(layer, n) for n in orders}
    table: dict[str, object] = {
        "layer": layer,
        "neuron": np.arange(d_mlp),
        "count": count,
        "freq": count / profile.n_positions,
        "dead": dead,
        "bos_only": (count > 0) & (counts.active_text.numpy() == 0),
        "evidence": cov[1].active,
    }
    no = np.zeros(d_mlp, dtype=bool)
    for n in (1, 2, 3):
        if n in cov:
            table[f"k95_{n}"] = k95_column(cov[n])
        else:
            table[f"k95_{n}"] = pd.array([pd.NA] * d_mlp, dtype="Int64")
        if n >= 2:
            labels = status_column(cov[n]) if n in cov else np.full(d_mlp, None, dtype=object)
            table[f"k95_{n}_status"] = pd.array(labels, dtype="string")
            table[f"_undecided_{n}"] = ~cov[n].decided if n in cov else no

    triggers: list[list[str]] = [[] for _ in range(d_mlp)]
    trigger_n = np.zeros(d_mlp, dtype=np.int64)
    for n in orders:
        for i, gids in cov[n].triggers.items():
            if trigger_n[i] == 0:
                triggers[i], trigger_n[i] = _trigger_strings(analysis, gids, n), n
    table["triggers"] = triggers
    table["trigger_n"] = pd.arrays.IntegerArray(trigger_n, trigger_n == 0)
    detector = {n: cov[n].detector if n in cov else no for n in (1, 2, 3)}
    undecided = np.zeros(d_mlp, dtype=bool)
    for n in range(2, profile.ngram_max + 1):
        undecided |= ~cov[n].decided
    table["token_detector"] = detector[1]
    table["ngram_detector_2"] = detector[2]
    table["ngram_detector_3"] = detector[3]

    pos = analysis.positional(layer)
    table["pos_mi"] = pos.mi
    table["positional"] = pos.positional
    table["pos_type"], table["pos_strength"] = type_labels(pos)

    holds = {
        "dead": dead,
        "token_detector": detector[1],
        "ngram_detector": detector[2] | detector[3],
        "unknown": undecided,
        "positional": pos.positional,
    }
    kind = np.full(d_mlp, "other", dtype=object)
    # The first that holds wins: assign in reverse order of precedence.
    for label in reversed(PRECEDENCE[:-1]):
        kind[holds[label]] = label
    table["kind"] = kind
    return pd.DataFrame(table)


def _warn_evidence(profile: NeuronProfile) -> None:
    """``EvidenceWarning`` for a small profile: once per profile (always where collecting)."""
    if profile.n_text_positions >= EVIDENCE_TOKENS:
        return
    if not _COLLECTING.get():
        if profile in _WARNED:
            return
        _WARNED.add(profile)
    warn(
        f"the profile holds {profile.n_text_positions:,} text tokens, fewer than "
        f"{EVIDENCE_TOKENS:,}: its kinds rest on little data (the paper collects its "
        f"statistics over {PAPER_TOKENS / 1e6:.0f}M tokens, §2); a rare neuron can pass the "
        "detector tests on a few activations (see the 'evidence' column, and min_count)",
        EvidenceWarning,
    )


def _warn_undecidable(analysis: Analysis, table: pd.DataFrame) -> None:
    profile, cuts = analysis.profile, analysis.cutoffs
    undecided = np.zeros(len(table), dtype=bool)
    for n in (2, 3):
        undecided |= table[f"ngram_detector_{n}"].isna().to_numpy()
    if not undecided.any():
        return
    cap = profile.ngram_cap
    reasons, fixes = [], []
    if cap is not None and cuts.k_max > cap:
        reasons.append(
            f"k_max={cuts.k_max} is above the profile's ngram_cap={cap}, so a k95_n proven "
            f"> {cap} does not rule out k95_n <= {cuts.k_max}"
        )
        fixes.append(f"k_max <= {cap}, or a recording with ngram_cap >= {cuts.k_max}")
    unknown = [table[f"k95_{n}_status"].eq("unknown").fillna(False).to_numpy(bool) for n in (2, 3)]
    if ((unknown[0] | unknown[1]) & undecided).any():
        reasons.append(
            "some neurons' n-gram counts are missing with no proof that k95_n > ngram_cap at "
            f"coverage={cuts.coverage} (status 'unknown': a merge of profiles that kept "
            "different neurons, or a coverage below the 95% the recording certified)"
        )
        if cuts.coverage < 95:
            fixes.append("coverage >= 95")
        fixes.append("runs to merge recorded with one plan (record(..., plan=profile.plan))")
    fixes.append("a recording with ngram_cap=None (every neuron's counts)")
    warn(
        f"{int(undecided.sum())} neurons' n-gram detector test cannot be decided from this "
        f"profile (ngram_cap={cap}): {'; '.join(reasons) or 'their counts were not kept'}. "
        "Their ngram_detector_n is NA and their kind 'unknown'. To decide them, use "
        f"{', or '.join(fixes)}.",
        UndecidableWarning,
    )
