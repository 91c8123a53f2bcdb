"""Loading OPT checkpoints into TransformerLens, optionally streaming blocks from CPU or disk.

``load_opt`` (``opt.py``) builds the model; ``streaming.py`` holds the per-block offload and
the functions that tell a caller about it (``offload_mode``, ``loaded_block``) or tell it where
a forward stops (``stop_at``). ``identity.py`` says which model a profile counts
(``check_same_model``); ``tokens.py`` checks the tokens a model is given (``check_tokens``) and
decodes token ids (``token_strings``, ``strings_of``), for every later step. ``load_opt`` is
imported when first used, so that the recorder can use ``stop_at`` without importing
TransformerLens.
"""

from typing import Any

from tl_neuronkinds.loading.streaming import loaded_block, offload_mode, stop_at, streamer_of

__all__ = ["load_opt", "loaded_block", "offload_mode", "stop_at", "streamer_of"]


def __getattr__(name: str) -> Any:
    if name == "load_opt":
        from tl_neuronkinds.loading.opt import load_opt

        return load_opt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
