"""OPT config and weights in TransformerLens's layout, computed one block at a time.

The config is TransformerLens's own (``convert_hf_model_config`` on the checkpoint's
directory). The weights mirror TransformerLens's OPT mapping,
``transformer_lens.pretrained.weight_conversions.opt.convert_opt_weights``, split into a
per-block part (``convert_block``) and the rest (``convert_globals``) so that a streamed model
can convert block ``l`` straight from the checkpoint's tensors. ``tests/test_loading.py`` proves
the two give exactly ``convert_opt_weights``'s output.

Nothing is folded or centred: the weights keep the checkpoint's values (docs/kinds.md,
"Terms"), so the residual stream is the model's own and ``log_softmax(logits)`` equals the checkpoint's.

Keys of checkpoint tensors are ``Checkpoint`` keys (``decoder.…``, ``lm_head.weight``); keys of
one block's tensors are relative to ``decoder.layers.{l}.`` (``fc1.weight``, …).
"""

from pathlib import Path
from typing import Any

import torch
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS
from transformers import OPTConfig, OPTForCausalLM

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError

_REQUIRED = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "ffn_dim",
    "vocab_size",
    "max_position_embeddings",
)
_POS_OFFSET = 2  # OPTLearnedPositionalEmbedding reads row position + 2


def opt_config(config: dict, where: str) -> OPTConfig:
    """A ``transformers.OPTConfig`` from a checkpoint's ``config.json`` dict, checked.

    Raises:
        NeuronKindsError: A required field is missing or not a positive integer, or
            ``hidden_size`` is not a multiple of ``num_attention_heads`` (``where`` names the file).
    """
    for field in _REQUIRED:
        check_int(f"{where}: {field}", config.get(field), low=1)
    if config["hidden_size"] % config["num_attention_heads"]:
        raise NeuronKindsError(
            f"{where}: hidden_size {config['hidden_size']} is not a multiple of "
            f"num_attention_heads {config['num_attention_heads']}"
        )
    fields = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    try:
        return OPTConfig(**fields)
    except (TypeError, ValueError) as err:
        raise NeuronKindsError(f"{where}: not a valid OPT config: {err}") from err


def hooked_transformer_can_represent(cfg: OPTConfig) -> bool:
    """Whether a ``HookedTransformer`` computes exactly what this OPT computes.

    True for every OPT size but 350m: pre-LayerNorm blocks, a final LayerNorm, embeddings of
    width ``hidden_size`` (no ``project_in`` / ``project_out``), biases and affine LayerNorms.
    """
    return (
        cfg.do_layer_norm_before
        and not getattr(cfg, "_remove_final_layer_norm", False)
        and cfg.word_embed_proj_dim == cfg.hidden_size
        and cfg.enable_bias
        and cfg.layer_norm_elementwise_affine
    )


