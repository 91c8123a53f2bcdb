"""Positional neurons (§5.1-5.3, Figures 7-9): mutual information with position, type, strength.

For positions p = 1 .. T-1, ``f_p`` is a neuron's active count at p over the sequences whose
token at p is a text token, divided by the number of such sequences (document separators that
share BOS's id are left out). A position where no sequence holds a text token has no ``f_p``:
it is left out of the mean ``f``, of the mutual information (whose ``1/(T-1)`` then becomes one
over the number of positions kept) and it breaks runs. With ``0·ln 0 = 0``::

    I(act; pos) = mean_p [ f_p ln(f_p / f) + (1 - f_p) ln((1 - f_p) / (1 - f)) ]   (nats)

A neuron is **positional** where ``I > 0.05`` (§5.1). Its type comes from runs of its curve: a low
run is a maximal range of at least ``min_run`` consecutive positions with ``f_p <= delta``, a high
run one with ``f_p >= 1 - delta``; **oscillatory**: >= 2 high and >= 2 low runs; **both_extremes**:
runs of both kinds, not oscillatory; **one_extreme**: runs of one kind; **other**: none (§5.2).

Strength: the types are ranked oscillatory > both_extremes > one_extreme > other and computed
with ``delta = 0`` (``f_p`` exactly 0 or 1) and with ``delta``; a neuron gets the higher of the
two, **strong** where it already holds with ``delta = 0``, **weak** where only with ``delta``.
The comparisons are exact: ``delta`` is read as a fraction num/den (its shortest decimal form,
0.05 = 1/20, denominator at most 10**6) and ``f_p <= delta`` is ``count * den <= num * seqs``.
For **other** the paper's "thin vs thick graph" (§5.2) is measured by how well each ``f_p`` is
predicted by the mean of its neighbours ``f_{p-1}, f_{p+1}``: ``smooth_r2 = 1 - SS_res / SS_tot``
over the positions whose two neighbours have an ``f``; **strong** where ``smooth_r2 >= 0.9``
(the neighbour residual is at most a tenth of the curve's variance: a thin line, as in Figure 7's
top row), **weak** otherwise or where the curve is constant.

Position-range teams (Figure 9): the ranges a strong oscillatory neuron indicates are its high
runs at ``delta = 0`` (positions where it is active in every sequence); ``position_teams`` says
whether a layer's strong oscillatory neurons together cover every position 1..T-1 that has
an ``f_p``.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.recording.profile import NeuronProfile

TYPES = ["other", "one_extreme", "both_extremes", "oscillatory"]  # ranked, index = rank
# Neurons per chunk of the [T-1, d_mlp] arrays (bounds memory for OPT-66b's 36,864 neurons).
_CHUNK = 4096


@dataclass(frozen=True)
class LayerPositional:
    """Positional statistics of one layer (arrays over its ``d_mlp`` neurons)."""

    mi: Float[np.ndarray, " d_mlp"]  # I(act; pos), NaN where no position has an f_p
    f_mean: Float[np.ndarray, " d_mlp"]
    positional: Bool[np.ndarray, " d_mlp"]
    type_rank: Int[np.ndarray, " d_mlp"]  # index into TYPES
    strong: Bool[np.ndarray, " d_mlp"]
    smooth_r2: Float[np.ndarray, " d_mlp"]  # NaN where undefined
    ranges: list[list[tuple[int, int]]]  # high runs (delta = 0) of each neuron, 1-based inclusive


def _frequencies(
    profile: NeuronProfile, layer: int
) -> tuple[Int[np.ndarray, "pos d_mlp"], Int[np.ndarray, " pos"], Float[np.ndarray, "pos d_mlp"]]:
    """(counts [T-1, d_mlp], seqs [T-1], f [T-1, d_mlp] with NaN rows where seqs == 0)."""
    counts = profile.counts[layer].pos_active.numpy()[1:]
    seqs = profile.pos_text_seqs.numpy()[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(seqs[:, None] > 0, counts / seqs[:, None], np.nan)
    return counts, seqs, f


def position_frequencies(profile: NeuronProfile, layer: int) -> pd.DataFrame:
    """``f_p`` of every neuron of ``layer`` (§5.1; the curves of Figure 7).

    Returns:
        A float64 DataFrame indexed by position p (1..T-1, positions with no text token left
        out), one column per neuron.
    """
    if layer not in profile.counts:
        raise NeuronKindsError(f"layer {layer} was not recorded (recorded: {profile.layers})")
    _, seqs, f = _frequencies(profile, layer)
    kept = seqs > 0
    return pd.DataFrame(f[kept], index=pd.Index(np.flatnonzero(kept) + 1, name="position"))


def _long_runs(
    mask: Bool[np.ndarray, "pos chunk"], min_run: int
) -> tuple[Int[np.ndarray, " runs"], Int[np.ndarray, " runs"], Int[np.ndarray, " runs"]]:
    """(column, first row, end row exclusive) of the runs of True of length >= min_run."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    padded[1:-1] = mask
    steps = np.diff(padded, axis=0).T
    col, start = np.nonzero(steps == 1)
    _, end = np.nonzero(steps == -1)
    long = end - start >= min_run
    return col[long], start[long], end[long]


