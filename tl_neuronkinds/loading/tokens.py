"""Token ids for a model: the check every step makes of the tokens it is given, and the text of
each id as the model's tokenizer decodes it.

One check (``check_tokens``) for the recorder, the cross-model correlations and the massive
activations: a non-empty ``[n_seq, seq_len]`` integer tensor of ids in the model's vocabulary,
no longer than its context, and, where a BOS id is given, with BOS at position 0 of every row
(the packing of ``Corpus.tokenize``; docs/kinds.md, "Tokens").
"""

from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from tl_neuronkinds.errors import NeuronKindsError


def check_tokens(
    tokens: object, model: Any, bos_token_id: int | None = None
) -> Int[torch.Tensor, "batch pos"]:
    """``tokens`` unchanged if they are token ids ``model`` can run, else a NeuronKindsError.

    Args:
        tokens: The token ids: a non-empty 2-D int64 or int32 tensor ``[n_seq, seq_len]``.
        model: A HookedTransformer or TransformerBridge (its ``cfg.d_vocab`` and ``cfg.n_ctx``).
        bos_token_id: Where given, every row must start with it.

    Raises:
        NeuronKindsError: Another type, shape or dtype, an empty tensor, ``seq_len`` above the
            model's context, an id outside its vocabulary, a row not starting with BOS.
    """
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.dim() != 2
        or tokens.dtype not in (torch.int64, torch.int32)
        or tokens.numel() == 0
    ):
        got = (
            f"{tokens.dtype} of shape {tuple(tokens.shape)}"
            if isinstance(tokens, torch.Tensor)
            else type(tokens).__name__
        )
        raise NeuronKindsError(
            f"tokens must be a non-empty 2-D integer tensor [n_seq, seq_len] (int64 or int32), "
            f"got {got}"
        )
    cfg = model.cfg
    n_ctx = getattr(cfg, "n_ctx", None)
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise NeuronKindsError(f"seq_len {tokens.shape[1]} exceeds the model's context of {n_ctx}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= cfg.d_vocab:
        raise NeuronKindsError(
            f"token ids must lie in 0..{cfg.d_vocab - 1}; found {low if low < 0 else high}"
        )
    if bos_token_id is not None:
        bad = (tokens[:, 0] != bos_token_id).nonzero()
        if bad.numel():
            raise NeuronKindsError(
                f"every sequence must start with BOS (id {bos_token_id}); row {int(bad[0])} "
                f"starts with {int(tokens[bad[0], 0])}"
            )
    return tokens


def token_strings(tokenizer: Any, d_vocab: int) -> list[str]:
    """The text of every token id ``0..d_vocab-1`` (see ``strings_of``)."""
    strings = strings_of(tokenizer, np.arange(d_vocab))
    return [strings[i] for i in range(d_vocab)]


def strings_of(tokenizer: Any, ids: Int[np.ndarray, " m"]) -> dict[int, str]:
    """Each distinct id of ``ids`` -> its text as ``tokenizer`` decodes it alone; ``<id>`` for
    ids the tokenizer does not have (ids past ``len(tokenizer)``: OPT pads ``W_U`` beyond its
    vocabulary), and for every id where ``tokenizer`` is None."""
    unique = [int(i) for i in np.unique(np.asarray(ids, dtype=np.int64))]
    size = 0 if tokenizer is None else len(tokenizer)
    known = [i for i in unique if 0 <= i < size]
    decoded = tokenizer.batch_decode([[i] for i in known]) if known else []
    strings = dict(zip(known, decoded, strict=True))
    return {i: strings.get(i, f"<{i}>") for i in unique}


def bos_of(model: Any, bos_token_id: int | None) -> int:
    """``bos_token_id`` where given, else the model's tokenizer's BOS id."""
    if bos_token_id is not None:
        return int(bos_token_id)
    found = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if found is None:
        raise NeuronKindsError("the model has no tokenizer with a BOS id: pass bos_token_id")
    return int(found)
