"""Neuron ablations: what the model loses without some neurons (Gurnee et al. 2024, §4-5, the
interventions of their reference code).

``ablate_neurons`` sets neurons' activations (``blocks.{l}.mlp.hook_post``, the value after
the nonlinearity, where this package's neurons are defined) to zero, or to each neuron's mean
activation over the text positions of ``mean_tokens``, at every position of every row, and
measures over ``tokens``:

- the next-token loss: the mean cross-entropy of token ``p + 1`` given positions ``0..p``, over
  every predicted position (``p`` in ``0..T-2`` of each row);
- the entropy of the next-token distribution, ``-sum_v p_v ln p_v`` in nats, averaged over the
  same positions.

Each is reported unmodified, ablated and as the change (ablated minus unmodified). Sums are
taken in float64 from the model's logits. Zeroing a neuron's activation removes exactly
``act * W_out[l][i]`` from the residual stream, so it equals zeroing that row of ``W_out``; the
mean ablation equals zeroing the row and adding ``mean * W_out[l][i]`` to ``b_out`` (the tests
check both against such edited copies of the model).
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from tl_neuronkinds.checks import check_int, is_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.hook_names import mlp_post
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.loading.tokens import bos_of

MODES = ("zero", "mean")
#: Rows per forward where ``batch_size`` is not given.
BATCH_ROWS = 8
COLUMNS = [
    "ablated",
    "layer",
    "neuron",
    "mode",
    "loss",
    "loss_ablated",
    "delta_loss",
    "entropy",
    "entropy_ablated",
    "delta_entropy",
    "predictions",
]

#: Layer -> neuron ids (int64, sorted, distinct); or layer -> each one's mean activation.
Chosen = dict[int, torch.Tensor]


def _hook_name(layer: int) -> str:
    return mlp_post(layer)


def _check_neurons(model: Any, neurons: object) -> Chosen:
    """``{layer: neuron ids}`` checked against the model's shape (sorted, distinct)."""
    n_layers, d_mlp = model.cfg.n_layers, int(model.cfg.d_mlp)
    if not isinstance(neurons, Mapping) or not neurons:
        raise NeuronKindsError(
            f"neurons must be a non-empty dict {{layer: [neuron, ...]}}, got {neurons!r}"
        )
    chosen: Chosen = {}
    for layer, ids in sorted(neurons.items(), key=lambda item: str(item[0])):
        layer = check_int("a layer of neurons", layer, 0, n_layers - 1)
        if is_int(ids):
            ids = [ids]
        if not isinstance(ids, Sequence | np.ndarray | torch.Tensor) or isinstance(ids, str):
            raise NeuronKindsError(f"neurons[{layer}] must be a list of neuron ids, got {ids!r}")
        picked = sorted(
            {
                check_int(
                    f"a neuron of layer {layer}",
                    int(i) if isinstance(i, torch.Tensor) else i,
                    0,
                    d_mlp - 1,
                )
                for i in ids
            }
        )
        if not picked:
            raise NeuronKindsError(f"neurons[{layer}] is empty")
        chosen[layer] = torch.tensor(picked, dtype=torch.int64)
    return dict(sorted(chosen.items()))


def check_tokens_for(model: Any, tokens: object, name: str) -> torch.Tensor:
    """``tokens`` if it is ``[n_seq, seq_len]`` ids of the model (rows of two or more), else a
    NeuronKindsError naming ``name``."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise NeuronKindsError(f"{name} must be an integer tensor [n_seq, seq_len]")
    if tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise NeuronKindsError(f"{name} needs at least one row of two or more tokens")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise NeuronKindsError(
            f"{name}: seq_len {tokens.shape[1]} exceeds the context {model.cfg.n_ctx}"
        )
    d_vocab = model.cfg.d_vocab
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise NeuronKindsError(f"{name}: token ids must lie in 0..{d_vocab - 1}")
    return tokens


def batches(model: Any, tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``tokens`` a batch of rows at a time, on the model's device."""
    device = next(model.parameters()).device
    for first in range(0, tokens.shape[0], batch_size):
        yield tokens[first : first + batch_size].to(device)


def _means(model: Any, tokens: torch.Tensor, chosen: Chosen, bos: int, batch: int) -> Chosen:
    """Each chosen neuron's mean activation over the text (non-BOS) positions of ``tokens``."""
    total = {layer: torch.zeros(len(ids), dtype=torch.float64) for layer, ids in chosen.items()}
    count = 0

    def see(layer: int, text: torch.Tensor):
        def hook(value: torch.Tensor, hook: Any) -> None:
            flat = value.reshape(-1, value.shape[-1])  # batch-major in either hook layout
            picked = flat[text.to(flat.device)][:, chosen[layer].to(flat.device)]
            total[layer].add_(picked.double().sum(0).cpu())

        return hook

    last = max(chosen) + 1
    for rows in batches(model, tokens, batch):
        text = rows.reshape(-1) != bos
        count += int(text.sum())
        hooks = [(_hook_name(layer), see(layer, text)) for layer in chosen]
        with torch.inference_mode(), stop_at(model, last):
            model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=last)
    if count == 0:
        raise NeuronKindsError("mean_tokens hold no text (non-BOS) position to take means over")
    return {layer: sums / count for layer, sums in total.items()}


