"""N-gram coverage (k95, §4.1, Figure 2, Appendix A) and the detector test (§4.2, §4.5), per layer.

For a neuron (l, i) and an order n, ``c_g`` is its active count at the text positions whose
n-gram is g, ``A = sum_g c_g`` and ``o_g`` the occurrences of g at text positions (docs/kinds.md).
``k95_n`` is the smallest k such that the k largest ``c_g`` sum to at least 95% of A. A neuron is
an n-gram detector (a token detector for n = 1) where (1) ``k95_n <= 5``, (2) its covered
n-grams ``C = {g : c_g > 0 and c_g >= 95% of o_g}`` are its triggers and (3) they account for at
least 95% of A. Every "at least p%" is decided in integers, ``100 * part >= p * whole``.

**Capped profiles** (docs/kinds.md, "The n-gram cap"; ``recording/plan.py``). For n >= 2 a
profile may hold the counts of some neurons only (``profile.complete``). ``A_n`` is known for every neuron
(from the per-position counts), and so is its *unigram bound* ``L_n <= k95_n`` (the fewest of its
largest unigram counts that reach 95% of ``A_n``: ``plan.reach``, the recording's own rule,
applied here to the top sums read off the sorted unigram counts; exact up to
``max(k_max, cap)``, all it is compared with). Each neuron's order-n status is one of ``STATUSES``: ``exact`` (complete counts),
``undefined`` (``A_n = 0``), ``censored`` (``k95_n > cap`` proven, at the cut-offs' coverage, by
``plan.censored``: its tail or ``L_n > cap``) or ``unknown``. The detector test of a neuron
without counts is decided where a certificate rules it out: ``A_n < min_count``, ``L_n > k_max``,
or censored with ``k_max <= cap``; otherwise it is *undecidable* (``decided`` is False).

How it is computed, per layer, from the profile's sorted (n-gram, neuron) keys: ``o_g`` comes
from a searchsorted of the layer's distinct n-gram ids into the profile's occurrence table; one
sort of (neuron, -c_g, covered) packed into int64s orders each neuron's n-grams by decreasing
c_g; the cumulative sum of the sorted counts increases strictly, so each neuron's k95 is one
searchsorted for ceil(95% of A) within its segment.

Triggers are listed by decreasing ``c_g``, ties by increasing n-gram id. For n = 1 a trigger is
the token's string and its id an int; for n >= 2 a trigger is the tuple of its n token strings
and its id the tuple of the n token ids, first token first.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int, Shaped

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.recording.keys import split_ngram_ids
from tl_neuronkinds.recording.plan import censored, ngram_active, reach
from tl_neuronkinds.recording.profile import NeuronProfile

#: Each neuron's order-n status (docs/kinds.md, "The n-gram cap"), which
#: ``LayerCoverage.status`` indexes.
STATUSES = ["exact", "undefined", "censored", "unknown"]
EXACT, UNDEFINED, CENSORED, UNKNOWN = range(4)

# Figure 2's buckets of k95, as inclusive integer ranges: "1k-2k" is 1001..2000 because 1000
# already falls in "201-1k", and likewise "2k-50k" is 2001..50000.
FIG2_BUCKETS: list[tuple[str, int, int | float]] = [
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


def fig2_buckets(cap: int | None) -> list[tuple[str, int, int | float]]:
    """Figure 2's buckets (``cap`` None), or those up to ``cap`` followed by ``>cap``.

    A bucket straddling the cap is cut at it and keeps its lower label: with cap 30,
    "21-50" becomes "21-30"; the last bucket, ``>{cap}``, holds every k95 above the cap (the
    censored neurons and the complete ones whose exact k95 passes the cap).
    """
    if cap is None:
        return list(FIG2_BUCKETS)
    out: list[tuple[str, int, int | float]] = []
    for label, lo, hi in FIG2_BUCKETS:
        if lo > cap:
            break
        if hi > cap:
            low = label.split("-")[0] if "-" in label else str(lo)
            label, hi = f"{low}-{cap}", cap
        out.append((label, lo, hi))
    return [*out, (f">{cap}", cap + 1, float("inf"))]


@dataclass(frozen=True)
class LayerCoverage:
    """Coverage and the detector test of one layer for one n-gram order (arrays over d_mlp)."""

    n: int
    active: Int[np.ndarray, " d_mlp"]  # A_n, exact for every neuron
    k95: Int[np.ndarray, " d_mlp"]  # k95_n where the status is exact, else 0
    status: Int[np.ndarray, " d_mlp"]  # index into STATUSES
    n_ngrams: Int[np.ndarray, " d_mlp"]  # distinct n-grams with c_g > 0; -1 where incomplete
    covered_sum: Int[
        np.ndarray, " d_mlp"
    ]  # c_g summed over the covered n-grams; 0 where incomplete
    detector: Bool[np.ndarray, " d_mlp"]  # proven detectors
    decided: Bool[np.ndarray, " d_mlp"]  # False where the detector test cannot be decided
    triggers: dict[int, np.ndarray]  # detector -> its trigger ids (decreasing c_g, ties by id)
    # n = 1 only: order m >= 2 -> L_m, each neuron's unigram bound of k95_m (0 where A_m = 0),
    # exact up to max(k_max, cap) and that plus one above (all it is compared with).
    bounds: dict[int, np.ndarray] = field(default_factory=dict)


def _occurrences(
    profile: NeuronProfile, layer: int, n: int, gid: Int[np.ndarray, " k"]
) -> Int[np.ndarray, " k"]:
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
    neuron: Int[np.ndarray, " k"],
    count: Int[np.ndarray, " k"],
    covered: Bool[np.ndarray, " k"],
    d_mlp: int,
) -> tuple[Int[np.ndarray, " k"], Int[np.ndarray, " k"], Bool[np.ndarray, " k"]]:
    """(neuron, count, covered) sorted by neuron, then decreasing count: one sort of packed int64s."""
    count_bits = int(count.max(initial=0)).bit_length()
    if int(d_mlp).bit_length() + count_bits + 1 > 62:
        raise NeuronKindsError(f"n-gram counts up to {int(count.max())} are too large to sort")
    top = (1 << count_bits) - 1
    packed = neuron << (count_bits + 1)
    packed |= (top - count) << 1
    packed |= ~covered
    packed.sort()
    return packed >> (count_bits + 1), top - ((packed >> 1) & top), (packed & 1) == 0


def _reach(
    running: Int[np.ndarray, " k_plus_1"],
    start: Int[np.ndarray, " d_mlp"],
    whole: Int[np.ndarray, " d_mlp"],
    coverage: int,
) -> Int[np.ndarray, " d_mlp"]:
    """Fewest leading entries of each segment (``running``: strictly increasing cumulative sums,
    segments from ``start``) that sum to at least ``coverage``% of ``whole``; 0 where it is 0."""
    need = -((-coverage * whole) // 100)
    out = np.searchsorted(running, running[start] + need, side="left") - start
    out[whole == 0] = 0
    return out


def _top_sums(
    running: Int[np.ndarray, " k_plus_1"],
    start: Int[np.ndarray, " d_mlp"],
    end: Int[np.ndarray, " d_mlp"],
    k: int,
) -> Int[np.ndarray, "k d_mlp"]:
    """``[k, d_mlp]``: row j holds each neuron's sum of its ``j + 1`` largest counts (all of them
    where it has fewer), read off the segments' cumulative sums: the form ``plan.reach`` takes,
    so the unigram bound ``L_n`` is the recording's, computed without a second sort."""
    k = max(1, min(k, int((end - start).max(initial=1))))
    tops = np.minimum(start[None, :] + np.arange(1, k + 1)[:, None], end[None, :])
    return running[tops] - running[start][None, :]


