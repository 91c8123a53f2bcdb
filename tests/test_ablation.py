"""nk.ablate_neurons against a brute force (the same model with the neurons' W_out rows edited)
and a planted truth (a neuron that writes nothing changes nothing; one that writes a lot does)."""

import copy

import numpy as np
import pytest
import torch
from tl_models import mlp_b_out, tl_model

import tl_neuronkinds as nk
from tl_neuronkinds.interventions.ablation import COLUMNS

BOS = 0


@pytest.fixture(scope="module")
def model():
    m = tl_model(
        n_layers=2, d_model=32, d_mlp=64, d_head=8, n_heads=4, n_ctx=16, d_vocab=50,
        act_fn="relu", normalization_type="LN", seed=3, dtype=torch.float64,
    )  # fmt: skip
    with torch.no_grad():
        m.blocks[1].mlp.W_out[7] = 0.0  # planted: neuron (1, 7) writes nothing
        m.blocks[0].mlp.W_out[3] *= 40.0  # planted: neuron (0, 3) writes a lot
    return m


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(1, 50, (6, 16), generator=gen)
    rows[:, 0] = BOS
    return rows


def _rel(model) -> float:
    """The relative tolerance of a comparison with the brute force: float64 models agree to
    rounding; TransformerLens 4.x builds its test models in float32 whatever dtype is asked."""
    return 1e-10 if next(model.parameters()).dtype == torch.float64 else 1e-5


