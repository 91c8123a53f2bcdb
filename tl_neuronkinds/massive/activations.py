"""Massive activations in the residual stream (Sun et al. 2024, "Massive Activations in Large
Language Models"; docs/kinds.md, "Massive activations").

The hidden state of layer ``l`` is ``blocks.{l}.hook_resid_post``, ``[batch, pos, d_model]``.
Per layer this finds, over every token given, the top-k magnitudes ``|h|`` with their sequence,
position, token and dimension, and the median magnitude. An activation is *massive* where its
magnitude is above ``magnitude`` (100) and above ``ratio`` (1,000) times its layer's median:
Sun et al. §2 call activations massive that are "larger than 100" and "about 1,000 times larger
than the median" (their Figure 1 and Table 1 show OPT and LLaMA layers of that kind).

Two ways to sum up a layer (``by``):

- ``"pooled"`` (default): every token of ``tokens`` pooled, the top-k entries of all of them
  with their places, and the median of every magnitude;
- ``"sequence"``: as Sun et al. (Figure 2 and their code, locuslab/massive-activations): for
  each sequence (row of ``tokens``), its top-k magnitudes and its median over its positions x
  d_model, then the mean of each over the sequences.

Either way the per-sequence means come along as ``MassiveActivations.by_sequence``. Hidden
states are never kept: each batch's magnitudes feed ``TopMagnitudes``, ``MedianCounter`` and
``SequenceMeans`` (``streaming.py``); for ``"pooled"`` a second forward over the same tokens
makes the median exact. Forwards stop after the last layer asked for.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.hook_names import resid_post
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.loading.tokens import check_tokens, strings_of
from tl_neuronkinds.massive.streaming import (
    MedianCounter,
    SequenceMeans,
    TopMagnitudes,
    magnitudes,
)
from tl_neuronkinds.progress import Progress

#: Sun et al. §2: massive activations are "larger than 100" ...
MAGNITUDE = 100.0
#: ... and "about 1,000 times larger than the median" of their layer.
RATIO = 1000.0
#: Rows per forward where ``batch_size`` is not given.
BATCH_ROWS = 8
#: What ``by`` may be (module docstring).
BY = ("pooled", "sequence")
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
            delimiters such as "." and "\\n"). With ``by="sequence"``, ``magnitude`` is the
            mean over sequences of each sequence's rank-th largest magnitude and ``massive``
            compares it with the mean median; an average has no one place, so ``value``,
            ``seq``, ``pos``, ``token_id``, ``token``, ``dim``, ``first_token`` and
            ``delimiter`` are undefined (NA).
        median: One row per layer: ``layer``, ``median`` (of every magnitude of that layer;
            with ``by="sequence"``, the mean over sequences of each sequence's median).
        magnitude: The absolute threshold used.
        ratio: The threshold relative to the median used.
        intervention: ``massive_intervention``'s table, where added (``with_effects``).
        attention: ``massive_attention``'s table, where added.
        by: ``"pooled"`` or ``"sequence"``: how ``top`` and ``median`` sum a layer up.
        by_sequence: Sun et al.'s averages whatever ``by``: one row per layer, ``layer``,
            ``n_seq``, ``top_1`` .. ``top_k`` (the mean over the sequences of each sequence's
            r-th largest magnitude) and ``median`` (the mean of each sequence's median).
    """

    top: pd.DataFrame
    median: pd.DataFrame
    magnitude: float
    ratio: float
    intervention: pd.DataFrame | None = None
    attention: pd.DataFrame | None = None
    by: str = "pooled"
    by_sequence: pd.DataFrame | None = None

    def with_effects(
        self, intervention: pd.DataFrame | None = None, attention: pd.DataFrame | None = None
    ) -> "MassiveActivations":
        """A copy that carries the effects' tables too (for the report)."""
        return replace(self, intervention=intervention, attention=attention)

    def summary(self) -> str:
        """What was found, in one line: how many top entries are massive, or (none) how far the
        largest magnitude is from the bar, as its ratio to its layer's median."""
        n_massive = int(self.top["massive"].sum())
        if n_massive:
            layers = sorted(int(x) for x in self.top.loc[self.top["massive"], "layer"].unique())
            return (
                f"{n_massive} of the {len(self.top)} top entries are massive (above "
                f"{self.magnitude:g} and {self.ratio:g}x their layer's median), in layers "
                f"{', '.join(map(str, layers))}"
            )
        top1 = self.top[self.top["rank"] == 0].merge(self.median, on="layer")
        ratios = top1["magnitude"] / top1["median"]
        best = int(ratios.to_numpy().argmax())
        return (
            f"none: the largest magnitude is {float(top1['magnitude'].iloc[best]):.4g}, "
            f"{float(ratios.iloc[best]):.3g}x its layer's median (layer "
            f"{int(top1['layer'].iloc[best])}); the bar is above {self.magnitude:g} and "
            f"{self.ratio:g}x the median"
        )

    def placed(self, what: str) -> None:
        """Raise unless ``top`` names places (``by="pooled"``); ``what`` needs them.

        Raises:
            NeuronKindsError: ``by="sequence"``.
        """
        if self.by != "pooled":
            raise NeuronKindsError(
                f"{what} needs the places of the massive entries: use "
                'massive_activations(..., by="pooled") (by="sequence" averages magnitudes over '
                "sequences, which have no one place)"
            )

    def dims(self) -> pd.DataFrame:
        """The dimensions holding massive activations: ``dim``, ``count`` (massive entries in
        ``top``), ``layers`` (the layers, sorted), most frequent first (``by="pooled"``)."""
        self.placed("dims()")
        massive = self.top[self.top["massive"]]
        grouped = massive.groupby("dim")["layer"]
        table = pd.DataFrame({"count": grouped.size(), "layers": grouped.agg(sorted)})
        return table.reset_index().sort_values(["count", "dim"], ascending=[False, True])

    def tokens(self) -> pd.DataFrame:
        """The tokens holding massive activations: ``token_id``, ``token``, ``count``,
        ``first_token`` (entries at position 0), ``delimiter``, most frequent first
        (``by="pooled"``)."""
        self.placed("tokens()")
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


