"""The TransformerLens hook names the project reads, built by TransformerLens's own
``get_act_name`` (``transformer_lens.utilities``, the same on 3.9 and 4.x), so no module spells
a hook name out by hand.

- ``mlp_post(l)``: ``blocks.{l}.mlp.hook_post``, ``[batch, pos, d_mlp]``, the FFN's hidden
  activation after the nonlinearity: neuron ``(l, i)`` is its element ``i`` (docs/kinds.md,
  "Terms"), the same name on HookedTransformer and TransformerBridge.
- ``resid_post(l)``: ``blocks.{l}.hook_resid_post``, ``[batch, pos, d_model]``, the hidden
  state after block ``l`` (Sun et al. 2024's massive activations, docs/kinds.md).

TransformerLens is imported on the first call, not with this module: ``import tl_neuronkinds``
stays light, and every caller holds a model, so TransformerLens is loaded by then anyway.
"""

from functools import cache


def mlp_post(layer: int) -> str:
    """``blocks.{layer}.mlp.hook_post``."""
    return _act_name("post", layer)


def resid_post(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``."""
    return _act_name("resid_post", layer)


@cache
def _act_name(name: str, layer: int) -> str:
    from transformer_lens.utilities import get_act_name

    return str(get_act_name(name, layer))
