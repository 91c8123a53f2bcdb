"""The n-gram plan and the two certificates of ``k95_n > cap`` (docs/kinds.md, "The n-gram cap").

A capped recording keeps n >= 2 counts only where they can matter; a neuron whose counts it
dropped is reported *censored* only with a proof that ``k95_n > cap``, else *unknown*. Proofs:

**The unigram certificate.** Every n-gram ends in one token, so the top k n-grams of a neuron,
over the positions ``p >= n-1`` where n-grams are defined, cover no more of its activations than
its top k tokens do. Hence ``k95_n >= L_n``, where ``L_n`` is the fewest of the neuron's largest
unigram counts whose sum reaches 95% of ``A_n`` (its activations at text positions ``p >= n-1``,
known exactly from the per-position counts). ``L_n > cap`` proves ``k95_n > cap``.

**The tail certificate.** A neuron's order-n *tail* is ``A_n`` less the sum of its ``cap``
largest ``c_g``; ``k95_n > cap`` exactly where ``100 * tail > 5 * A_n``. Tails only grow: the
``cap`` largest counts of a sum of count vectors are at most the sums of each part's ``cap``
largest, so the tail of all the data is at least the sum of the tails of any parts of it. A
lower bound on a neuron's tail therefore survives merges (they add up) and more data.

**The plan and its life in ``record()``.** The plan of a layer is the neurons whose n >= 2
counts a recording sets out to keep. It is chosen generously from a unigram-only sample
(``choose_plan``: ``L_n <= margin * cap`` there, or no activation there). During the pass the
recorder *reviews* its tables (``review_drop``): a planned neuron whose tail so far already
exceeds, with a safety factor, 5% of the activations it is heading for is dropped, its tail so
far kept as its bound: memory stays flat while spread-out neurons are recognised early. At the
end the final counts check every neuron (``unknown``): one without counts and without a proof
is recounted by a repair pass (``add_repair``); then neurons with complete counts whose exact
``k95_n`` exceeds the cap are dropped with their exact tails (``finalize``).

All comparisons are exact integer arithmetic (``100 * part >= coverage * whole``).
"""

import numpy as np
import torch
from jaxtyping import Bool, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.keys import Table, merge_tables
from tl_neuronkinds.recording.profile import NeuronProfile

Plan = dict[int, Bool[torch.Tensor, " d_mlp"]]
#: Layer -> n -> each neuron's projected activations at order n over a whole pass.
Expected = dict[int, dict[int, torch.Tensor]]
#: Layer -> n -> (tail bounds, activations) that earlier checkpoint intervals of a pass counted.
Carried = dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]
#: Dense [neurons, d_vocab] cells built at once to find each neuron's largest unigram counts,
#: and table entries scattered into them at once (bounds the transient index arrays).
_DENSE_ELEMENTS = 1 << 24
_KEY_SLICE = 1 << 22
#: The sample's bound may be this many times the cap for a neuron to be planned. Measured on the
#: embedded model (BENCHMARKS.md, "The n-gram plan"): from a 5% sample, margin 1 misses a neuron
#: that the full counts need, 1.5 and 2 miss none.
PLAN_MARGIN = 2.0
#: A review drops a neuron when its tail so far exceeds 5% of its projected activations times
#: this factor (a wrong projection costs a recount, never a wrong result). Measured on 1M tokens
#: of plain English (Debian changelogs and copyright files, BENCHMARKS.md): with 2, seven
#: neurons busy in a few long documents were dropped too early and needed a repair pass; with 3,
#: none, at 5% more peak memory.
REVIEW_SAFETY = 3.0


def check_plan(plan: Plan, layers: list[int], d_mlp: int) -> None:
    """NeuronKindsError unless ``plan`` gives a bool mask of shape ``(d_mlp,)`` per layer."""
    for layer in layers:
        mask = plan.get(layer)
        if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != (d_mlp,):
            found = None if mask is None else (mask.dtype, tuple(mask.shape))
            raise NeuronKindsError(
                f"the n-gram plan must give a bool mask of shape ({d_mlp},) for every recorded "
                f"layer; layer {layer} has {found}"
            )


