"""Universal neurons: correlations of neuron activations across models (Gurnee et al. 2024,
"Universal Neurons in GPT2 Language Models", §2-3; docs/kinds.md, "Universal neurons").

For two models with one tokenizer, run over the same tokens, the Pearson correlation of neuron
``i`` of model A with neuron ``j`` of model B is taken over the text positions (every position
whose token is not BOS) from float64 sums (``sums.py``). ``max_corr(i)`` is the largest over
every neuron of B (every layer). The baseline is the same after an exactly orthogonal random
rotation of B's neurons within each layer (``rotations.py``), which keeps what B's layers
represent but mixes the neuron basis; ``excess = max_corr - baseline_max_corr``, and a neuron is
**universal** where the excess is above 0.5 (Gurnee et al. §3: "excess correlation" above 0.5
over the mean of the other models).

Memory is bounded by ``memory`` bytes: A's neurons are taken in tiles, one pass over the tokens
per tile, and per neuron only the top-k of each tile is kept; the passes, the activations they
keep between them and the rotations' place are ``passes.py``'s.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.universal.passes import CorrelationPasses, NeuronColumns, prepare_passes
from tl_neuronkinds.universal.sums import TopMatches, row_moments

#: Gurnee et al. §3: universal neurons have an excess correlation above 0.5.
EXCESS = 0.5
#: Bytes of accumulators held at once where ``memory`` is not given (the sums of one tile of
#: A's neurons with all of B's, and the correlations computed from them).
MEMORY = 2 << 30
#: Accumulator bytes per (A, B) neuron pair of a tile: the float64 sums of products (turned
#: into correlations in place), the same for the rotated baseline, and room for one layer's
#: block of the rotation's product.
_TILE_BYTES = 24
#: Bytes of both models' activations kept between a run's passes where ``cache`` is not given.
CACHE = 4 << 30
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
    "corr_mean",
    "corr_std",
]


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
        ``excess``, ``universal``, ``top_corr``, ``top_layer``, ``top_neuron`` (lists,
        best first; ``k=5`` gives the top 5 of Gurnee et al.'s summary), and ``corr_mean`` and
        ``corr_std``: the mean and population standard deviation of the neuron's correlations
        with every (non-constant) neuron of B. Correlations with a constant neuron (a dead one, say) are undefined and
        left out; a neuron of A that is constant has NaN throughout. Deterministic for a seed.

    Raises:
        NeuronKindsError: Different vocabularies or tokenizers, tokens without BOS or outside
            a model's vocabulary or context, bad layers, ``k``, ``batch_size``, ``memory`` or
            ``cache``.
    """
    memory = check_int("memory", memory, low=1)
    cache = check_int("cache", cache, low=0)
    passes, k = prepare_passes(
        model_a, model_b, tokens, layers_a, layers_b, k, batch_size, seed, bos_token_id, memory
    )
    tile = memory // (_TILE_BYTES * passes.b.size)
    if tile < 1:
        raise NeuronKindsError(
            f"memory={memory} bytes holds no tile: one neuron of A against {passes.b.size} of B "
            f"needs {_TILE_BYTES * passes.b.size}"
        )
    passes.cache = cache if tile < passes.a.size else 0  # one pass keeps nothing
    best, baseline, moments = [], [], []
    for _, corr, rotated in passes.tiles(tile):
        assert rotated is not None
        moments.append(row_moments(corr))  # before TopMatches.of overwrites corr's NaNs
        best.append(TopMatches.of(corr, k))
        baseline.append(TopMatches.of(rotated, 1).values[:, 0])
    summary = [torch.cat(parts).cpu().numpy() for parts in zip(*moments, strict=True)]
    return _table(passes, best, torch.cat(baseline), threshold).assign(
        corr_mean=summary[0], corr_std=summary[1]
    )


def _table(
    passes: CorrelationPasses, best: list[TopMatches], baseline: torch.Tensor, threshold: float
) -> pd.DataFrame:
    values = torch.cat([b.values for b in best]).cpu().numpy()
    columns = torch.cat([b.columns for b in best]).cpu().numpy()
    layer, neuron = passes.a.labels(np.arange(passes.a.size))
    match_layer, match_neuron = passes.b.labels(columns)
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
        columns=COLUMNS[:-2],
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
    memory = check_int("memory", memory, low=1)
    passes, _ = prepare_passes(
        model_a, model_b, tokens, layers_a, layers_b, 1, batch_size, None, bos_token_id, memory
    )
    needed = 8 * passes.a.size * passes.b.size  # the float64 sums, turned into the matrix in place
    if needed > memory:
        raise NeuronKindsError(
            f"the {passes.a.size} x {passes.b.size} correlation matrix needs {needed:,} bytes of "
            f"accumulators, more than memory={memory:,}: raise memory, choose fewer layers, "
            "or use neuron_correlations, which keeps each neuron's best matches only"
        )
    ((_, corr, _),) = list(passes.tiles(passes.a.size))
    return pd.DataFrame(
        corr.cpu().numpy(), index=_index(passes.a, "a"), columns=_index(passes.b, "b")
    )


def _index(side: NeuronColumns, name: str) -> pd.MultiIndex:
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
