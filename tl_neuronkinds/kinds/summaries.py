"""Per-layer tables behind the paper's figures (Figures 1a, 1b, 2, 3a, 3b, 4, 8; Appendix A).

Every table is a DataFrame indexed by the profile's recorded layers. Comparisons "over lower
layers" and "with the previous layer" (Figures 3b, 4) are over the recorded layers: the previous
layer is the previous recorded one, and the first recorded layer's triggers all count as new.
"""

import numpy as np
import pandas as pd

from tl_neuronkinds.kinds._common import check_order, check_percent, check_positive_int
from tl_neuronkinds.kinds.classify import KINDS, classify
from tl_neuronkinds.kinds.dead import dead_neurons
from tl_neuronkinds.kinds.ngrams import (
    FIG2_BUCKETS,
    detector_trigger_ids,
    layer_coverage,
    ngram_coverage,
)
from tl_neuronkinds.kinds.positional import TYPES, positional_neurons
from tl_neuronkinds.recording.profile import NeuronProfile


def _by_layer(profile: NeuronProfile, frame: pd.DataFrame) -> pd.DataFrame:
    return frame.reindex(pd.Index(profile.layers, name="layer"))


def fig1a(profile: NeuronProfile) -> pd.DataFrame:
    """Figure 1a: ``n_neurons``, ``n_dead`` and ``pct_dead`` (percentage of dead neurons) per layer."""
    dead = dead_neurons(profile).groupby("layer")["dead"]
    out = pd.DataFrame({"n_neurons": dead.size(), "n_dead": dead.sum()})
    out["pct_dead"] = 100 * out["n_dead"] / out["n_neurons"]
    return _by_layer(profile, out)


def fig1b(profile: NeuronProfile) -> pd.DataFrame:
    """Figure 1b: ``mean_freq``, the mean activation frequency of the non-dead neurons (NaN if none)."""
    table = dead_neurons(profile)
    alive = table[~table["dead"]].groupby("layer")["freq"].mean()
    return _by_layer(profile, pd.DataFrame({"mean_freq": alive}))


def fig2(profile: NeuronProfile, n: int = 1, *, coverage: int = 95) -> pd.DataFrame:
    """Figure 2 (n = 1) and Appendix A (n = 2, 3): alive neurons per bucket of ``k95_n``.

    Columns: one per Figure 2 bucket (``ngrams.FIG2_BUCKETS``, inclusive integer ranges) and
    ``undefined`` for alive neurons with no activation at a text position where the n-gram is
    defined (bos_only neurons, for example); each row sums to the layer's alive neurons.
    """
    table = ngram_coverage(profile, n, coverage=coverage)
    alive = table[dead_neurons(profile)["count"].to_numpy() > 0]
    labels = [label for label, _, _ in FIG2_BUCKETS]
    buckets = alive["bucket"].fillna("undefined")
    out = pd.crosstab(alive["layer"], buckets).reindex(columns=[*labels, "undefined"], fill_value=0)
    out.columns.name = None
    return _by_layer(profile, out).fillna(0).astype(np.int64)


def _trigger_sets(
    profile: NeuronProfile, n: int, k_max: int, coverage: int
) -> dict[int, tuple[int, set[int]]]:
    """Layer -> (number of detectors, set of trigger n-gram ids)."""
    check_order(profile, n)
    check_percent("coverage", coverage)
    check_positive_int("k_max", k_max)
    out = {}
    for layer in profile.layers:
        cov = layer_coverage(profile, layer, n, k_max=k_max, coverage=coverage)
        triggers = detector_trigger_ids(cov).values()
        out[layer] = (int(cov.detector.sum()), {int(g) for gids in triggers for g in gids})
    return out


def fig3a(
    profile: NeuronProfile, n: int = 1, *, k_max: int = 5, coverage: int = 95
) -> pd.DataFrame:
    """Figure 3a (Appendix A for n >= 2): ``n_detectors``, the token / n-gram detectors per layer."""
    sets = _trigger_sets(profile, n, k_max, coverage)
    return _by_layer(profile, pd.DataFrame({"n_detectors": {k: v[0] for k, v in sets.items()}}))


