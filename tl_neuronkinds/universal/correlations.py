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

**Support.** A correlation is only as good as the positions where the neuron varies. An OPT
neuron (ReLU) is 0 wherever it does not fire, so its variance, and each of its correlations, lies
on the positions where it is *active* (activation above 0; the ``active`` column counts them,
text positions only). Active at one position, it correlates 1.0 with any neuron of B active
there alone: a coincidence, not a shared feature. So a neuron needs ``min_active`` active
positions (``MIN_ACTIVE``, 10) to be called universal; below that, whatever its excess, it is
not (and ``find_universal``'s result counts it and warns).

Memory is bounded by ``memory`` bytes: A's neurons are taken in tiles, one pass over the tokens
per tile, and per neuron only the top-k of each tile is kept; the passes, the activations they
keep between them and the rotations' place are ``passes.py``'s.
"""

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.progress import Progress
from tl_neuronkinds.universal.passes import (
    CorrelationPasses,
    NeuronColumns,
    RotationKey,
    prepare_passes,
)
from tl_neuronkinds.universal.rotations import Rotations
from tl_neuronkinds.universal.settings import CACHE, EXCESS, MEMORY, MIN_ACTIVE
from tl_neuronkinds.universal.sums import TopMatches, row_moments

#: Accumulator bytes per (A, B) neuron pair of a tile: the float64 sums of products (turned
#: into correlations in place), the same for the rotated baseline, and room for one layer's
#: block of the rotation's product.
_TILE_BYTES = 24
COLUMNS = [
    "layer",
    "neuron",
    "max_corr",
    "match_layer",
    "match_neuron",
    "baseline_max_corr",
    "excess",
    "universal",
    "active",
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
    min_active: int = MIN_ACTIVE,
    progress: bool | None = None,
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
        min_active: ... and the neuron is active (above 0) at this many text positions at
            least (module docstring, "Support"; 0 or 1 for no such condition).
        progress: Show progress (default), each step named with its own total: ``correlations:
            the baseline's rotations`` (1 step), then per tile ``correlations pass i/n`` (the
            pass over ``tokens``, counting text positions) and ``correlations pass i/n:
            baseline and matches`` (a step per layer of B, and one for the matches); a bar in
            a terminal or notebook, lines in a log (``tl_neuronkinds.progress``); False for
            none.

    Returns:
        One row per neuron of A (chosen layers): ``layer``, ``neuron``, ``max_corr``,
        ``match_layer``, ``match_neuron`` (its best match in B), ``baseline_max_corr``,
        ``excess``, ``universal``, ``active`` (its active text positions), ``top_corr``, ``top_layer``, ``top_neuron`` (lists,
        best first; ``k=5`` gives the top 5 of Gurnee et al.'s summary), and ``corr_mean`` and
        ``corr_std``: the mean and population standard deviation of the neuron's correlations
        with every (non-constant) neuron of B. Correlations with a constant neuron (a dead one, say) are undefined and
        left out; a neuron of A that is constant has NaN throughout. Deterministic for a seed.

    Raises:
        NeuronKindsError: Different vocabularies or tokenizers, tokens without BOS or outside
            a model's vocabulary or context, bad layers, ``k``, ``batch_size``, ``memory``,
            ``cache`` or ``min_active``.
    """
    options = {
        "layers_a": layers_a,
        "layers_b": layers_b,
        "k": k,
        "batch_size": batch_size,
        "memory": memory,
        "cache": cache,
        "seed": seed,
        "threshold": threshold,
        "bos_token_id": bos_token_id,
        "min_active": min_active,
    }
    bar = Progress(0, enabled=progress)
    try:
        return _correlations(model_a, model_b, tokens, options, bar, "correlations")
    finally:
        bar.close()


def _correlations(
    model_a: Any,
    model_b: Any,
    tokens: torch.Tensor,
    options: dict[str, Any],
    bar: Progress,
    label: str,
    drawn: dict[RotationKey, Rotations] | None = None,
) -> pd.DataFrame:
    """``neuron_correlations`` with every option in ``options``, its passes shown on ``bar``
    as ``label pass i/n``; the baseline's rotations taken from ``drawn`` where another model
    of the same shape drew them (``draw_rotations``)."""
    memory = check_int("memory", options["memory"], low=1)
    cache = check_int("cache", options["cache"], low=0)
    min_active = check_int("min_active", options["min_active"], low=0)
    passes, k = prepare_passes(
        model_a,
        model_b,
        tokens,
        options["layers_a"],
        options["layers_b"],
        options["k"],
        options["batch_size"],
        options["bos_token_id"],
    )
    passes.bar, passes.label = bar, label
    tile = memory // (_TILE_BYTES * passes.b.size)
    if tile < 1:
        raise NeuronKindsError(
            f"memory={memory} bytes holds no tile: one neuron of A against {passes.b.size} of B "
            f"needs {_TILE_BYTES * passes.b.size}"
        )
    passes.cache = cache if tile < passes.a.size else 0  # one pass keeps nothing
    passes.draw_rotations(options["seed"], memory, drawn)
    best, baseline, moments = [], [], []
    threshold = options["threshold"]
    for _, corr, rotated in passes.tiles(tile):
        assert rotated is not None
        moments.append(row_moments(corr))  # before TopMatches.of overwrites corr's NaNs
        best.append(TopMatches.of(corr, k))
        baseline.append(TopMatches.of(rotated, 1).values[:, 0])
        bar.update(1)  # the last step of the tile's "baseline and matches"
    summary = [torch.cat(parts).cpu().numpy() for parts in zip(*moments, strict=True)]
    return _table(passes, best, torch.cat(baseline), threshold, min_active).assign(
        corr_mean=summary[0], corr_std=summary[1]
    )


def is_universal(
    excess: Float[np.ndarray, " n"],
    active: Int[np.ndarray, " n"],
    threshold: float,
    min_active: int,
) -> Bool[np.ndarray, " n"]:
    """Universal: an excess correlation above ``threshold`` (undefined: not) and at least
    ``min_active`` active text positions (module docstring, "Support")."""
    return (np.nan_to_num(excess, nan=-np.inf) > threshold) & (active >= min_active)


def _table(
    passes: CorrelationPasses,
    best: list[TopMatches],
    baseline: torch.Tensor,
    threshold: float,
    min_active: int,
) -> pd.DataFrame:
    values = torch.cat([b.values for b in best]).cpu().numpy()
    columns = torch.cat([b.columns for b in best]).cpu().numpy()
    layer, neuron = passes.a.labels(np.arange(passes.a.size))
    match_layer, match_neuron = passes.b.labels(columns)
    defined = ~np.isnan(values)
    max_corr = values[:, 0]
    base = baseline.cpu().numpy()
    excess = max_corr - base
    active = passes.active.numpy()
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": neuron,
            "max_corr": max_corr,
            "match_layer": _nullable(match_layer[:, 0], defined[:, 0]),
            "match_neuron": _nullable(match_neuron[:, 0], defined[:, 0]),
            "baseline_max_corr": base,
            "excess": excess,
            "universal": is_universal(excess, active, threshold, min_active),
            "active": active,
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
        model_a, model_b, tokens, layers_a, layers_b, 1, batch_size, bos_token_id
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
    min_active: int = MIN_ACTIVE,
    progress: bool | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Universal neurons of ``models[0]`` against every other model (Gurnee et al. §3: a
    neuron is universal where its excess correlation, averaged over the other models, is above
    0.5), if active at ``min_active`` text positions at least (module docstring, "Support").

    Args:
        models: Two or more models of one tokenizer (seeds of one architecture, say).
        tokens: As for ``neuron_correlations``.
        threshold: ``universal`` where the mean ``excess`` is above this ...
        min_active: ... and the neuron is active at this many text positions at least.
        progress: Show progress (default) as ``neuron_correlations`` does, each step named
            after the model it correlates with: ``correlations with NAME (j/m) pass i/n``
            and so on (``tl_neuronkinds.progress``); False for none.
        options: Passed to ``neuron_correlations`` (``layers_a``, ``batch_size``, ``memory``,
            ``seed``, ...).

    Returns:
        One row per neuron of ``models[0]``: ``layer``, ``neuron``, ``max_corr``,
        ``baseline_max_corr`` and ``excess`` (means over the other models), ``universal``,
        ``active`` (its active text positions), and ``excess_by_model`` (a list, one per other
        model, in order).

    Raises:
        NeuronKindsError: Fewer than two models, or what ``neuron_correlations`` refuses.
        TypeError: An option ``neuron_correlations`` does not take.
    """
    if len(models) < 2:
        raise NeuronKindsError(f"universal_neurons needs at least two models, got {len(models)}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"universal_neurons got unexpected keyword arguments {unknown}")
    chosen = {**_OPTIONS, **options, "threshold": threshold, "min_active": min_active}
    others = models[1:]
    bar = Progress(0, enabled=progress)
    drawn: dict[RotationKey, Rotations] = {}
    try:
        tables = [
            _correlations(
                models[0],
                other,
                tokens,
                chosen,
                bar,
                f"correlations with {other.cfg.model_name} ({j}/{len(others)})",
                drawn,
            )
            for j, other in enumerate(others, start=1)
        ]
    finally:
        bar.close()
    first = tables[0]

    def mean(column: str) -> np.ndarray:
        return np.mean([t[column].to_numpy(dtype=np.float64) for t in tables], axis=0)

    excess = mean("excess")
    active = first["active"].to_numpy()
    return pd.DataFrame(
        {
            "layer": first["layer"],
            "neuron": first["neuron"],
            "max_corr": mean("max_corr"),
            "baseline_max_corr": mean("baseline_max_corr"),
            "excess": excess,
            "universal": is_universal(excess, active, threshold, min_active),
            "active": active,
            "excess_by_model": [list(row) for row in zip(*(t["excess"] for t in tables))],
        }
    )


#: ``neuron_correlations``'s options and their defaults (what ``universal_neurons`` passes on).
_OPTIONS = {
    name: parameter.default
    for name, parameter in inspect.signature(neuron_correlations).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "progress"
}
