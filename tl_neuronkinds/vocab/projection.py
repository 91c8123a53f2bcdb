"""Promoted and suppressed tokens of FFN neurons (Voita et al. 2024, §4.4, Figure 5): each
neuron's vocabulary projection ``s`` (``vocab_scores``, through ``readout.Readout``) and its top-k
and bottom-k tokens (``vocab_projection``).

Convention: ``s = R(W_out[l][i]) @ W_U`` with ``R`` the readout through the LayerNorms' centring
and gains (and OPT-350m's ``project_out``) and ``W_U`` as held, *not* centred over the
vocabulary. These are the logit changes the neuron causes up to the LayerNorms' positive scale,
so a score's sign means what it says: with ``W_U`` centred (TransformerLens's
``center_unembed``, which Gurnee et al. 2024 use and ``weight_stats`` follows by default) every
score of a neuron moves by the same constant, ``-mean_v s``. The softmax ignores that constant
and ranks keep it, so promoted and suppressed tokens and rank percentiles are the same either
way; the scores themselves, and the sign of a token detector's mean trigger score (whether it
suppresses its triggers, §4.4, Figure 6), are not. ``fold_ln`` and ``center_writing_weights``
leave ``s`` unchanged (``readout``'s docstring).

Scores are float32 matrix products with ``W_U`` (float16 / bfloat16 models are widened: float32
accumulation; on CUDA, TF32 follows ``torch.backends.cuda.matmul.allow_tf32``), on the model's
device, a chunk of neurons at a time. Ranks order tokens by score, ties by increasing token id,
so results are deterministic.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import loaded_block
from tl_neuronkinds.loading.tokens import strings_of
from tl_neuronkinds.vocab.readout import (
    check_layer,
    check_neurons,
    finite,
    readout,
    w_out_rows,
)

#: Scores held at once: a chunk of neurons times d_vocab float32 (64 MiB).
CHUNK_ELEMENTS = 1 << 24
DIRECTIONS = ("promoted", "suppressed")
PROJECTION_COLUMNS = ["layer", "neuron", "direction", "rank", "token_id", "token", "score"]


def score_chunks(
    model: Any, layer: int, neurons: Int[torch.Tensor, " n"]
) -> Iterator[tuple[slice, Float[torch.Tensor, "chunk d_vocab"]]]:
    """The float32 scores of ``neurons`` of ``layer``, a chunk of neurons at a time, on the
    model's device: ``(positions in neurons, scores)`` pairs (see ``vocab_scores``). Each
    chunk's scores are written into one buffer: they are valid until the next chunk."""
    with loaded_block(model, layer):  # one load of the block for both
        rows = w_out_rows(model, layer, neurons)
        out = readout(model, layer)
    unembed = out.W_U.to(torch.float32)
    step = max(1, min(rows.shape[0], CHUNK_ELEMENTS // unembed.shape[1]))
    buffer = torch.empty(step, unembed.shape[1], dtype=torch.float32, device=unembed.device)
    for start in range(0, rows.shape[0], step):
        part = slice(start, min(start + step, rows.shape[0]))
        directions = out.apply(rows[part]).to(unembed)
        if not finite(directions):
            raise NeuronKindsError(f"W_out[{layer}] holds NaN or infinite values")
        scores = buffer[: part.stop - start]
        torch.mm(directions, unembed, out=scores)  # a reused buffer: no page faults per chunk
        if not finite(scores):  # a NaN or infinity in W_U reaches every row's score of its token
            raise NeuronKindsError(
                f"W_U holds NaN or infinite values (or the scores of W_out[{layer}] overflow "
                "float32)"
            )
        yield part, scores


def vocab_scores(
    model: Any, layer: int, neurons: Sequence[int] | torch.Tensor | np.ndarray | None = None
) -> Float[torch.Tensor, "n d_vocab"]:
    """Vocabulary projections ``s`` of neurons of one layer (§4.4; see the module docstring).

    Args:
        model: A HookedTransformer or TransformerBridge of OPT (``load_opt``; streamed models
            load block ``layer`` only, and for post-LayerNorm OPT-350m the LayerNorm gains of
            the later blocks).
        layer: The layer.
        neurons: Neuron indices (default: all ``d_mlp``), in the order wanted.

    Returns:
        ``[len(neurons), d_vocab]`` float32 on the CPU: row j is ``s`` of ``neurons[j]``.

    Raises:
        NeuronKindsError: ``layer`` or a neuron out of range, non-finite weights.
    """
    layer = check_layer(model, layer)
    ids = check_neurons(model, neurons)
    out = torch.empty(ids.numel(), model.cfg.d_vocab, dtype=torch.float32)
    for part, scores in score_chunks(model, layer, ids):
        out[part] = scores.cpu()
    return out


def _ranked(
    scores: Float[torch.Tensor, "n d_vocab"], k: int, largest: bool
) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
    """The ``k`` largest (or smallest) scores of each row and their token ids, best first, ties
    by increasing id: the first ``k`` of a stable sort of the row, without sorting the row.

    ``topk(k + 1)`` finds each row's top k; where its (k+1)-th value is not tied with its k-th,
    that set is exact and only its order is settled (by id, then stably by score); rows with a
    tie across the k-th place are stably sorted whole.
    """
    values, ids = scores.topk(min(k + 1, scores.shape[1]), dim=1, largest=largest, sorted=True)
    if k < scores.shape[1]:
        tied = values[:, k] == values[:, k - 1]
        values, ids = values[:, :k], ids[:, :k]
    else:  # every token: the set is exact
        tied = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    ids, by_id = ids.sort(dim=1)
    values = values.gather(1, by_id)
    values, by_score = values.sort(dim=1, descending=largest, stable=True)
    ids = ids.gather(1, by_score)
    rows = tied.nonzero().flatten()
    if rows.numel():
        full, order = scores[rows].sort(dim=1, descending=largest, stable=True)
        values[rows], ids[rows] = full[:, :k], order[:, :k]
    return values, ids


def vocab_projection(
    model: Any,
    layer: int,
    neurons: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    k: int = 10,
) -> pd.DataFrame:
    """Each neuron's promoted and suppressed tokens: the top-k and bottom-k of ``s`` (§4.4,
    Figure 5).

    Args:
        model: A HookedTransformer or TransformerBridge of OPT (see ``vocab_scores``).
        layer: The layer.
        neurons: Neuron indices (default: all ``d_mlp``, in chunks on the model's device).
        k: Tokens per direction (1..d_vocab; the paper's Figure 5 shows the top few).

    Returns:
        One row per (neuron, direction, rank), neurons in the order given, ``"promoted"`` then
        ``"suppressed"``: ``layer``, ``neuron``, ``direction``, ``rank`` (0 = strongest: the
        largest score promoted, the smallest suppressed; equal scores by increasing token id),
        ``token_id``, ``token`` (the tokenizer's string; ``<id>`` without one) and ``score``
        (float32 ``s``).

    Raises:
        NeuronKindsError: ``layer`` or a neuron out of range, ``k`` out of 1..d_vocab.
    """
    layer = check_layer(model, layer)
    ids = check_neurons(model, neurons)
    d_vocab = model.cfg.d_vocab
    k = check_int("k", k, low=1, high=d_vocab)
    values = torch.empty(ids.numel(), 2, k, dtype=torch.float32)
    tokens = torch.empty(ids.numel(), 2, k, dtype=torch.int64)
    for part, scores in score_chunks(model, layer, ids):
        for d, largest in enumerate((True, False)):
            v, t = _ranked(scores, k, largest)
            values[part, d], tokens[part, d] = v.cpu(), t.cpu()
    token_ids = tokens.numpy().reshape(-1)
    strings = strings_of(getattr(model, "tokenizer", None), token_ids)
    n = ids.numel()
    table = pd.DataFrame(
        {
            "layer": np.full(n * 2 * k, layer, dtype=np.int64),
            "neuron": np.repeat(ids.numpy(), 2 * k),
            "direction": pd.array(np.tile(np.repeat(DIRECTIONS, k), n), dtype="string"),
            "rank": np.tile(np.arange(k), 2 * n),
            "token_id": token_ids,
            "token": pd.array([strings[int(t)] for t in token_ids], dtype="string"),
            "score": values.numpy().reshape(-1),
        }
    )
    return table[PROJECTION_COLUMNS]