# ------------------------------------------------------------------ the unigram certificate
def top_sums(table: Table, d_mlp: int, d_vocab: int, k: int) -> np.ndarray:
    """``[k, d_mlp]``: row j holds, per neuron, the sum of its ``j + 1`` largest counts in the
    unigram ``table`` (all of them where it has fewer).

    Built by ``torch.topk`` over dense ``[neurons, d_vocab]`` blocks of at most
    ``_DENSE_ELEMENTS`` cells, filled a slice of keys at a time, so neither a full sort of the
    table nor a copy of it is needed.
    """
    k = max(1, min(k, d_vocab))
    out = torch.zeros(k, d_mlp, dtype=torch.int64)
    step = max(1, _DENSE_ELEMENTS // d_vocab)
    for lo in range(0, d_mlp, step):
        hi = min(lo + step, d_mlp)
        dense = torch.zeros((hi - lo) * d_vocab, dtype=torch.int64)
        for first in range(0, table.keys.numel(), _KEY_SLICE):
            keys = table.keys[first : first + _KEY_SLICE]
            counts = table.counts[first : first + _KEY_SLICE]
            gid, neuron = keys // d_mlp, keys % d_mlp
            if step < d_mlp:
                chosen = (neuron >= lo) & (neuron < hi)
                gid, neuron, counts = gid[chosen], neuron[chosen], counts[chosen]
            dense[(neuron - lo) * d_vocab + gid] = counts
        top = dense.view(hi - lo, d_vocab).topk(k, dim=1).values
        out[:, lo:hi] = top.cumsum(1).T
    return out.numpy()


def reach(sums: np.ndarray, whole: np.ndarray, coverage: int) -> np.ndarray:
    """Per neuron: the fewest of its largest counts that sum to at least ``coverage``% of
    ``whole``, where that is at most ``k = len(sums)``; ``k + 1`` otherwise; 0 where
    ``whole`` is 0."""
    need = -((-coverage * whole) // 100)
    fewest = (sums < need[None, :]).sum(0) + 1
    return np.where(whole > 0, fewest, 0)


def ngram_active(profile: NeuronProfile, layer: int, n: int) -> np.ndarray:
    """``A_n`` of every neuron of ``layer``: activations at text positions ``p >= n - 1``."""
    return profile.counts[layer].pos_active[n - 1 :].sum(0).numpy()


def unigram_bounds(
    profile: NeuronProfile,
    layer: int,
    k: int,
    coverage: int = 95,
    *,
    ngram_max: int | None = None,
) -> dict[int, np.ndarray]:
    """n -> ``L_n`` of every neuron of ``layer`` for n = 2..ngram_max, exact up to ``k`` and
    ``k + 1`` above (0 where ``A_n`` = 0).

    ``ngram_max`` defaults to the profile's; a unigram-only sample passes the order it plans for.
    """
    sums = top_sums(profile.counts[layer].ngrams[1], profile.d_mlp, profile.d_vocab, k)
    top = profile.ngram_max if ngram_max is None else ngram_max
    return {n: reach(sums, ngram_active(profile, layer, n), coverage) for n in range(2, top + 1)}


def choose_plan(
    sample: NeuronProfile, cap: int, ngram_max: int, margin: float = PLAN_MARGIN
) -> Plan:
    """A generous plan from a unigram sample, for orders 2..``ngram_max``: neurons with
    ``L_n <= margin * cap`` on it, or with no activation at text positions ``p >= n - 1`` in it
    (rare neurons cost little)."""
    plan = {}
    k = int(margin * cap)
    for layer in sample.layers:
        mask = np.zeros(sample.d_mlp, dtype=bool)
        for n, bound in unigram_bounds(sample, layer, k, ngram_max=ngram_max).items():
            mask |= (ngram_active(sample, layer, n) == 0) | (bound <= k)
        plan[layer] = torch.from_numpy(mask)
    return plan


# ------------------------------------------------------------------ status of a neuron
def censored(
    profile: NeuronProfile,
    layer: int,
    n: int,
    coverage: int = 95,
    bound: np.ndarray | None = None,
) -> np.ndarray:
    """Neurons of ``layer`` without complete order-``n`` counts for which ``k_n > cap`` (at
    ``coverage``) is proven by their tail or their unigram bound ``bound`` (``L_n``)."""
    cap = profile.ngram_cap
    whole = ngram_active(profile, layer, n)
    lacking = ~profile.complete(layer, n).numpy() & (whole > 0)
    if cap is None or not lacking.any():
        return np.zeros(profile.d_mlp, dtype=bool)
    tail = profile.tail(layer, n).numpy()
    if bound is None:
        bound = unigram_bounds(profile, layer, cap, coverage)[n]
    return lacking & ((100 * tail > (100 - coverage) * whole) | (bound > cap))


def unknown(profile: NeuronProfile, layer: int, n: int, coverage: int = 95) -> np.ndarray:
    """Neurons of ``layer`` active at order ``n`` whose counts are incomplete and unproven."""
    lacking = ~profile.complete(layer, n).numpy() & (ngram_active(profile, layer, n) > 0)
    return lacking & ~censored(profile, layer, n, coverage)


def unknown_plan(profile: NeuronProfile) -> dict[int, dict[int, Bool[torch.Tensor, " d_mlp"]]]:
    """Layer -> n -> the unknown neurons (at the recording's 95%); layers with none left out."""
    out = {}
    cap = profile.ngram_cap
    for layer in profile.layers:
        orders = range(2, profile.ngram_max + 1)
        if cap is None or all(profile.complete(layer, n).all() for n in orders):
            continue
        bounds = unigram_bounds(profile, layer, cap)
        by_order = {}
        for n in orders:
            lacking = ~profile.complete(layer, n).numpy() & (ngram_active(profile, layer, n) > 0)
            proven = censored(profile, layer, n, bound=bounds[n])
            by_order[n] = torch.from_numpy(lacking & ~proven)
        if any(mask.any() for mask in by_order.values()):
            out[layer] = by_order
    return out


# ------------------------------------------------------------------ during and after a run
def review_drop(
    table: Table,
    complete: Bool[torch.Tensor, " d_mlp"],
    cap: int,
    fraction_done: float,
    carried: tuple[torch.Tensor, torch.Tensor] | None = None,
    expected: torch.Tensor | None = None,
) -> tuple[Bool[torch.Tensor, " d_mlp"], Int[torch.Tensor, " d_mlp"]]:
    """(neurons to drop, the tails of ``table``'s own counts) at a review ``fraction_done``
    into a pass.

    A complete neuron is dropped where its tail so far exceeds, by ``REVIEW_SAFETY``, 5% of the
    activations it is heading for: those seen so far plus, for the rest of the pass, its share
    of ``expected`` (its activations over the pass projected from the plan's evenly spread
    sample), or, without a projection, those seen so far divided by ``fraction_done``.
    ``carried`` = (tail bounds, activations) of the pass's earlier checkpoint intervals adds to
    what was seen; only ``table``'s own tail is returned as the bound to store (bounds of
    disjoint parts add up, so each part stores its own). A wrong projection costs a recount at
    the end (``unknown``), never a wrong result.
    """
    d_mlp = complete.numel()
    total, tail = table.neuron_tails(d_mlp, cap)
    seen_tail, seen = tail, total.double()
    if carried is not None:
        seen_tail, seen = tail + carried[0].to(tail.device), seen + carried[1].to(tail.device)
    if expected is None:
        heading = seen / fraction_done
    else:
        heading = seen + (1 - fraction_done) * expected.to(seen.device)
    complete = complete.to(total.device)
    drop = complete & (seen_tail > 0) & (100 * seen_tail > 5 * REVIEW_SAFETY * heading)
    return drop, tail


def expected_activations(sample: NeuronProfile, scale: float, ngram_max: int) -> Expected:
    """Layer -> n -> each neuron's activations at order n projected from the sample (this
    rank's share: ``scale`` = rows per sampled row / ranks)."""
    return {
        layer: {
            n: torch.from_numpy(ngram_active(sample, layer, n) * scale)
            for n in range(2, ngram_max + 1)
        }
        for layer in sample.layers
    }


def still_counted(segment: NeuronProfile) -> Plan:
    """Layer -> the neurons whose n >= 2 counts ``segment`` still kept at its end."""
    return {
        layer: torch.stack(
            [segment.complete(layer, n) for n in range(2, segment.ngram_max + 1)]
        ).any(0)
        for layer in segment.layers
    }


def carried_tails(segments: list[NeuronProfile], carried: Carried | None = None) -> Carried:
    """Layer -> n -> (tail bounds, activations) summed over ``segments`` (and ``carried``)."""
    out: Carried = {} if carried is None else {k: dict(v) for k, v in carried.items()}
    for seg in segments:
        assert seg.ngram_cap is not None
        for layer in seg.layers:
            for n in range(2, seg.ngram_max + 1):
                exact = seg.counts[layer].ngrams[n].neuron_tails(seg.d_mlp, seg.ngram_cap)[1]
                tail = torch.where(seg.complete(layer, n), exact, seg.tail(layer, n))
                active = torch.from_numpy(ngram_active(seg, layer, n))
                old = out.setdefault(layer, {}).get(n)
                out[layer][n] = (tail, active) if old is None else (old[0] + tail, old[1] + active)
    return out


def add_repair(
    profile: NeuronProfile,
    repair: NeuronProfile,
    lacking: dict[int, dict[int, Bool[torch.Tensor, " d_mlp"]]],
) -> NeuronProfile:
    """Complete ``profile`` in place with a repair pass's counts of the ``lacking`` neurons."""
    for layer, by_order in lacking.items():
        counts = profile.counts[layer]
        assert counts.complete is not None and counts.tail is not None
        for n, mask in by_order.items():
            mine, theirs = counts.ngrams[n], repair.counts[layer].ngrams[n].of_neurons(mask)
            counts.ngrams[n] = merge_tables([mine.keys, theirs.keys], [mine.counts, theirs.counts])
            counts.complete[n] = counts.complete[n] | mask
            counts.tail[n] = torch.where(mask, 0, counts.tail[n])
    return profile


def finalize(profile: NeuronProfile) -> NeuronProfile:
    """Drop, in place, the n >= 2 counts of complete neurons whose exact ``k95_n`` exceeds the
    cap (``100 * tail > 5 * A_n``), keeping their exact tails as the proof."""
    cap = profile.ngram_cap
    if cap is None:
        return profile
    for layer in profile.layers:
        counts = profile.counts[layer]
        if counts.complete is None:
            counts.complete = {
                n: profile.complete(layer, n) for n in range(2, profile.ngram_max + 1)
            }
            counts.tail = {n: profile.tail(layer, n) for n in range(2, profile.ngram_max + 1)}
        assert counts.tail is not None
        for n in range(2, profile.ngram_max + 1):
            total, tail = counts.ngrams[n].neuron_tails(profile.d_mlp, cap)
            spread = counts.complete[n] & (100 * tail > 5 * total)
            counts.complete[n] = counts.complete[n] & ~spread
            counts.tail[n] = torch.where(spread, tail, counts.tail[n])
            counts.ngrams[n] = counts.ngrams[n].of_neurons(counts.complete[n])
    return profile
