"""Massive activations in the residual stream (Sun et al. 2024, "Massive Activations in Large
Language Models"; SPEC.md "Massive activations (MA)").

The hidden state of layer ``l`` is ``blocks.{l}.hook_resid_post``, ``[batch, pos, d_model]``.
Per layer this finds, over every token given, the top-k magnitudes ``|h|`` with their sequence,
position, token and dimension, and the median magnitude. An activation is *massive* where its
magnitude is above ``magnitude`` (100) and above ``ratio`` (1,000) times its layer's median:
Sun et al. §2 call activations massive that are "larger than 100" and "about 1,000 times larger
than the median" (their Figure 1 and Table 1 show OPT and LLaMA layers of that kind).

Hidden states are never kept: each batch's magnitudes feed ``TopMagnitudes`` and
``MedianCounter`` (``streaming.py``), and a second forward over the same tokens makes the
median exact. Forwards stop after the last layer asked for.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.massive.streaming import MedianCounter, TopMagnitudes, magnitudes

#: Sun et al. §2: massive activations are "larger than 100" ...
MAGNITUDE = 100.0
#: ... and "about 1,000 times larger than the median" of their layer.
RATIO = 1000.0
#: Rows per forward where ``batch_size`` is not given.
BATCH_ROWS = 8
TOP_COLUMNS = [
    "layer",
    "rank",
    "value",
    "magnitude",
    "seq",
    "pos",
    "token_id",
    "token",
    "dim",
    "massive",
    "first_token",
    "delimiter",
]


@dataclass(frozen=True)
class MassiveActivations:
    """What ``massive_activations`` found.

    Attributes:
        top: One row per (layer, rank): ``layer``, ``rank`` (0 = largest), ``value`` (signed),
            ``magnitude``, ``seq``, ``pos``, ``token_id``, ``token``, ``dim``, ``massive``, and
            ``first_token`` (position 0) and ``delimiter`` (the token's text is punctuation or
            whitespace: Sun et al. §3 find massive activations at the first token and at
            delimiters such as "." and "\\n").
        median: One row per layer: ``layer``, ``median`` (of every magnitude of that layer).
        magnitude: The absolute threshold used.
        ratio: The threshold relative to the median used.
        intervention: ``massive_intervention``'s table, where added (``with_effects``).
        attention: ``massive_attention``'s table, where added.
    """

    top: pd.DataFrame
    median: pd.DataFrame
    magnitude: float
    ratio: float
    intervention: pd.DataFrame | None = None
    attention: pd.DataFrame | None = None

    def with_effects(
        self, intervention: pd.DataFrame | None = None, attention: pd.DataFrame | None = None
    ) -> "MassiveActivations":
        """A copy that carries the effects' tables too (for the report)."""
        return replace(self, intervention=intervention, attention=attention)

    def dims(self) -> pd.DataFrame:
        """The dimensions holding massive activations: ``dim``, ``count`` (massive entries in
        ``top``), ``layers`` (the layers, sorted), most frequent first."""
        massive = self.top[self.top["massive"]]
        grouped = massive.groupby("dim")["layer"]
        table = pd.DataFrame({"count": grouped.size(), "layers": grouped.agg(sorted)})
        return table.reset_index().sort_values(["count", "dim"], ascending=[False, True])

    def tokens(self) -> pd.DataFrame:
        """The tokens holding massive activations: ``token_id``, ``token``, ``count``,
        ``first_token`` (entries at position 0), ``delimiter``, most frequent first."""
        massive = self.top[self.top["massive"]]
        grouped = massive.groupby("token_id")
        table = pd.DataFrame(
            {
                "token": grouped["token"].first(),
                "count": grouped.size(),
                "first_token": grouped["first_token"].sum(),
                "delimiter": grouped["delimiter"].first(),
            }
        )
        return table.reset_index().sort_values(["count", "token_id"], ascending=[False, True])


