"""The tiny OPT of the embedded model, and its no-positional-encoding variant (paper §5.4).

Both are plain ``transformers.OPTForCausalLM`` models: ReLU, pre-LayerNorm, learned absolute
positions, tied input/output embeddings, like every OPT model but the 350m one. The ``nopos``
variant keeps OPT's positional embedding table at exactly zero and frozen, so it still loads as a
standard OPT checkpoint (with ``W_pos`` = 0) while the model sees no positional signal, the setup
of the paper's §5.4 ("Positional Neurons are Learned Even Without Positional Encoding").
"""

from dataclasses import dataclass

import torch
from transformers import OPTConfig, OPTForCausalLM

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.tokenizer import BOS_ID, PAD_ID

VARIANTS = ("standard", "nopos")


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the tiny OPT (OPT-125m is 50272 / 768 / 12 / 12 / 3072 / 2048).

    ``d_mlp`` is 16 x ``d_model`` (OPT: 4 x): the paper finds more neurons give more dead
    neurons and more dedicated (token-detecting) ones (§3, §4.2); with 512 neurons per layer
    our tiny model had no token detectors at all.
    """

    vocab_size: int = 8192
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 2048
    n_ctx: int = 256


def build_model(shape: ModelShape, variant: str, dropout: float) -> OPTForCausalLM:
    """Build a freshly initialised tiny OPT (call ``torch.manual_seed`` first for determinism).

    Args:
        shape: The model's sizes.
        variant: ``"standard"`` (learned absolute positions) or ``"nopos"`` (positional
            embedding zeroed and frozen, paper §5.4).
        dropout: Residual and attention-output dropout (OPT trains with 0.1).

    Raises:
        NeuronKindsError: For an unknown variant or heads that do not divide ``d_model``.
    """
    if variant not in VARIANTS:
        raise NeuronKindsError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if shape.d_model % shape.n_heads:
        raise NeuronKindsError(
            f"d_model={shape.d_model} is not divisible by n_heads={shape.n_heads}"
        )
    config = OPTConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        ffn_dim=shape.d_mlp,
        max_position_embeddings=shape.n_ctx,
        word_embed_proj_dim=shape.d_model,
        do_layer_norm_before=True,
        activation_function="relu",
        dropout=dropout,
        attention_dropout=0.0,
        layerdrop=0.0,
        enable_bias=True,
        layer_norm_elementwise_affine=True,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=BOS_ID,
    )
    model = OPTForCausalLM(config)
    if variant == "nopos":
        positions = model.model.decoder.embed_positions.weight
        with torch.no_grad():
            positions.zero_()
        positions.requires_grad_(False)
    return model


def positional_table(model: OPTForCausalLM) -> torch.nn.Parameter:
    """OPT's learned positional embedding (``n_ctx + 2`` rows: OPT offsets positions by 2)."""
    return model.model.decoder.embed_positions.weight