def _check(model: Any, tokens: Any, k: object, layers: Sequence[int] | None) -> list[int]:
    check_tokens(tokens, model)
    check_int("k", k, low=1)
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
    bar: Progress,
) -> None:
    """Run ``tokens`` in batches, calling ``see(layer, hidden, first_row)`` on each layer's
    ``hook_resid_post``; ``bar`` counts their tokens."""
    device = next(model.parameters()).device
    stop = layers[-1] + 1
    for first in range(0, tokens.shape[0], batch):
        rows = tokens[first : first + batch].to(device)

        def hook(value: torch.Tensor, hook: Any, first: int = first) -> None:
            see(int(hook.name.split(".")[1]), value, first)

        hooks = [(resid_post(layer), hook) for layer in layers]
        with torch.inference_mode(), stop_at(model, stop):
            model.run_with_hooks(rows, fwd_hooks=hooks, stop_at_layer=stop)
        bar.update(rows.numel())


def massive_activations(
    model: Any,
    tokens: torch.Tensor,
    k: int = 3,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int | None = None,
    magnitude: float = MAGNITUDE,
    ratio: float = RATIO,
    by: str = "pooled",
    progress: bool | None = None,
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
        by: ``"pooled"`` (every token together, with the places of the top entries) or
            ``"sequence"`` (Sun et al.'s means over sequences; ``top`` then has no places).
        progress: Show progress (default), each pass over ``tokens`` named with its total of
            tokens (``massive activations pass 1/2 (top-k and median counts)``, ``pass 2/2
            (exact median)``; one pass with ``by="sequence"``): a bar in a terminal or
            notebook, lines in a log (``tl_neuronkinds.progress``); False for none.

    Returns:
        A ``MassiveActivations`` with ``by_sequence`` too. Deterministic: ties by (sequence,
        position, dimension).

    Raises:
        NeuronKindsError: Bad tokens, ``k``, ``layers``, ``batch_size`` or ``by``; NaN or
            infinite hidden states.
    """
    chosen = _check(model, tokens, k, layers)
    batch = BATCH_ROWS if batch_size is None else check_int("batch_size", batch_size, low=1)
    if by not in BY:
        raise NeuronKindsError(f"by must be one of {', '.join(map(repr, BY))}, not {by!r}")
    seq_len, d_model = tokens.shape[1], model.cfg.d_model
    top = {layer: TopMagnitudes(k) for layer in chosen}
    medians = {layer: MedianCounter() for layer in chosen}
    per_sequence = {layer: SequenceMeans(k) for layer in chosen}

    def first_pass(layer: int, hidden: torch.Tensor, first: int) -> None:
        mag = magnitudes(hidden, resid_post(layer))
        per_sequence[layer].add(mag.view(hidden.shape[0], -1))
        if by == "pooled":
            top[layer].add(mag, hidden.flatten(), first * seq_len * d_model)
            medians[layer].count(mag)

    def second_pass(layer: int, hidden: torch.Tensor, first: int) -> None:
        medians[layer].refine(magnitudes(hidden, resid_post(layer)))

    bar = Progress(0, enabled=progress)
    n_passes = 1 if by == "sequence" else 2
    first_name = "top-k and median counts" if by == "pooled" else "per-sequence top-k and medians"
    try:
        bar.set_phase(f"massive activations pass 1/{n_passes} ({first_name})", tokens.numel())
        _forward_each_batch(model, tokens, chosen, batch, first_pass, bar)
        by_sequence = _by_sequence_table(per_sequence)
        if by == "sequence":
            median = dict(zip(chosen, by_sequence["median"].tolist(), strict=True))
            table = _sequence_top_table(by_sequence, magnitude, ratio)
        else:
            for counter in medians.values():
                counter.plan()
            bar.set_phase("massive activations pass 2/2 (exact median)", tokens.numel())
            _forward_each_batch(model, tokens, chosen, batch, second_pass, bar)
            median = {layer: medians[layer].median() for layer in chosen}
            table = _top_table(model, tokens, top, median, magnitude, ratio)
    finally:
        bar.close()
    return MassiveActivations(
        table,
        pd.DataFrame({"layer": chosen, "median": [median[layer] for layer in chosen]}),
        magnitude,
        ratio,
        by=by,
        by_sequence=by_sequence,
    )


def _by_sequence_table(per_sequence: dict[int, SequenceMeans]) -> pd.DataFrame:
    rows = []
    for layer, sums in per_sequence.items():
        top, median = sums.means()
        ranks = {f"top_{rank + 1}": mag for rank, mag in enumerate(top)}
        rows.append({"layer": layer, "n_seq": sums.n, **ranks, "median": median})
    return pd.DataFrame(rows)


def _sequence_top_table(by_sequence: pd.DataFrame, magnitude: float, ratio: float) -> pd.DataFrame:
    """``top`` for ``by="sequence"``: the mean magnitudes by rank, places undefined (NA)."""
    ranks = [c for c in by_sequence.columns if c.startswith("top_")]
    long = by_sequence.melt(id_vars=["layer", "median"], value_vars=ranks, value_name="magnitude")
    long["rank"] = long["variable"].str.removeprefix("top_").astype(np.int64) - 1
    long = long.sort_values(["layer", "rank"], ignore_index=True)
    mags = long["magnitude"].to_numpy()
    n = len(long)
    table = pd.DataFrame(
        {
            "layer": long["layer"].astype(np.int64),
            "rank": long["rank"],
            "value": np.full(n, np.nan),
            "magnitude": mags,
            "massive": (mags > magnitude) & (mags > ratio * long["median"].to_numpy()),
        }
    )
    for column in ("seq", "pos", "token_id", "dim"):
        table[column] = pd.array([pd.NA] * n, dtype="Int64")
    table["token"] = pd.array([pd.NA] * n, dtype="string")
    for column in ("first_token", "delimiter"):
        table[column] = pd.array([pd.NA] * n, dtype="boolean")
    return table[TOP_COLUMNS]


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
    strings = strings_of(getattr(model, "tokenizer", None), table["token_id"].to_numpy())
    table["token"] = pd.array([strings[t] for t in table["token_id"]], dtype="string")
    table["first_token"] = table["pos"] == 0
    table["delimiter"] = [_is_delimiter(strings[t]) for t in table["token_id"]]
    return table[TOP_COLUMNS]
