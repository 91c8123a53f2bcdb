"""Exact equality of two NeuronProfiles' counts, shared by the tests."""

import torch

import tl_neuronkinds as nk
from tl_neuronkinds.recording import plan


def assert_same(
    x: nk.NeuronProfile, y: nk.NeuronProfile, *, tails: bool = True, moments: bool = True
) -> None:
    """Equal settings, totals and every count, n-gram state (complete, tail), plan, top-k
    activations (values to float32 rounding, their sequences and positions exactly),
    histograms and activation power sums (to float32 rounding of the activations summed).

    ``tails=False`` compares the tail bounds only by what they prove (every incomplete active
    neuron censored in both): they depend on when a review dropped a neuron, which under
    torch.distributed each rank decides on its own share. ``moments=False`` skips the power
    sums (one profile predates them).
    """
    assert (x.n_seqs, x.n_positions, x.n_text_positions) == (
        y.n_seqs,
        y.n_positions,
        y.n_text_positions,
    )
    assert (x.layers, x.ngram_max, x.ngram_cap, x.top_k, x.window) == (
        y.layers,
        y.ngram_max,
        y.ngram_cap,
        y.top_k,
        y.window,
    )
    assert torch.equal(x.pos_text_seqs, y.pos_text_seqs)
    for n in range(1, x.ngram_max + 1):
        assert torch.equal(x.occurrences[n].keys, y.occurrences[n].keys)
        assert torch.equal(x.occurrences[n].counts, y.occurrences[n].counts)
    plan_x, plan_y = x.plan, y.plan
    assert (plan_x is None) == (plan_y is None)
    for layer in x.layers:
        cx, cy = x.counts[layer], y.counts[layer]
        for name in ("active", "active_text", "pos_active"):
            assert torch.equal(getattr(cx, name), getattr(cy, name)), (layer, name)
        for name in ("top_seq", "top_pos", "top_window_ids", "hist"):
            ax, ay = getattr(cx, name), getattr(cy, name)
            assert (ax is None) == (ay is None), (layer, name)
            assert ax is None or torch.equal(ax, ay), (layer, name)
        if cx.top_values is not None:
            assert torch.allclose(cx.top_values, cy.top_values, rtol=1e-5, atol=1e-6), layer
        assert (cx.top_window_acts is None) == (cy.top_window_acts is None), layer
        if cx.top_window_acts is not None:
            assert torch.allclose(
                cx.top_window_acts, cy.top_window_acts, rtol=1e-5, atol=1e-6, equal_nan=True
            ), layer
        if moments:
            assert_close_sums(cx.moments, cy.moments, rtol=1e-5)
        if plan_x is not None and plan_y is not None:
            assert torch.equal(plan_x[layer], plan_y[layer]), (layer, "plan")
        for n in range(1, x.ngram_max + 1):
            assert torch.equal(cx.ngrams[n].keys, cy.ngrams[n].keys), (layer, n)
            assert torch.equal(cx.ngrams[n].counts, cy.ngrams[n].counts), (layer, n)
            assert torch.equal(x.complete(layer, n), y.complete(layer, n)), (layer, n)
            if tails:
                assert torch.equal(x.tail(layer, n), y.tail(layer, n)), (layer, n)
            elif n >= 2 and x.ngram_cap is not None:
                for profile in (x, y):
                    lacking = ~profile.complete(layer, n).numpy() & (
                        plan.ngram_active(profile, layer, n) > 0
                    )
                    assert plan.censored(profile, layer, n)[lacking].all(), (layer, n)


def assert_close_sums(x: torch.Tensor | None, y: torch.Tensor | None, *, rtol: float) -> None:
    """Two ``[4, d_mlp]`` power sums equal to ``rtol`` of the largest sum of each power (a sum of
    terms of either sign may be near 0)."""
    assert x is not None and y is not None
    assert x.dtype == y.dtype == torch.float64
    scale = x.abs().amax(1, keepdim=True)
    assert bool(((x - y).abs() <= rtol * scale).all()), (x - y).abs().amax(1)
