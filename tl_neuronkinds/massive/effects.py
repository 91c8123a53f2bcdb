"""What massive activations do (Sun et al. 2024 §3, §4; SPEC.md "Massive activations (MA)").

Both functions start from a ``MassiveActivations`` (``massive_activations``) and look at the
layer where massive activations first appear, ``L``, and the dimensions that hold them there.
A hidden-state entry of layer ``L`` is massive where its magnitude passes that run's thresholds
(above ``magnitude`` and above ``ratio`` times layer ``L``'s median), wherever it lies: the
top-k table only names the dimensions, the entries are found anew in each forward.

- ``massive_intervention``: Sun et al. §3 set the massive activations to zero, or to their
  mean over many sequences, where they first appear, and compare perplexity with the
  unmodified model: zero destroys the model, the mean barely changes it, so they act as fixed
  biases. Here: a hook on ``blocks.{L}.hook_resid_post`` sets the massive entries on those
  dimensions to 0, or to each dimension's mean over the massive entries of ``mean_tokens``.
- ``massive_attention``: Sun et al. §4 find attention concentrated on the tokens holding
  massive activations. Here: per layer and head, the attention probability that goes to the
  positions holding a massive entry at layer ``L``, averaged over every query position.
"""

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.massive.activations import BATCH_ROWS, MassiveActivations, check_tokens

INTERVENTIONS = ("none", "zero", "mean")


def first_massive_layer(found: MassiveActivations) -> tuple[int, list[int], float]:
    """``(L, dims, floor)``: the first layer with a massive entry, the dimensions holding them
    there (sorted), and the magnitude an entry of ``L`` must pass to be massive.

    Raises:
        NeuronKindsError: No massive activation in ``found``.
    """
    massive = found.top[found.top["massive"]]
    if massive.empty:
        raise NeuronKindsError(
            "no massive activations were found (none above "
            f"magnitude={found.magnitude} and ratio={found.ratio} x median); lower them in "
            "massive_activations(...) to look at the largest activations anyway"
        )
    layer = int(massive["layer"].min())
    dims = sorted(int(d) for d in massive.loc[massive["layer"] == layer, "dim"].unique())
    median = float(found.median.loc[found.median["layer"] == layer, "median"].item())
    return layer, dims, max(found.magnitude, found.ratio * median)


def _massive_mask(
    hidden: Float[torch.Tensor, "batch pos d_model"], dims: list[int], floor: float
) -> Bool[torch.Tensor, "batch pos n_dims"]:
    return hidden[..., dims].abs() > floor


def _batches(tokens: torch.Tensor, batch_size: int | None, model: Any):
    batch = BATCH_ROWS if batch_size is None else batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise NeuronKindsError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = next(model.parameters()).device
    for first in range(0, tokens.shape[0], batch):
        yield tokens[first : first + batch].to(device)


def _massive_means(
    model: Any, tokens: torch.Tensor, layer: int, dims: list[int], floor: float, batch: int | None
) -> torch.Tensor:
    """Each dimension's mean over the massive entries of ``tokens`` at ``layer`` (float64)."""
    total = torch.zeros(len(dims), dtype=torch.float64)
    count = torch.zeros(len(dims), dtype=torch.float64)

    def see(value: torch.Tensor, hook: Any) -> None:
        mask = _massive_mask(value, dims, floor)
        picked = value[..., dims].double()
        total.add_((picked * mask).sum((0, 1)).cpu())
        count.add_(mask.sum((0, 1)).cpu())

    hooks = [(f"blocks.{layer}.hook_resid_post", see)]
    for rows in _batches(tokens, batch, model):
        with torch.inference_mode(), stop_at(model, layer + 1):
            model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=layer + 1)
    if bool((count == 0).any()):
        missing = [d for d, c in zip(dims, count.tolist(), strict=True) if c == 0]
        raise NeuronKindsError(f"mean_tokens hold no massive entry on dimensions {missing}")
    return total / count


def _perplexity(
    model: Any, tokens: torch.Tensor, hooks: list[tuple[str, Callable]], batch: int | None
) -> float:
    """exp of the mean next-token loss over every predicted position of ``tokens``."""
    total, count = 0.0, 0
    for rows in _batches(tokens, batch, model):
        with torch.inference_mode(), stop_at(model, None):
            loss = model.run_with_hooks(
                rows, fwd_hooks=hooks, return_type="loss", loss_per_token=True
            )
        total += float(loss.double().sum())
        count += loss.numel()
    return math.exp(total / count)