def _trigger_ids(
    neuron: Int[np.ndarray, " k"],
    gid: Int[np.ndarray, " k"],
    count: Int[np.ndarray, " k"],
    chosen: Bool[np.ndarray, " k"],
) -> dict[int, np.ndarray]:
    """Neuron -> its chosen n-gram ids, by decreasing count, ties by increasing id."""
    neuron, gid, count = neuron[chosen], gid[chosen], count[chosen]
    order = np.lexsort((gid, -count, neuron))
    neuron, gid = neuron[order], gid[order]
    bounds = np.flatnonzero(np.diff(neuron)) + 1
    return {
        int(part[0]): ids
        for part, ids in zip(np.split(neuron, bounds), np.split(gid, bounds), strict=True)
        if part.size
    }


def layer_coverage(
    profile: NeuronProfile,
    layer: int,
    n: int,
    cutoffs: Cutoffs,
    unigram: LayerCoverage | None = None,
) -> LayerCoverage:
    """k95, statuses, covered n-grams and the detector test of every neuron of ``layer``.

    Args:
        profile: A NeuronProfile.
        layer: A recorded layer.
        n: An order the profile recorded.
        cutoffs: ``k_max``, ``coverage`` and ``min_count`` are used.
        unigram: For n >= 2, this layer's order-1 coverage at the same cut-offs (its
            ``bounds`` decide neurons without counts); computed here where None.
    """
    d_mlp, coverage = profile.d_mlp, cutoffs.coverage
    table = profile.counts[layer].ngrams[n]
    key_count = table.counts.numpy()
    key_gid, key_neuron = np.divmod(table.keys.numpy(), d_mlp)
    key_covered = 100 * key_count >= coverage * _occurrences(profile, layer, n, key_gid)
    key_covered &= key_count > 0

    neuron, count, covered = _sorted_by_neuron(key_neuron, key_count, key_covered, d_mlp)
    ids = np.arange(d_mlp)
    seg_start = np.searchsorted(neuron, ids, side="left")
    seg_end = np.searchsorted(neuron, ids, side="right")
    running = np.zeros(count.size + 1, dtype=np.int64)
    np.cumsum(count, out=running[1:])
    table_active = running[seg_end] - running[seg_start]
    k95 = _reach(running, seg_start, table_active, coverage)
    count[~covered] = 0
    covered_running = np.zeros(count.size + 1, dtype=np.int64)
    np.cumsum(count, out=covered_running[1:])
    covered_sum = covered_running[seg_end] - covered_running[seg_start]

    active = ngram_active(profile, layer, n)
    complete = profile.complete(layer, n).numpy()
    bounds = {}
    if n == 1:
        sums = _top_sums(running, seg_start, seg_end, max(cutoffs.k_max, profile.ngram_cap or 0))
        bounds = {
            m: reach(sums, ngram_active(profile, layer, m), coverage)
            for m in range(2, profile.ngram_max + 1)
        }
        bound = np.zeros(d_mlp, dtype=np.int64)
    else:
        if unigram is None:
            unigram = layer_coverage(profile, layer, 1, cutoffs)
        bound = unigram.bounds[n]
    status = np.full(d_mlp, UNKNOWN, dtype=np.int8)
    status[censored(profile, layer, n, coverage, bound=bound)] = CENSORED
    status[complete] = EXACT
    status[active == 0] = UNDEFINED
    exact = status == EXACT
    k95 = np.where(exact, k95, 0)

    detector = exact & (k95 <= cutoffs.k_max) & (100 * covered_sum >= coverage * active)
    detector &= active >= max(cutoffs.min_count, 1)
    cap = profile.ngram_cap
    ruled_out = (active < cutoffs.min_count) | (bound > cutoffs.k_max)
    if cap is not None and cutoffs.k_max <= cap:
        ruled_out |= status == CENSORED
    decided = (status <= UNDEFINED) | ruled_out
    chosen = key_covered & detector[key_neuron]
    return LayerCoverage(
        n=n,
        active=active,
        k95=k95,
        status=status,
        n_ngrams=np.where(complete, seg_end - seg_start, -1),
        covered_sum=np.where(complete, covered_sum, 0),
        detector=detector,
        decided=decided,
        triggers=_trigger_ids(key_neuron, key_gid, key_count, chosen),
        bounds=bounds,
    )