def check_tokens(model: Any, tokens: Any) -> torch.Tensor:
    """``tokens`` if it is a non-empty integer ``[n_seq, seq_len]`` tensor of ids in the model's
    vocabulary, else a NeuronKindsError."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise NeuronKindsError("tokens must be an integer tensor [n_seq, seq_len]")
    if tokens.numel() == 0:
        raise NeuronKindsError("tokens is empty")
    d_vocab = model.cfg.d_vocab
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise NeuronKindsError(f"token ids must lie in 0..{d_vocab - 1}")
    return tokens


def _check(model: Any, tokens: Any, k: object, layers: Sequence[int] | None) -> list[int]:
    check_tokens(model, tokens)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise NeuronKindsError(f"k must be a positive integer, got {k!r}")
    n_layers = model.cfg.n_layers
    chosen = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    if not chosen or any(not 0 <= layer < n_layers for layer in chosen):
        raise NeuronKindsError(f"layers must be a non-empty subset of 0..{n_layers - 1}")
    return sorted(set(chosen))


def _is_delimiter(text: str) -> bool:
    stripped = text.strip()
    return stripped == "" or all(not c.isalnum() for c in stripped)


def _forward_each_batch(
    model: Any,
    tokens: torch.Tensor,
    layers: list[int],
    batch: int,
    see: Callable[[int, torch.Tensor, int], None],
) -> None:
    """Run ``tokens`` in batches, calling ``see(layer, hidden, first_row)`` on each layer's
    ``hook_resid_post``."""
    device = next(model.parameters()).device
    stop = layers[-1] + 1
    for first in range(0, tokens.shape[0], batch):
        rows = tokens[first : first + batch].to(device)

        def hook(value: torch.Tensor, hook: Any, first: int = first) -> None:
            see(int(hook.name.split(".")[1]), value, first)

        hooks = [(f"blocks.{layer}.hook_resid_post", hook) for layer in layers]
        with torch.inference_mode(), stop_at(model, stop):
            model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=stop)


def massive_activations(
    model: Any,
    tokens: torch.Tensor,
    k: int = 3,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int | None = None,
    magnitude: float = MAGNITUDE,
    ratio: float = RATIO,
) -> MassiveActivations:
    """The top-k hidden-state magnitudes of each layer and its median (module docstring).

    Args:
        model: A HookedTransformer or TransformerBridge (``load_opt``; streamed models work).
        tokens: ``Int[n_seq seq_len]`` token ids (checked here, so that bad input gets a
            ``NeuronKindsError``).
        k: Entries kept per layer (Sun et al. show the top 3).
        layers: Layers to look at (default: all).
        batch_size: Rows per forward (default 8).
        magnitude: A massive activation's magnitude is above this ...
        ratio: ... and above this times its layer's median.

    Returns:
        A ``MassiveActivations``. Deterministic: ties by (sequence, position, dimension).

    Raises:
        NeuronKindsError: Bad tokens, ``k``, ``layers`` or ``batch_size``; NaN or infinite
            hidden states.
    """
    chosen = _check(model, tokens, k, layers)
    batch = BATCH_ROWS if batch_size is None else batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise NeuronKindsError(f"batch_size must be a positive integer, got {batch_size!r}")
    seq_len, d_model = tokens.shape[1], model.cfg.d_model
    top = {layer: TopMagnitudes(k) for layer in chosen}
    medians = {layer: MedianCounter() for layer in chosen}

    def first_pass(layer: int, hidden: torch.Tensor, first: int) -> None:
        mag = magnitudes(hidden, f"blocks.{layer}.hook_resid_post")
        top[layer].add(mag, hidden.flatten(), first * seq_len * d_model)
        medians[layer].count(mag)

    def second_pass(layer: int, hidden: torch.Tensor, first: int) -> None:
        medians[layer].refine(magnitudes(hidden, f"blocks.{layer}.hook_resid_post"))

    _forward_each_batch(model, tokens, chosen, batch, first_pass)
    for counter in medians.values():
        counter.plan()
    _forward_each_batch(model, tokens, chosen, batch, second_pass)
    median = {layer: medians[layer].median() for layer in chosen}
    return MassiveActivations(
        _top_table(model, tokens, top, median, magnitude, ratio),
        pd.DataFrame({"layer": chosen, "median": [median[layer] for layer in chosen]}),
        magnitude,
        ratio,
    )


def _top_table(
    model: Any,
    tokens: torch.Tensor,
    top: dict[int, TopMagnitudes],
    median: dict[int, float],
    magnitude: float,
    ratio: float,
) -> pd.DataFrame:
    seq_len, d_model = tokens.shape[1], model.cfg.d_model
    parts = []
    for layer, kept in top.items():
        place = kept.place.numpy()
        seq, rest = np.divmod(place, seq_len * d_model)
        pos, dim = np.divmod(rest, d_model)
        mags = kept.magnitude.numpy().astype(np.float64)
        parts.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "rank": np.arange(len(place)),
                    "value": kept.value.numpy().astype(np.float64),
                    "magnitude": mags,
                    "seq": seq,
                    "pos": pos,
                    "token_id": tokens[seq, pos].numpy().astype(np.int64),
                    "dim": dim,
                    "massive": (mags > magnitude) & (mags > ratio * median[layer]),
                }
            )
        )
    table = pd.concat(parts, ignore_index=True)
    strings = _strings(getattr(model, "tokenizer", None), table["token_id"].to_numpy())
    table["token"] = pd.array([strings[t] for t in table["token_id"]], dtype="string")
    table["first_token"] = table["pos"] == 0
    table["delimiter"] = [_is_delimiter(strings[t]) for t in table["token_id"]]
    return table[TOP_COLUMNS]


def _strings(tokenizer: Any, ids: np.ndarray) -> dict[int, str]:
    unique = [int(i) for i in np.unique(ids)]
    if tokenizer is None:
        return {i: f"<{i}>" for i in unique}
    return dict(zip(unique, tokenizer.batch_decode([[i] for i in unique]), strict=True))
