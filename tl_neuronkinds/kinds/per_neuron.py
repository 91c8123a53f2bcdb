"""Per-neuron tables of one kind each: n-gram coverage, detectors of one order, positional."""

import numpy as np
import pandas as pd
from jaxtyping import Bool, Int

from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.ngrams import (
    k95_bucket,
    k95_column,
    status_column,
    trigger_labels,
)
from tl_neuronkinds.kinds.positional import type_labels
from tl_neuronkinds.recording.profile import NeuronProfile


def _nullable(
    values: Int[np.ndarray, " d_mlp"], missing: Bool[np.ndarray, " d_mlp"]
) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(values.astype(np.int64), missing)


def ngram_coverage(
    profile: NeuronProfile | Analysis,
    n: int = 1,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Per neuron: how many n-grams cover ``coverage``% of its activations (§4.1, Fig. 2, App. A).

    Args:
        profile: A NeuronProfile or an ``Analysis`` of one.
        n: The n-gram order (1..profile.ngram_max).
        cutoffs, **overrides: The cut-offs (``Cutoffs``); ``coverage`` is used (95 in §4.1).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``A`` (active count over the text
        positions where the n-gram is defined, exact for every neuron), ``n_ngrams`` (nullable
        Int64: distinct n-grams with c_g > 0, NA where the profile lacks the neuron's counts),
        ``k95`` (nullable Int64: exact, NA where not), ``status`` (``exact``, ``undefined``
        where A = 0, ``censored`` where ``k95 > ngram_cap`` is proven, ``unknown``; docs/kinds.md,
        "The n-gram cap") and ``bucket`` (its column of ``fig2``: a Figure 2 label, on a capped
        profile for n >= 2 one of the buckets cut at the cap or ``>cap``; None where undefined
        or unknown).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    analysis.check_order(n)
    prof = analysis.profile
    cap = prof.ngram_cap if n >= 2 else None
    frames = []
    for layer in prof.layers:
        cov = analysis.coverage(layer, n)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(prof.d_mlp),
                    "A": cov.active,
                    "n_ngrams": _nullable(cov.n_ngrams, cov.n_ngrams < 0),
                    "k95": k95_column(cov),
                    "status": pd.array(status_column(cov), dtype="string"),
                    "bucket": k95_bucket(cov, cap),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def token_detectors(
    profile: NeuronProfile | Analysis,
    n: int = 1,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Per neuron: is it a token detector (n = 1, §4.2) or an n-gram detector (n >= 2, §4.5)?

    Args:
        profile: A NeuronProfile or an ``Analysis`` of one.
        n: The n-gram order (1..profile.ngram_max).
        cutoffs, **overrides: The cut-offs (``Cutoffs``): ``k_max`` (condition (1),
            ``k95_n <= k_max``: 5 in §4.2, "triggered by only 1-5 tokens"), ``coverage`` (the
            percentage of conditions (2) and (3): 95 in §4.2) and ``min_count`` (``A_n`` at
            least this; 0, the paper's rule).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``A``, ``k95`` (nullable Int64) and
        its ``status`` (as in ``ngram_coverage``), ``covered_sum`` (sum of c_g over the
        covered n-grams; 0 where the counts are missing), ``detector`` (bool; nullable
        ``boolean`` with NA where a capped profile cannot decide it, see ``classify``),
        ``triggers`` and ``trigger_ids`` (lists, see ``ngrams``; empty for neurons that are not
        detectors).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    analysis.check_order(n)
    prof = analysis.profile
    frames = []
    for layer in prof.layers:
        cov = analysis.coverage(layer, n)
        triggers: list[list] = [[] for _ in range(prof.d_mlp)]
        trigger_ids: list[list] = [[] for _ in range(prof.d_mlp)]
        for i, gids in cov.triggers.items():
            strings, ids = trigger_labels(prof, gids, n)
            triggers[i], trigger_ids[i] = list(strings), list(ids)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(prof.d_mlp),
                    "A": cov.active,
                    "k95": k95_column(cov),
                    "status": pd.array(status_column(cov), dtype="string"),
                    "covered_sum": cov.covered_sum,
                    "detector": pd.arrays.BooleanArray(cov.detector, ~cov.decided),
                    "triggers": triggers,
                    "trigger_ids": trigger_ids,
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    if not table["detector"].isna().any():
        table["detector"] = table["detector"].to_numpy(dtype=bool)
    return table


def positional_neurons(
    profile: NeuronProfile | Analysis, cutoffs: Cutoffs | None = None, **overrides: object
) -> pd.DataFrame:
    """Per neuron: mutual information with position, positional or not, type and strength (§5).

    Args:
        profile: A NeuronProfile recorded on full-length sequences, or an ``Analysis`` of one.
        cutoffs, **overrides: The cut-offs (``Cutoffs``): ``mi_threshold`` (positional where
            ``I(act; pos) > mi_threshold``: 0.05 in §5.1), ``min_run`` (shortest run of
            positions that counts for the types: m = 8, §5.2), ``delta`` (tolerance of a
            weak pattern's extremes: 0.05, §5.2) and ``smooth_r2`` (cut on ``smooth_r2``
            for strong "other" neurons, see ``positional``).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``pos_mi`` (nats), ``f_mean``,
        ``positional`` (bool), ``pos_type`` and ``pos_strength`` (strings, NA where not
        positional), ``smooth_r2`` and ``pos_ranges`` (the high runs, as inclusive
        ``(first, last)`` positions, of strong oscillatory neurons; empty otherwise).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    frames = []
    for layer in analysis.profile.layers:
        pos = analysis.positional(layer)
        types, strength = type_labels(pos)
        team = pos.positional & (pos.type_rank == 3) & pos.strong
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(analysis.profile.d_mlp),
                    "pos_mi": pos.mi,
                    "f_mean": pos.f_mean,
                    "positional": pos.positional,
                    "pos_type": types,
                    "pos_strength": strength,
                    "smooth_r2": pos.smooth_r2,
                    "pos_ranges": [r if t else [] for r, t in zip(pos.ranges, team, strict=True)],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
