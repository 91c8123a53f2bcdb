"""``nk.record`` with the n-gram cap: exact wherever it reports, whatever the plan, the reviews,
the repairs and the checkpoints did (docs/kinds.md, "The n-gram cap")."""

import importlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profile_checks import assert_same
from recording_reference import BOS, random_tokens, tiny_model

import tl_neuronkinds as nk
from tl_neuronkinds.recording import plan as plan_module
from tl_neuronkinds.recording import settings as recording_settings

record_module = importlib.import_module("tl_neuronkinds.recording.record_run")


def exhaustive_k95(profile: nk.NeuronProfile, layer: int, n: int) -> np.ndarray:
    """k95_n of every neuron from an exhaustive profile's table, by plain loops (0: A_n = 0)."""
    table = profile.counts[layer].ngrams[n]
    per_neuron: dict[int, list[int]] = {}
    for key, count in zip(table.keys.tolist(), table.counts.tolist(), strict=True):
        per_neuron.setdefault(key % profile.d_mlp, []).append(count)
    out = np.zeros(profile.d_mlp, dtype=np.int64)
    for neuron, counts in per_neuron.items():
        total, running = sum(counts), 0
        for k, c in enumerate(sorted(counts, reverse=True), start=1):
            running += c
            if 100 * running >= 95 * total:
                out[neuron] = k
                break
    return out


def check_capped_against_exhaustive(capped: nk.NeuronProfile, full: nk.NeuronProfile) -> None:
    """Unigram and position counts equal; n >= 2 counts equal where complete; every neuron
    without counts has exhaustive k95_n > cap and is proven so; none is unknown."""
    cap = capped.ngram_cap
    assert cap is not None and full.ngram_cap is None
    for layer in full.layers:
        c, f = capped.counts[layer], full.counts[layer]
        for name in ("active", "active_text", "pos_active"):
            assert torch.equal(getattr(c, name), getattr(f, name))
        assert torch.equal(c.ngrams[1].keys, f.ngrams[1].keys)
        assert torch.equal(c.ngrams[1].counts, f.ngrams[1].counts)
        for n in range(2, full.ngram_max + 1):
            complete = capped.complete(layer, n)
            expected = f.ngrams[n].of_neurons(complete)
            assert torch.equal(c.ngrams[n].keys, expected.keys), (layer, n)
            assert torch.equal(c.ngrams[n].counts, expected.counts), (layer, n)
            k95 = exhaustive_k95(full, layer, n)
            active = plan_module.ngram_active(full, layer, n)
            dropped = ~complete.numpy() & (active > 0)
            assert (k95[dropped] > cap).all(), (layer, n)
            assert not plan_module.unknown(capped, layer, n).any()
            assert plan_module.censored(capped, layer, n)[dropped].all()
            # finalize keeps only neurons whose exact k95_n is within the cap
            assert (k95[complete.numpy() & (active > 0)] <= cap).all()


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    cap=st.sampled_from([5, 6, 8]),
    batch_size=st.integers(1, 4),
    reviews=st.sampled_from([(), (0.25,), (0.3, 0.6, 0.9)]),
    sample_fraction=st.sampled_from([0.05, 0.5, 1.0]),
    eager=st.booleans(),
)
def test_capped_record_is_exact_where_it_reports(
    seed, cap, batch_size, reviews, sample_fraction, eager
) -> None:
    model = tiny_model(seed % 3)
    tokens = random_tokens(seed, n_seq=8, seq_len=16, vocab=9)
    tokens[seed % 8, 5 + seed % 9] = BOS  # a separator sharing BOS's id
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record_module, "REVIEWS", reviews)
        patch.setattr(record_module, "SAMPLE_FRACTION", sample_fraction)
        patch.setattr(record_module, "SAMPLE_MIN_POSITIONS", 1)
        if eager:  # reviews that drop far too eagerly: the final check must repair them
            patch.setattr(plan_module, "REVIEW_SAFETY", 0.01)
        capped = nk.record(
            model, tokens, ngram_cap=cap, batch_size=batch_size, bos_token_id=BOS, progress=False
        )
    full = nk.record(model, tokens, ngram_cap=None, bos_token_id=BOS, progress=False)
    check_capped_against_exhaustive(capped, full)


@pytest.mark.slow
def test_a_plan_that_misses_everything_is_repaired(monkeypatch) -> None:
    model = tiny_model(1)
    tokens = random_tokens(21, n_seq=10, seq_len=16, vocab=6)
    nothing = lambda sample, cap, ngram_max, margin=2.0: {  # noqa: E731
        layer: torch.zeros(sample.d_mlp, dtype=torch.bool) for layer in sample.layers
    }
    monkeypatch.setattr(record_module, "choose_plan", nothing)
    capped = nk.record(model, tokens, ngram_cap=5, bos_token_id=BOS, progress=False)
    assert capped.meta["passes"]["repair"]["neurons"] > 0
    full = nk.record(model, tokens, ngram_cap=None, bos_token_id=BOS, progress=False)
    check_capped_against_exhaustive(capped, full)


