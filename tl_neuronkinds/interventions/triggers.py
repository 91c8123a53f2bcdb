"""Do token detectors suppress their own triggers, causally? (Voita et al. 2024, §4.4)

The paper reads suppression off the weights: a token detector's vocabulary projection is
negative on its triggers (``vocab.trigger_suppression``'s ``mean_trigger_score``). The causal
check: at every position where the detector is active, set its activation to zero and see how
the next-token probability of its triggers, ``P(next in triggers) = sum over its triggers t of
softmax(logits)_t``, changes. A detector that suppresses its triggers raises that probability
when removed: the change is positive.

``trigger_probability_change`` runs, per batch, one forward of the unmodified model and one per
detector active in the batch, with that detector zeroed at every position of the rows (as
``ablate_neurons`` does); the change is read at the positions where it was active.
Probabilities come from a float32 log-sum-exp over the vocabulary, so no
``[batch, pos, d_vocab]`` float64 copy is made.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.interventions.ablation import BATCH_ROWS, batches, check_tokens_for, zeroing
from tl_neuronkinds.loading.hook_names import mlp_post
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.loading.tokens import bos_of

COLUMNS = ["layer", "neuron", "active_positions", "trigger_prob", "trigger_prob_change"]


def _trigger_prob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: the probability of the next token being one of ``ids``."""
    logits = logits.float()
    picked = logits[..., ids.to(logits.device)]
    return torch.exp(torch.logsumexp(picked, -1) - torch.logsumexp(logits, -1)).double()


def _keeper(seen: dict[int, torch.Tensor], layer: int, shape: torch.Size) -> Any:
    """A hook keeping ``layer``'s activations in ``seen``, as ``[batch, pos, d_mlp]``."""

    def keep(value: torch.Tensor, hook: Any) -> None:
        seen[layer] = value.detach().reshape(shape[0], shape[1], -1)  # either hook layout

    return keep


def trigger_probability_change(
    model: Any,
    tokens: torch.Tensor,
    detectors: Sequence[tuple[int, int, Sequence[int]]],
    *,
    threshold: float = 0.0,
    batch_size: int | None = None,
    bos_token_id: int | None = None,
) -> pd.DataFrame:
    """Per detector, the change in the next-token probability of its triggers when it is
    zero-ablated, at the text positions where it is active (module docstring).

    Args:
        model: A HookedTransformer or TransformerBridge (``load_opt``; streamed models work).
        tokens: ``Int[n_seq seq_len]``, each row starting with BOS.
        detectors: ``(layer, neuron, trigger token ids)`` triples.
        threshold: A neuron is active where its activation is above this (the profile's).
        batch_size: Rows per forward (default 8).
        bos_token_id: BOS positions are not text positions (default: the tokenizer's).

    Returns:
        One row per detector, in the order given: ``layer``, ``neuron``, ``active_positions``
        (text positions where it is active), ``trigger_prob`` (the mean probability of its
        triggers there, unmodified) and ``trigger_prob_change`` (the mean change when it is
        ablated; positive: it suppressed them; NaN where it is never active).

    Raises:
        NeuronKindsError: Bad tokens, a layer, neuron or trigger id out of range.
    """
    tokens = check_tokens_for(model, tokens, "tokens")
    batch = BATCH_ROWS if batch_size is None else check_int("batch_size", batch_size, 1)
    bos = bos_of(model, bos_token_id)
    n_layers, d_mlp, d_vocab = model.cfg.n_layers, int(model.cfg.d_mlp), model.cfg.d_vocab
    checked = []
    for layer, neuron, triggers in detectors:
        layer = check_int("a detector's layer", layer, 0, n_layers - 1)
        neuron = check_int(f"a detector's neuron of layer {layer}", neuron, 0, d_mlp - 1)
        ids = [check_int("a trigger id", int(t), 0, d_vocab - 1) for t in triggers]
        if not ids:
            raise NeuronKindsError(f"detector (layer {layer}, neuron {neuron}) has no trigger")
        checked.append((layer, neuron, torch.tensor(ids, dtype=torch.int64)))
    count = np.zeros(len(checked), dtype=np.int64)
    base_sum = np.zeros(len(checked))
    change_sum = np.zeros(len(checked))
    layers = sorted({layer for layer, _, _ in checked})
    for rows in batches(model, tokens, batch):
        seen: dict[int, torch.Tensor] = {}
        hooks = [(mlp_post(layer), _keeper(seen, layer, rows.shape)) for layer in layers]
        with torch.inference_mode(), stop_at(model, None):
            logits = model.run_with_hooks(rows, fwd_hooks=hooks, return_type="logits")
        text = rows != bos
        for j, (layer, neuron, trigger_ids) in enumerate(checked):
            active = (seen[layer][..., neuron] > threshold) & text.to(seen[layer].device)
            if not bool(active.any()):
                continue
            base = _trigger_prob(logits, trigger_ids)
            ablate = [(mlp_post(layer), zeroing(torch.tensor([neuron])))]
            with torch.inference_mode(), stop_at(model, None):
                ablated = model.run_with_hooks(rows, fwd_hooks=ablate, return_type="logits")
            where = active.to(base.device)
            count[j] += int(where.sum())
            base_sum[j] += float(base[where].sum())
            change_sum[j] += float((_trigger_prob(ablated, trigger_ids) - base)[where].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        table = pd.DataFrame(
            {
                "layer": [layer for layer, _, _ in checked],
                "neuron": [neuron for _, neuron, _ in checked],
                "active_positions": count,
                "trigger_prob": np.where(count > 0, base_sum / np.maximum(count, 1), np.nan),
                "trigger_prob_change": np.where(
                    count > 0, change_sum / np.maximum(count, 1), np.nan
                ),
            }
        )
    return table[COLUMNS].astype({"layer": np.int64, "neuron": np.int64})
