"""Vocabulary projections (§4.4): against ``transformers``' own weights, planted ground truth,
streamed models, ties and bad input; trigger suppression against a brute-force reference."""

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from opt_fixtures import LAYOUTS, make_tiny_opt, random_tokens
from planted import BOS, D_VOCAB, PREV2, TOK, VOCAB, planted_model, planted_tokens
from tl_models import TL4, process_weights, tl_model
from transformers import OPTForCausalLM

import tl_neuronkinds as nk
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.identity import model_identity
from tl_neuronkinds.loading.streaming import streamer_of
from tl_neuronkinds.vocab import (
    PROJECTION_COLUMNS,
    SUPPRESSION_COLUMNS,
    suppression_by_layer,
    trigger_suppression,
    vocab_projection,
    vocab_scores,
)
from tl_neuronkinds.vocab import projection as vocab

pytestmark = [
    pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning"),
    pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning"),
]

N_LAYERS = 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return {
        name: make_tiny_opt(root / name, n_layers=N_LAYERS, seed=seed, **kwargs)
        for seed, (name, kwargs) in enumerate(LAYOUTS.items())
    }


def hf_scores(path, layer: int) -> torch.Tensor:
    """``[d_mlp, d_vocab]`` float64 from ``OPTForCausalLM``'s tensors: ``fc2.weight`` rows through
    each LayerNorm's centring and gain on the way to the logits, ``project_out`` and
    ``lm_head`` (docs/kinds.md, "Promoted and suppressed tokens")."""
    hf = OPTForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    decoder = hf.model.decoder
    rows = decoder.layers[layer].fc2.weight.detach().double().T
    norms = []
    if not hf.config.do_layer_norm_before:  # post-LN: this block's last LN, then every later one
        norms.append(decoder.layers[layer].final_layer_norm)
        for later in decoder.layers[layer + 1 :]:
            norms += [later.self_attn_layer_norm, later.final_layer_norm]
    if decoder.final_layer_norm is not None:
        norms.append(decoder.final_layer_norm)
    for norm in norms:
        rows = (rows - rows.mean(dim=1, keepdim=True)) * norm.weight.detach().double()
    if decoder.project_out is not None:
        rows = rows @ decoder.project_out.weight.detach().double().T
    return rows @ hf.lm_head.weight.detach().double().T