def expected_shapes(cfg: OPTConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Every tensor an ``OPTForCausalLM`` of this config holds (by ``Checkpoint`` key, with its
    shape), and the keys a checkpoint may leave out (``lm_head.weight`` when tied)."""
    with torch.device("meta"):
        model = OPTForCausalLM(cfg)
    shapes = {k.removeprefix("model."): tuple(v.shape) for k, v in model.state_dict().items()}
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    return shapes, optional


def validate_shapes(
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    optional: set[str],
    where: str,
) -> None:
    """Check a checkpoint's tensors against ``expected_shapes``: none missing, none extra,
    shapes equal.

    Raises:
        NeuronKindsError: Naming the missing, unexpected or mis-shaped tensors.
    """
    missing = sorted(set(expected) - set(found) - optional)
    if missing:
        raise NeuronKindsError(f"{where}: missing tensors {missing[:6]} ({len(missing)} in all)")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise NeuronKindsError(
            f"{where}: unexpected tensors {extra[:6]} ({len(extra)} in all) for this config"
        )
    wrong = [
        f"{k}: {list(found[k])} (config says {list(expected[k])})"
        for k in sorted(found)
        if found[k] != expected[k]
    ]
    if wrong:
        raise NeuronKindsError(f"{where}: tensor shapes disagree with config.json: {wrong[:4]}")


def hooked_config(
    directory: Path, cfg: OPTConfig, model_name: str, device: torch.device, dtype: torch.dtype
) -> Any:
    """The ``HookedTransformerConfig`` of the OPT checkpoint in ``directory``: TransformerLens's
    own (``convert_hf_model_config`` reads a local directory's ``config.json``), with this
    load's name, device and dtype, and no initialisation (the weights are assigned).

    TransformerLens 3.9 only (4.0 removed ``HookedTransformer``; ``load_opt`` builds a
    ``TransformerBridge`` there and never calls this).

    Raises:
        NeuronKindsError: An activation function TransformerLens does not have.
    """
    if cfg.activation_function not in SUPPORTED_ACTIVATIONS:
        raise NeuronKindsError(
            f"config.json: activation_function {cfg.activation_function!r} is not supported by "
            f"TransformerLens (supported: {sorted(SUPPORTED_ACTIVATIONS)})"
        )
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    # ``architectures`` may be missing from an OPT config.json (``model_type`` says OPT, checked
    # by ``opt_config``); TransformerLens picks its conversion by it.
    fields = convert_hf_model_config(str(directory), architectures=["OPTForCausalLM"])
    fields.pop("tokenizer_name", None)  # the tokenizer is ``load_opt``'s business
    return HookedTransformerConfig(
        **fields,
        model_name=model_name,
        default_prepend_bos=True,
        init_weights=False,
        device=str(device),
        dtype=dtype,
    )


def convert_block(
    hf: dict[str, torch.Tensor], n_heads: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One OPT decoder layer's tensors as a TransformerLens ``TransformerBlock``'s parameters.

    The same mapping as ``convert_opt_weights``: ``W_Q/W_K/W_V`` are ``[n_heads, d_model,
    d_head]``, ``W_O`` is ``[n_heads, d_head, d_model]``, ``W_in = fc1.weight.T``,
    ``W_out = fc2.weight.T``. The results are views of ``hf``'s tensors where the dtype already
    matches (no copy, which is what streaming wants: TransformerLens multiplies by these weights
    through transposes that undo the views); copy them to own or compact them.

    Args:
        hf: The layer's tensors, keyed relative to ``decoder.layers.{l}.``.
        n_heads: Attention heads.
        dtype: Dtype of the returned tensors.
    """

    def heads_in(name: str) -> torch.Tensor:  # "(n h) m -> n m h"
        w = hf[f"self_attn.{name}.weight"]
        return w.reshape(n_heads, -1, w.shape[-1]).transpose(1, 2)

    def heads_bias(name: str) -> torch.Tensor:  # "(n h) -> n h"
        return hf[f"self_attn.{name}.bias"].reshape(n_heads, -1)

    out_proj = hf["self_attn.out_proj.weight"]
    block = {
        "ln1.w": hf["self_attn_layer_norm.weight"],
        "ln1.b": hf["self_attn_layer_norm.bias"],
        "attn.W_Q": heads_in("q_proj"),
        "attn.W_K": heads_in("k_proj"),
        "attn.W_V": heads_in("v_proj"),
        "attn.b_Q": heads_bias("q_proj"),
        "attn.b_K": heads_bias("k_proj"),
        "attn.b_V": heads_bias("v_proj"),
        # "m (n h) -> n h m"
        "attn.W_O": out_proj.reshape(out_proj.shape[0], n_heads, -1).permute(1, 2, 0),
        "attn.b_O": hf["self_attn.out_proj.bias"],
        "ln2.w": hf["final_layer_norm.weight"],
        "ln2.b": hf["final_layer_norm.bias"],
        "mlp.W_in": hf["fc1.weight"].T,
        "mlp.b_in": hf["fc1.bias"],
        "mlp.W_out": hf["fc2.weight"].T,
        "mlp.b_out": hf["fc2.bias"],
    }
    return {k: v.to(dtype) for k, v in block.items()}


def convert_globals(
    hf: dict[str, torch.Tensor], d_vocab: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Embeddings, final LayerNorm and unembedding as TransformerLens parameters.

    ``W_pos`` drops OPT's first two position rows (its offset of 2); ``W_U`` is
    ``lm_head.weight.T``, which is ``embed_tokens.weight.T`` when the checkpoint ties them (and
    leaves ``lm_head.weight`` out); ``b_U`` is zero, as OPT has no output bias.

    Args:
        hf: ``Checkpoint`` tensors: ``decoder.embed_tokens.weight``,
            ``decoder.embed_positions.weight``, ``decoder.final_layer_norm.{weight,bias}`` and,
            when untied, ``lm_head.weight``.
        d_vocab: Vocabulary size (rows of the embedding).
        dtype: Dtype of the returned tensors.
    """
    w_e = hf["decoder.embed_tokens.weight"]
    lm_head = hf.get("lm_head.weight", w_e)
    params = {
        "embed.W_E": w_e,
        "pos_embed.W_pos": hf["decoder.embed_positions.weight"][_POS_OFFSET:],
        "ln_final.w": hf["decoder.final_layer_norm.weight"],
        "ln_final.b": hf["decoder.final_layer_norm.bias"],
        "unembed.W_U": lm_head.T,
        "unembed.b_U": torch.zeros(d_vocab),
    }
    return {k: v.to(dtype).contiguous() for k, v in params.items()}
