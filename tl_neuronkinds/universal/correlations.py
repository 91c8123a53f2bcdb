"""Universal neurons: correlations of neuron activations across models (Gurnee et al. 2024,
"Universal Neurons in GPT2 Language Models", §2-3; SPEC.md "Universal neurons (UN)").

For two models with one tokenizer, run over the same tokens, the Pearson correlation of neuron
``i`` of model A with neuron ``j`` of model B is taken over the text positions (every position
whose token is not BOS) from float64 sums. ``max_corr(i)`` is the largest over every neuron of
B (every layer). The baseline is the same after an exactly orthogonal random rotation of B's
neurons within each layer, which keeps what B's layers represent but mixes the neuron basis;
``excess = max_corr - baseline_max_corr``, and a neuron is **universal** where the excess is
above 0.5 (Gurnee et al. §3: "excess correlation" above 0.5 over the mean of the other models).

Memory is bounded by ``memory`` bytes: the sums of products of A's neurons with all of B's
are kept for a tile of A's neurons at a time (``[tile, N_B]`` float64), one pass over the
tokens per tile; per neuron only the top-k of each tile is kept. Sums are taken around a shift
(each neuron's mean on the first chunk), so that ``E[ab] - E[a]E[b]`` does not cancel.

Passes after the first need fewer forwards: the first pass keeps both models' activations at
the text positions (in the models' dtype) for as many batches as fit in ``cache`` bytes, and
the later passes read those and run the forwards of the other batches only (where everything
fits, the forwards run once, not once per tile). Within a batch the float64 work is done on
chunks of positions, so a long row never needs float64 copies of all its activations.

Rotation: the baseline needs B's rotated activations ``b R`` (``R`` orthogonal per layer). Their
products with A are ``S_ab R`` (linear, so no second accumulator), and their own sums are
taken on the first pass. The rotations (``layers x d_mlp^2`` float64: 12 GiB at OPT-1.3b) are
held in memory where they take at most ``memory`` bytes, else read from a temporary file one
layer at a time (``rotations.py``).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds._common import check_count, check_positive_int
from tl_neuronkinds.kinds.moments import FLAT
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.recording.recorder import check_layers, check_tokens
from tl_neuronkinds.universal.rotations import Rotations
from tl_neuronkinds.vocab.readout import d_mlp_of

#: Gurnee et al. §3: universal neurons have an excess correlation above 0.5.
EXCESS = 0.5
#: Bytes of accumulators held at once where ``memory`` is not given (the sums of one tile of
#: A's neurons with all of B's, and the correlations computed from them).
MEMORY = 2 << 30
#: Accumulator bytes per (A, B) neuron pair of a tile: the float64 sums of products (turned
#: into correlations in place), the same for the rotated baseline, and room for one layer's
#: block of the rotation's product.
_TILE_BYTES = 24
#: Where ``batch_size`` is not given, each forward takes rows for at least this many positions
#: (the sums' products run near the matrix-multiply rate only with many positions at once) ...
BATCH_POSITIONS = 2048
#: ... unless their activations (both models', in their dtype) would pass this many bytes.
BATCH_BYTES = 1 << 30
#: Bytes of both models' activations kept between a run's passes where ``cache`` is not given.
CACHE = 4 << 30
#: Most float64 bytes per chunk of positions within a batch (A's tile, B's neurons and B
#: rotated). Large on purpose: the sums' products run near the matrix-multiply rate only with
#: many positions each (measured on this project's CPU, tile 2427 x 36,864 neurons of B: 106
#: GFLOP/s at 440 positions, 129 at 1,024, 146 at 2,048).
CHUNK_BYTES = 2 << 30
COLUMNS = [
    "layer",
    "neuron",
    "max_corr",
    "match_layer",
    "match_neuron",
    "baseline_max_corr",
    "excess",
    "universal",
    "top_corr",
    "top_layer",
    "top_neuron",
]


@dataclass
class _Side:
    """One model's neurons: the chosen layers' ``hook_post`` columns, concatenated by layer."""

    model: Any
    layers: list[int]
    d_mlp: int = field(init=False)

    def __post_init__(self) -> None:
        self.d_mlp = d_mlp_of(self.model)

    @property
    def size(self) -> int:
        return len(self.layers) * self.d_mlp

    def labels(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(layer, neuron) of columns of the concatenation."""
        return np.asarray(self.layers)[columns // self.d_mlp], columns % self.d_mlp

    def activations(
        self, rows: torch.Tensor, text: torch.Tensor, upto: int | None = None
    ) -> Float[torch.Tensor, "positions neurons"]:
        """``hook_post`` of the chosen layers (only those holding columns ``< upto``) at the
        text positions of ``rows``, in the model's dtype, the columns in the concatenation's
        order."""
        layers = self.layers if upto is None else self.layers[: -(-upto // self.d_mlp)]
        seen: dict[int, torch.Tensor] = {}

        def hook(value: torch.Tensor, hook: Any) -> None:
            seen[int(hook.name.split(".")[1])] = value[text]

        stop = layers[-1] + 1
        device = next(self.model.parameters()).device
        hooks = [(f"blocks.{layer}.mlp.hook_post", hook) for layer in layers]
        with torch.inference_mode(), stop_at(self.model, stop):
            self.model.run_with_hooks(rows.to(device), fwd_hooks=hooks, stop_at_layer=stop)
        return torch.cat([seen[layer] for layer in layers], dim=1)


@dataclass
class _Moments:
    """Shifted first and second sums of some columns: ``n``, ``sum(x - c)``, ``sum((x - c)^2)``."""

    shift: torch.Tensor
    n: int = 0
    s1: torch.Tensor = field(init=False)
    s2: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.s1 = torch.zeros_like(self.shift)
        self.s2 = torch.zeros_like(self.shift)

    def add(self, centred: Float[torch.Tensor, "positions cols"]) -> None:
        self.n += centred.shape[0]
        self.s1 += centred.sum(dim=0)
        self.s2 += (centred * centred).sum(dim=0)

    def mean(self) -> torch.Tensor:
        """Mean of ``x - c``."""
        return self.s1 / self.n

    def std(self) -> torch.Tensor:
        """Population standard deviation, NaN for a constant column: a variance at most
        ``FLAT`` (``kinds.moments``) times the mean square is rounding noise, so its
        correlations are undefined rather than noise."""
        mean = self.mean()
        var = self.s2 / self.n - mean * mean
        return var.clamp(min=0).sqrt().where(var > FLAT * (mean + self.shift) ** 2, torch.nan)


def _correlations_(
    products: Float[torch.Tensor, "tile n_b"], a: _Moments, b: _Moments
) -> Float[torch.Tensor, "tile n_b"]:
    """Pearson correlations from the shifted sums of products and of each side, computed in
    place of ``products`` (no temporary of its size)."""
    corr = products.div_(a.n)
    corr.addr_(a.mean(), b.mean(), alpha=-1)
    return corr.div_(a.std()[:, None]).div_(b.std()[None, :])


@dataclass
class _Best:
    """Per A neuron of one tile, the top-k correlations so far and the B columns they are at."""

    values: torch.Tensor
    columns: torch.Tensor

    @classmethod
    def of(cls, corr: Float[torch.Tensor, "tile n_b"], k: int) -> "_Best":
        """Top-k of each row, NaN (undefined) below every number (``corr``'s NaNs are
        overwritten: it is not needed afterwards)."""
        ranked = corr.nan_to_num_(nan=-torch.inf)
        values, columns = torch.topk(ranked, min(k, corr.shape[1]), dim=1, sorted=True)
        return cls(values.where(values > -torch.inf, torch.nan), columns)


def _check_models(model_a: Any, model_b: Any) -> None:
    if model_a.cfg.d_vocab != model_b.cfg.d_vocab:
        raise NeuronKindsError(
            f"the models have different vocabularies ({model_a.cfg.d_vocab} and "
            f"{model_b.cfg.d_vocab} tokens): correlations need one tokenizer"
        )
    tok_a, tok_b = getattr(model_a, "tokenizer", None), getattr(model_b, "tokenizer", None)
    if tok_a is not None and tok_b is not None and tok_a.get_vocab() != tok_b.get_vocab():
        raise NeuronKindsError(
            "the models have different tokenizers: correlations need the same tokens to mean "
            "the same text in both"
        )


def bos_of(model: Any, bos_token_id: int | None) -> int:
    if bos_token_id is not None:
        return int(bos_token_id)
    found = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if found is None:
        raise NeuronKindsError("the model has no tokenizer with a BOS id: pass bos_token_id")
    return int(found)


@dataclass
class _Run:
    """Everything fixed for one ``neuron_correlations`` call, and the activations it keeps
    between passes: those of the first batches, while they fit in ``cache`` bytes (0: none)."""

    a: _Side
    b: _Side
    tokens: torch.Tensor
    bos: int
    batch: int
    device: torch.device
    rotations: Rotations | None
    cache: int = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    filled: bool = False

    def batches(self) -> Any:
        for first in range(0, self.tokens.shape[0], self.batch):
            rows = self.tokens[first : first + self.batch]
            text = rows != self.bos
            if text.any():
                yield rows, text.to(self.device)

    def activations(self, upto: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch, A's activations at its text positions (at least the layers holding
        columns ``< upto``) and B's: kept by the first pass, or from the forwards."""
        room = self.cache - sum(a.nbytes + b.nbytes for a, b in self.kept)
        for index, (rows, text) in enumerate(self.batches()):
            if index < len(self.kept):
                yield self.kept[index]
                continue
            keep = not self.filled and index == len(self.kept) and self._bytes(text) <= room
            a = self.a.activations(rows, text, upto=None if keep else upto)
            b = self.b.activations(rows, text)
            if keep:
                self.kept.append((a, b))
                room -= a.nbytes + b.nbytes
            yield a, b
        self.filled = True

    def _bytes(self, text: torch.Tensor) -> int:
        """Bytes of both models' activations at ``text``'s positions, in their dtypes."""
        sides = (self.a, self.b)
        return int(text.sum()) * sum(_itemsize(side.model) * side.size for side in sides)

    def chunks(self, positions: int, tile: int) -> list[slice]:
        """A batch's ``positions`` in near-equal chunks of at most ``CHUNK_BYTES`` of float64
        work each for a tile of ``tile`` of A's columns (no small remainder chunk)."""
        most = max(1, CHUNK_BYTES // (8 * (tile + 2 * self.b.size)))
        count = -(-positions // most)
        bounds = [positions * i // count for i in range(count + 1)]
        return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]

    def rotate(self, b: Float[torch.Tensor, "rows n_b"]) -> Float[torch.Tensor, "rows n_b"]:
        """Each layer's block of B's columns times its rotation: B's (centred) activations
        rotated, or, being linear, sums of A's products with them from those with B's own."""
        d = self.b.d_mlp
        out = torch.empty_like(b)
        assert self.rotations is not None
        for i, rotation in enumerate(self.rotations):
            out[:, i * d : (i + 1) * d] = b[:, i * d : (i + 1) * d] @ rotation
        return out

    def tiles(
        self, tile: int
    ) -> Iterator[tuple[slice, Float[torch.Tensor, "tile n_b"], torch.Tensor | None]]:
        """Per tile of A's columns (one pass over the tokens each): the columns, their
        correlations with B's neurons, and (where the run has rotations) with B's rotated ones."""
        b_moments = r_moments = None
        for start in range(0, self.a.size, tile):
            cols = slice(start, min(start + tile, self.a.size))
            products, a_moments, b_moments, r_moments = _pass(self, cols, b_moments, r_moments)
            rotated = (
                _correlations_(self.rotate(products), a_moments, r_moments)
                if r_moments is not None
                else None
            )
            yield cols, _correlations_(products, a_moments, b_moments), rotated
            del products, rotated


def neuron_correlations(
    model_a: Any,
    model_b: Any,
    tokens: torch.Tensor,
    *,
    layers_a: Sequence[int] | None = None,
    layers_b: Sequence[int] | None = None,
    k: int = 1,
    batch_size: int | None = None,
    memory: int = MEMORY,
    cache: int = CACHE,
    seed: int = 0,
    threshold: float = EXCESS,
    bos_token_id: int | None = None,
) -> pd.DataFrame:
    """Each neuron of A's best match in B, against a rotated baseline (module docstring).

    Args:
        model_a, model_b: HookedTransformers or TransformerBridges of one tokenizer
            (``load_opt``; streamed models work: each pass loads each block once per batch).
        tokens: ``Int[n_seq seq_len]``, each row starting with BOS; the BOS positions are left
            out.
        layers_a, layers_b: Layers whose neurons are correlated (default: all).
        k: Matches kept per neuron of A (``top_*`` columns; ``k=1`` keeps the best).
        batch_size: Rows per forward (default: enough for 2,048 positions, at most 1 GiB of
            both models' activations).
        memory: Bytes of accumulators held at once: A's neurons are taken in tiles of
            ``memory // (24 * N_B)``, one pass over ``tokens`` each. B's rotations for the
            baseline (``layers x d_mlp^2`` float64) are held in memory as well where they take
            at most as many bytes; otherwise they are read from a temporary file per use.
        cache: Bytes of activations kept between passes (``positions x (N_A + N_B)`` in the
            models' dtype): the batches whose activations fit are run once rather than once per
            tile, the others once per tile. 0 keeps none.
        seed: Seeds the baseline's rotations.
        threshold: ``universal`` where ``excess`` is above this (Gurnee et al.: 0.5).
        bos_token_id: BOS id; default: model A's tokenizer's.

    Returns:
        One row per neuron of A (chosen layers): ``layer``, ``neuron``, ``max_corr``,
        ``match_layer``, ``match_neuron`` (its best match in B), ``baseline_max_corr``,
        ``excess``, ``universal``, and ``top_corr``, ``top_layer``, ``top_neuron`` (lists,
        best first). Correlations with a constant neuron (a dead one, say) are undefined and
        left out; a neuron of A that is constant has NaN throughout. Deterministic for a seed.

    Raises:
        NeuronKindsError: Different vocabularies or tokenizers, tokens without BOS or outside
            a model's vocabulary or context, bad layers, ``k``, ``batch_size``, ``memory`` or
            ``cache``.
    """
    memory = check_positive_int("memory", memory)
    cache = check_count("cache", cache)
    run, k = _prepare(
        model_a, model_b, tokens, layers_a, layers_b, k, batch_size, seed, bos_token_id, memory
    )
    tile = memory // (_TILE_BYTES * run.b.size)
    if tile < 1:
        raise NeuronKindsError(
            f"memory={memory} bytes holds no tile: one neuron of A against {run.b.size} of B "
            f"needs {_TILE_BYTES * run.b.size}"
        )
    run.cache = cache if tile < run.a.size else 0  # one pass keeps nothing
    best, baseline = [], []
    for _, corr, rotated in run.tiles(tile):
        assert rotated is not None
        best.append(_Best.of(corr, k))
        baseline.append(_Best.of(rotated, 1).values[:, 0])
    return _table(run, best, torch.cat(baseline), threshold)


def _itemsize(model: Any) -> int:
    return next(model.parameters()).element_size()


def _prepare(
    model_a: Any,
    model_b: Any,
    tokens: Any,
    layers_a: Sequence[int] | None,
    layers_b: Sequence[int] | None,
    k: object,
    batch_size: object,
    seed: int | None,
    bos_token_id: int | None,
    memory: int,
) -> tuple[_Run, int]:
    """The checked inputs as a ``_Run``, its rotations drawn from ``seed`` (None: no baseline,
    no rotations; held in memory where they take at most ``memory`` bytes, else read from a
    temporary file per use), and ``k``."""
    _check_models(model_a, model_b)
    bos = bos_of(model_a, bos_token_id)
    check_tokens(tokens, model_a, bos)
    check_tokens(tokens, model_b, bos)
    k = check_positive_int("k", k)
    a = _Side(model_a, check_layers(layers_a, model_a.cfg.n_layers))
    b = _Side(model_b, check_layers(layers_b, model_b.cfg.n_layers))
    if batch_size is None:
        seq_len = tokens.shape[1]
        row_bytes = seq_len * (a.size * _itemsize(model_a) + b.size * _itemsize(model_b))
        batch_size = max(1, min(-(-BATCH_POSITIONS // seq_len), BATCH_BYTES // row_bytes))
    batch = check_positive_int("batch_size", batch_size)
    device = next(model_a.parameters()).device
    rotations = None if seed is None else Rotations(len(b.layers), b.d_mlp, seed, device, memory)
    return _Run(a, b, tokens, bos, batch, device, rotations), k


def _pass(
    run: _Run,
    cols: slice,
    b_moments: _Moments | None,
    r_moments: _Moments | None,
) -> tuple[torch.Tensor, _Moments, _Moments, _Moments | None]:
    """One pass over the tokens: sums of products of A's columns ``cols`` with all of B's, and
    each side's sums (B's, and where the run has rotations its rotation's, on the first pass
    only)."""
    first_pass = b_moments is None
    tile = cols.stop - cols.start
    products = torch.zeros(tile, run.b.size, dtype=torch.float64, device=run.device)
    a_moments: _Moments | None = None
    for a_batch, b_batch in run.activations(cols.stop):
        for chunk in run.chunks(a_batch.shape[0], tile):
            # copies (copy=True: a float64 model's kept activations must not be shifted)
            a = a_batch[chunk, cols].to(run.device, torch.float64, copy=True)
            b = b_batch[chunk].to(run.device, torch.float64, copy=True)
            if a_moments is None:
                a_moments = _Moments(a.mean(dim=0))
            if b_moments is None:
                b_moments = _Moments(b.mean(dim=0))
            a -= a_moments.shift
            b -= b_moments.shift
            a_moments.add(a)
            if first_pass:
                b_moments.add(b)
            if first_pass and run.rotations is not None:
                if r_moments is None:
                    r_moments = _Moments(
                        torch.zeros(run.b.size, dtype=torch.float64, device=run.device)
                    )
                r_moments.add(run.rotate(b))
            products.addmm_(a.T, b)
    if a_moments is None or b_moments is None:
        raise NeuronKindsError("tokens hold no text position (every token is BOS)")
    return products, a_moments, b_moments, r_moments


def _table(run: _Run, best: list[_Best], baseline: torch.Tensor, threshold: float) -> pd.DataFrame:
    values = torch.cat([b.values for b in best]).cpu().numpy()
    columns = torch.cat([b.columns for b in best]).cpu().numpy()
    layer, neuron = run.a.labels(np.arange(run.a.size))
    match_layer, match_neuron = run.b.labels(columns)
    defined = ~np.isnan(values)
    max_corr = values[:, 0]
    base = baseline.cpu().numpy()
    excess = max_corr - base
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": neuron,
            "max_corr": max_corr,
            "match_layer": _nullable(match_layer[:, 0], defined[:, 0]),
            "match_neuron": _nullable(match_neuron[:, 0], defined[:, 0]),
            "baseline_max_corr": base,
            "excess": excess,
            "universal": np.nan_to_num(excess, nan=-np.inf) > threshold,
            "top_corr": [list(v[d]) for v, d in zip(values, defined)],
            "top_layer": [list(m[d]) for m, d in zip(match_layer, defined)],
            "top_neuron": [list(m[d]) for m, d in zip(match_neuron, defined)],
        },
        columns=COLUMNS,
    )


def _nullable(values: np.ndarray, defined: np.ndarray) -> pd.arrays.IntegerArray:
    """``values`` as nullable integers, <NA> where not ``defined``."""
    return pd.arrays.IntegerArray(values.astype(np.int64), ~defined)


def correlation_matrix(
    model_a: Any,
    model_b: Any,
    tokens: torch.Tensor,
    *,
    layers_a: Sequence[int] | None = None,
    layers_b: Sequence[int] | None = None,
    batch_size: int | None = None,
    memory: int = MEMORY,
    bos_token_id: int | None = None,
) -> pd.DataFrame:
    """The full matrix of Pearson correlations of A's neurons (rows) with B's (columns), in one
    pass over ``tokens``, where it fits in ``memory`` bytes (``neuron_correlations`` has the
    arguments; the baseline is not computed here).

    Returns:
        A float64 DataFrame indexed by (layer, neuron) of A, its columns (layer, neuron) of B;
        NaN where a neuron is constant.

    Raises:
        NeuronKindsError: The matrix does not fit (the message gives the bytes needed), or
            any input ``neuron_correlations`` refuses.
    """
    memory = check_positive_int("memory", memory)
    run, _ = _prepare(
        model_a, model_b, tokens, layers_a, layers_b, 1, batch_size, None, bos_token_id, memory
    )
    needed = 8 * run.a.size * run.b.size  # the float64 sums, turned into the matrix in place
    if needed > memory:
        raise NeuronKindsError(
            f"the {run.a.size} x {run.b.size} correlation matrix needs {needed:,} bytes of "
            f"accumulators, more than memory={memory:,}: raise memory, choose fewer layers, "
            "or use neuron_correlations, which keeps each neuron's best matches only"
        )
    ((_, corr, _),) = list(run.tiles(run.a.size))
    return pd.DataFrame(corr.cpu().numpy(), index=_index(run.a, "a"), columns=_index(run.b, "b"))


def _index(side: _Side, name: str) -> pd.MultiIndex:
    layer, neuron = side.labels(np.arange(side.size))
    return pd.MultiIndex.from_arrays([layer, neuron], names=[f"layer_{name}", f"neuron_{name}"])


def universal_neurons(
    models: Sequence[Any],
    tokens: torch.Tensor,
    *,
    threshold: float = EXCESS,
    **options: Any,
) -> pd.DataFrame:
    """Universal neurons of ``models[0]`` against every other model (Gurnee et al. §3: a
    neuron is universal where its excess correlation, averaged over the other models, is above
    0.5).

    Args:
        models: Two or more models of one tokenizer (seeds of one architecture, say).
        tokens: As for ``neuron_correlations``.
        threshold: ``universal`` where the mean ``excess`` is above this.
        options: Passed to ``neuron_correlations`` (``layers_a``, ``batch_size``, ``memory``,
            ``seed``, ...).

    Returns:
        One row per neuron of ``models[0]``: ``layer``, ``neuron``, ``max_corr``,
        ``baseline_max_corr`` and ``excess`` (means over the other models), ``universal``, and
        ``excess_by_model`` (a list, one per other model, in order).

    Raises:
        NeuronKindsError: Fewer than two models, or what ``neuron_correlations`` refuses.
    """
    if len(models) < 2:
        raise NeuronKindsError(f"universal_neurons needs at least two models, got {len(models)}")
    tables = [neuron_correlations(models[0], other, tokens, **options) for other in models[1:]]
    first = tables[0]

    def mean(column: str) -> np.ndarray:
        return np.mean([t[column].to_numpy(dtype=np.float64) for t in tables], axis=0)

    excess = mean("excess")
    return pd.DataFrame(
        {
            "layer": first["layer"],
            "neuron": first["neuron"],
            "max_corr": mean("max_corr"),
            "baseline_max_corr": mean("baseline_max_corr"),
            "excess": excess,
            "universal": np.nan_to_num(excess, nan=-np.inf) > threshold,
            "excess_by_model": [list(row) for row in zip(*(t["excess"] for t in tables))],
        }
    )