def fig3b(
    profile: NeuronProfile, n: int = 1, *, k_max: int = 5, coverage: int = 95
) -> pd.DataFrame:
    """Figure 3b: ``n_triggers`` (distinct triggers of a layer's detectors) and
    ``n_triggers_cumulative`` (distinct triggers of this and all lower recorded layers)."""
    sets = _trigger_sets(profile, n, k_max, coverage)
    seen: set[int] = set()
    rows = {}
    for layer in profile.layers:
        seen |= sets[layer][1]
        rows[layer] = {"n_triggers": len(sets[layer][1]), "n_triggers_cumulative": len(seen)}
    return _by_layer(profile, pd.DataFrame.from_dict(rows, orient="index"))


def fig4(profile: NeuronProfile, n: int = 1, *, k_max: int = 5, coverage: int = 95) -> pd.DataFrame:
    """Figure 4: a layer's triggers that are ``new_overall`` (in no lower recorded layer) and
    ``new_vs_previous`` (not among the previous recorded layer's triggers)."""
    sets = _trigger_sets(profile, n, k_max, coverage)
    seen: set[int] = set()
    previous: set[int] = set()
    rows = {}
    for layer in profile.layers:
        mine = sets[layer][1]
        rows[layer] = {"new_overall": len(mine - seen), "new_vs_previous": len(mine - previous)}
        seen |= mine
        previous = mine
    return _by_layer(profile, pd.DataFrame.from_dict(rows, orient="index"))


def fig8(
    profile: NeuronProfile,
    *,
    mi_threshold: float = 0.05,
    min_run: int = 8,
    delta: float = 0.05,
    smooth_r2: float = 0.9,
) -> pd.DataFrame:
    """Figure 8: positional neurons per layer by type and strength.

    Columns ``{type}_{strength}`` for the four types (oscillatory, both_extremes, one_extreme,
    other) and the two strengths, and ``n_positional``.
    """
    table = positional_neurons(
        profile, mi_threshold=mi_threshold, min_run=min_run, delta=delta, smooth_r2=smooth_r2
    )
    positional = table[table["positional"]]
    labels = positional["pos_type"].astype(str) + "_" + positional["pos_strength"].astype(str)
    columns = [f"{t}_{s}" for t in reversed(TYPES) for s in ("strong", "weak")]
    out = pd.crosstab(positional["layer"], labels).reindex(columns=columns, fill_value=0)
    out.columns.name = None
    out = _by_layer(profile, out).fillna(0).astype(np.int64)
    out["n_positional"] = out.sum(axis=1)
    return out


def layer_summary(
    profile: NeuronProfile,
    *,
    k_max: int = 5,
    coverage: int = 95,
    mi_threshold: float = 0.05,
    min_run: int = 8,
    delta: float = 0.05,
    smooth_r2: float = 0.9,
) -> pd.DataFrame:
    """One row per layer: neurons, dead, mean frequency of the alive, and counts of every kind.

    Args:
        profile: A NeuronProfile.
        k_max, coverage, mi_threshold, min_run, delta, smooth_r2: As for ``classify``.

    Returns:
        Columns ``n_neurons``, ``n_dead``, ``pct_dead``, ``mean_freq_alive``, ``n_bos_only``,
        ``n_token_detectors``, ``n_ngram_detectors_2``, ``n_ngram_detectors_3``,
        ``n_positional`` (each test on its own, so a neuron may count in several) and
        ``kind_{kind}`` (the neurons of each kind of ``classify``'s ``kind`` column; they sum
        to ``n_neurons``).
    """
    table = classify(
        profile,
        k_max=k_max,
        coverage=coverage,
        mi_threshold=mi_threshold,
        min_run=min_run,
        delta=delta,
        smooth_r2=smooth_r2,
    )
    grouped = table.groupby("layer")
    out = pd.DataFrame(
        {
            "n_neurons": grouped.size(),
            "n_dead": grouped["dead"].sum(),
            "mean_freq_alive": table[~table["dead"]].groupby("layer")["freq"].mean(),
            "n_bos_only": grouped["bos_only"].sum(),
            "n_token_detectors": grouped["token_detector"].sum(),
            "n_ngram_detectors_2": grouped["ngram_detector_2"].sum(),
            "n_ngram_detectors_3": grouped["ngram_detector_3"].sum(),
            "n_positional": grouped["positional"].sum(),
        }
    )
    out.insert(2, "pct_dead", 100 * out["n_dead"] / out["n_neurons"])
    kinds = pd.crosstab(table["layer"], table["kind"]).reindex(columns=KINDS, fill_value=0)
    for kind in KINDS:
        out[f"kind_{kind}"] = kinds[kind]
    return _by_layer(profile, out)
