"""NeuronRecorder, record() and NeuronProfile against a brute-force count of raw activations."""

import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from profile_checks import assert_same
from recording_reference import BOS, D_VOCAB, assert_matches, brute_force, random_tokens, tiny_model

import tl_neuronkinds as nk
from tl_neuronkinds.recording import unigrams
from tl_neuronkinds.recording.keys import ngram_ids, split_ngram_ids
from tl_neuronkinds.recording.settings import RecordingSettings


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch_size=st.integers(1, 5),
    threshold=st.sampled_from([0.0, 0.1]),
    dense_unigrams=st.booleans(),
)
def test_record_equals_brute_force(
    seed: int, batch_size: int, threshold: float, dense_unigrams: bool
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if not dense_unigrams:  # every unigram table turns sparse at once
            patch.setattr(unigrams, "_SPARSE_MIN_BYTES", 0)
            patch.setattr(unigrams, "_SPARSE_DENSITY", 1 << 40)
        check_record_against_brute_force(seed, batch_size, threshold)


def check_record_against_brute_force(seed: int, batch_size: int, threshold: float) -> None:
    model = tiny_model(seed % 3)
    tokens = random_tokens(seed)
    tokens[seed % 5, 3 + seed % 7] = BOS  # a document separator sharing BOS's id
    profile = nk.record(
        model,
        tokens,
        threshold=threshold,
        ngram_cap=None,
        batch_size=batch_size,
        bos_token_id=BOS,
        progress=False,
    )
    _, cache = model.run_with_cache(tokens)
    assert profile.n_seqs == 5 and profile.n_positions == 60
    assert profile.n_text_positions == int((tokens != BOS).sum())
    for layer in range(3):
        assert_matches(
            profile, layer, brute_force(tokens, cache[f"blocks.{layer}.mlp.hook_post"], threshold)
        )


def test_ngram_ids_round_trip() -> None:
    tokens = torch.tensor([[2, 5, 39, 0, 7]])
    for n in (1, 2, 3):
        ids = ngram_ids(tokens, n, D_VOCAB)
        assert (ids[0, : n - 1] == -1).all()
        back = split_ngram_ids(ids[0, n - 1 :], n, D_VOCAB)
        expected = torch.stack([tokens[0, p - n + 1 : p + 1] for p in range(n - 1, 5)])
        assert torch.equal(back, expected)


def test_recorder_beside_user_hooks_and_layer_subset() -> None:
    model = tiny_model()
    tokens = random_tokens(1)
    seen = []
    recorder = nk.NeuronRecorder(model, layers=[2, 0], bos_token_id=BOS)
    with recorder.recording(tokens):
        model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.mlp.hook_post", lambda x, hook: seen.append(x.shape))]
        )
    assert seen == [torch.Size([5, 12, 24])]
    assert not model.hook_dict["blocks.0.mlp.hook_post"].fwd_hooks  # removed on exit
    profile = recorder.profile()
    assert profile.layers == [0, 2]
    _, cache = model.run_with_cache(tokens)
    assert_matches(profile, 2, brute_force(tokens, cache["blocks.2.mlp.hook_post"]))


def test_two_forwards_count_twice_and_merge_is_exact(tmp_path) -> None:
    model = tiny_model()
    a, b = random_tokens(2), random_tokens(3)
    whole = nk.record(model, torch.cat([a, b]), ngram_cap=None, bos_token_id=BOS, progress=False)
    pa = nk.record(model, a, ngram_cap=None, bos_token_id=BOS, progress=False)
    pb = nk.record(model, b, ngram_cap=None, bos_token_id=BOS, progress=False)
    pb.save(tmp_path / "b")
    merged = nk.NeuronProfile.merge([pa, nk.NeuronProfile.load(tmp_path / "b")])
    assert_same(merged, whole)
    recorder = nk.NeuronRecorder(model, bos_token_id=BOS)
    with recorder.recording(a):
        model(a)
        model(a)
    twice = recorder.profile()
    assert_same(twice, nk.NeuronProfile.merge([pa, pa]))


def test_save_load_round_trip_and_atomic_replace(tmp_path) -> None:
    model = tiny_model()
    profile = nk.record(
        model, random_tokens(4), ngram_max=2, bos_token_id=BOS, corpus="unit", progress=False
    )
    target = tmp_path / "p"
    profile.save(target)
    profile.save(target)  # replacing an existing profile
    loaded = nk.NeuronProfile.load(target)
    assert_same(loaded, profile)
    assert loaded.meta["corpus"] == "unit" and loaded.meta["package_version"] == nk.__version__
    assert loaded.token_strings == profile.token_strings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temp dirs left