def massive_intervention(
    model: Any,
    found: MassiveActivations,
    tokens: torch.Tensor,
    *,
    mean_tokens: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Perplexity on ``tokens`` with the massive activations of their first layer unchanged,
    set to zero, and set to their mean (Sun et al. §3; module docstring).

    Args:
        model: The model ``found`` was computed on.
        found: From ``massive_activations``; names the layer, dimensions and thresholds.
        tokens: ``Int[n_seq seq_len]`` held-out tokens to measure perplexity on.
        mean_tokens: Tokens to take each dimension's mean over (default: ``tokens``).
        batch_size: Rows per forward (default 8).

    Returns:
        One row per intervention (``"none"``, ``"zero"``, ``"mean"``): ``intervention``,
        ``layer``, ``dims`` (list), ``value`` (list: what the entries were set to; empty for
        none), ``perplexity``, ``vs_none`` (perplexity over the unmodified model's).

    Raises:
        NeuronKindsError: No massive activation in ``found``; bad tokens; ``mean_tokens``
            without a massive entry on one of the dimensions.
    """
    check_tokens(model, tokens)
    layer, dims, floor = first_massive_layer(found)
    means = _massive_means(
        model, tokens if mean_tokens is None else check_tokens(model, mean_tokens), layer, dims,
        floor, batch_size,
    )  # fmt: skip
    rows = []
    for name in INTERVENTIONS:
        values = {"none": None, "zero": torch.zeros(len(dims)), "mean": means}[name]
        hooks: list[tuple[str, Callable]] = []
        if values is not None:
            hooks = [(f"blocks.{layer}.hook_resid_post", _setter(dims, floor, values))]
        rows.append(
            {
                "intervention": name,
                "layer": layer,
                "dims": dims,
                "value": [] if values is None else values.tolist(),
                "perplexity": _perplexity(model, tokens, hooks, batch_size),
            }
        )
    table = pd.DataFrame(rows)
    table["vs_none"] = table["perplexity"] / table["perplexity"].iloc[0]
    return table


def _setter(dims: list[int], floor: float, values: torch.Tensor) -> Callable:
    def hook(value: torch.Tensor, hook: Any) -> torch.Tensor:
        mask = _massive_mask(value, dims, floor)
        target = values.to(value.device, value.dtype).expand_as(mask)
        value[..., dims] = torch.where(mask, target, value[..., dims])
        return value

    return hook


def massive_attention(
    model: Any, found: MassiveActivations, tokens: torch.Tensor, *, batch_size: int | None = None
) -> pd.DataFrame:
    """Per layer and head, the share of attention probability that goes to positions holding
    a massive activation at the first layer that has them (Sun et al. §4; module docstring).

    Returns:
        One row per (layer, head): ``layer``, ``head``, ``share`` (the mean over every query
        position of the probability on massive positions), ``massive_positions`` (how many
        positions of ``tokens`` hold one).

    Raises:
        NeuronKindsError: No massive activation in ``found``; bad tokens.
    """
    check_tokens(model, tokens)
    layer, dims, floor = first_massive_layer(found)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    share = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    queries, n_massive = 0, 0
    for rows in _batches(tokens, batch_size, model):
        mask = _massive_positions(model, rows, layer, dims, floor)
        n_massive += int(mask.sum())
        _add_attention_share(model, rows, mask, share)
        queries += rows.shape[0] * rows.shape[1]
    grid = np.indices((n_layers, n_heads)).reshape(2, -1)
    return pd.DataFrame(
        {
            "layer": grid[0],
            "head": grid[1],
            "share": (share / queries).reshape(-1).numpy(),
            "massive_positions": n_massive,
        }
    )


def _massive_positions(
    model: Any, rows: torch.Tensor, layer: int, dims: list[int], floor: float
) -> Bool[torch.Tensor, "batch pos"]:
    """The positions of ``rows`` holding a massive entry at ``layer``."""
    held: list[torch.Tensor] = []

    def keep(value: torch.Tensor, hook: Any) -> None:
        held.append(_massive_mask(value, dims, floor).any(-1))

    with torch.inference_mode(), stop_at(model, layer + 1):
        model.run_with_hooks(
            rows, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", keep)], stop_at_layer=layer + 1
        )
    return held[0]


def _add_attention_share(
    model: Any,
    rows: torch.Tensor,
    mask: Bool[torch.Tensor, "batch pos"],
    share: Float[torch.Tensor, "layer head"],
) -> None:
    """Add, per layer and head, the attention probability of each query of ``rows`` on the
    keys in ``mask``."""

    def add(pattern: torch.Tensor, hook: Any) -> None:
        on_massive = (pattern.double() * mask[:, None, None, :]).sum(-1)  # [batch head query]
        share[int(hook.name.split(".")[1])] += on_massive.sum((0, 2)).cpu()

    n_layers = model.cfg.n_layers
    hooks = [(f"blocks.{layer}.attn.hook_pattern", add) for layer in range(n_layers)]
    with torch.inference_mode(), stop_at(model, n_layers):
        model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=n_layers)
