"""The weights ``weight_stats`` measures: as the checkpoint holds them, or as Gurnee et al. 2024
processed them (§4.1; docs/kinds.md, "Universal neurons").

Gurnee et al.'s code loads each model through TransformerLens with its default processing:
``fold_ln`` (a LayerNorm's gain moves into the weights that read its output, which are then
centred over ``d_model``), ``center_writing_weights`` (every weight that writes to the residual
stream, ``W_E`` and ``W_out`` among them, minus its mean over ``d_model``) and ``center_unembed``
(``W_U`` minus its mean over the vocabulary). The logits do not change; the cosines between
weights do. OPT's unembedding columns share a large common direction that ``center_unembed``
removes, so the vocabulary moments, and which neurons are prediction or suppression neurons,
depend on the choice.

``weights="processed"`` (the paper's) reproduces that processing on copies, one layer at a time,
so a model already processed by TransformerLens gives the same values:

- the unembedding each layer's neurons are compared with is ``M = R^T W_U`` centred over the
  vocabulary, ``R`` the linear readout of ``tl_neuronkinds.vocab.readout`` (``fold_ln``: the
  LayerNorms' centring and gains, OPT-350m's ``project_out``). A pre-LayerNorm model's ``M`` is
  ``centre_d(gain[:, None] * W_U)`` centred over the vocabulary, TransformerLens's ``W_U``;
- the writing direction is ``W_out[l][i]`` centred over ``d_model``;
- the reading direction is ``W_in[l][:, i]`` times the gain of the block's ``ln2``, centred over
  ``d_model``, and a token's embedding is its ``W_E`` row centred over ``d_model``. In
  post-LayerNorm OPT-350m no LayerNorm lies before the FFN (it reads the attention's LayerNorm
  output) and neither is changed.

``weights="raw"``: ``cos(R W_out[l][i], W_U[:, v])`` (the readout direction against ``W_U`` as
held) and ``W_in`` and ``W_E`` as held. Either way a token's embedding reaches ``d_model`` through
OPT-350m's ``project_in``, and the tokens are those whose ``W_U`` column (``W_E`` row) as held is
not all zeros (OPT's ``<pad>`` is left out).
"""

from typing import Any

import torch
from jaxtyping import Bool, Float

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.vocab.readout import Readout, finite, gain, is_opt_bridge

#: ``weight_stats``'s ``weights``: TransformerLens's default processing (the paper's), or none.
WEIGHTS = ("processed", "raw")
#: Cosines held at once: a chunk of rows times the tokens (float64 moments: 32 MiB each).
CHUNK_ELEMENTS = 1 << 22


def check_weights(weights: object) -> str:
    """``weights`` checked against ``WEIGHTS``."""
    if not isinstance(weights, str) or weights not in WEIGHTS:
        raise NeuronKindsError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    return weights