def reference_ranks(scores: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Each row's k best token ids: by score (descending if ``largest``), ties by id."""
    ids = np.arange(scores.shape[1])
    key = -scores if largest else scores
    return np.stack([np.lexsort((ids, row))[:k] for row in key])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scores_and_ranks_equal_transformers_weights(layout, checkpoints):
    path = checkpoints[layout]
    model = nk.load_opt(path)
    d_mlp = model.blocks[0].mlp.W_out.shape[0]
    for layer in range(N_LAYERS):
        ref = hf_scores(path, layer)
        scores = vocab_scores(model, layer)
        assert scores.dtype == torch.float32 and scores.shape == (d_mlp, model.cfg.d_vocab)
        torch.testing.assert_close(scores.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max())
        neurons = [5, 0, d_mlp - 1, 5]
        torch.testing.assert_close(vocab_scores(model, layer, neurons), scores[neurons])
        table = vocab_projection(model, layer, neurons, k=4)
        assert list(table.columns) == PROJECTION_COLUMNS and len(table) == 4 * 2 * 4
        assert (table["layer"] == layer).all()
        for j, neuron in enumerate(neurons):
            for direction, largest in (("promoted", True), ("suppressed", False)):
                part = table.iloc[8 * j + (0 if largest else 4) : 8 * j + (4 if largest else 8)]
                assert (part["neuron"] == neuron).all()
                assert (part["direction"] == direction).all()
                assert part["rank"].tolist() == [0, 1, 2, 3]
                expect = reference_ranks(ref[neuron : neuron + 1].numpy(), 4, largest)[0]
                assert part["token_id"].tolist() == expect.tolist()
                np.testing.assert_allclose(part["score"], ref[neuron, expect], rtol=1e-5)
                tokens = [model.tokenizer.decode([t]) for t in expect]
                assert part["token"].tolist() == tokens


@pytest.mark.parametrize("offload", ["cpu", "disk"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_streamed_models_give_identical_results_loading_only_what_they_need(
    layout, offload, checkpoints
):
    resident = nk.load_opt(checkpoints[layout])
    streamed = nk.load_opt(checkpoints[layout], offload=offload)
    streamer = streamer_of(streamed)
    for layer in range(N_LAYERS):
        streamer.loads.clear()
        table = vocab_projection(streamed, layer, k=3)
        pd.testing.assert_frame_equal(table, vocab_projection(resident, layer, k=3))
        # Pre-LN: block ``layer`` only, once; post-LN (350m): also the later blocks' gains.
        later = range(layer, N_LAYERS) if layout == "350m-style" else [layer]
        assert streamer.loads == Counter(dict.fromkeys(later, 1))
        assert streamer.resident == set()
        torch.testing.assert_close(
            vocab_scores(streamed, layer, [1, 2]),
            vocab_scores(resident, layer, [1, 2]),
            rtol=0,
            atol=0,
        )


def test_half_precision_model_accumulates_in_float32(checkpoints):
    path = checkpoints["pre-ln"]
    half = vocab_scores(nk.load_opt(path, dtype=torch.float16), 1)
    assert half.dtype == torch.float32
    ref = hf_scores(path, 1)
    torch.testing.assert_close(half.double(), ref, rtol=0, atol=5e-3 * ref.abs().max())


def test_chunks_give_the_same_table(checkpoints, monkeypatch):
    model = nk.load_opt(checkpoints["350m-style"])
    whole = vocab_projection(model, 1, k=5)
    monkeypatch.setattr(vocab, "CHUNK_ELEMENTS", 3 * model.cfg.d_vocab)  # 3 neurons a chunk
    pd.testing.assert_frame_equal(vocab_projection(model, 1, k=5), whole)


def _one_hot_unembedding(model: Any) -> None:
    """Logit of token t reads residual dimension PREV2 + t (a block layer 1 never reads)."""
    with torch.no_grad():
        model.unembed.W_U.zero_()
        model.unembed.W_U[PREV2 : PREV2 + D_VOCAB] = torch.eye(D_VOCAB)


def test_planted_rows_promote_and_suppress_known_tokens_ties_by_id():
    model = planted_model()  # no LayerNorm: s = W_out[l][i] @ W_U
    _one_hot_unembedding(model)
    cat, the, dog, sun = (VOCAB.index(w) for w in (" cat", " the", " dog", " sun"))
    with torch.no_grad():
        w_out = model.blocks[1].mlp.W_out
        w_out[4, PREV2 + cat] = 2.0
        w_out[4, PREV2 + the] = 0.5
        w_out[4, PREV2 + dog] = 0.5
        w_out[4, PREV2 + sun] = -1.0
        w_out[4, TOK + sun] = 7.0  # not read by the unembedding: no effect
    table = vocab_projection(model, 1, [4, 0], k=4)
    four = table[table["neuron"] == 4]
    promoted = four[four["direction"] == "promoted"]
    suppressed = four[four["direction"] == "suppressed"]
    zeros = [t for t in range(D_VOCAB) if t not in (cat, the, dog, sun)]
    # " the" (4) before " dog" (9) at 0.5: the tie goes to the lower id, then the zeros by id.
    assert promoted["token_id"].tolist() == [cat, the, dog, zeros[0]]
    assert promoted["score"].tolist() == [2.0, 0.5, 0.5, 0.0]
    assert promoted["token"].tolist() == [f"<{t}>" for t in promoted["token_id"]]  # no tokenizer
    assert suppressed["token_id"].tolist() == [sun, *zeros[:3]]
    assert suppressed["score"].tolist() == [-1.0, 0.0, 0.0, 0.0]
    # A zero row ties every token: both directions list ids 0, 1, 2, 3.
    zero = table[table["neuron"] == 0]
    assert zero["token_id"].tolist() == [0, 1, 2, 3] * 2
    assert (zero["score"] == 0).all()


def test_planted_layernorm_is_centred_and_scaled_as_fold_ln_would():
    d = 8
    cfg = dict(
        n_layers=1, d_model=d, d_mlp=4, d_head=4, n_heads=2, n_ctx=4, d_vocab=d,
        act_fn="relu", normalization_type="LN", seed=0,
    )  # fmt: skip
    model = tl_model(**cfg)
    gain = torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
    with torch.no_grad():
        model.ln_final.w.copy_(gain)
        model.unembed.W_U.copy_(torch.eye(d))
        model.blocks[0].mlp.W_out[1] = 5.0  # a constant: centring removes it
        model.blocks[0].mlp.W_out[1, 3] += 1.0
    # s_t = (1[t = 3] - 1/8) * gain_t: token 3 promoted, token 0 (the largest other gain) most
    # suppressed, then tokens 1, 2, 4, 5, 7 tied at -1/8 (by id), token 6 last (-1/16).
    expect = (torch.eye(d)[3] - 1 / d) * gain
    torch.testing.assert_close(vocab_scores(model, 0, [1])[0], expect)
    table = vocab_projection(model, 0, [1], k=d)
    assert table[table["direction"] == "promoted"]["token_id"].tolist() == [3, 6, 1, 2, 4, 5, 7, 0]
    assert table[table["direction"] == "suppressed"]["token_id"].tolist() == [
        0,
        1,
        2,
        4,
        5,
        7,
        6,
        3,
    ]
    # TransformerLens's own processing (fold_ln, centred W_out) leaves s unchanged; 4.x's
    # fold_ln also centres W_U over the vocabulary (center_unembed=False notwithstanding),
    # which moves each row of s by a constant: the ranks, and the logits' softmax, stay.
    with torch.no_grad():
        model.blocks[0].mlp.W_out.copy_(torch.randn(4, d))
    before, w_u = vocab_scores(model, 0), model.W_U.detach().clone()
    process_weights(model, fold_ln=True, center_writing_weights=True, center_unembed=False)
    assert not torch.equal(model.W_U, w_u)  # the gain went into W_U
    after = vocab_scores(model, 0)
    if TL4:
        after, before = after - after.mean(1, keepdim=True), before - before.mean(1, keepdim=True)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("seed", range(3))
def test_ranked_is_a_stable_sort_of_each_row(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (40, 23), generator=gen).float()  # many ties
    scores[:5] = torch.randn(5, 23, generator=gen)  # and rows without
    scores[5] = 0.0
    for k in (1, 2, 7, 22, 23):
        for largest in (True, False):
            values, ids = vocab._ranked(scores, k, largest)
            expect = reference_ranks(scores.numpy(), k, largest)
            assert ids.tolist() == expect.tolist(), (k, largest)
            assert values.tolist() == np.take_along_axis(scores.numpy(), expect, 1).tolist()


def _recorded_planted(model: Any) -> nk.NeuronProfile:
    profile = nk.record(model, planted_tokens(), bos_token_id=BOS, progress=False)
    profile.token_strings = list(VOCAB)
    return profile


@pytest.fixture(scope="module")
def planted_suppression():
    """The planted model whose detectors' W_out rows write into the unembedding's PREV2 block
    (read by no neuron, so the recording is the planted one): each detector's trigger scores
    are set by hand."""
    model = planted_model()
    _one_hot_unembedding(model)
    rows = {  # (layer, neuron): {token: s_t}
        (0, 2): {" cat": -1.0, " Cat": -1.0},  # triggers " cat", " Cat": suppressed
        (0, 3): {" the": 2.0},  # promoted
        (1, 1): {" cat": -3.0, " the": 1.0},  # a non-trigger promoted; the trigger suppressed
        (1, 2): {" mat": 1.0},
        (1, 3): {" dog": -2.0, " ran": 1.0},  # mean -0.5: suppresses
    }
    with torch.no_grad():
        for (layer, neuron), scores in rows.items():
            for word, value in scores.items():
                model.blocks[layer].mlp.W_out[neuron, PREV2 + VOCAB.index(word)] = value
    return model, _recorded_planted(model), rows


@pytest.mark.slow
def test_trigger_suppression_on_planted_detectors(planted_suppression):
    model, profile, rows = planted_suppression
    table = trigger_suppression(model, profile)
    assert list(table.columns) == SUPPRESSION_COLUMNS
    assert list(zip(table["layer"], table["neuron"], strict=True)) == sorted(rows)
    for _, row in table.iterrows():
        scores = rows[(row["layer"], row["neuron"])]
        assert row["trigger_ids"] == [VOCAB.index(t) for t in row["triggers"]]
        s_t = [scores.get(t, 0.0) for t in row["triggers"]]
        assert set(row["triggers"]) <= set(scores)
        assert row["mean_trigger_score"] == pytest.approx(np.mean(s_t))
        assert row["suppresses"] == (np.mean(s_t) < 0)
        everything = [scores.get(w, 0.0) for w in VOCAB]
        pct = [100 * sum(v < s for v in everything) / D_VOCAB for s in s_t]
        assert row["trigger_rank_pct"] == pytest.approx(pct)
    by_key = table.set_index(["layer", "neuron"])
    assert by_key.loc[(0, 2), "trigger_rank_pct"] == [0.0, 0.0]
    assert by_key.loc[(0, 3), "trigger_rank_pct"] == [100 * 15 / 16]
    assert by_key["suppresses"].to_dict() == {
        (0, 2): True, (0, 3): False, (1, 1): True, (1, 2): False, (1, 3): True,
    }  # fmt: skip
    summary = suppression_by_layer(table)
    assert summary.to_dict("list") == {
        "layer": [0, 1],
        "token_detectors": [2, 3],
        "suppressing": [1, 2],
        "suppressing_fraction": [0.5, 2 / 3],
    }
    wider = suppression_by_layer(table, layers=[0, 1, 2])
    assert wider["token_detectors"].tolist() == [2, 3, 0]
    assert np.isnan(wider["suppressing_fraction"].iloc[2])
    # Cut-offs that leave no detector: an empty table of the same columns.
    none = trigger_suppression(model, profile, min_count=10**9)
    assert list(none.columns) == SUPPRESSION_COLUMNS and none.empty
    assert suppression_by_layer(none, profile.layers)["token_detectors"].tolist() == [0, 0]
    assert nk.trigger_suppression is trigger_suppression  # exported lazily
    # The causal check: the same table, and per detector its triggers' next-token probability
    # where it is active, and the change when it is ablated (trigger_probability_change's own).
    from tl_neuronkinds.interventions import trigger_probability_change

    tokens = planted_tokens()
    causal = trigger_suppression(model, profile, tokens=tokens, batch_size=3)
    pd.testing.assert_frame_equal(causal[SUPPRESSION_COLUMNS], table)
    found = list(zip(table["layer"], table["neuron"], table["trigger_ids"], strict=True))
    expected = trigger_probability_change(model, tokens, found, bos_token_id=BOS)
    extra = ["active_positions", "trigger_prob", "trigger_prob_change"]
    pd.testing.assert_frame_equal(causal[extra], expected[extra])
    assert (causal["active_positions"] > 0).all()


@pytest.mark.slow
def test_trigger_suppression_matches_brute_force_on_a_random_checkpoint(checkpoints):
    """Detectors planted in the activations of random tokens, scored against the reference."""
    path = checkpoints["350m-style"]
    model = nk.load_opt(path)
    d_vocab, d_mlp = model.cfg.d_vocab, model.blocks[0].mlp.W_out.shape[0]
    tokens = random_tokens(64, 32, d_vocab, seed=1)
    gen = torch.Generator().manual_seed(2)
    planted = {(0, 3): [7, 11], (0, 9): [50], (2, 0): [4, 60, 90], (2, 5): [33]}
    acts = {}
    for layer in (0, 2):
        noise = torch.rand(*tokens.shape, d_mlp, generator=gen)
        acts[layer] = torch.where(noise > 0.5, noise, 0.0)
    for (layer, neuron), triggers in planted.items():
        acts[layer][..., neuron] = torch.isin(tokens, torch.tensor(triggers)).float()
    profile = nk.profile_from_activations(
        tokens, acts, d_vocab=d_vocab, bos_token_id=2, meta=model_identity(model)
    )
    table = trigger_suppression(model, profile)
    assert list(zip(table["layer"], table["neuron"], strict=True)) == sorted(planted)
    for _, row in table.iterrows():
        assert sorted(row["trigger_ids"]) == planted[(row["layer"], row["neuron"])]
        ref = hf_scores(path, row["layer"])[row["neuron"]]
        s_t = ref[row["trigger_ids"]]
        assert row["mean_trigger_score"] == pytest.approx(float(s_t.mean()), rel=1e-5)
        assert row["suppresses"] == bool(s_t.mean() < 0)
        pct = [100 * int((ref < s).sum()) / d_vocab for s in s_t]
        assert row["trigger_rank_pct"] == pytest.approx(pct)


@pytest.mark.slow
def test_trigger_suppression_refuses_a_profile_of_another_model(planted_suppression):
    model, profile, _ = planted_suppression
    other = planted_model()
    with torch.no_grad():
        other.blocks[0].mlp.b_in[0] = -99.0  # same shapes, other weights
    with pytest.raises(NeuronKindsError, match="another model: its model_fingerprint"):
        trigger_suppression(other, profile)
    anonymous = _recorded_planted(model)
    del anonymous.meta["model_fingerprint"]
    with pytest.raises(NeuronKindsError, match="no model_fingerprint"):
        trigger_suppression(model, anonymous)
    small = tl_model(
        **dict(n_layers=2, d_model=8, d_mlp=4, d_head=4, n_ctx=8, d_vocab=16,
                                act_fn="relu", normalization_type=None)
    )  # fmt: skip
    with pytest.raises(NeuronKindsError, match="does not fit the model"):
        trigger_suppression(small, profile)


def test_bad_arguments_raise(checkpoints):
    model = nk.load_opt(checkpoints["pre-ln"])
    d_vocab = model.cfg.d_vocab
    cases = [
        (dict(layer=N_LAYERS), "layer 3 out of range 0..2"),
        (dict(layer=-1), "layer -1 out of range"),
        (dict(layer=True), "layer must be an integer"),
        (dict(layer=0, neurons=[0, 64]), "neuron 64 out of range 0..63"),
        (dict(layer=0, neurons=[-1]), "neuron -1 out of range"),
        (dict(layer=0, neurons=np.array([[0, 1]])), "1-D sequence of integers"),
        (dict(layer=0, neurons=torch.tensor([0.5])), "1-D sequence of integers"),
        (dict(layer=0, neurons=np.array([True])), "1-D sequence of integers"),
        (dict(layer=0, k=0), f"k must be an integer in 1..{d_vocab}"),
        (dict(layer=0, k=d_vocab + 1), "k must be an integer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(NeuronKindsError, match=message):
            vocab_projection(model, **kwargs)
    with pytest.raises(NeuronKindsError, match="neuron 64 out of range"):
        vocab_scores(model, 0, torch.tensor([64]))
    rms = tl_model(
        **dict(n_layers=1, d_model=8, d_mlp=4, d_head=4, n_ctx=8, d_vocab=16,
                                act_fn="relu", normalization_type="RMS")
    )  # fmt: skip
    with pytest.raises(NeuronKindsError, match="normalization_type 'RMS' is not supported"):
        vocab_scores(rms, 0)
    with pytest.raises(NeuronKindsError, match="lacks"):
        suppression_by_layer(pd.DataFrame({"layer": [0]}))
    empty = vocab_projection(model, 0, [], k=2)
    assert list(empty.columns) == PROJECTION_COLUMNS and empty.empty


def test_non_finite_weights_raise_and_large_finite_ones_do_not():
    model = planted_model()
    _one_hot_unembedding(model)
    with torch.no_grad():
        model.blocks[1].mlp.W_out[4, PREV2 : PREV2 + 2] = 3e38  # finite, but sums to inf
    table = vocab_projection(model, 1, [4], k=2)
    assert table["token_id"].tolist()[:2] == [0, 1]
    with torch.no_grad():
        model.blocks[1].mlp.W_out[5, 0] = float("nan")
    with pytest.raises(NeuronKindsError, match=r"W_out\[1\] holds NaN or infinite values"):
        vocab_scores(model, 1, [5])
    with torch.no_grad():
        model.unembed.W_U[0, 3] = float("inf")
    with pytest.raises(NeuronKindsError, match="W_U holds NaN or infinite values"):
        vocab_projection(model, 0)
