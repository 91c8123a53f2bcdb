"""Packing documents into full-length token rows (``Corpus.tokenize``).

The paper (Voita et al. 2024, §2) records activations over full-length sequences; this module
turns any collection of documents into such rows:

- **Row**: ``[BOS, t_1, ..., t_{seq_len-1}]``; every row starts with ``tokenizer.bos_token_id``
  (OPT: ``</s>``, id 2) and is full: a final partial row is dropped.
- **Separator**: the tokenizer's EOS id (``tokenizer.eos_token_id``; the BOS id when there is
  no EOS; for OPT both are ``</s>``, id 2) is placed before every document that starts inside a
  row after other text. A document that starts right after a row's BOS has no separator: the
  BOS already marks the boundary, and OPT never sees ``</s></s>``. docs/kinds.md
  ("Terms") leaves separators that share BOS's id out of text positions.
- **Continuation**: a document longer than the rest of its row continues in the next row,
  after that row's BOS.

So the rows with their BOS column removed, concatenated, are exactly the documents' tokens
(encoded one by one without special tokens), in order, joined by separators, less the
separators that would fall at a row's first text position. Documents are encoded as plain
text (``split_special_tokens=True``): a literal ``"</s>"`` in a document is text, never a BOS.
"""

import array
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Int
from tqdm import tqdm

from tl_neuronkinds.checks import is_int
from tl_neuronkinds.errors import NeuronKindsError

#: At most this many documents, or this many characters, per call of the (fast,
#: batch-parallel) tokenizer; bounds what is encoded past ``n_tokens``.
_BATCH_DOCS = 512
_BATCH_CHARS = 2_000_000
#: A ``model_max_length`` at or above this is the "no limit" sentinel of transformers.
_SANE_MAX_LENGTH = 1_000_000


def pack(
    docs: Sequence[str],
    description: str,
    tokenizer: Any,
    seq_len: int = 2048,
    n_tokens: int | None = None,
    progress: bool | None = None,
    max_len: int | None = None,
) -> Int[torch.Tensor, "batch pos"]:
    """Pack the documents into full rows ``[BOS, ...]`` of ``seq_len`` tokens (module doc).

    Args:
        docs: the documents, in order.
        description: what they are (named in messages).
        tokenizer: a Hugging Face tokenizer (fast ones batch-encode in parallel) with a
            ``bos_token_id``.
        seq_len: tokens per row, BOS included; the paper uses the model's full context.
        n_tokens: if given, stop after ``ceil(n_tokens / seq_len)`` rows, the fewest whose
            tokens reach ``n_tokens``; otherwise use the whole corpus.
        progress: show a tqdm bar (None: only when it runs for more than 2 seconds).
        max_len: the model's context (``n_ctx``); ``seq_len`` may not exceed it.

    Returns:
        ``LongTensor[n_seq, seq_len]``; only full rows (a final partial row is dropped).

    Raises:
        NeuronKindsError: ``seq_len < 2``, ``seq_len`` above ``max_len`` or the tokenizer's
            ``model_max_length``, no ``bos_token_id``, bad ``n_tokens``, or fewer tokens
            than one row (or than ``n_tokens``).
    """
    if not is_int(seq_len) or seq_len < 2:
        raise NeuronKindsError(f"seq_len must be an integer >= 2 (BOS plus text), not {seq_len!r}")
    if max_len is not None and seq_len > max_len:
        raise NeuronKindsError(f"seq_len {seq_len} exceeds the model's context of {max_len} tokens")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < _SANE_MAX_LENGTH and seq_len > model_max:
        raise NeuronKindsError(
            f"seq_len {seq_len} exceeds the tokenizer's model_max_length of {model_max}"
        )
    if n_tokens is not None and (not is_int(n_tokens) or n_tokens < 1):
        raise NeuronKindsError(f"n_tokens must be a positive integer or None, not {n_tokens!r}")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise NeuronKindsError(
            f"tokenizer {type(tokenizer).__name__} has no bos_token_id; rows must start with BOS"
        )
    eos = getattr(tokenizer, "eos_token_id", None)
    sep = bos if eos is None else eos
    width = seq_len - 1  # text tokens per row
    want = None if n_tokens is None else math.ceil(n_tokens / seq_len) * width
    text = array.array("q")  # int64 text tokens, separators included, BOS excluded
    bar = tqdm(
        total=want,
        unit="tok",
        unit_scale=True,
        desc="tokenizing",
        disable=progress is False,
        delay=0 if progress else 2.0,
        mininterval=0.1 if sys.stderr is not None and sys.stderr.isatty() else 10.0,
        file=sys.stderr,
    )
    with bar:
        for batch in _batches(docs):
            encoded = tokenizer(
                batch,
                add_special_tokens=False,
                split_special_tokens=True,
                return_attention_mask=False,
                verbose=False,
            )["input_ids"]
            before = len(text)
            for ids in encoded:
                if len(text) % width:
                    text.append(sep)
                text.extend(ids)
            bar.update((len(text) if want is None else min(len(text), want)) - before)
            if want is not None and len(text) >= want:
                break
    n_rows = len(text) // width if want is None else want // width
    if n_rows == 0 or len(text) < n_rows * width:
        need = "one row" if want is None else f"the {n_rows} rows n_tokens={n_tokens} needs"
        raise NeuronKindsError(
            f"corpus {description} yields {len(text)} text tokens, "
            f"{len(text) // width} full rows of {seq_len}: fewer than {need}"
        )
    body = torch.frombuffer(text, dtype=torch.long)[: n_rows * width].view(n_rows, width)
    bos_column = torch.full((n_rows, 1), bos, dtype=torch.long)
    return torch.cat([bos_column, body], dim=1)


def _batches(docs: Sequence[str]) -> Iterator[list[str]]:
    """Consecutive runs of documents, each within ``_BATCH_DOCS`` and ``_BATCH_CHARS``."""
    batch: list[str] = []
    chars = 0
    for doc in docs:
        if batch and (len(batch) == _BATCH_DOCS or chars + len(doc) > _BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(doc)
        chars += len(doc)
    if batch:
        yield batch
