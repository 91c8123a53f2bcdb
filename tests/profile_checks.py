"""Exact equality of two NeuronProfiles' counts, shared by the tests."""

import torch

import tl_neuronkinds as nk


def assert_same(x: nk.NeuronProfile, y: nk.NeuronProfile) -> None:
    assert (x.n_seqs, x.n_positions, x.n_text_positions) == (
        y.n_seqs,
        y.n_positions,
        y.n_text_positions,
    )
    assert torch.equal(x.pos_text_seqs, y.pos_text_seqs)
    for n in range(1, x.ngram_max + 1):
        assert torch.equal(x.occurrences[n].keys, y.occurrences[n].keys)
        assert torch.equal(x.occurrences[n].counts, y.occurrences[n].counts)
    for layer in x.layers:
        cx, cy = x.counts[layer], y.counts[layer]
        for name in ("active", "active_text", "pos_active"):
            assert torch.equal(getattr(cx, name), getattr(cy, name))
        for n in range(1, x.ngram_max + 1):
            assert torch.equal(cx.ngrams[n].keys, cy.ngrams[n].keys)
            assert torch.equal(cx.ngrams[n].counts, cy.ngrams[n].counts)
