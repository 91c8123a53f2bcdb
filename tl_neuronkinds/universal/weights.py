"""Weight statistics of FFN neurons (Gurnee et al. 2024, "Universal Neurons in GPT2 Language
Models", arXiv 2401.12181; docs/kinds.md, "Universal neurons").

Gurnee et al. describe universal neurons by statistics of their weights alone (§4.1) and find
three functional roles in them (§5): *prediction, suppression and partition* neurons (§5.1),
whose output direction reads, through the unembedding, onto a small set of tokens;
*entropy* neurons (§5.2; Stolfo et al. 2024, "Confidence regulation neurons"), large output
rows in the unembedding's effective null space; and *attention-deactivation* neurons (§5.3),
whose output makes a later head attend to BOS.

Glossary: ``d_model`` the residual stream; ``d_mlp`` a layer's neurons; ``d_unembed`` the space
``W_U`` reads (``d_model``, or OPT-350m's ``word_embed_proj_dim``); ``d_vocab`` the tokens;
``vocab`` the tokens whose ``W_U`` column is not all zeros (OPT's ``<pad>`` column is zero and is
left out); ``head_layer`` a block whose heads a neuron's output reaches (``> layer``).

Neuron (l, i) writes ``W_out[l][i]`` to the residual stream; its *readout direction*
``d_i = readout(model, l).apply(W_out[l][i])`` (``[d_unembed]``) is that row through the linear
part of what lies between it and ``W_U`` (the LayerNorms' centring and gains, ``project_out``;
``tl_neuronkinds.vocab.readout``), so weights as the checkpoint holds them and TransformerLens's
``center_writing_weights`` agree. ``fold_ln`` moves the final gain into ``W_U`` and
``center_unembed`` centres ``W_U`` over the vocabulary: the logits stay, the cosines change.
Gurnee et al. computed on weights processed that way, and so does ``weight_stats`` by default
(``weights="processed"``; ``tl_neuronkinds.universal.weight_views``); ``weights="raw"`` compares
``d_i`` with ``W_U`` as held.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import loaded_block
from tl_neuronkinds.recording.settings import OPT_BOS_TOKEN_ID
from tl_neuronkinds.universal.weight_views import (
    centre,
    check_weights,
    cosine_stats,
    embed_unit,
    reading,
    unembed_unit,
    vocab_mask,
    writing,
)
from tl_neuronkinds.vocab.readout import (
    check_layer,
    check_neurons,
    d_mlp_of,
    finite,
    gain,
    is_opt_bridge,
    readout,
)

#: §5.1: neurons whose vocabulary cosines have kurtosis above 10 are prediction (skew > 0) or
#: suppression (skew < 0) neurons; a normal distribution has kurtosis 3.
KURTOSIS_CUTOFF = 10.0
#: Random Gaussian directions whose mean ``vocab_var`` is the partition baseline.
BASELINE_DIRECTIONS = 64
#: Default null space: this share of ``d_unembed`` (Stolfo et al. 2024 use the last ~2% of
#: ``W_U``'s singular vectors; at least one).
NULL_SHARE = 0.02
COLUMNS = [
    "layer",
    "neuron",
    "vocab_mean",
    "vocab_var",
    "vocab_skew",
    "vocab_kurt",
    "vocab_max",
    "vocab_min",
    "embed_max",
    "embed_mean",
    "w_in_norm",
    "w_out_norm",
    "cos_in_out",
    "null_fraction",
    "entropy_score",
    "bos_attention_max",
    "bos_attention_layer",
    "bos_attention_head",
    "prediction",
    "suppression",
    "partition",
]
SCORE_COLUMNS = ["layer", "neuron", "head_layer", "head", "score"]
_POST_LN = (
    "post-LayerNorm OPT (OPT-350m) normalises each block's output after the residual "
    "addition, so a neuron's output reaches later heads only through a LayerNorm that depends "
    "on the whole residual stream: the attention-to-BOS score of a pre-LN block does not apply"
)


def _null_basis(w_u: torch.Tensor, null_dims: int) -> Float[torch.Tensor, "d_unembed null_dims"]:
    """The ``null_dims`` left singular vectors of ``W_U`` (non-zero columns) with the smallest
    singular values: eigenvectors of the float64 Gram matrix ``W_U W_U^T``."""
    kept = w_u[:, (w_u != 0).any(dim=0)].double()
    _, vectors = torch.linalg.eigh(kept @ kept.T)  # ascending eigenvalues
    return vectors[:, :null_dims]


def _post_ln(model: Any) -> bool:
    """Whether ``model`` is post-LayerNorm OPT (a bridge of OPT-350m's layout)."""
    return is_opt_bridge(model) and not model.original_model.config.do_layer_norm_before


def _later_heads(model: Any, first: int) -> dict[int, Float[torch.Tensor, "n_heads d_model"]]:
    """For each block ``m >= first``, ``r[m][h]`` with ``w @ r[m][h]`` the change of head h's
    attention logit to BOS when ``w`` is added to the residual stream (see
    ``bos_attention_scores``): ``centre(gain * W_Q[h] @ k_BOS[h]) / sqrt(d_head)``, float64."""
    if _post_ln(model):
        raise NeuronKindsError(f"attention-to-BOS scores are undefined here: {_POST_LN}")
    if first >= model.cfg.n_layers:
        return {}
    tokenizer = getattr(model, "tokenizer", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = OPT_BOS_TOKEN_ID if bos is None else bos  # the model has no tokenizer
    names = {f"blocks.{m}.hook_resid_pre" for m in range(first, model.cfg.n_layers)}
    with torch.no_grad():
        tokens = torch.tensor([[bos]], device=model.W_U.device)
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    centre = model.cfg.normalization_type is not None
    readers = {}
    for m in range(first, model.cfg.n_layers):
        with loaded_block(model, m), torch.no_grad():
            block = model.blocks[m]
            attn = block.attn
            if not all(hasattr(attn, n) for n in ("W_Q", "W_K", "b_K")):
                raise NeuronKindsError(
                    f"block {m}'s attention ({type(attn).__name__}) exposes no W_Q, W_K and "
                    "b_K: attention-to-BOS scores need them"
                )
            key = block.ln1(cache[f"blocks.{m}.hook_resid_pre"][0, 0]).double()
            k_bos = torch.einsum("d,hde->he", key, attn.W_K.double()) + attn.b_K.double()
            q_dir = torch.einsum("hde,he->hd", attn.W_Q.double(), k_bos)
            ln1_gain = gain(block.ln1)  # None: no LayerNorm, or LNPre (folded)
            if ln1_gain is not None:
                q_dir = q_dir * ln1_gain.double()
            if centre:
                q_dir = q_dir - q_dir.mean(dim=1, keepdim=True)
            scale = getattr(attn, "attn_scale", math.sqrt(attn.W_Q.shape[-1]))
            readers[m] = q_dir / scale
    return readers


def _scores(
    w_out: Float[torch.Tensor, "n d_model"], readers: dict[int, torch.Tensor]
) -> Float[torch.Tensor, "n later n_heads"]:
    """Every neuron's score for every head of the blocks in ``readers`` (float64, CPU)."""
    stacked = torch.stack([readers[m] for m in sorted(readers)])
    return torch.einsum("nd,lhd->nlh", w_out.double().to(stacked.device), stacked).cpu()


def bos_attention_scores(
    model: Any, layer: int, neurons: Sequence[int] | torch.Tensor | np.ndarray | None = None
) -> pd.DataFrame:
    """How strongly each neuron's output moves each later head's attention to BOS (§5.3).

    A head whose query points at BOS's key attends to BOS, i.e. does nothing: §5.3 finds
    neurons that switch heads off this way. For neuron i of ``layer`` and head h of block
    ``m > layer`` the score is the change of h's attention logit to BOS per unit of the
    neuron's activation, along the direct path: ``u = W_out[layer][i]`` through the linear
    part of block m's ``ln1`` (centre, multiply by the gain; the division by the standard
    deviation is a positive factor per position and is left out), ``q = u @ W_Q[m, h]`` (no
    ``b_Q``: a change, not a value), ``k_BOS`` the key of BOS in a forward on the one-token
    sequence ``[BOS]`` (``ln1`` output times ``W_K`` plus ``b_K``), and
    ``score = q . k_BOS / sqrt(d_head)`` (the model's ``attn_scale``). Positive: the neuron
    pushes the head's attention toward BOS (deactivating it).

    Args:
        model: A HookedTransformer or pre-LayerNorm TransformerBridge of OPT (``load_opt``;
            streamed models load one block at a time). BOS is the tokenizer's, else OPT's (2).
        layer: The neurons' layer.
        neurons: Neuron indices (default: all ``d_mlp``), in the order wanted.

    Returns:
        One row per (neuron, later head), neurons in the order given, then by ``head_layer``
        and ``head``: ``layer``, ``neuron``, ``head_layer``, ``head``, ``score`` (float64). The
        last layer has no later heads: no rows.

    Raises:
        NeuronKindsError: A post-LayerNorm model (OPT-350m), an attention without ``W_Q``,
            ``W_K``, ``b_K``, ``layer`` or a neuron out of range, non-finite weights.
    """
    layer = check_layer(model, layer)
    ids = check_neurons(model, neurons)
    readers = _later_heads(model, layer + 1)
    with loaded_block(model, layer):
        w_out = model.blocks[layer].mlp.W_out.detach()[ids.to(model.W_U.device)].double()
    if not finite(w_out):
        raise NeuronKindsError(f"W_out[{layer}] holds NaN or infinite values")
    n_later, n_heads = len(readers), model.cfg.n_heads
    scores = _scores(w_out, readers) if readers else torch.empty(ids.numel(), 0, n_heads)
    per_neuron = n_later * n_heads
    table = pd.DataFrame(
        {
            "layer": np.full(ids.numel() * per_neuron, layer, dtype=np.int64),
            "neuron": np.repeat(ids.numpy(), per_neuron),
            "head_layer": np.tile(
                np.repeat(np.arange(layer + 1, layer + 1 + n_later), n_heads), ids.numel()
            ),
            "head": np.tile(np.arange(n_heads), ids.numel() * n_later),
            "score": scores.numpy().reshape(-1),
        }
    )
    return table[SCORE_COLUMNS]


def _check_settings(
    model: Any, layers: object, partition_ratio: object, null_dims: object
) -> tuple[list[int], float, int]:
    """``weight_stats``'s arguments checked: the layers (sorted, once each), the ratio and the
    null-space dimension (default ``max(1, round(NULL_SHARE * d_unembed))``)."""
    if layers is None:
        wanted = list(range(model.cfg.n_layers))
    elif isinstance(layers, int | np.integer):
        wanted = [check_layer(model, layers)]
    else:
        try:
            wanted = sorted({check_layer(model, x) for x in layers})  # type: ignore[attr-defined]
        except TypeError as err:
            raise NeuronKindsError(f"layers must be integers, got {layers!r}") from err
    if isinstance(partition_ratio, bool) or not isinstance(partition_ratio, int | float):
        raise NeuronKindsError(f"partition_ratio must be a number, got {partition_ratio!r}")
    if not (math.isfinite(partition_ratio) and partition_ratio > 0):
        raise NeuronKindsError(f"partition_ratio must be finite and > 0, got {partition_ratio!r}")
    d_unembed = model.W_U.shape[0]
    dims = max(1, round(NULL_SHARE * d_unembed)) if null_dims is None else null_dims
    dims = check_int("null_dims", dims, low=1, high=d_unembed - 1)
    return wanted, float(partition_ratio), dims


def _vocab_frame(model: Any, layer: int, weights: str, seed: int) -> tuple[torch.Tensor, float]:
    """The unit unembedding ``layer``'s neurons are compared with (``weight_views.unembed_unit``)
    and the partition baseline on it: the mean variance of the cosines of
    ``BASELINE_DIRECTIONS`` Gaussian directions (seeded; centred over ``d_model`` like the
    processed writing directions)."""
    unit = unembed_unit(readout(model, layer), weights)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(BASELINE_DIRECTIONS, unit.shape[0], generator=gen, dtype=torch.float64)
    noise = noise if weights == "raw" else centre(noise)
    return unit, float(cosine_stats(noise.to(unit.device), unit)[:, 1].mean())


def weight_stats(
    model: Any,
    *,
    layers: Sequence[int] | int | None = None,
    partition_ratio: float = 5.0,
    null_dims: int | None = None,
    seed: int = 0,
    weights: str = "processed",
) -> pd.DataFrame:
    """Per neuron, the weight statistics of Gurnee et al. 2024 (§4.1, §5; see the module
    docstring for ``d_i``, and ``tl_neuronkinds.universal.weight_views`` for ``weights``).

    - ``vocab_mean``, ``vocab_var``, ``vocab_skew``, ``vocab_kurt``: population moments over
      ``vocab`` of the cosines of the neuron's writing direction with each token's unembedding
      (float64; skew ``m3 / m2**1.5``, Pearson's kurtosis ``m4 / m2**2``, 3 for a normal
      distribution), as UN's code computes them (§4.1); ``vocab_max`` / ``vocab_min`` the
      largest / smallest of those cosines. ``weights="processed"`` (default, the paper's):
      ``cos(centre(W_out[l][i]), M[:, v])``, ``M`` the unembedding as TransformerLens's
      ``fold_ln``, ``center_writing_weights`` and ``center_unembed`` leave it;
      ``weights="raw"``: ``cos(d_i, W_U[:, v])``, ``W_U`` as held.
    - ``embed_max``, ``embed_mean``: the largest and the mean over the tokens of the cosines of
      the neuron's reading direction ``W_in[l][:, i]`` with each token's embedding (``W_E`` row,
      in ``d_model``; processed: ``W_in`` times ``ln2``'s gain and both centred over
      ``d_model`` in pre-LayerNorm models), the tokens whose embedding is not all zeros.
    - ``prediction`` / ``suppression``: ``vocab_kurt > 10`` and ``vocab_skew`` > 0 / < 0
      (§5.1: a heavy tail of tokens the neuron promotes / suppresses).
    - ``partition``: ``vocab_var > partition_ratio * baseline`` (§5.1: the neuron splits the
      vocabulary into a promoted and a suppressed part), the baseline being the mean
      ``vocab_var`` of 64 random Gaussian directions (seeded by ``seed``; centred over
      ``d_model`` when processed): what a direction without vocabulary structure gets.
    - ``w_in_norm = ||W_in[:, i]||``, ``w_out_norm = ||W_out[i, :]||``, ``cos_in_out`` their
      cosine: the model's weights as held, in ``d_model`` (§4.1), for either ``weights``.
    - ``null_fraction = ||P d_i||**2 / ||d_i||**2``, ``P`` the projection onto ``W_U``'s
      effective null space: the span of its ``null_dims`` left singular vectors with the
      smallest singular values; ``entropy_score = w_out_norm * null_fraction`` (§5.2; Stolfo
      et al. 2024: a large output the logits barely see, which changes the final LayerNorm's
      scale and so the entropy of the prediction). ``W_U`` as held, for either ``weights``.
    - ``bos_attention_max``: the largest ``bos_attention_scores`` score over the heads of later
      blocks, at ``bos_attention_layer`` / ``bos_attention_head`` (§5.3); NaN / -1 in the last
      layer, and for post-LayerNorm models (OPT-350m), where a neuron's output reaches later
      heads only through LayerNorms of the whole residual stream.

    A neuron whose writing direction is zero has none: its vocabulary statistics and null
    fraction are NaN, and it is no prediction, suppression or partition neuron.

    Args:
        model: A HookedTransformer or TransformerBridge of OPT (``load_opt``; streamed models
            load one block at a time, plus the later blocks' gains for OPT-350m).
        layers: The layers (default: all); rows come by layer, then neuron.
        partition_ratio: How many times the random baseline ``vocab_var`` must be exceeded.
        null_dims: Dimension of the null space (default ``max(1, round(0.02 * d_unembed))``).
        seed: Seed of the baseline's random directions.
        weights: ``"processed"`` (TransformerLens's default processing, as Gurnee et al.) or
            ``"raw"`` (the weights as held); either way the model is left unchanged.

    Returns:
        One row per (layer, neuron), columns ``COLUMNS``.

    Raises:
        NeuronKindsError: A layer out of range, bad ``partition_ratio``, ``null_dims`` or
            ``weights``, non-finite weights.
    """
    wanted, ratio, dims = _check_settings(model, layers, partition_ratio, null_dims)
    weights = check_weights(weights)
    w_u = model.W_U.detach()
    vocab_mask(w_u)  # W_U checked before anything is computed
    null = _null_basis(w_u, dims).to(w_u.device)
    embed = embed_unit(model, weights)
    readers = {} if _post_ln(model) or not wanted else _later_heads(model, wanted[0] + 1)
    per_layer = _post_ln(model) and weights == "processed"  # R differs from layer to layer
    frame: tuple[torch.Tensor, float] | None = None
    tables = []
    for layer in wanted:
        if frame is None or per_layer:
            frame = _vocab_frame(model, layer, weights, seed)
        unit, baseline = frame
        with loaded_block(model, layer):
            block = model.blocks[layer]
            w_in, w_out = block.mlp.W_in.detach().double(), block.mlp.W_out.detach().double()
            if not (finite(w_in) and finite(w_out)):
                raise NeuronKindsError(
                    f"W_in[{layer}] or W_out[{layer}] holds NaN or infinite values"
                )
            directions = readout(model, layer).apply(w_out)
            moments = cosine_stats(writing(directions, w_out, weights), unit)
            embedded = cosine_stats(reading(model, block, w_in, weights), embed.to(w_in.device))
        in_norm, out_norm = w_in.norm(dim=0).cpu(), w_out.norm(dim=1).cpu()
        null_fraction = ((directions @ null).square().sum(1) / directions.square().sum(1)).cpu()
        n = d_mlp_of(model)
        best = torch.full((n,), math.nan, dtype=torch.float64)
        where = torch.full((n, 2), -1, dtype=torch.int64)
        later = {m: r for m, r in readers.items() if m > layer}
        if later:
            scores = _scores(w_out, later).reshape(n, -1)
            best, flat = scores.max(dim=1)
            n_heads = model.cfg.n_heads
            where = torch.stack([flat // n_heads + layer + 1, flat % n_heads], dim=1)
        kurt, skew = moments[:, 3], moments[:, 2]
        tables.append(
            pd.DataFrame(
                {
                    "layer": np.full(n, layer, dtype=np.int64),
                    "neuron": np.arange(n, dtype=np.int64),
                    "vocab_mean": moments[:, 0].numpy(),
                    "vocab_var": moments[:, 1].numpy(),
                    "vocab_skew": skew.numpy(),
                    "vocab_kurt": kurt.numpy(),
                    "vocab_max": moments[:, 4].numpy(),
                    "vocab_min": moments[:, 5].numpy(),
                    "embed_max": embedded[:, 4].numpy(),
                    "embed_mean": embedded[:, 0].numpy(),
                    "w_in_norm": in_norm.numpy(),
                    "w_out_norm": out_norm.numpy(),
                    "cos_in_out": (
                        torch.einsum("dn,nd->n", w_in, w_out).cpu() / (in_norm * out_norm)
                    ).numpy(),
                    "null_fraction": null_fraction.numpy(),
                    "entropy_score": (out_norm * null_fraction).numpy(),
                    "bos_attention_max": best.numpy(),
                    "bos_attention_layer": where[:, 0].numpy(),
                    "bos_attention_head": where[:, 1].numpy(),
                    "prediction": ((kurt > KURTOSIS_CUTOFF) & (skew > 0)).numpy(),
                    "suppression": ((kurt > KURTOSIS_CUTOFF) & (skew < 0)).numpy(),
                    "partition": (moments[:, 1] > ratio * baseline).numpy(),
                }
            )
        )
    return (
        pd.concat(tables, ignore_index=True)[COLUMNS] if tables else pd.DataFrame(columns=COLUMNS)
    )
