"""Promoted and suppressed tokens of FFN neurons (Voita et al. 2024, §4.4, Figures 5-6).

Neuron (l, i) adds ``act * W_out[l][i]`` to the residual stream. Its *vocabulary projection*
``s`` (``[d_vocab]``) is that row taken to the logits through the linear part of what lies
between (docs/kinds.md, "Promoted and suppressed tokens"):

- every LayerNorm on the way, as its centring (subtract the row's mean over ``d_model``) and its
  gain (multiply by its weight). Pre-LayerNorm models (every OPT but 350m) have one, the final
  LayerNorm ``ln_final``. In post-LayerNorm OPT-350m the update passes the LayerNorm after the
  FFN of its own block (``ln2``) and both LayerNorms of every later block (``ln1``, ``ln2``),
  and the model has no final one. A LayerNorm's bias and its division by the standard
  deviation do not depend on the neuron (a shift, and a positive factor per position) and are
  left out;
- OPT-350m's ``project_out`` (``d_model`` -> ``word_embed_proj_dim``);
- the unembedding ``W_U``. OPT has no unembedding bias.

``load_opt`` neither folds nor centres (docs/kinds.md, "Terms"), so the centring and gains are
applied here. A HookedTransformer loaded by TransformerLens with ``fold_ln`` has ``LNPre`` (the gain
is in ``W_U``: centring only) and with ``center_writing_weights`` a centred ``W_out`` (centring it
again changes nothing): both give the same ``s``. ``center_unembed`` shifts each neuron's ``s`` by a
constant, which keeps the ranking but moves ``mean_trigger_score``: ``s`` is taken on ``W_U`` as
held (the logits' own convention), while ``weight_stats`` compares weights, by default, after all
three of TransformerLens's steps, as Gurnee et al. 2024 do (``Readout`` transposed folds the
LayerNorms into ``W_U``).

The rows pass the LayerNorms and ``project_out`` in float64; scores are then float32 matrix
products with ``W_U`` (float16 / bfloat16 models are widened: float32 accumulation; on CUDA,
TF32 follows ``torch.backends.cuda.matmul.allow_tf32``), on the model's device, a chunk of
neurons at a time. Ranks order tokens by score, ties by increasing token id, so results are
deterministic.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_neuronkinds.checks import check_int, is_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import loaded_block


@dataclass(frozen=True)
class Readout:
    """The linear map from a layer's FFN update to the logits (see the module docstring).

    Attributes:
        gains: The LayerNorms passed, in order: each centres, then multiplies by its gain
            (``[d_model]``; None where the LayerNorm has none or it is folded into ``W_U``).
        project_out: ``[d_unembed, d_model]``, or None (``d_unembed = d_model``).
        W_U: ``[d_unembed, d_vocab]``, as the model holds it.
    """

    gains: list[torch.Tensor | None]
    project_out: torch.Tensor | None
    W_U: torch.Tensor

    def apply(self, rows: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n d_unembed"]:
        """``rows`` through the LayerNorms' centring and gains and ``project_out`` (float64)."""
        out = rows.to(torch.float64)
        for gain in self.gains:
            out = out - out.mean(dim=-1, keepdim=True)
            if gain is not None:
                out = out * gain.to(out)
        if self.project_out is not None:
            out = out @ self.project_out.to(out).T
        return out


def is_opt_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerBridge around Hugging Face's OPT (``load_opt``'s bridge:
    OPT-350m on TransformerLens 3.9, every OPT on 4.x). A HookedTransformer, or a bridge around
    TransformerLens's own native model, keeps its weights as ``cfg`` describes them."""
    original = getattr(model, "original_model", None)
    return hasattr(getattr(getattr(original, "model", None), "decoder", None), "project_out")


def _is_foreign_bridge(model: Any) -> bool:
    """A bridge around a Hugging Face model that is not OPT (its weights are laid out otherwise)."""
    return hasattr(getattr(model, "original_model", None), "config") and not is_opt_bridge(model)


def _weight(module: Any) -> torch.Tensor | None:
    """A (bridged) LayerNorm's or Linear's weight (detached), or None where it has none."""
    weight = getattr(getattr(module, "original_component", module), "weight", None)
    return None if weight is None else weight.detach()


