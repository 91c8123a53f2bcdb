"""What massive activations do (Sun et al. 2024 §3, §4; docs/kinds.md, "Massive activations").

Both functions start from a ``MassiveActivations`` (``massive_activations``) and look at the
layer where massive activations first appear, ``L``, and the dimensions that hold them there.
A hidden-state entry of layer ``L`` is massive where its magnitude passes that run's thresholds
(above ``magnitude`` and above ``ratio`` times layer ``L``'s median), wherever it lies: the
top-k table only names the dimensions, the entries are found anew in each forward.

- ``massive_intervention``: Sun et al. §3 set the massive activations to zero, or to their
  mean over many sequences, where they first appear, and compare perplexity with the
  unmodified model: zero destroys the model, the mean barely changes it, so they act as fixed
  biases. A hook on ``blocks.{L}.hook_resid_post`` sets, on those dimensions, either
  (``scheme="threshold"``, the default) every entry above the cut-off, to 0 or to each
  dimension's mean over the massive entries of ``mean_tokens``; or (``scheme="positions"``,
  Sun et al.'s code, locuslab/massive-activations ``lib/hook.py``) the entries at the first
  token and at the position of the sequence's top-1 magnitude (of layer ``L``, over every
  dimension), whatever their size, to 0 or to their mean over ``mean_tokens``: one mean per
  dimension for the first token, one for the top-1 position (taken over the sequences whose
  top-1 lies past the first token, the only ones where that position is set).
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
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.hook_names import resid_post
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.loading.tokens import check_tokens
from tl_neuronkinds.massive.activations import BATCH_ROWS, MassiveActivations
from tl_neuronkinds.progress import Progress

INTERVENTIONS = ("none", "zero", "mean")
#: Which entries ``massive_intervention`` sets (module docstring).
SCHEMES = ("threshold", "positions")


def first_massive_layer(found: MassiveActivations) -> tuple[int, list[int], float]:
    """``(L, dims, floor)``: the first layer with a massive entry, the dimensions holding them
    there (sorted), and the magnitude an entry of ``L`` must pass to be massive.

    Raises:
        NeuronKindsError: No massive activation in ``found``; ``found`` without places
            (``by="sequence"``).
    """
    found.placed("the effects of massive activations")
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


def _rows_per_batch(batch_size: int | None) -> int:
    """``batch_size``, checked (default ``BATCH_ROWS``)."""
    return BATCH_ROWS if batch_size is None else check_int("batch_size", batch_size, low=1)


def _batches(tokens: torch.Tensor, batch: int, model: Any, bar: Progress):
    """``tokens`` in batches of ``batch`` rows on the model's device, each counted by ``bar``
    once used."""
    device = next(model.parameters()).device
    for first in range(0, tokens.shape[0], batch):
        rows = tokens[first : first + batch]
        yield rows.to(device)
        bar.update(rows.numel())


def _massive_means(
    model: Any,
    tokens: torch.Tensor,
    layer: int,
    dims: list[int],
    floor: float,
    batch: int,
    bar: Progress,
) -> torch.Tensor:
    """Each dimension's mean over the massive entries of ``tokens`` at ``layer`` (float64)."""
    total = torch.zeros(len(dims), dtype=torch.float64)
    count = torch.zeros(len(dims), dtype=torch.float64)

    def see(value: torch.Tensor, hook: Any) -> None:
        mask = _massive_mask(value, dims, floor)
        picked = value[..., dims].double()
        total.add_((picked * mask).sum((0, 1)).cpu())
        count.add_(mask.sum((0, 1)).cpu())

    hooks = [(resid_post(layer), see)]
    for rows in _batches(tokens, batch, model, bar):
        with torch.inference_mode(), stop_at(model, layer + 1):
            model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=layer + 1)
    if bool((count == 0).any()):
        missing = [d for d, c in zip(dims, count.tolist(), strict=True) if c == 0]
        raise NeuronKindsError(f"mean_tokens hold no massive entry on dimensions {missing}")
    return total / count


