"""What every recorded layer of one batch shares: its tokens, text mask and n-gram groups.

The batch's text positions are grouped by n-gram id once per batch (``keys.ngram_ids``) and the
groups reused by every layer: a layer's (n-gram, neuron) counts are then one ``index_add_`` of
its 0/1 activity into ``[groups, neurons]`` (``layer_accumulator.py``), and the groups' sizes
are the n-gram occurrences ``o_g`` (Voita et al. 2024 §4.2).

Glossary: ``batch pos`` a batch of token rows, ``rows`` its flattened positions, ``g`` distinct
n-grams of a batch.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from tl_neuronkinds.recording.keys import ngram_ids


@dataclass
class _Groups:
    """The batch's distinct n-grams of one order, and the group of every row.

    Rows where the n-gram is undefined or the position is not text go to an extra group
    (index ``g``), whose sums are dropped.
    """

    ids: Int[torch.Tensor, " g"]  # the distinct n-gram ids, ascending
    occurrences: Int[torch.Tensor, " g"]
    slot: Int[torch.Tensor, " rows"]  # each row's index into ids, or g

    @classmethod
    def of(cls, ids: Int[torch.Tensor, " rows"], defined: Bool[torch.Tensor, " rows"]) -> "_Groups":
        unique, inverse, occurrences = torch.unique(
            ids[defined], sorted=True, return_inverse=True, return_counts=True
        )
        slot = torch.full_like(ids, unique.numel())
        slot[defined] = inverse
        return cls(unique, occurrences, slot)


class BatchContext:
    """What every layer of one batch shares: tokens, the text mask and the n-gram groups."""

    def __init__(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        *,
        bos_token_id: int,
        ngram_max: int,
        d_vocab: int,
        seqs: Int[torch.Tensor, " batch"] | None = None,
    ) -> None:
        self.tokens = tokens.reshape(-1)
        self.text: Bool[torch.Tensor, "batch pos"] = tokens != bos_token_id
        seq_len = tokens.shape[1]
        positions = torch.arange(seq_len, device=tokens.device).expand_as(tokens)
        # Each row's position, or seq_len for non-text rows (BOS and separators sharing its id).
        self.position_slot = torch.where(self.text, positions, seq_len).reshape(-1)
        flat_text = self.text.reshape(-1)
        # Each row's sequence index (in the tokens the profile refers to) and position.
        if seqs is None:
            seqs = torch.arange(tokens.shape[0], device=tokens.device)
        self.row_seq = seqs.to(tokens.device).repeat_interleave(seq_len)
        self.row_pos = positions.reshape(-1)
        self.groups: dict[int, _Groups] = {}
        for n in range(1, ngram_max + 1):
            ids = ngram_ids(tokens, n, d_vocab).reshape(-1)
            self.groups[n] = _Groups.of(ids, (ids >= 0) & flat_text)