def gain(norm: Any) -> torch.Tensor | None:
    """A LayerNorm's gain as the model holds it now (detached), None where it has none (no
    LayerNorm, or ``LNPre`` after ``fold_ln``). A bridge's ``w`` is an alias bound when the
    bridge was built (a streamed block's placeholder, say); the module it wraps holds the
    current ``weight``."""
    if getattr(norm, "original_component", None) is not None:
        return _weight(norm)
    w = getattr(norm, "w", None)
    return None if w is None else w.detach()


def readout(model: Any, layer: int) -> Readout:
    """The ``Readout`` of ``layer``'s FFN updates in ``model``: a HookedTransformer, a bridge of
    TransformerLens's native model (4.x), or an OPT TransformerBridge from ``load_opt``.

    Raises:
        NeuronKindsError: A normalization other than LayerNorm, or a bridge that is not OPT.
    """
    gains: list[torch.Tensor | None] = []
    if _is_foreign_bridge(model):
        raise NeuronKindsError("vocabulary projections of bridges support OPT models only")
    if not is_opt_bridge(model):
        norm = model.cfg.normalization_type
        if norm not in ("LN", "LNPre", None):
            raise NeuronKindsError(
                f"normalization_type {norm!r} is not supported (OPT uses LayerNorm: 'LN', or "
                "'LNPre' after fold_ln)"
            )
        if norm is not None:
            gains.append(gain(model.ln_final))
        return Readout(gains, None, model.W_U.detach())
    decoder = model.original_model.model.decoder
    if not model.original_model.config.do_layer_norm_before:
        for later in range(layer, model.cfg.n_layers):
            with loaded_block(model, later):
                block = model.blocks[later]
                norms = [block.ln2] if later == layer else [block.ln1, block.ln2]
                gains += [None if (w := _weight(n)) is None else w.clone() for n in norms]
    if decoder.final_layer_norm is not None:
        gains.append(_weight(decoder.final_layer_norm))
    project = None if decoder.project_out is None else _weight(decoder.project_out)
    return Readout(gains, project, model.W_U.detach())


def check_layer(model: Any, layer: object) -> int:
    n_layers = model.cfg.n_layers
    index = check_int("layer", layer)
    if not 0 <= index < n_layers:
        raise NeuronKindsError(f"layer {index} out of range 0..{n_layers - 1}")
    return index


def d_mlp_of(model: Any) -> int:
    """Neurons per layer (``load_opt`` sets a bridge's ``cfg.d_mlp`` to OPT's ``ffn_dim``)."""
    return int(model.cfg.d_mlp)


def check_neurons(model: Any, neurons: object) -> Int[torch.Tensor, " n"]:
    d_mlp = d_mlp_of(model)
    if neurons is None:
        return torch.arange(d_mlp)
    if is_int(neurons):
        neurons = [neurons]
    try:
        ids = (
            neurons.detach().cpu()
            if isinstance(neurons, torch.Tensor)
            else torch.tensor(np.asarray(neurons))  # a copy: read-only arrays are fine
        )
    except (TypeError, ValueError) as err:
        raise NeuronKindsError(f"neurons must be integers, got {neurons!r}") from err
    integer = not ids.dtype.is_floating_point and not ids.dtype.is_complex
    if ids.ndim != 1 or not (ids.numel() == 0 or (integer and ids.dtype != torch.bool)):
        raise NeuronKindsError(f"neurons must be a 1-D sequence of integers, got {neurons!r}")
    ids = ids.to(torch.int64)
    bad = ids[(ids < 0) | (ids >= d_mlp)]
    if bad.numel():
        raise NeuronKindsError(f"neuron {int(bad[0])} out of range 0..{d_mlp - 1}")
    return ids


def w_out_rows(
    model: Any, layer: int, neurons: Int[torch.Tensor, " n"]
) -> Float[torch.Tensor, "n d_model"]:
    """Rows ``neurons`` of ``W_out[layer]`` (a copy; a streamed model loads that block only)."""
    with loaded_block(model, layer):
        w_out = model.blocks[layer].mlp.W_out.detach()
        return w_out[neurons.to(w_out.device)].clone()


def finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in ``tensor``: a finite sum proves it in one cheap reduction (a NaN or
    an infinity would make it NaN or infinite); otherwise every element is checked. The scores
    are checked rather than ``W_U``: as cheap for a whole layer, and a view of one neuron does
    not read all of ``W_U`` again."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())