def _perplexity(
    model: Any,
    tokens: torch.Tensor,
    hooks: list[tuple[str, Callable]],
    batch: int,
    bar: Progress,
) -> float:
    """exp of the mean next-token loss over every predicted position of ``tokens``."""
    total, count = 0.0, 0
    for rows in _batches(tokens, batch, model, bar):
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
    scheme: str = "threshold",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Perplexity on ``tokens`` with the massive activations of their first layer unchanged,
    set to zero, and set to their mean (Sun et al. §3; module docstring).

    Args:
        model: The model ``found`` was computed on.
        found: From ``massive_activations`` (``by="pooled"``); names the layer, dimensions and
            thresholds.
        tokens: ``Int[n_seq seq_len]`` held-out tokens to measure perplexity on.
        mean_tokens: Tokens to take the means over (default: ``tokens``).
        batch_size: Rows per forward (default 8).
        scheme: Which entries of layer ``L`` on the massive dimensions are set:
            ``"threshold"`` (the project's: every entry above the cut-off, wherever it lies)
            or ``"positions"`` (Sun et al.'s: the entries at the first token and at each
            sequence's top-1 position, whatever their size).
        progress: Show progress (default), each pass named with its total of tokens
            (``massive intervention pass 1/4 (means)`` over ``mean_tokens``, then one
            perplexity pass over ``tokens`` per intervention): a bar in a terminal or notebook,
            lines in a log (``tl_neuronkinds.progress``); False for none.

    Returns:
        One row per intervention (``"none"``, ``"zero"``, ``"mean"``): ``scheme``,
        ``intervention``, ``layer``, ``dims`` (list), ``value`` (list, per dimension: what the
        entries were set to, for ``"positions"`` those at the first token; empty for none),
        ``value_top`` (``"positions"`` only: what the entries at the top-1 position were set
        to; empty where none was set or no row of ``mean_tokens`` gave a mean),
        ``perplexity``, ``vs_none`` (perplexity over the unmodified model's).

    Raises:
        NeuronKindsError: No massive activation in ``found``; bad tokens or ``scheme``;
            ``"threshold"``: ``mean_tokens`` without a massive entry on one of the dimensions;
            ``"positions"``: a row of ``tokens`` whose top-1 lies past the first token where
            no row of ``mean_tokens`` had one (no mean to set it to).
    """
    check_tokens(tokens, model)
    if scheme not in SCHEMES:
        raise NeuronKindsError(
            f"scheme must be one of {', '.join(map(repr, SCHEMES))}, not {scheme!r}"
        )
    layer, dims, floor = first_massive_layer(found)
    mean_rows = tokens if mean_tokens is None else check_tokens(mean_tokens, model)
    batch = _rows_per_batch(batch_size)
    bar = Progress(0, enabled=progress)
    try:
        return _intervene(model, tokens, mean_rows, scheme, (layer, dims, floor), batch, bar)
    finally:
        bar.close()


def _intervene(
    model: Any,
    tokens: torch.Tensor,
    mean_rows: torch.Tensor,
    scheme: str,
    where: tuple[int, list[int], float],
    batch: int,
    bar: Progress,
) -> pd.DataFrame:
    """``massive_intervention``'s passes: the means over ``mean_rows``, then the perplexity
    over ``tokens`` per intervention, each a pass of ``bar``."""
    layer, dims, floor = where
    n_passes = 1 + len(INTERVENTIONS)
    bar.set_phase(f"massive intervention pass 1/{n_passes} (means)", mean_rows.numel())
    zeros = torch.zeros(len(dims), dtype=torch.float64)
    setters: dict[str, tuple[Callable, list[float], list[float]]] = {}
    if scheme == "threshold":
        means = _massive_means(model, mean_rows, layer, dims, floor, batch, bar)
        for name, values in (("zero", zeros), ("mean", means)):
            setters[name] = (_setter(dims, floor, values), values.tolist(), [])
    else:
        first, top = _position_means(model, mean_rows, layer, dims, batch, bar)
        setters["zero"] = (_position_setter(dims, zeros, zeros), [0.0] * len(dims), zeros.tolist())
        top_list = [] if top is None else top.tolist()
        setters["mean"] = (_position_setter(dims, first, top), first.tolist(), top_list)
    rows = []
    for index, name in enumerate(INTERVENTIONS):
        hooks: list[tuple[str, Callable]] = []
        value: list[float] = []
        value_top: list[float] = []
        if name in setters:
            hook, value, value_top = setters[name]
            hooks = [(resid_post(layer), hook)]
        phase = f"massive intervention pass {index + 2}/{n_passes} (perplexity, {name})"
        bar.set_phase(phase, tokens.numel())
        rows.append(
            {
                "scheme": scheme,
                "intervention": name,
                "layer": layer,
                "dims": dims,
                "value": value,
                "value_top": value_top,
                "perplexity": _perplexity(model, tokens, hooks, batch, bar),
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


def _top_positions(hidden: Float[torch.Tensor, "batch pos d_model"]) -> Int[torch.Tensor, " batch"]:
    """Each row's position of its largest magnitude over every dimension (the first such entry
    in (position, dimension) order where tied), as Sun et al.'s hook finds it."""
    return hidden.abs().flatten(1).argmax(1) // hidden.shape[2]


def _position_means(
    model: Any, tokens: torch.Tensor, layer: int, dims: list[int], batch: int, bar: Progress
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(first, top)``: per dimension, the mean over the rows of ``tokens`` of the entry at
    the first token, and over the rows whose top-1 lies past it of the entry at the top-1
    position (None where no row's does); float64."""
    first = torch.zeros(len(dims), dtype=torch.float64)
    top = torch.zeros(len(dims), dtype=torch.float64)
    counts = [0, 0]

    def see(value: torch.Tensor, hook: Any) -> None:
        first.add_(value[:, 0, dims].double().sum(0).cpu())
        pos = _top_positions(value)
        later = (pos > 0).nonzero().squeeze(1)
        top.add_(value[later, pos[later]][:, dims].double().sum(0).cpu())
        counts[0] += value.shape[0]
        counts[1] += later.numel()

    hooks = [(resid_post(layer), see)]
    for rows in _batches(tokens, batch, model, bar):
        with torch.inference_mode(), stop_at(model, layer + 1):
            model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=layer + 1)
    return first / counts[0], (top / counts[1] if counts[1] else None)


def _position_setter(dims: list[int], first: torch.Tensor, top: torch.Tensor | None) -> Callable:
    """A hook that sets, in each row, the entries on ``dims`` at its top-1 position (found
    before anything is set; only where it lies past the first token) to ``top`` and those at
    the first token to ``first``."""

    def hook(value: torch.Tensor, hook: Any) -> torch.Tensor:
        pos = _top_positions(value)
        later = (pos > 0).nonzero().squeeze(1)
        if later.numel():
            if top is None:
                raise NeuronKindsError(
                    "a row of tokens has its top-1 magnitude past the first token, and no row "
                    "of mean_tokens had: no mean to set it to (give mean_tokens more rows)"
                )
            index = torch.tensor(dims, device=value.device)
            value[later[:, None], pos[later][:, None], index[None, :]] = top.to(
                value.device, value.dtype
            )
        value[:, 0, dims] = first.to(value.device, value.dtype)
        return value

    return hook


def massive_attention(
    model: Any,
    found: MassiveActivations,
    tokens: torch.Tensor,
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Per layer and head, the share of attention probability that goes to positions holding
    a massive activation at the first layer that has them (Sun et al. §4; module docstring).

    ``progress``: show progress (default; one pass over ``tokens``, ``massive attention pass
    1/1``, as ``massive_intervention``); False for none.

    Returns:
        One row per (layer, head): ``layer``, ``head``, ``share`` (the mean over every query
        position of the probability on massive positions), ``massive_positions`` (how many
        positions of ``tokens`` hold one).

    Raises:
        NeuronKindsError: No massive activation in ``found``; bad tokens.
    """
    check_tokens(tokens, model)
    layer, dims, floor = first_massive_layer(found)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    share = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    queries, n_massive = 0, 0
    batch = _rows_per_batch(batch_size)
    bar = Progress(tokens.numel(), enabled=progress, phase="massive attention pass 1/1")
    try:
        for rows in _batches(tokens, batch, model, bar):
            mask = _massive_positions(model, rows, layer, dims, floor)
            n_massive += int(mask.sum())
            _add_attention_share(model, rows, mask, share)
            queries += rows.shape[0] * rows.shape[1]
    finally:
        bar.close()
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
        model.run_with_hooks(rows, fwd_hooks=[(resid_post(layer), keep)], stop_at_layer=layer + 1)
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
