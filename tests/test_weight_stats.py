"""Weight statistics (Gurnee et al. 2024): against a numpy / scipy reference on ``transformers``'
own weights (raw and processed), against TransformerLens's own processing (the weights the paper
used), planted prediction, suppression, entropy and attention-deactivation neurons, the
attention score against a forward difference, streamed models, post-LN models and bad input."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from opt_fixtures import LAYOUTS, make_tiny_opt, random_tokens
from safetensors.torch import load_file, save_file
from tl_models import process_weights, untie_unembedding
from transformer_lens.model_bridge import TransformerBridge
from transformers import OPTForCausalLM

import tl_neuronkinds as nk
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.universal import weight_views
from tl_neuronkinds.universal.weights import COLUMNS, SCORE_COLUMNS

pytestmark = [
    pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning"),
]

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


def _cosines(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``cos(rows[i], columns[:, v])``."""
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ (
        columns / np.linalg.norm(columns, axis=0)
    )


def _centre(rows: np.ndarray) -> np.ndarray:
    return rows - rows.mean(axis=-1, keepdims=True)


def _moments(cos: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_mean": cos.mean(axis=1),
        f"{prefix}_var": cos.var(axis=1),
        f"{prefix}_skew": scipy.stats.skew(cos, axis=1),
        f"{prefix}_kurt": scipy.stats.kurtosis(cos, axis=1, fisher=False),
        f"{prefix}_max": cos.max(axis=1),
        f"{prefix}_min": cos.min(axis=1),
    }


def reference(path, layer: int, null_dims: int, weights: str = "raw") -> pd.DataFrame:
    """The statistics of ``layer``'s neurons in numpy float64 from ``OPTForCausalLM``'s tensors;
    ``weights="processed"``: ``W_U`` through the transposed readout (every LayerNorm's gain and
    centring, ``project_out``), centred over the vocabulary, ``W_out`` centred, ``W_in`` times
    the pre-FFN LayerNorm's gain and centred, ``W_E`` centred (the last two pre-LN only)."""
    hf = OPTForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    decoder = hf.model.decoder
    pre_ln = hf.config.do_layer_norm_before
    fc1 = decoder.layers[layer].fc1.weight.detach().double().numpy()  # [d_mlp, d_model]
    fc2 = decoder.layers[layer].fc2.weight.detach().double().numpy().T  # [d_mlp, d_model]
    norms = []
    if not pre_ln:
        norms.append(decoder.layers[layer].final_layer_norm)
        for later in decoder.layers[layer + 1 :]:
            norms += [later.self_attn_layer_norm, later.final_layer_norm]
    if decoder.final_layer_norm is not None:
        norms.append(decoder.final_layer_norm)
    gains = [norm.weight.detach().double().numpy() for norm in norms]
    project = None if decoder.project_out is None else decoder.project_out.weight.detach()
    d = fc2
    for g in gains:
        d = _centre(d) * g
    if project is not None:
        d = d @ project.double().numpy().T
    w_u = hf.lm_head.weight.detach().double().numpy().T  # [d_unembed, d_vocab]
    embed = decoder.embed_tokens.weight.detach().double().numpy()
    if decoder.project_in is not None:
        embed = embed @ decoder.project_in.weight.detach().double().numpy().T
    assert not w_u[:, PAD].any() and not embed[PAD].any()
    reads, writes, unembed = fc1, d, np.delete(w_u, PAD, axis=1)
    if weights == "processed":
        folded = w_u.T @ project.double().numpy() if project is not None else w_u.T
        for g in reversed(gains):
            folded = _centre(folded * g)
        unembed = np.delete(_centre(folded.T), PAD, axis=1)  # centred over every token
        writes = _centre(fc2)
        if pre_ln:
            reads = _centre(
                fc1 * decoder.layers[layer].final_layer_norm.weight.detach().double().numpy()
            )
            embed = _centre(embed)
    embed = np.delete(embed, PAD, axis=0)
    null = np.linalg.svd(np.delete(w_u, PAD, axis=1))[0][:, -null_dims:]
    null_fraction = np.sum((d @ null) ** 2, axis=1) / np.sum(d**2, axis=1)
    in_norm, out_norm = np.linalg.norm(fc1, axis=1), np.linalg.norm(fc2, axis=1)
    embedded = _moments(_cosines(reads, embed.T), "embed")
    return pd.DataFrame(
        {
            **_moments(_cosines(writes, unembed), "vocab"),
            "embed_max": embedded["embed_max"],
            "embed_mean": embedded["embed_mean"],
            "w_in_norm": in_norm,
            "w_out_norm": out_norm,
            "cos_in_out": np.sum(fc1 * fc2, axis=1) / (in_norm * out_norm),
            "null_fraction": null_fraction,
            "entropy_score": out_norm * null_fraction,
        }
    )


