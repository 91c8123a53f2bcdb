"""N-gram coverage (k95, §4.1, Figure 2, Appendix A) and token / n-gram detectors (§4.2, §4.5).

For a neuron (l, i) and an order n, ``c_g`` is its active count at the text positions whose
n-gram is g, ``A = sum_g c_g`` and ``o_g`` the occurrences of g at text positions (SPEC.md).
``k95_n`` is the smallest k such that the k largest ``c_g`` sum to at least 95% of A. A neuron is
an n-gram detector (a token detector for n = 1) where (1) ``k95_n <= 5``, (2) its covered
n-grams ``C = {g : c_g > 0 and c_g >= 95% of o_g}`` are its triggers and (3) they account for at
least 95% of A. Every "at least p%" is decided in integers, ``100 * part >= p * whole``.

How it is computed, per layer, from the profile's sorted (n-gram, neuron) keys: ``o_g`` comes
from a searchsorted of the layer's distinct n-gram ids into the profile's occurrence table; one
sort of (neuron, -c_g, covered) packed into int64s orders each neuron's n-grams by decreasing
c_g; the cumulative sum of the sorted counts increases strictly, so each neuron's k95 is one
searchsorted for ceil(95% of A) within its segment.

Triggers are listed by decreasing ``c_g``, ties by increasing n-gram id. For n = 1 a trigger is
the token's string and its id an int; for n >= 2 a trigger is the tuple of its n token strings
and its id the tuple of the n token ids, first token first.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds._common import check_order, check_percent, check_positive_int
from tl_neuronkinds.recording.profile import NeuronProfile

# Figure 2's buckets of k95, as inclusive integer ranges: "1k-2k" is 1001..2000 because 1000
# already falls in "201-1k", and likewise "2k-50k" is 2001..50000.
FIG2_BUCKETS: list[tuple[str, int, float]] = [
    ("1-5", 1, 5),
    ("6-10", 6, 10),
    ("11-20", 11, 20),
    ("21-50", 21, 50),
    ("51-200", 51, 200),
    ("201-1k", 201, 1000),
    ("1k-2k", 1001, 2000),
    ("2k-50k", 2001, 50000),
    (">50k", 50001, float("inf")),
]


@dataclass(frozen=True)
class LayerCoverage:
    """Coverage of one layer for one n-gram order, as arrays (the shared core of the kinds).

    ``key_neuron``, ``key_gid``, ``key_count`` and ``key_covered`` follow the profile's key
    order (by n-gram id, then neuron).
    """

    n: int
    active: np.ndarray  # [d_mlp] A
    k95: np.ndarray  # [d_mlp] k95_n, 0 where A == 0 (undefined)
    covered_sum: np.ndarray  # [d_mlp] sum of c_g over the covered n-grams
    detector: np.ndarray  # [d_mlp] bool
    n_ngrams: np.ndarray  # [d_mlp] distinct n-grams with c_g > 0
    key_neuron: np.ndarray
    key_gid: np.ndarray
    key_count: np.ndarray
    key_covered: np.ndarray


def _occurrences(profile: NeuronProfile, layer: int, n: int, gid: np.ndarray) -> np.ndarray:
    """o_g for each entry of ``gid`` (non-decreasing n-gram ids, the profile's key order)."""
    occ_ids = profile.occurrences[n].keys.numpy()
    occ_counts = profile.occurrences[n].counts.numpy()
    first = np.ones(gid.shape, dtype=bool)
    first[1:] = gid[1:] != gid[:-1]
    distinct = gid[first]
    at = np.searchsorted(occ_ids, distinct)
    if distinct.size and (at[-1] >= occ_ids.size or not np.array_equal(occ_ids[at], distinct)):
        raise NeuronKindsError(
            f"corrupt profile: layer {layer} has {n}-gram counts for n-grams with no occurrences"
        )
    return occ_counts[at][np.cumsum(first) - 1]


def _sorted_by_neuron(
    neuron: np.ndarray, count: np.ndarray, covered: np.ndarray, d_mlp: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neuron, count, covered) sorted by neuron, then decreasing count: one sort of packed int64s."""
    count_bits = int(count.max(initial=0)).bit_length()
    if int(d_mlp).bit_length() + count_bits + 1 > 62:
        raise NeuronKindsError(f"n-gram counts up to {int(count.max())} are too large to sort")
    top = (1 << count_bits) - 1
    packed = (neuron << (count_bits + 1)) | ((top - count) << 1) | (~covered).astype(np.int64)
    packed.sort()
    return packed >> (count_bits + 1), top - ((packed >> 1) & top), (packed & 1) == 0


def layer_coverage(
    profile: NeuronProfile, layer: int, n: int, *, k_max: int = 5, coverage: int = 95
) -> LayerCoverage:
    """k95, covered n-grams and the detector test for every neuron of ``layer`` (see module)."""
    d_mlp = profile.d_mlp
    layer_counts = profile.counts[layer]
    keys = layer_counts.ngrams[n].keys.numpy()
    key_count = layer_counts.ngrams[n].counts.numpy()
    key_gid = keys // d_mlp
    key_neuron = keys - key_gid * d_mlp
    occurrences = _occurrences(profile, layer, n, key_gid)
    key_covered = (key_count > 0) & (100 * key_count >= coverage * occurrences)

    neuron, count, covered = _sorted_by_neuron(key_neuron, key_count, key_covered, d_mlp)
    seg_start = np.searchsorted(neuron, np.arange(d_mlp), side="left")
    seg_end = np.searchsorted(neuron, np.arange(d_mlp), side="right")
    running = np.concatenate(([0], np.cumsum(count)))
    active = running[seg_end] - running[seg_start]
    # The running sums increase strictly (every c_g > 0), so k95 is where the segment's sum
    # first reaches ceil(coverage * A / 100).
    need = -((-coverage * active) // 100)
    k95 = np.searchsorted(running, running[seg_start] + need, side="left") - seg_start
    k95[active == 0] = 0

    covered_running = np.concatenate(([0], np.cumsum(np.where(covered, count, 0))))
    covered_sum = covered_running[seg_end] - covered_running[seg_start]
    detector = (active > 0) & (k95 <= k_max) & (100 * covered_sum >= coverage * active)
    return LayerCoverage(
        n,
        active,
        k95,
        covered_sum,
        detector,
        seg_end - seg_start,
        key_neuron,
        key_gid,
        key_count,
        key_covered,
    )


def detector_trigger_ids(cov: LayerCoverage) -> dict[int, np.ndarray]:
    """Neuron -> its triggers' n-gram ids (decreasing c_g, ties by id), for a layer's detectors."""
    chosen = np.flatnonzero(cov.key_covered & cov.detector[cov.key_neuron])
    neuron, gid, count = cov.key_neuron[chosen], cov.key_gid[chosen], cov.key_count[chosen]
    order = np.lexsort((gid, -count, neuron))
    neuron, gid = neuron[order], gid[order]
    bounds = np.flatnonzero(np.diff(neuron)) + 1
    return {
        int(part[0]): ids
        for part, ids in zip(np.split(neuron, bounds), np.split(gid, bounds), strict=True)
        if part.size
    }


def ngram_tokens(gids: np.ndarray, n: int, d_vocab: int) -> list[tuple[int, ...]]:
    """Token ids of each n-gram id, first token first."""
    return [tuple(int(g) // d_vocab ** (n - 1 - j) % d_vocab for j in range(n)) for g in gids]


def trigger_labels(
    profile: NeuronProfile, gids: np.ndarray, n: int
) -> tuple[list[str] | list[tuple[str, ...]], list[int] | list[tuple[int, ...]]]:
    """(strings, ids) of triggers: plain token strings and ids for n = 1, tuples for n >= 2."""
    strings = profile.token_strings
    if n == 1:
        ids = [int(g) for g in gids]
        return [strings[t] for t in ids], ids
    tuples = ngram_tokens(gids, n, profile.d_vocab)
    return [tuple(strings[t] for t in tup) for tup in tuples], tuples


def k95_column(k95: np.ndarray) -> pd.arrays.IntegerArray:
    """k95 as a nullable Int64 column, NA where undefined (A = 0)."""
    return pd.arrays.IntegerArray(k95.astype(np.int64), k95 == 0)


def k95_bucket(k95: np.ndarray) -> np.ndarray:
    """Figure 2 bucket label of each k95 (object array; None where undefined)."""
    labels = np.full(k95.shape, None, dtype=object)
    for label, lo, hi in FIG2_BUCKETS:
        labels[(k95 >= lo) & (k95 <= hi)] = label
    return labels


def ngram_coverage(profile: NeuronProfile, n: int = 1, *, coverage: int = 95) -> pd.DataFrame:
    """Per neuron: how many n-grams cover ``coverage``% of its activations (§4.1, Fig. 2, App. A).

    Args:
        profile: A NeuronProfile.
        n: The n-gram order (1..profile.ngram_max).
        coverage: The percentage to cover (95 in the paper).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``A`` (active count over the text
        positions where the n-gram is defined), ``n_ngrams`` (distinct n-grams with c_g > 0),
        ``k95`` (nullable Int64; NA where A = 0) and ``bucket`` (Figure 2's label; None where
        k95 is NA).
    """
    check_order(profile, n)
    check_percent("coverage", coverage)
    frames = []
    for layer in profile.layers:
        cov = layer_coverage(profile, layer, n, coverage=coverage)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(profile.d_mlp),
                    "A": cov.active,
                    "n_ngrams": cov.n_ngrams,
                    "k95": k95_column(cov.k95),
                    "bucket": k95_bucket(cov.k95),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def token_detectors(
    profile: NeuronProfile, n: int = 1, *, k_max: int = 5, coverage: int = 95
) -> pd.DataFrame:
    """Per neuron: is it a token detector (n = 1, §4.2) or an n-gram detector (n >= 2, §4.5)?

    Args:
        profile: A NeuronProfile.
        n: The n-gram order (1..profile.ngram_max).
        k_max: Condition (1), ``k95_n <= k_max`` (5 in §4.2: "triggered by only 1-5 tokens").
        coverage: The percentage of conditions (2) and (3) (95 in §4.2).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``A``, ``k95`` (nullable Int64),
        ``covered_sum`` (sum of c_g over the covered n-grams), ``detector`` (bool),
        ``triggers`` and ``trigger_ids`` (lists, see the module docstring; empty for neurons
        that are not detectors).
    """
    check_order(profile, n)
    check_percent("coverage", coverage)
    check_positive_int("k_max", k_max)
    frames = []
    for layer in profile.layers:
        cov = layer_coverage(profile, layer, n, k_max=k_max, coverage=coverage)
        triggers: list[list] = [[] for _ in range(profile.d_mlp)]
        trigger_ids: list[list] = [[] for _ in range(profile.d_mlp)]
        for i, gids in detector_trigger_ids(cov).items():
            strings, ids = trigger_labels(profile, gids, n)
            triggers[i], trigger_ids[i] = list(strings), list(ids)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(profile.d_mlp),
                    "A": cov.active,
                    "k95": k95_column(cov.k95),
                    "covered_sum": cov.covered_sum,
                    "detector": cov.detector,
                    "triggers": triggers,
                    "trigger_ids": trigger_ids,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