def centre(rows: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n d"]:
    """Each row minus its mean (TransformerLens's centring over ``d_model``)."""
    return rows - rows.mean(dim=-1, keepdim=True)


def cosine_stats(
    rows: Float[torch.Tensor, "n d"], unit: Float[torch.Tensor, "d vocab"]
) -> Float[torch.Tensor, "n 6"]:
    """Mean, variance, skew, kurtosis, maximum and minimum of ``cos(rows[i], unit[:, v])`` over
    the columns ``v`` of ``unit`` (unit length, float32), per row.

    Population moments in float64 (variance ddof 0, skew ``m3 / m2**1.5``, Pearson's kurtosis
    ``m4 / m2**2``); the cosines are a float32 product, a chunk of rows at a time. A zero row has
    no direction: NaN.
    """
    out = torch.empty(rows.shape[0], 6, dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // unit.shape[1])
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step]
        cos = ((part / part.norm(dim=1, keepdim=True)).to(unit) @ unit).double()
        mean = cos.mean(dim=1, keepdim=True)
        centred = cos - mean
        square = centred * centred
        m2, m3, m4 = (x.mean(dim=1) for x in (square, square * centred, square * square))
        stats = [mean[:, 0], m2, m3 / m2**1.5, m4 / m2**2, cos.max(dim=1)[0], cos.min(dim=1)[0]]
        out[start : start + step] = torch.stack(stats, dim=1).cpu()
    return out


def vocab_mask(w_u: Float[torch.Tensor, "d_unembed d_vocab"]) -> Bool[torch.Tensor, " d_vocab"]:
    """The tokens whose ``W_U`` column is not all zeros; ``W_U`` checked finite."""
    if not finite(w_u):
        raise NeuronKindsError("W_U holds NaN or infinite values")
    return (w_u != 0).any(dim=0)


def _unit(columns: torch.Tensor) -> Float[torch.Tensor, "d n"]:
    """``columns`` each scaled to unit length (float32)."""
    columns = columns.to(torch.float32)
    return columns / columns.norm(dim=0, keepdim=True)


def adjoint(
    readout: Readout, rows: Float[torch.Tensor, "n d_unembed"]
) -> Float[torch.Tensor, "n d_model"]:
    """``rows`` through the transpose of ``readout.apply`` (float64): ``project_out``
    transposed, then for each LayerNorm, last first, its gain and its centring. With
    ``rows = W_U^T`` this is ``fold_ln`` of every LayerNorm on the way."""
    out = rows.to(torch.float64)
    if readout.project_out is not None:
        out = out @ readout.project_out.to(out)
    for weight in reversed(readout.gains):
        if weight is not None:
            out = out * weight.to(out)
        out = centre(out)
    return out


def unembed_unit(readout: Readout, weights: str) -> Float[torch.Tensor, "d vocab"]:
    """The unit unembedding columns of the kept tokens that a layer's writing directions are
    compared with: ``W_U`` as held (``d_unembed``), or ``M = R^T W_U`` centred over every token
    (``d_model``; see the module docstring), a chunk of tokens at a time."""
    w_u = readout.W_U
    mask = vocab_mask(w_u)
    if weights == "raw":
        return _unit(w_u[:, mask])
    d_model = adjoint(readout, w_u[:, :1].T).shape[1]
    folded = torch.empty(d_model, w_u.shape[1], dtype=torch.float32, device=w_u.device)
    total = torch.zeros(d_model, dtype=torch.float64, device=w_u.device)
    step = max(1, CHUNK_ELEMENTS // max(d_model, w_u.shape[0]))
    for start in range(0, w_u.shape[1], step):
        part = adjoint(readout, w_u[:, start : start + step].T)
        total += part.sum(dim=0)
        folded[:, start : start + step] = part.T.to(torch.float32)
    folded -= (total / w_u.shape[1]).to(folded)[:, None]
    return _unit(folded[:, mask])


def writing(
    directions: Float[torch.Tensor, "n d_unembed"],
    w_out: Float[torch.Tensor, "n d_model"],
    weights: str,
) -> torch.Tensor:
    """The rows compared with ``unembed_unit``: the readout directions ``R W_out`` (raw,
    ``directions``), or ``W_out`` centred over ``d_model`` (processed); float64."""
    return directions if weights == "raw" else centre(w_out.double())


def _pre_ln(model: Any) -> bool:
    """Whether a LayerNorm (``ln2``) lies before each FFN: every OPT but OPT-350m."""
    return not (is_opt_bridge(model) and not model.original_model.config.do_layer_norm_before)


def embed_unit(model: Any, weights: str) -> Float[torch.Tensor, "d_model vocab"]:
    """The unit token embeddings in ``d_model`` (through ``project_in`` where the model has
    one) of the tokens whose embedding is not all zeros, centred over ``d_model`` for
    ``weights="processed"`` in pre-LayerNorm models."""
    if is_opt_bridge(model):
        decoder = model.original_model.model.decoder
        w_e = decoder.embed_tokens.weight.detach()
        if decoder.project_in is not None:
            w_e = w_e.to(torch.float32) @ decoder.project_in.weight.detach().to(torch.float32).T
    else:
        w_e = model.W_E.detach()
    if not finite(w_e):
        raise NeuronKindsError("W_E holds NaN or infinite values")
    kept = w_e[(w_e != 0).any(dim=1)]
    if weights == "processed" and _pre_ln(model):
        kept = centre(kept.to(torch.float32))
    return _unit(kept.T)


def reading(
    model: Any, block: Any, w_in: Float[torch.Tensor, "d_model n"], weights: str
) -> Float[torch.Tensor, "n d_model"]:
    """The neurons' reading directions ``W_in[:, i]`` as rows (float64): as held (raw), or
    times ``ln2``'s gain and centred over ``d_model`` (processed, pre-LayerNorm models)."""
    rows = w_in.T.double()
    if weights == "raw" or not _pre_ln(model):
        return rows
    weight = gain(block.ln2)
    return centre(rows if weight is None else rows * weight.to(rows))