@pytest.mark.parametrize("weights_kind", ["raw", "processed"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_statistics_equal_a_numpy_reference_on_transformers_weights(
    layout, weights_kind, checkpoints
):
    path = checkpoints[layout]
    model = nk.load_opt(path)
    table = nk.weight_stats(model, weights=weights_kind)
    assert list(table.columns) == COLUMNS
    d_mlp = model.blocks[0].mlp.W_out.shape[0]
    assert table["layer"].tolist() == np.repeat(range(N_LAYERS), d_mlp).tolist()
    assert table["neuron"].tolist() == list(range(d_mlp)) * N_LAYERS
    null_dims = max(1, round(0.02 * model.W_U.shape[0]))
    for layer in range(N_LAYERS):
        ref = reference(path, layer, null_dims, weights_kind)
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


def _transformer_lens_processed(path):
    """The model as Gurnee et al.'s code loads it: TransformerLens's default processing (float64)."""
    model = nk.load_opt(path, dtype=torch.float64)
    process_weights(model, fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


def test_processed_statistics_equal_transformer_lens_processed_weights(checkpoints):
    path = checkpoints["pre-ln"]
    model = nk.load_opt(path)
    w_u_before = model.W_U.detach().clone()
    table = nk.weight_stats(model)  # the default: processed
    pd.testing.assert_frame_equal(table, nk.weight_stats(model, weights="processed"))
    assert torch.equal(model.W_U, w_u_before)  # computed on copies
    tl = _transformer_lens_processed(path)
    w_u = np.delete(tl.W_U.detach().numpy(), PAD, axis=1)
    w_e = np.delete(tl.W_E.detach().numpy(), PAD, axis=0)
    pad = tl.W_U[:, PAD].detach().numpy()  # TransformerLens centres over every token
    np.testing.assert_allclose(w_u.mean(axis=1), -pad / w_u.shape[1], rtol=1e-4, atol=1e-8)
    for layer in range(N_LAYERS):
        w_out = tl.blocks[layer].mlp.W_out.detach().numpy()
        w_in = tl.blocks[layer].mlp.W_in.detach().numpy().T
        vocab = _moments(_cosines(w_out, w_u), "vocab")
        embed = _moments(_cosines(w_in, w_e.T), "embed")
        part = table[table["layer"] == layer].reset_index(drop=True)
        for column, expect in [*vocab.items(), *embed.items()]:
            if column in part:
                np.testing.assert_allclose(part[column], expect, rtol=1e-5, atol=1e-6)


def test_processing_twice_changes_nothing(tmp_path):
    # no zero <pad> column: TransformerLens's centring makes it non-zero, so a processed model
    # counts it among the tokens
    path = make_tiny_opt(tmp_path / "whole-vocab", n_layers=N_LAYERS, seed=5, tokenizer=False)
    table = nk.weight_stats(nk.load_opt(path), partition_ratio=1.0)
    again = nk.weight_stats(_transformer_lens_processed(path), partition_ratio=1.0)
    columns = [c for c in COLUMNS if c.startswith(("vocab_", "embed_"))] + ["partition"]
    assert 0 < table["partition"].sum() < len(table)
    pd.testing.assert_frame_equal(again[columns], table[columns], rtol=1e-5, atol=1e-6)


def test_partition_is_variance_above_a_seeded_random_baseline(checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    tl = _transformer_lens_processed(checkpoints["pre-ln"])
    for weights_kind, w_u in [
        ("raw", model.W_U.detach().double().numpy()),
        ("processed", tl.W_U.detach().numpy()),
    ]:
        table = nk.weight_stats(model, partition_ratio=1.0, seed=3, weights=weights_kind)
        again = nk.weight_stats(model, partition_ratio=1.0, seed=3, weights=weights_kind)
        pd.testing.assert_frame_equal(table, again)
        gen = torch.Generator().manual_seed(3)
        noise = torch.randn(64, model.W_U.shape[0], generator=gen, dtype=torch.float64).numpy()
        noise = noise if weights_kind == "raw" else _centre(noise)
        baseline = _cosines(noise, np.delete(w_u, PAD, axis=1)).var(axis=1).mean()
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


@pytest.mark.slow
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
        model.blocks[1].ln2.w.fill_(1.0)
        model.blocks[1].mlp.W_in[:, 3] = 3 * model.W_E[token]  # reads the token's embedding
        _, cache = model.run_with_cache(torch.tensor([[2]]))
        k_bos = cache[f"blocks.{head_layer}.attn.hook_k"][0, 0, head]
        attn, ln1 = model.blocks[head_layer].attn, model.blocks[head_layer].ln1
        target = (attn.W_Q[head] @ k_bos) * ln1.w
        target = target - target.mean()
        model.blocks[0].mlp.W_out[5] = 2 * norm * target / target.norm()
    table = nk.weight_stats(model, null_dims=1)
    stats = table[table["layer"] == 1].set_index("neuron")
    for embed_max in (
        stats["embed_max"],
        nk.weight_stats(model, layers=1, weights="raw")["embed_max"],
    ):
        np.testing.assert_allclose(embed_max[3], 1.0, rtol=1e-6)
        assert (embed_max.drop(3) < 0.99).all()
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


@pytest.mark.parametrize("weights_kind", ["raw", "processed"])
@pytest.mark.parametrize("layout", ["pre-ln", "350m-style"])
def test_streamed_models_give_identical_tables(layout, weights_kind, checkpoints, monkeypatch):
    resident = nk.weight_stats(nk.load_opt(checkpoints[layout]), weights=weights_kind)
    streamed = nk.load_opt(checkpoints[layout], offload="cpu")
    pd.testing.assert_frame_equal(nk.weight_stats(streamed, weights=weights_kind), resident)
    monkeypatch.setattr(weight_views, "CHUNK_ELEMENTS", 3 * 96)  # three neurons (tokens) a
    # chunk: float32 products summed in another order, so equal to float32 precision
    pd.testing.assert_frame_equal(
        nk.weight_stats(streamed, layers=[2, 0], weights=weights_kind),
        resident[resident["layer"] != 1].reset_index(drop=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_centred_writing_weights_keep_the_vocabulary_statistics(checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    before = nk.weight_stats(model, weights="raw")
    process_weights(model, fold_ln=False, center_writing_weights=True, center_unembed=False)
    after = nk.weight_stats(model, weights="raw")
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
        ({"weights": "folded"}, "weights"),
        ({"weights": "Processed"}, "weights"),
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
    model = nk.load_opt(checkpoints["pre-ln"])
    untie_unembedding(model)  # so that the NaN is in W_E alone
    with torch.no_grad():
        model.embed.W_E[3, 5] = float("nan")
    for weights_kind in ("raw", "processed"):
        with pytest.raises(NeuronKindsError, match="W_E"):
            nk.weight_stats(model, weights=weights_kind)