def setter(ids: torch.Tensor, values: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    """A hook setting activations ``ids`` to 0 (``values`` None) or to ``values``."""

    def hook(value: Float[torch.Tensor, "... d_mlp"], hook: Any) -> torch.Tensor:
        where = ids.to(value.device)
        value[..., where] = 0 if values is None else values.to(value)
        return value

    return hook


def zeroing(ids: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A hook setting activations ``ids`` to 0."""
    return setter(ids, None)


def _loss_and_entropy(
    model: Any, tokens: torch.Tensor, hooks: list, batch: int
) -> tuple[float, float, int]:
    """Mean next-token loss and entropy over every predicted position, and how many there are."""
    loss = entropy = 0.0
    n = 0
    for rows in batches(model, tokens, batch):
        with torch.inference_mode(), stop_at(model, None):
            logits = model.run_with_hooks(rows, fwd_hooks=hooks, return_type="logits")
        logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        target = rows[:, 1:].to(logp.device)
        loss -= float(logp.gather(-1, target[..., None]).sum())
        entropy -= float((logp.exp() * logp).sum())
        n += target.numel()
    return loss / n, entropy / n, n


def ablate_neurons(
    model: Any,
    tokens: torch.Tensor,
    neurons: Any,
    mode: str = "zero",
    *,
    separately: bool = False,
    mean_tokens: torch.Tensor | None = None,
    batch_size: int | None = None,
    bos_token_id: int | None = None,
) -> pd.DataFrame:
    """The change in next-token loss and entropy when neurons are ablated (module docstring).

    Args:
        model: A HookedTransformer or TransformerBridge (``load_opt``; streamed models work).
        tokens: ``Int[n_seq seq_len]`` rows to measure on (each at least two tokens).
        neurons: ``{layer: [neuron, ...]}`` (a mapping of layer to neuron ids, or to one id).
        mode: ``"zero"`` (the activation set to 0) or ``"mean"`` (to the neuron's mean over the
            text positions of ``mean_tokens``).
        separately: False: every neuron given is ablated at once (one row). True: each neuron
            on its own, one forward pass over ``tokens`` each (one row per neuron), as Gurnee
            et al.'s code does.
        mean_tokens: Where the means of ``mode="mean"`` are taken (default: ``tokens``).
        batch_size: Rows per forward (default 8).
        bos_token_id: The BOS id left out of the means (default: the model's tokenizer's).

    Returns:
        One row per ablation: ``ablated`` (e.g. ``"L2 N5, L2 N7"``), ``layer`` and ``neuron``
        (nullable; set where one neuron is ablated), ``mode``, ``loss``, ``loss_ablated``,
        ``delta_loss``, ``entropy``, ``entropy_ablated``, ``delta_entropy`` (nats) and
        ``predictions`` (the number of predicted positions averaged over).

    Raises:
        NeuronKindsError: A layer or neuron out of range, an unknown mode, bad tokens.
    """
    if mode not in MODES:
        raise NeuronKindsError(f"mode must be one of {MODES}, got {mode!r}")
    chosen = _check_neurons(model, neurons)
    tokens = check_tokens_for(model, tokens, "tokens")
    batch = BATCH_ROWS if batch_size is None else check_int("batch_size", batch_size, 1)
    means: Chosen | None = None
    if mode == "mean":
        bos = bos_of(model, bos_token_id)
        source = (
            tokens if mean_tokens is None else check_tokens_for(model, mean_tokens, "mean_tokens")
        )
        means = _means(model, source, chosen, bos, batch)
    groups: list[Chosen] = (
        [{layer: ids[j : j + 1]} for layer, ids in chosen.items() for j in range(len(ids))]
        if separately
        else [chosen]
    )
    loss, entropy, n = _loss_and_entropy(model, tokens, [], batch)
    rows = []
    for group in groups:
        hooks = []
        for layer, ids in group.items():
            values = None
            if means is not None:
                values = means[layer][torch.searchsorted(chosen[layer], ids)]
            hooks.append((_hook_name(layer), setter(ids, values)))
        ablated_loss, ablated_entropy, _ = _loss_and_entropy(model, tokens, hooks, batch)
        single = sum(len(ids) for ids in group.values()) == 1
        layer0 = next(iter(group))
        rows.append(
            {
                "ablated": ", ".join(
                    f"L{layer} N{int(i)}" for layer, ids in group.items() for i in ids
                ),
                "layer": layer0 if single else None,
                "neuron": int(group[layer0][0]) if single else None,
                "mode": mode,
                "loss": loss,
                "loss_ablated": ablated_loss,
                "delta_loss": ablated_loss - loss,
                "entropy": entropy,
                "entropy_ablated": ablated_entropy,
                "delta_entropy": ablated_entropy - entropy,
                "predictions": n,
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"layer": "Int64", "neuron": "Int64", "predictions": np.int64})