def test_bad_profiles_raise(tmp_path) -> None:
    profile = nk.record(tiny_model(), random_tokens(5), bos_token_id=BOS, progress=False)
    profile.save(tmp_path / "p")
    with pytest.raises(nk.NeuronKindsError, match="no profile"):
        nk.NeuronProfile.load(tmp_path / "missing")
    header = json.loads((tmp_path / "p" / "profile.json").read_text())
    header["format_version"] = 99
    (tmp_path / "p" / "profile.json").write_text(json.dumps(header))
    with pytest.raises(nk.NeuronKindsError, match="newer"):
        nk.NeuronProfile.load(tmp_path / "p")
    header["format_version"] = 1
    (tmp_path / "p" / "profile.json").write_text(json.dumps(header))
    (tmp_path / "p" / "counts.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(nk.NeuronKindsError, match="corrupt"):
        nk.NeuronProfile.load(tmp_path / "p")
    (tmp_path / "p" / "profile.json").write_text("{")
    with pytest.raises(nk.NeuronKindsError, match="corrupt"):
        nk.NeuronProfile.load(tmp_path / "p")


def test_merge_refuses_different_settings() -> None:
    model = tiny_model()
    tokens = random_tokens(6)
    base = nk.record(model, tokens, bos_token_id=BOS, progress=False)
    other_threshold = nk.record(model, tokens, threshold=0.5, bos_token_id=BOS, progress=False)
    other_len = nk.record(model, tokens[:, :10], bos_token_id=BOS, progress=False)
    other_model = nk.record(
        tiny_model(act_fn="gelu"), tokens, threshold=0.0, bos_token_id=BOS, progress=False
    )
    for other, what in (
        (other_threshold, "threshold"),
        (other_len, "seq_len"),
        (other_model, "different models"),
    ):
        with pytest.raises(nk.NeuronKindsError, match=what):
            nk.NeuronProfile.merge([base, other])
    with pytest.raises(nk.NeuronKindsError):
        nk.NeuronProfile.merge([])


def test_bad_tokens_and_layers_raise() -> None:
    model = tiny_model()
    good = random_tokens(7)
    no_bos = good.clone()
    no_bos[3, 0] = 5
    with pytest.raises(nk.NeuronKindsError, match="row 3"):
        nk.record(model, no_bos, bos_token_id=BOS, progress=False)
    out_of_vocab = good.clone()
    out_of_vocab[1, 4] = D_VOCAB
    with pytest.raises(nk.NeuronKindsError, match="vocabulary|\\[0, 40\\)|0\\.\\.39"):
        nk.record(model, out_of_vocab, bos_token_id=BOS, progress=False)
    with pytest.raises(nk.NeuronKindsError, match="layers"):
        nk.NeuronRecorder(model, layers=[3], bos_token_id=BOS)
    with pytest.raises(nk.NeuronKindsError, match="context"):
        nk.record(model, torch.full((1, 30), BOS), bos_token_id=BOS, progress=False)
    with pytest.raises(nk.NeuronKindsError, match="2-D"):
        nk.record(model, good[0], bos_token_id=BOS, progress=False)
    with pytest.raises(nk.NeuronKindsError, match="BOS id"):
        nk.NeuronRecorder(model)  # no tokenizer, no bos_token_id


def test_non_relu_warns() -> None:
    with pytest.warns(UserWarning, match="not ReLU"):
        nk.NeuronRecorder(tiny_model(act_fn="gelu"), bos_token_id=BOS)


def test_recording_settings_are_checked_once_stored_and_round_trip(tmp_path) -> None:
    settings = RecordingSettings(threshold=0.1, ngram_cap=None, top_k=3, histogram=True)
    assert RecordingSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert RecordingSettings(top_k=0).window is None  # no top activations, no contexts
    for (
        bad
    ) in (  # (values beside the type hints are refused too, but a type checker sees them first)
        {"ngram_max": 4},
        {"ngram_max": True},
        {"ngram_cap": 4},
        {"top_k": -1},
        {"window": (-1, 2)},
        {"window": (200, 100)},
        {"threshold": float("nan")},
        {"bos_token_id": -2},
    ):
        with pytest.raises(nk.NeuronKindsError, match=next(iter(bad))):
            RecordingSettings(**bad)
    with pytest.raises(nk.NeuronKindsError, match="unknown"):
        RecordingSettings.from_dict({"cap": 5})
    model, tokens = tiny_model(), random_tokens(23)
    kwargs = {"threshold": 0.1, "ngram_cap": None, "top_k": 3, "histogram": True}
    by_keywords = nk.record(model, tokens, bos_token_id=BOS, progress=False, **kwargs)
    by_settings = nk.record(
        model, tokens, progress=False, settings=replace(settings, bos_token_id=BOS)
    )
    assert_same(by_settings, by_keywords)
    stored = replace(settings, bos_token_id=BOS)
    assert by_keywords.settings == stored
    assert RecordingSettings.from_dict(by_keywords.meta["recording"]) == stored
    by_keywords.save(tmp_path / "p")
    assert nk.NeuronProfile.load(tmp_path / "p").meta["recording"] == stored.to_dict()
    # A merge states what the merged counts hold: the least top-k of its parts.
    fewer = nk.record(model, tokens, bos_token_id=BOS, progress=False, **{**kwargs, "top_k": 2})
    merged = nk.NeuronProfile.merge([by_keywords, fewer])
    assert merged.meta["recording"] == replace(stored, top_k=2).to_dict()
