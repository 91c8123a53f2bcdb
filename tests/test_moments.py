"""Activation moments: the recorder's float64 power sums against scipy and brute force, however
batched, chunked, merged, saved, resumed; profiles from before them say to record again."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from profile_checks import assert_close_sums
from recording_reference import BOS, random_tokens, tiny_model
from safetensors.torch import load_file, save_file
from scipy import stats
from test_record_capped import _interrupt_after

import tl_neuronkinds as nk
from tl_neuronkinds.kinds import moments
from tl_neuronkinds.recording import accumulate

COLUMNS = ["layer", "neuron", "act_mean", "act_var", "act_skew", "act_kurt", "sparsity"]
COLUMNS += ["positions"]


def _data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Tokens with separators, and three layers of activations: signed normal, ReLU'd heavy
    tails, and a dead and a constant neuron."""
    rng = np.random.default_rng(7)
    tokens = torch.tensor(rng.integers(3, 9, size=(6, 16)))
    tokens[:, 0] = BOS
    tokens[2, 5] = tokens[4, 11] = BOS
    normal = 2 * rng.standard_normal((6, 16, 5)) - 0.5
    heavy = np.maximum(rng.lognormal(0.0, 1.0, (6, 16, 5)) - 1.5, 0.0)
    odd = rng.standard_normal((6, 16, 5))
    odd[..., 0], odd[..., 1] = 0.0, 0.75  # dead; constant
    acts = {i: torch.tensor(a, dtype=dtype) for i, a in enumerate((normal, heavy, odd))}
    return tokens, acts


def _scipy_moments(
    tokens: torch.Tensor, acts: dict[int, torch.Tensor], threshold: float
) -> pd.DataFrame:
    """The expected table: numpy and scipy over each neuron's text positions."""
    text = (tokens != BOS).numpy()
    frames = []
    for layer, a in acts.items():
        x = a.numpy().astype(np.float64)[text]  # [positions, d_mlp]
        varies = x.var(0) > 0
        skew, kurt = np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
        skew[varies] = stats.skew(x[:, varies], axis=0)
        kurt[varies] = stats.kurtosis(x[:, varies], axis=0, fisher=False)
        frame = {
            "layer": layer,
            "neuron": np.arange(x.shape[1]),
            "act_mean": x.mean(0),
            "act_var": x.var(0),
            "act_skew": skew,
            "act_kurt": kurt,
            "sparsity": (x > threshold).mean(0),
            "positions": x.shape[0],
        }
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def _assert_frames_close(got: pd.DataFrame, want: pd.DataFrame, rtol: float) -> None:
    assert list(got.columns) == COLUMNS
    assert (got[["layer", "neuron", "positions"]] == want[["layer", "neuron", "positions"]]).all(
        axis=None
    )
    for column in COLUMNS[2:7]:
        np.testing.assert_allclose(got[column], want[column], rtol=rtol, atol=rtol, err_msg=column)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.25])
def test_moments_equal_scipy_on_random_activations(dtype: torch.dtype, threshold: float) -> None:
    tokens, acts = _data(dtype)
    profile = nk.profile_from_activations(tokens, acts, d_vocab=9, threshold=threshold)
    got = nk.activation_moments(profile)
    _assert_frames_close(got, _scipy_moments(tokens, acts, threshold), rtol=1e-9)
    odd = got[got.layer == 2].set_index("neuron")
    assert odd.act_var[0] == 0 and odd.act_var[1] < 1e-15 and odd.sparsity[0] == 0
    assert odd.loc[[0, 1], ["act_skew", "act_kurt"]].isna().all(axis=None)
    assert odd.loc[2:, ["act_skew", "act_kurt"]].notna().all(axis=None)
    assert nk.activation_moments(profile, layers=[1]).layer.unique().tolist() == [1]


def test_a_normal_sample_has_kurtosis_near_3() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.full((64, 512), 5)
    tokens[:, 0] = BOS
    acts = {0: torch.randn(64, 512, 3, generator=g, dtype=torch.float64) * 3 + 10}
    got = nk.activation_moments(nk.profile_from_activations(tokens, acts, d_vocab=9, ngram_max=1))
    np.testing.assert_allclose(got.act_mean, 10, atol=0.05)
    np.testing.assert_allclose(got.act_var, 9, rtol=0.02)
    np.testing.assert_allclose(got.act_skew, 0, atol=0.03)
    np.testing.assert_allclose(got.act_kurt, 3, atol=0.06)


def test_batching_and_chunking_change_nothing_beyond_float64_rounding(monkeypatch) -> None:
    tokens, acts = _data()
    whole = nk.profile_from_activations(tokens, acts, d_vocab=9)
    monkeypatch.setattr(accumulate, "_CHUNK_ELEMENTS", {"cpu": 3 * 5})
    monkeypatch.setattr(accumulate, "_POWER_ELEMENTS", {"cpu": 2 * 5})
    for rows in (1, 4):
        builder = accumulate.ProfileBuilder(sorted(acts), d_mlp=5, d_vocab=9)
        for lo in range(0, tokens.shape[0], rows):
            builder.add_batch(
                tokens[lo : lo + rows], {k: a[lo : lo + rows] for k, a in acts.items()}
            )
        pieces = builder.profile()
        for layer in acts:
            assert_close_sums(pieces.counts[layer].moments, whole.counts[layer].moments, rtol=1e-12)
        want = nk.activation_moments(whole)
        _assert_frames_close(nk.activation_moments(pieces), want, rtol=1e-12)


