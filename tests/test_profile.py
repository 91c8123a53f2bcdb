"""NeuronProfile on disk and in merges: damage is detected, old formats are read, written files
follow the umask, and a profile knows the weights of its model."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from profile_checks import assert_same
from recording_reference import BOS, random_tokens, tiny_model
from test_record_capped import exhaustive_k95

import tl_neuronkinds as nk
from tl_neuronkinds.atomic import atomic_write_text
from tl_neuronkinds.recording import plan as plan_module

V1 = Path(__file__).parent / "data" / "profile_v1"


def _profile() -> nk.NeuronProfile:
    return nk.record(tiny_model(), random_tokens(40, n_seq=8), bos_token_id=BOS, progress=False)


def test_damage_in_the_counts_file_is_detected_and_named(tmp_path) -> None:
    profile = _profile()
    profile.save(tmp_path / "p")
    counts = tmp_path / "p" / "counts.safetensors"
    data = bytearray(counts.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = np.random.default_rng(0).bytes(min(4096, len(data) - middle))
    counts.write_bytes(bytes(data))
    with pytest.raises(nk.NeuronKindsError, match="counts.safetensors does not match its checksum"):
        nk.NeuronProfile.load(tmp_path / "p")
    nk.NeuronProfile.load(tmp_path / "p", verify=False)  # asked for: no check


def test_a_format_1_profile_loads_as_an_exhaustive_one() -> None:
    """tests/data/profile_v1 was written by tl_neuronkinds before the n-gram cap (format 1):
    profile_from_activations over np.random.default_rng(1234) data, as rebuilt here."""
    old = nk.NeuronProfile.load(V1)
    assert json.loads((V1 / "profile.json").read_text())["format_version"] == 1
    rng = np.random.default_rng(1234)
    tokens = rng.integers(3, 9, size=(4, 10))
    tokens[:, 0] = 2
    acts = {
        layer: torch.tensor(rng.random((4, 10, 6)) - 0.6, dtype=torch.float32) for layer in (0, 1)
    }
    names = [f"t{i}" for i in range(9)]
    fresh = nk.profile_from_activations(torch.tensor(tokens), acts, d_vocab=9, token_strings=names)
    assert old.ngram_cap is None and old.plan is None and old.meta["corpus"] == "v1 fixture"
    assert all(counts.moments is None for counts in old.counts.values())  # before format 5
    assert_same(old, fresh, moments=False)


def test_written_files_follow_the_umask(tmp_path) -> None:
    previous = os.umask(0o022)
    try:
        _profile().save(tmp_path / "p")
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o755
    for path in [*(tmp_path / "p").iterdir(), tmp_path / "t.txt"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_profiles_of_same_named_models_with_other_weights_do_not_merge() -> None:
    tokens = random_tokens(41)
    a = nk.record(tiny_model(seed=0), tokens, bos_token_id=BOS, progress=False)
    b = nk.record(tiny_model(seed=1), tokens, bos_token_id=BOS, progress=False)
    assert a.meta["model_name"] == b.meta["model_name"]
    assert a.meta["config_hash"] == b.meta["config_hash"]
    with pytest.raises(nk.NeuronKindsError, match="model_fingerprint"):
        nk.NeuronProfile.merge([a, b])
    nk.NeuronProfile.merge(
        [a, nk.record(tiny_model(seed=0), tokens, bos_token_id=BOS, progress=False)]
    )


def test_merging_profiles_that_kept_different_neurons_is_never_wrong() -> None:
    """Two halves capped on their own keep different neurons; the merge keeps those complete in
    both, and the summed tails still prove each dropped neuron's k95 > cap or leave it unknown."""
    rng = np.random.default_rng(3)
    tokens = torch.tensor(rng.integers(3, 12, size=(16, 12)))
    tokens[:, 0] = BOS
    acts = {0: torch.tensor(rng.random((16, 12, 24)) - 0.7, dtype=torch.float32)}
    halves = [
        nk.profile_from_activations(
            tokens[part], {0: acts[0][part]}, d_vocab=12, ngram_cap=5, token_strings=None
        )
        for part in (slice(0, 8), slice(8, 16))
    ]
    merged = nk.NeuronProfile.merge(halves)
    full = nk.profile_from_activations(tokens, acts, d_vocab=12)
    for n in (2, 3):
        complete = merged.complete(0, n)
        assert torch.equal(complete, halves[0].complete(0, n) & halves[1].complete(0, n))
        expected = full.counts[0].ngrams[n].of_neurons(complete)
        assert torch.equal(merged.counts[0].ngrams[n].keys, expected.keys)
        assert torch.equal(merged.counts[0].ngrams[n].counts, expected.counts)
        k95 = exhaustive_k95(full, 0, n)
        censored = plan_module.censored(merged, 0, n)
        assert (k95[censored] > 5).all()
        unknown = plan_module.unknown(merged, 0, n)
        assert not (censored & unknown).any()
        active = plan_module.ngram_active(merged, 0, n) > 0
        assert ((complete.numpy() | censored | unknown) | ~active).all()
