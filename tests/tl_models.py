"""TransformerLens models built from a config, on either supported TransformerLens line.

On 3.9 ``tl_model`` is a ``HookedTransformer``; on 4.x, which removed it, a
``TransformerBridge`` around TransformerLens's own native model (``boot_native``), with the
same hook names (``blocks.{l}.mlp.hook_post``) and the same weight views (``blocks[l].mlp.W_in``,
``W_out``, ``attn.W_Q``, ``unembed.W_U``, …), which share storage with the parameters, so a
test that edits them in place under ``torch.no_grad()`` edits the model on both lines.
"""

from typing import Any

from tl_neuronkinds.loading.tl_adapters import has_hooked_transformer

#: Whether the installed TransformerLens is 4.x (no HookedTransformer).
TL4 = not has_hooked_transformer()


def tl_model(**fields: Any) -> Any:
    """A model of ``fields`` (``HookedTransformerConfig`` / ``TransformerBridgeConfig`` fields:
    ``n_layers``, ``d_model``, ``d_mlp``, ``d_head``, ``n_heads``, ``n_ctx``, ``d_vocab``,
    ``act_fn``, ``normalization_type``, ``seed``, …), randomly initialised from ``seed``."""
    if TL4:
        from transformer_lens import TransformerBridge, TransformerBridgeConfig

        return TransformerBridge.boot_native(TransformerBridgeConfig(**fields), model_name="custom")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(**fields))


def tl_model_class() -> type:
    """The class ``tl_model`` returns on the installed line."""
    if TL4:
        from transformer_lens import TransformerBridge

        return TransformerBridge
    from transformer_lens import HookedTransformer

    return HookedTransformer


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerBridge (every model on 4.x; OPT-350m on 3.9)."""
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def process_weights(model: Any, **options: Any) -> None:
    """TransformerLens's own weight processing (``fold_ln``, ``center_writing_weights``, …) in
    place: ``process_weights_`` on a HookedTransformer, ``process_weights`` on a bridge."""
    if is_bridge(model):
        model.process_weights(**options)
    else:
        model.process_weights_(**options)


def position_rows(model: Any) -> Any:
    """The learned positional embeddings, row p for position p, as a view that edits the model
    (Hugging Face's OPT keeps two unused rows first, ``offset``; TransformerLens drops them)."""
    offset = getattr(getattr(model.pos_embed, "original_component", None), "offset", 0)
    return model.pos_embed.W_pos[offset:]


def mlp_b_out(mlp: Any) -> Any:
    """An MLP's output bias ``b_out`` (``[d_model]``), as a view that edits the model: a
    HookedTransformer's ``b_out``; on a 4.x bridge, which has no such alias, the bias of the
    wrapped output linear map."""
    if hasattr(mlp, "b_out"):
        return mlp.b_out
    return mlp._original_component.fc_out._original_component.bias


def untie_unembedding(model: Any) -> None:
    """OPT ties its unembedding to the token embedding. TransformerLens 4.x's bridge keeps the
    tie (3.9 copies the weights), so a value a test plants in ``W_E`` would land in ``W_U`` too:
    give the unembedding its own copy (a no-op where it has one)."""
    import torch

    head = getattr(model.unembed, "original_component", None)
    if head is not None and head.weight.data_ptr() == model.embed.W_E.data_ptr():
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