def test_merge_of_two_halves_equals_the_whole(tmp_path) -> None:
    tokens, acts = _data()
    whole = nk.profile_from_activations(tokens, acts, d_vocab=9)
    a, b = (
        nk.profile_from_activations(tokens[part], {k: v[part] for k, v in acts.items()}, d_vocab=9)
        for part in (slice(0, 3), slice(3, 6))
    )
    b.save(tmp_path / "b")  # float64 on disk, read back bit for bit
    loaded = nk.NeuronProfile.load(tmp_path / "b")
    assert all(torch.equal(loaded.counts[k].moments, b.counts[k].moments) for k in acts)
    merged = nk.NeuronProfile.merge([a, loaded])
    for layer in acts:
        assert_close_sums(merged.counts[layer].moments, whole.counts[layer].moments, rtol=1e-12)
    _assert_frames_close(nk.activation_moments(merged), nk.activation_moments(whole), rtol=1e-12)


def _as_format_4(directory: Path) -> None:
    """Rewrite the saved profile at ``directory`` as format 4 wrote it: no power sums."""
    counts = directory / "counts.safetensors"
    tensors = {k: v for k, v in load_file(str(counts)).items() if not k.endswith(".moments")}
    save_file(tensors, str(counts))
    header = json.loads((directory / "profile.json").read_text())
    header["format_version"] = 4
    header["sha256"]["counts.safetensors"] = hashlib.sha256(counts.read_bytes()).hexdigest()
    (directory / "profile.json").write_text(json.dumps(header))


def test_a_format_4_profile_loads_without_moments_and_asks_to_record_again(tmp_path) -> None:
    tokens, acts = _data()
    profile = nk.profile_from_activations(tokens, acts, d_vocab=9)
    profile.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "profile.json").read_text())["format_version"] == 5
    _as_format_4(tmp_path / "p")
    old = nk.NeuronProfile.load(tmp_path / "p")
    assert all(counts.moments is None for counts in old.counts.values())
    assert torch.equal(old.counts[1].active_text, profile.counts[1].active_text)
    for lacking in (old, nk.NeuronProfile.merge([profile, old])):  # never a partial sum
        assert all(counts.moments is None for counts in lacking.counts.values())
        with pytest.raises(nk.NeuronKindsError, match="predates activation moments.*record it"):
            nk.activation_moments(lacking)


def test_bad_layers_are_refused() -> None:
    tokens, acts = _data()
    profile = nk.profile_from_activations(tokens, acts, d_vocab=9)
    with pytest.raises(nk.NeuronKindsError, match=r"layers \[5\] were not recorded"):
        nk.activation_moments(profile, layers=[0, 5])
    for wrong in (1, [0.0], [True]):  # what the type hint forbids, checked anyway
        with pytest.raises(nk.NeuronKindsError, match="list of layer indices"):
            moments._check_layers(wrong, profile.layers)


def _brute_force(model, tokens: torch.Tensor, batch: int) -> dict[int, np.ndarray]:
    """Layer -> ``[4, d_mlp]`` sums of h**k over text positions, from cached activations of the
    same batches as the recording ran (so the float32 activations are the same)."""
    text = (tokens != BOS).numpy()
    cached = {layer: [] for layer in range(model.cfg.n_layers)}
    for lo in range(0, tokens.shape[0], batch):
        _, cache = model.run_with_cache(tokens[lo : lo + batch])
        for layer, parts in cached.items():
            parts.append(cache[f"blocks.{layer}.mlp.hook_post"].numpy())
    out = {}
    for layer, parts in cached.items():
        x = np.concatenate(parts).astype(np.float64)[text]
        out[layer] = np.stack([(x**k).sum(0) for k in range(1, 5)])
    return out


def test_a_recorded_model_matches_brute_force_over_its_cached_activations() -> None:
    model, tokens = tiny_model(1), random_tokens(4, n_seq=7)
    tokens[3, 6] = BOS
    profile = nk.record(model, tokens, batch_size=2, bos_token_id=BOS, progress=False)
    for layer, sums in _brute_force(model, tokens, 2).items():
        assert_close_sums(profile.counts[layer].moments, torch.from_numpy(sums), rtol=1e-12)
    assert profile.counts[0].moments.abs().sum() > 0


@pytest.mark.slow
def test_a_resumed_run_keeps_the_sums(tmp_path, monkeypatch) -> None:
    model, tokens = tiny_model(2), random_tokens(30, n_seq=24, seq_len=16, vocab=8)
    kwargs = dict(batch_size=2, bos_token_id=BOS, progress=False, checkpoint_every=64)
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        nk.record(model, tokens, checkpoint_dir=tmp_path / "run", **kwargs)
    monkeypatch.undo()
    assert len(json.loads((tmp_path / "run" / "state.json").read_text())["segments"]) == 2
    resumed = nk.record(model, tokens, checkpoint_dir=tmp_path / "run", **kwargs)
    for layer, sums in _brute_force(model, tokens, 2).items():
        assert_close_sums(resumed.counts[layer].moments, torch.from_numpy(sums), rtol=1e-12)