def ngram_tokens(gids: Int[np.ndarray, " g"], n: int, d_vocab: int) -> list[tuple[int, ...]]:
    """Token ids of each n-gram id, first token first (``keys.split_ngram_ids``), as tuples."""
    ids = split_ngram_ids(torch.from_numpy(np.asarray(gids, dtype=np.int64)), n, d_vocab)
    return [tuple(row) for row in ids.tolist()]


def trigger_labels(
    profile: NeuronProfile, gids: Int[np.ndarray, " g"], n: int
) -> tuple[list[str] | list[tuple[str, ...]], list[int] | list[tuple[int, ...]]]:
    """(strings, ids) of triggers: plain token strings and ids for n = 1, tuples for n >= 2."""
    strings = profile.token_strings
    if n == 1:
        ids = [int(g) for g in gids]
        return [strings[t] for t in ids], ids
    tuples = ngram_tokens(gids, n, profile.d_vocab)
    return [tuple(strings[t] for t in tup) for tup in tuples], tuples


def k95_column(cov: LayerCoverage) -> pd.arrays.IntegerArray:
    """k95 as a nullable Int64 column: the exact value, NA where not exact (see ``status``)."""
    return pd.arrays.IntegerArray(cov.k95.astype(np.int64), cov.status != EXACT)


def status_column(cov: LayerCoverage) -> Shaped[np.ndarray, " d_mlp"]:
    """Each neuron's status label (object array of ``STATUSES``)."""
    return np.array(STATUSES, dtype=object)[cov.status]


def k95_bucket(cov: LayerCoverage, cap: int | None) -> Shaped[np.ndarray, " d_mlp"]:
    """Bucket label of ``fig2_buckets(cap)`` of each neuron (object array; None where its
    k95 is undefined or unknown). A censored neuron falls in ``>cap``."""
    labels = np.full(cov.k95.shape, None, dtype=object)
    exact = cov.status == EXACT
    buckets = fig2_buckets(cap)
    for label, lo, hi in buckets:
        labels[exact & (cov.k95 >= lo) & (cov.k95 <= hi)] = label
    if cap is not None:
        labels[cov.status == CENSORED] = buckets[-1][0]
    return labels