def _type_rank(
    high: Int[np.ndarray, " chunk"], low: Int[np.ndarray, " chunk"]
) -> Int[np.ndarray, " chunk"]:
    rank = np.zeros(high.shape, dtype=np.int64)
    rank[(high > 0) ^ (low > 0)] = 1
    rank[(high > 0) & (low > 0)] = 2
    rank[(high >= 2) & (low >= 2)] = 3
    return rank


def _mutual_information(
    f: Float[np.ndarray, "pos chunk"],
) -> tuple[Float[np.ndarray, " chunk"], Float[np.ndarray, " chunk"]]:
    """(I(act; pos), f) over the rows of ``f`` [positions, neurons] (no NaN rows)."""
    if f.shape[0] == 0:
        nan = np.full(f.shape[1], np.nan)
        return nan, nan
    mean = f.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        on = np.where(f > 0, f * np.log(f / mean), 0.0)
        off = np.where(f < 1, (1 - f) * np.log((1 - f) / (1 - mean)), 0.0)
    return (on + off).mean(axis=0), mean


def _smooth_r2(f: Float[np.ndarray, "pos chunk"]) -> Float[np.ndarray, " chunk"]:
    """R^2 of f_p against the mean of its two neighbours (rows: positions, NaN = no f_p)."""
    mid = f[1:-1]
    predicted = (f[:-2] + f[2:]) / 2
    valid = ~np.isnan(mid) & ~np.isnan(predicted)
    n_valid = valid.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(valid, mid, 0.0)
        mean = y.sum(axis=0) / n_valid
        ss_tot = np.where(valid, (mid - mean) ** 2, 0.0).sum(axis=0)
        ss_res = np.where(valid, (mid - predicted) ** 2, 0.0).sum(axis=0)
        return np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.nan)


def layer_positional(profile: NeuronProfile, layer: int, cutoffs: Cutoffs) -> LayerPositional:
    """Mutual information, type and strength of every neuron of ``layer`` (see module).

    ``cutoffs.mi_threshold``, ``min_run``, ``delta`` and ``smooth_r2`` are used.
    """
    frac, min_run = cutoffs.delta_fraction, cutoffs.min_run
    counts_all, seqs, f_all = _frequencies(profile, layer)
    kept = seqs > 0
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("mi", "mean", "r2", "r0", "rd")}
    ranges: list[list[tuple[int, int]]] = []
    for lo in range(0, profile.d_mlp, _CHUNK):
        counts, f = counts_all[:, lo : lo + _CHUNK], f_all[:, lo : lo + _CHUNK]
        width = counts.shape[1]
        mi, mean = _mutual_information(f[kept])
        parts["mi"].append(mi)
        parts["mean"].append(mean)
        parts["r2"].append(_smooth_r2(f))
        for key, (num, den) in (("r0", (0, 1)), ("rd", (frac.numerator, frac.denominator))):
            low = kept[:, None] & (counts * den <= num * seqs[:, None])
            high = kept[:, None] & (counts * den >= (den - num) * seqs[:, None])
            high_col, high_start, high_end = _long_runs(high, min_run)
            n_high = np.bincount(high_col, minlength=width)
            n_low = np.bincount(_long_runs(low, min_run)[0], minlength=width)
            parts[key].append(_type_rank(n_high, n_low))
            if key == "r0":
                chunk_ranges: list[list[tuple[int, int]]] = [[] for _ in range(width)]
                for c, s, e in zip(high_col, high_start, high_end, strict=True):
                    chunk_ranges[c].append((int(s) + 1, int(e)))
                ranges.extend(chunk_ranges)
    mi, mean, r2 = (np.concatenate(parts[k]) for k in ("mi", "mean", "r2"))
    rank0, rank_delta = np.concatenate(parts["r0"]), np.concatenate(parts["rd"])
    rank = np.maximum(rank0, rank_delta)
    strong = np.where(rank > 0, rank0 >= rank_delta, r2 >= cutoffs.smooth_r2)
    positional = np.nan_to_num(mi, nan=0.0) > cutoffs.mi_threshold
    return LayerPositional(mi, mean, positional, rank, strong, r2, ranges)


def type_labels(
    pos: LayerPositional,
) -> tuple[pd.api.extensions.ExtensionArray, pd.api.extensions.ExtensionArray]:
    """pos_type and pos_strength columns: NA where the neuron is not positional."""
    types = np.array(TYPES, dtype=object)[pos.type_rank]
    strength = np.where(pos.strong, "strong", "weak").astype(object)
    types[~pos.positional] = None
    strength[~pos.positional] = None
    return pd.array(types, dtype="string"), pd.array(strength, dtype="string")
