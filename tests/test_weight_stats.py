"""Weight statistics (Gurnee et al. 2024): against a numpy / scipy reference on ``transformers``'
own weights, planted prediction, suppression, entropy and attention-deactivation neurons, the
attention score against a forward difference, streamed models, post-LN models and bad input."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from opt_fixtures import make_tiny_opt, random_tokens
from safetensors.torch import load_file, save_file
from tl_models import process_weights
from transformer_lens.model_bridge import TransformerBridge
from transformers import OPTForCausalLM

import tl_neuronkinds as nk
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.universal import weights
from tl_neuronkinds.universal.weights import COLUMNS, SCORE_COLUMNS

pytestmark = [
    pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning"),
]

LAYOUTS = {
    "pre-ln": {},
    "350m-style": {"post_ln": True, "proj_dim": 16},
    "pre-ln-projected": {"proj_dim": 16},
}
N_LAYERS = 3
PAD = 1


def _zero_pad_column(path) -> None:
    """Make ``<pad>``'s (tied) embedding row zero, as in OPT's checkpoints."""
    file = path / "model.safetensors"
    state = load_file(str(file))
    key = next(k for k in state if k.endswith("embed_tokens.weight"))
    state[key][PAD] = 0.0
    save_file(state, str(file), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    paths = {}
    for seed, (name, kwargs) in enumerate(LAYOUTS.items()):
        paths[name] = make_tiny_opt(
            root / name, n_layers=N_LAYERS, seed=seed, tokenizer=False, **kwargs
        )
        _zero_pad_column(paths[name])
    return paths


def reference(path, layer: int, null_dims: int) -> pd.DataFrame:
    """The statistics of ``layer``'s neurons in numpy float64 from ``OPTForCausalLM``'s tensors."""
    hf = OPTForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    decoder = hf.model.decoder
    fc1 = decoder.layers[layer].fc1.weight.detach().double().numpy()  # [d_mlp, d_model]
    fc2 = decoder.layers[layer].fc2.weight.detach().double().numpy().T  # [d_mlp, d_model]
    norms = []
    if not hf.config.do_layer_norm_before:
        norms.append(decoder.layers[layer].final_layer_norm)
        for later in decoder.layers[layer + 1 :]:
            norms += [later.self_attn_layer_norm, later.final_layer_norm]
    if decoder.final_layer_norm is not None:
        norms.append(decoder.final_layer_norm)
    d = fc2
    for norm in norms:
        d = (d - d.mean(axis=1, keepdims=True)) * norm.weight.detach().double().numpy()
    if decoder.project_out is not None:
        d = d @ decoder.project_out.weight.detach().double().numpy().T
    w_u = hf.lm_head.weight.detach().double().numpy().T  # [d_unembed, d_vocab]
    assert not w_u[:, PAD].any()
    w_u = np.delete(w_u, PAD, axis=1)
    cos = (d / np.linalg.norm(d, axis=1, keepdims=True)) @ (w_u / np.linalg.norm(w_u, axis=0))
    null = np.linalg.svd(w_u)[0][:, -null_dims:]
    null_fraction = np.sum((d @ null) ** 2, axis=1) / np.sum(d**2, axis=1)
    in_norm, out_norm = np.linalg.norm(fc1, axis=1), np.linalg.norm(fc2, axis=1)
    return pd.DataFrame(
        {
            "vocab_mean": cos.mean(axis=1),
            "vocab_var": cos.var(axis=1),
            "vocab_skew": scipy.stats.skew(cos, axis=1),
            "vocab_kurt": scipy.stats.kurtosis(cos, axis=1, fisher=False),
            "w_in_norm": in_norm,
            "w_out_norm": out_norm,
            "cos_in_out": np.sum(fc1 * fc2, axis=1) / (in_norm * out_norm),
            "null_fraction": null_fraction,
            "entropy_score": out_norm * null_fraction,
        }
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_statistics_equal_a_numpy_reference_on_transformers_weights(layout, checkpoints):
    path = checkpoints[layout]
    model = nk.load_opt(path)
    table = nk.weight_stats(model)
    assert list(table.columns) == COLUMNS
    d_mlp = model.blocks[0].mlp.W_out.shape[0]
    assert table["layer"].tolist() == np.repeat(range(N_LAYERS), d_mlp).tolist()
    assert table["neuron"].tolist() == list(range(d_mlp)) * N_LAYERS
    null_dims = max(1, round(0.02 * model.W_U.shape[0]))
    for layer in range(N_LAYERS):
        ref = reference(path, layer, null_dims)
        part = table[table["layer"] == layer].reset_index(drop=True)
        pd.testing.assert_frame_equal(part[ref.columns], ref, rtol=1e-5, atol=1e-6)
        kurt, skew = part["vocab_kurt"], part["vocab_skew"]
        assert part["prediction"].tolist() == ((kurt > 10) & (skew > 0)).tolist()
        assert part["suppression"].tolist() == ((kurt > 10) & (skew < 0)).tolist()
    post_ln = layout == "350m-style"
    last = table["layer"] == N_LAYERS - 1
    undefined = last | post_ln
    assert table.loc[undefined, "bos_attention_max"].isna().all()
    assert (table.loc[undefined, ["bos_attention_layer", "bos_attention_head"]] == -1).all().all()
    assert table.loc[~undefined, "bos_attention_max"].notna().all()


def test_partition_is_variance_above_a_seeded_random_baseline(checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    table = nk.weight_stats(model, partition_ratio=1.0, seed=3)
    pd.testing.assert_frame_equal(table, nk.weight_stats(model, partition_ratio=1.0, seed=3))
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(64, model.W_U.shape[0], generator=gen, dtype=torch.float64).numpy()
    w_u = np.delete(model.W_U.detach().double().numpy(), PAD, axis=1)
    cos = (noise / np.linalg.norm(noise, axis=1, keepdims=True)) @ (
        w_u / np.linalg.norm(w_u, axis=0)
    )
    baseline = cos.var(axis=1).mean()
    assert table["partition"].tolist() == (table["vocab_var"] > baseline).tolist()
    assert 0 < table["partition"].sum() < len(table)  # ratio 1: about half the random rows


def _scores_by_forward_difference(model, layer: int, neuron: int) -> np.ndarray:
    """``[later blocks, n_heads]``: the change of each later head's attention logit from a
    text position to BOS when ``W_out[layer][neuron]`` is added to the block's input there,
    with ``ln1``'s scale frozen at the clean run's (then times that scale)."""
    tokens = random_tokens(1, 6, model.cfg.d_vocab, seed=1)
    p = 4
    w = model.blocks[layer].mlp.W_out[neuron].detach()
    _, clean = model.run_with_cache(tokens)
    out = []
    for m in range(layer + 1, model.cfg.n_layers):
        scale = clean[f"blocks.{m}.ln1.hook_scale"]

        def add(resid, hook):
            resid = resid.clone()
            resid[:, p] += w
            return resid

        def freeze(_value, hook, scale=scale):
            return scale

        hooks = [(f"blocks.{m}.hook_resid_pre", add), (f"blocks.{m}.ln1.hook_scale", freeze)]
        with model.hooks(fwd_hooks=hooks):
            _, cache = model.run_with_cache(tokens)
        if isinstance(model, TransformerBridge):  # its hook_attn_scores holds the softmax
            q = cache[f"blocks.{m}.attn.hook_q"] - clean[f"blocks.{m}.attn.hook_q"]
            k_bos = clean[f"blocks.{m}.attn.hook_k"][0, 0]
            diff = torch.einsum("he,he->h", q[0, p], k_bos) / k_bos.shape[-1] ** 0.5
        else:
            scores = f"blocks.{m}.attn.hook_attn_scores"
            diff = (cache[scores] - clean[scores])[0, :, p, 0]
        out.append((diff * scale[0, p, 0]).double().numpy())
    return np.stack(out) if out else np.empty((0, model.cfg.n_heads))


@pytest.mark.parametrize("layout", ["pre-ln", "pre-ln-projected"])
def test_bos_scores_equal_a_forward_difference(layout, checkpoints):
    model = nk.load_opt(checkpoints[layout], dtype=torch.float64)
    for layer in range(N_LAYERS):
        table = nk.bos_attention_scores(model, layer, [3, 7])
        assert list(table.columns) == SCORE_COLUMNS
        n_heads = model.cfg.n_heads
        assert len(table) == 2 * (N_LAYERS - 1 - layer) * n_heads
        for neuron in (3, 7):
            part = table[table["neuron"] == neuron]
            expect = _scores_by_forward_difference(model, layer, neuron)
            assert (
                part["head_layer"].tolist()
                == np.repeat(range(layer + 1, N_LAYERS), n_heads).tolist()
            )
            assert part["head"].tolist() == list(range(n_heads)) * (N_LAYERS - 1 - layer)
            np.testing.assert_allclose(part["score"], expect.reshape(-1), rtol=1e-9, atol=1e-12)


def test_planted_prediction_suppression_entropy_and_deactivation_neurons(tmp_path):
    path = make_tiny_opt(tmp_path / "planted", n_layers=N_LAYERS, d_model=64, tokenizer=False)
    model = nk.load_opt(path, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    null = torch.randn(64, generator=gen, dtype=torch.float64)
    null = null - null.mean()
    null = null / null.norm()  # centred: the final LayerNorm's centring keeps it
    head_layer, head, token = 2, 1, 40
    with torch.no_grad():
        model.ln_final.w.fill_(1.0)
        model.unembed.W_U.sub_(torch.outer(null, null @ model.unembed.W_U))  # exactly null
        u = model.W_U[:, token] - model.W_U[:, token].mean()
        w_out = model.blocks[1].mlp.W_out
        norm = w_out.norm(dim=1).mean()
        w_out[0] = norm * u / u.norm()
        w_out[1] = -norm * u / u.norm()
        w_out[2] = 2 * norm * null
        _, cache = model.run_with_cache(torch.tensor([[2]]))
        k_bos = cache[f"blocks.{head_layer}.attn.hook_k"][0, 0, head]
        attn, ln1 = model.blocks[head_layer].attn, model.blocks[head_layer].ln1
        target = (attn.W_Q[head] @ k_bos) * ln1.w
        target = target - target.mean()
        model.blocks[0].mlp.W_out[5] = 2 * norm * target / target.norm()
    table = nk.weight_stats(model, null_dims=1)
    stats = table[table["layer"] == 1].set_index("neuron")
    assert stats.loc[0, "prediction"] and not stats.loc[0, "suppression"]
    assert stats.loc[0, "vocab_kurt"] > 10 and stats.loc[0, "vocab_skew"] > 0
    assert stats.loc[1, "suppression"] and not stats.loc[1, "prediction"]
    assert stats["prediction"].sum() == 1 and stats["suppression"].sum() == 1
    np.testing.assert_allclose(stats.loc[2, "null_fraction"], 1.0, rtol=1e-12)
    assert stats["null_fraction"].idxmax() == 2 and table["entropy_score"].idxmax() == 64 + 2
    scores = nk.bos_attention_scores(model, 0)
    that_head = scores[(scores["head_layer"] == head_layer) & (scores["head"] == head)]
    assert that_head.set_index("neuron")["score"].idxmax() == 5
    row = table[(table["layer"] == 0) & (table["neuron"] == 5)].iloc[0]
    assert row["bos_attention_max"] > 0
    assert (row["bos_attention_layer"], row["bos_attention_head"]) == (head_layer, head)
    np.testing.assert_allclose(row["bos_attention_max"], that_head["score"].max())


@pytest.mark.parametrize("layout", ["pre-ln", "350m-style"])
def test_streamed_models_give_identical_tables(layout, checkpoints, monkeypatch):
    resident = nk.weight_stats(nk.load_opt(checkpoints[layout]))
    streamed = nk.load_opt(checkpoints[layout], offload="cpu")
    pd.testing.assert_frame_equal(nk.weight_stats(streamed), resident)
    monkeypatch.setattr(weights, "CHUNK_ELEMENTS", 3 * 96)  # three neurons a chunk: float32
    # products summed in another order, so equal to float32 precision
    pd.testing.assert_frame_equal(
        nk.weight_stats(streamed, layers=[2, 0]),
        resident[resident["layer"] != 1].reset_index(drop=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_centred_writing_weights_keep_the_vocabulary_statistics(checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    before = nk.weight_stats(model)
    process_weights(model, fold_ln=False, center_writing_weights=True, center_unembed=False)
    after = nk.weight_stats(model)
    columns = ["vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt", "null_fraction"]
    pd.testing.assert_frame_equal(after[columns], before[columns], rtol=1e-5, atol=1e-7)


def test_post_ln_models_have_no_bos_scores(checkpoints):
    model = nk.load_opt(checkpoints["350m-style"])
    with pytest.raises(NeuronKindsError, match="post-LayerNorm"):
        nk.bos_attention_scores(model, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [3]}, "out of range"),
        ({"partition_ratio": 0.0}, "partition_ratio"),
        ({"partition_ratio": float("nan")}, "partition_ratio"),
        ({"null_dims": 0}, "null_dims"),
        ({"null_dims": 32}, "null_dims"),
    ],
)
def test_bad_input_is_named(kwargs, message, checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    with pytest.raises(NeuronKindsError, match=message):
        nk.weight_stats(model, **kwargs)


def test_non_finite_weights_are_named(checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    with torch.no_grad():
        model.blocks[1].mlp.W_out[4, 2] = float("nan")
    with pytest.raises(NeuronKindsError, match=r"W_out\[1\]"):
        nk.weight_stats(model)
    with pytest.raises(NeuronKindsError, match=r"W_out\[1\]"):
        nk.bos_attention_scores(model, 1)
    with torch.no_grad():
        model.unembed.W_U[3, 5] = float("inf")
    with pytest.raises(NeuronKindsError, match="W_U"):
        nk.weight_stats(model)