def test_activity_only_at_position_one_and_a_neuron_exactly_at_the_cap() -> None:
    """Trigrams are undefined at position 1; k95 == cap stays exact, cap + 1 is censored."""
    cap, n_seq, seq_len, vocab = 5, 40, 8, 40
    rng = np.random.default_rng(0)
    tokens = torch.tensor(rng.integers(3, vocab, size=(n_seq, seq_len)))
    tokens[:, 0] = BOS
    prev = tokens[:, :-1]
    acts = torch.zeros(n_seq, seq_len, 3)
    acts[:, 1, 0] = 1.0  # only at position 1
    for i, k in ((1, cap), (2, cap + 1)):  # active on k distinct bigrams, equally often
        chosen = set()
        for s in range(n_seq):
            for p in range(2, seq_len):
                key = (int(prev[s, p - 1]), int(tokens[s, p]))
                if key in chosen or len(chosen) < k:
                    chosen.add(key)
                    acts[s, p, i] = 1.0
    capped = nk.profile_from_activations(tokens, {0: acts}, d_vocab=vocab, ngram_cap=cap)
    full = nk.profile_from_activations(tokens, {0: acts}, d_vocab=vocab)
    k95 = exhaustive_k95(full, 0, 2)
    assert k95[1] <= cap and k95[2] > cap
    check_capped_against_exhaustive(capped, full)
    assert plan_module.ngram_active(full, 0, 3)[0] == 0  # position 1: no trigram


def _interrupt_after(monkeypatch, n: int) -> None:
    real = record_module.RunCheckpoint.add_segment
    calls = {"n": 0}

    def add_segment(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(record_module.RunCheckpoint, "add_segment", add_segment)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_profile_of_an_uninterrupted_one(
    tmp_path, monkeypatch
) -> None:
    model = tiny_model(2)
    tokens = random_tokens(30, n_seq=24, seq_len=16, vocab=8)
    kwargs = dict(ngram_cap=5, batch_size=2, bos_token_id=BOS, progress=False)
    monkeypatch.setattr(record_module, "REVIEWS", (0.3, 0.7))
    straight = nk.record(
        model, tokens, checkpoint_dir=tmp_path / "a", checkpoint_every=64, **kwargs
    )
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        nk.record(model, tokens, checkpoint_dir=tmp_path / "b", checkpoint_every=64, **kwargs)
    monkeypatch.undo()
    monkeypatch.setattr(record_module, "REVIEWS", (0.3, 0.7))
    resumed = nk.record(model, tokens, checkpoint_dir=tmp_path / "b", checkpoint_every=64, **kwargs)
    assert_same(resumed, straight)
    assert resumed.meta["record_seconds"] > 0
    uncheckpointed = nk.record(model, tokens, **kwargs)
    full = nk.record(model, tokens, ngram_cap=None, bos_token_id=BOS, progress=False)
    check_capped_against_exhaustive(resumed, full)
    check_capped_against_exhaustive(uncheckpointed, full)
    # A finished run returns its saved profile; other settings are refused.
    assert_same(
        nk.record(model, tokens, checkpoint_dir=tmp_path / "b", checkpoint_every=64, **kwargs),
        straight,
    )
    with pytest.raises(nk.NeuronKindsError, match="other settings.*ngram_cap"):
        nk.record(model, tokens, checkpoint_dir=tmp_path / "b", **{**kwargs, "ngram_cap": 6})
    with pytest.raises(nk.NeuronKindsError, match="other settings.*tokens"):
        nk.record(model, tokens[:-1], checkpoint_dir=tmp_path / "b", **kwargs)


@pytest.mark.slow
def test_checkpoints_do_not_grow_with_the_checkpoints_before_them(tmp_path, monkeypatch) -> None:
    """Each checkpoint writes only its interval: segment sizes stay flat."""
    saved: list[int] = []
    real = nk.NeuronProfile.save

    def save(self, directory):
        saved.append(self.n_positions)
        return real(self, directory)

    monkeypatch.setattr(nk.NeuronProfile, "save", save)
    tokens = random_tokens(31, n_seq=32, seq_len=16, vocab=8)
    nk.record(
        tiny_model(), tokens, bos_token_id=BOS, progress=False, batch_size=4,
        checkpoint_dir=tmp_path / "c", checkpoint_every=64,
    )  # fmt: skip
    assert saved[:-1] == [64] * 8 and saved[-1] == 512  # 8 segments, then the final profile


def test_bad_caps_and_plans_are_refused() -> None:
    model = tiny_model()
    tokens = random_tokens(33)
    for cap in (4, 0, -1):
        with pytest.raises(nk.NeuronKindsError, match="ngram_cap"):
            nk.record(model, tokens, ngram_cap=cap, bos_token_id=BOS, progress=False)
    for cap in (5.0, True, "50"):  # what the signature's type hint forbids, checked anyway
        with pytest.raises(nk.NeuronKindsError, match="ngram_cap"):
            recording_settings.check_cap(cap)
    with pytest.raises(nk.NeuronKindsError, match="plan"):
        nk.record(model, tokens, plan={0: torch.ones(3, dtype=torch.bool)}, bos_token_id=BOS)
    with pytest.raises(nk.NeuronKindsError, match="checkpoint_dir"):
        nk.record(model, tokens, checkpoint_every=10, bos_token_id=BOS)