def _brute(model, tokens, neurons: dict, means: dict | None = None) -> tuple[float, float]:
    """Loss and entropy of a copy of ``model`` whose ablated neurons' W_out rows are edited."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, ids in neurons.items():
            mlp = edited.blocks[layer].mlp
            for i in ids:
                if means is not None:
                    mlp_b_out(mlp).add_(means[(layer, i)] * mlp.W_out[i])
                mlp.W_out[i] = 0.0
        logits = edited(tokens).double()[:, :-1]
    target = tokens[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), target.reshape(-1))
    probs = torch.softmax(logits, dim=-1)
    entropy = -(probs * torch.log(probs)).sum(-1).mean()
    return float(loss), float(entropy)


def _brute_means(model, tokens, neurons: dict) -> dict:
    _, cache = model.run_with_cache(tokens)
    text = tokens != BOS
    return {
        (layer, i): float(cache[f"blocks.{layer}.mlp.hook_post"][..., i][text].double().mean())
        for layer, ids in neurons.items()
        for i in ids
    }


def test_zero_ablation_equals_zeroed_rows(model, tokens) -> None:
    neurons = {0: [3, 5], 1: [9]}
    table = nk.ablate_neurons(model, tokens, neurons, batch_size=4)
    assert list(table.columns) == COLUMNS and len(table) == 1
    row = table.iloc[0]
    assert row["ablated"] == "L0 N3, L0 N5, L1 N9" and row["predictions"] == 6 * 15
    assert pd_na(row["layer"]) and pd_na(row["neuron"])
    base_loss, base_entropy = _brute(model, tokens, {})
    loss, entropy = _brute(model, tokens, neurons)
    assert row["loss"] == pytest.approx(base_loss, rel=_rel(model))
    assert row["entropy"] == pytest.approx(base_entropy, rel=_rel(model))
    assert row["loss_ablated"] == pytest.approx(loss, rel=_rel(model))
    assert row["entropy_ablated"] == pytest.approx(entropy, rel=_rel(model))
    assert row["delta_loss"] == pytest.approx(loss - base_loss, abs=_rel(model))


def test_mean_ablation_equals_rows_moved_into_the_bias(model, tokens) -> None:
    neurons = {0: [3], 1: [2, 9]}
    held, means_from = tokens[:3], tokens[3:]
    table = nk.ablate_neurons(
        model, held, neurons, mode="mean", mean_tokens=means_from, bos_token_id=BOS
    )
    loss, entropy = _brute(model, held, neurons, _brute_means(model, means_from, neurons))
    assert table.loc[0, "loss_ablated"] == pytest.approx(loss, rel=_rel(model))
    assert table.loc[0, "entropy_ablated"] == pytest.approx(entropy, rel=_rel(model))


def test_separately_gives_one_row_per_neuron_and_the_planted_effects(model, tokens) -> None:
    table = nk.ablate_neurons(model, tokens, {1: [7], 0: [3]}, separately=True)
    assert table[["layer", "neuron"]].astype(int).values.tolist() == [[0, 3], [1, 7]]
    silent = table[table["neuron"] == 7].iloc[0]
    assert silent["delta_loss"] == 0.0 and silent["delta_entropy"] == 0.0  # writes nothing
    loud = table[table["neuron"] == 3].iloc[0]
    assert abs(loud["delta_loss"]) > 1e-3
    assert loud["loss_ablated"] == pytest.approx(
        _brute(model, tokens, {0: [3]})[0], rel=_rel(model)
    )


def test_bad_input_is_named(model, tokens) -> None:
    for neurons, message in (
        ({}, "non-empty dict"),
        ({2: [0]}, "layer"),
        ({0: [64]}, "neuron of layer 0"),
        ({0: []}, "empty"),
        ({0: "3"}, "list of neuron ids"),
        ([0, 1], "dict"),
    ):
        with pytest.raises(nk.NeuronKindsError, match=message):
            nk.ablate_neurons(model, tokens, neurons)
    with pytest.raises(nk.NeuronKindsError, match="mode"):
        nk.ablate_neurons(model, tokens, {0: [1]}, mode="half")
    with pytest.raises(nk.NeuronKindsError, match="two or more tokens"):
        nk.ablate_neurons(model, tokens[:, :1], {0: [1]})
    with pytest.raises(nk.NeuronKindsError, match="token ids"):
        nk.ablate_neurons(model, tokens + 100, {0: [1]})
    with pytest.raises(nk.NeuronKindsError, match="BOS"):
        nk.ablate_neurons(model, tokens, {0: [1]}, mode="mean")  # no tokenizer, no bos_token_id
    with pytest.raises(nk.NeuronKindsError, match="no text"):
        nk.ablate_neurons(
            model, tokens, {0: [1]}, mode="mean", mean_tokens=torch.zeros_like(tokens),
            bos_token_id=BOS,
        )  # fmt: skip


def pd_na(value) -> bool:
    import pandas as pd

    return value is pd.NA or pd.isna(value)


# ------------------------------------------------------------------ trigger probabilities
@pytest.fixture(scope="module")
def suppressor():
    """No LayerNorm, so that logits are the residual stream times W_U: neuron (1, 4) is made
    always active and to write minus the unembedding of token 11 (it suppresses it)."""
    m = tl_model(
        n_layers=2, d_model=32, d_mlp=64, d_head=8, n_heads=4, n_ctx=16, d_vocab=50,
        act_fn="relu", normalization_type=None, seed=5, dtype=torch.float64,
    )  # fmt: skip
    with torch.no_grad():
        m.blocks[1].mlp.b_in[4] = 50.0
        m.blocks[1].mlp.W_out[4] = -0.05 * m.unembed.W_U[:, 11]
    return m


def _brute_trigger_change(model, tokens, layer, neuron, triggers) -> tuple[int, float, float]:
    _, cache = model.run_with_cache(tokens)
    active = (cache[f"blocks.{layer}.mlp.hook_post"][..., neuron] > 0) & (tokens != BOS)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[layer].mlp.W_out[neuron] = 0.0
        base = torch.softmax(model(tokens).double(), -1)[..., triggers].sum(-1)
        ablated = torch.softmax(edited(tokens).double(), -1)[..., triggers].sum(-1)
    n = int(active.sum())
    return n, float(base[active].mean()), float((ablated - base)[active].mean())


def test_trigger_probability_change_equals_brute_force(suppressor, tokens) -> None:
    from tl_neuronkinds.interventions import trigger_probability_change

    detectors = [(1, 4, [11]), (0, 3, [7, 9]), (1, 20, [2])]
    table = trigger_probability_change(
        suppressor, tokens, detectors, batch_size=4, bos_token_id=BOS
    )
    assert table[["layer", "neuron"]].values.tolist() == [[1, 4], [0, 3], [1, 20]]
    for row, (layer, neuron, triggers) in zip(table.itertuples(), detectors, strict=True):
        n, base, change = _brute_trigger_change(suppressor, tokens, layer, neuron, triggers)
        assert row.active_positions == n
        if n:
            assert row.trigger_prob == pytest.approx(base, rel=1e-5)
            assert row.trigger_prob_change == pytest.approx(change, rel=1e-4, abs=1e-9)
        else:
            assert np.isnan(row.trigger_prob_change)
    planted = table.iloc[0]
    assert planted["active_positions"] == 6 * 15  # every text position
    assert planted["trigger_prob_change"] > 0  # removing it raises its trigger's probability
    with pytest.raises(nk.NeuronKindsError, match="trigger id"):
        trigger_probability_change(suppressor, tokens, [(1, 4, [50])], bos_token_id=BOS)
    with pytest.raises(nk.NeuronKindsError, match="no trigger"):
        trigger_probability_change(suppressor, tokens, [(1, 4, [])], bos_token_id=BOS)
