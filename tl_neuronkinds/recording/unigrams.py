"""Unigram (token, neuron) activity counts of one layer, complete for every neuron.

Voita et al. 2024 §4.1: ``c_g(l, i)`` for unigrams g counts the text positions holding token g
where neuron i is active. Every neuron's unigram counts are kept (the n-gram plan and its
certificates rest on them, ``plan.py``): as dense float32 rows while that is cheap, as sparse
int64 keys (``keys.py``) where the measured density makes dense rows wasteful.

float32 sums of 0/1 values are exact below 2**24; the dense table is folded into int64 long
before that.
"""

import torch
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.recording.keys import SparseCounter, Table

# float32 counts are exact below 2**24: the dense unigram table is folded into int64 before.
_FOLD_POSITIONS = 1 << 23
# A dense unigram table larger than this turns sparse where fewer than 1 cell in
# _SPARSE_DENSITY is nonzero (16 bytes per sparse entry against 4 per dense cell).
_SPARSE_MIN_BYTES = 1 << 28
_SPARSE_DENSITY = 8


class UnigramCounter:
    """(token, neuron) activity counts over every position, for every neuron of a layer.

    Dense while that is cheap: one float32 row per token seen (rows added as tokens appear,
    so memory follows the vocabulary actually used, not ``d_vocab``), filled by ``index_add_``.
    Non-text positions land in the BOS token's row, which ``table`` leaves out. When the rows
    take more than ``_SPARSE_MIN_BYTES`` and are measured to be mostly zero, the counter turns
    into a sparse table of keys ``token * d_mlp + neuron`` (OPT-66b's 36,864 neurons over tens of
    thousands of tokens) and stays sparse.
    """

    def __init__(self, d_vocab: int, d_mlp: int, bos_token_id: int, device: torch.device) -> None:
        self.d_vocab, self.d_mlp, self.bos_token_id = d_vocab, d_mlp, bos_token_id
        self.row_of = torch.full((d_vocab,), -1, dtype=torch.int64, device=device)
        self.token_of: Int[torch.Tensor, " rows"] = torch.zeros(0, dtype=torch.int64, device=device)
        self.rows = torch.zeros(0, d_mlp, dtype=torch.float32, device=device)
        self.folded: torch.Tensor | None = None  # int64 rows, once counts near float32's limit
        self.since_fold = 0
        self.sparse: SparseCounter | None = None

    @property
    def nbytes(self) -> int:
        if self.sparse is not None:
            return self.sparse.nbytes
        folded = 0 if self.folded is None else self.folded.numel() * 8
        return self.rows.numel() * 4 + folded

    def add(
        self,
        tokens: Int[torch.Tensor, " rows"],
        text: Bool[torch.Tensor, " rows"],
        active: Float[torch.Tensor, "rows d_mlp"],
    ) -> None:
        """Count a chunk of positions: their tokens, text mask and 0/1 activity."""
        if self.sparse is None:
            if self.since_fold + tokens.numel() > _FOLD_POSITIONS:
                self._fold()
            index = self._rows_for(tokens)  # may turn the counter sparse
        if self.sparse is not None:
            self._add_sparse(tokens[text], active[text])
            return
        self.rows.index_add_(0, index, active)
        self.since_fold += tokens.numel()

    def _rows_for(self, tokens: Int[torch.Tensor, " rows"]) -> Int[torch.Tensor, " rows"]:
        index = self.row_of[tokens]
        if bool((index < 0).any()):
            new = torch.unique(tokens[index < 0])
            first = self.token_of.numel()
            self.row_of[new] = torch.arange(first, first + new.numel(), device=tokens.device)
            self.token_of = torch.cat([self.token_of, new])
            self._grow(self.token_of.numel())
            index = self.row_of[tokens]
        return index

    def _grow(self, needed: int) -> None:
        if needed <= self.rows.shape[0]:
            return
        size = min(self.d_vocab, max(needed, 2 * self.rows.shape[0], 256))
        grown = self.rows.new_zeros(size, self.d_mlp)
        grown[: self.rows.shape[0]] = self.rows
        self.rows = grown
        if self.folded is not None:
            folded = self.folded.new_zeros(size, self.d_mlp)
            folded[: self.folded.shape[0]] = self.folded
            self.folded = folded
        self._maybe_sparse()

    def _fold(self) -> None:
        if self.folded is None:
            self.folded = torch.zeros(self.rows.shape, dtype=torch.int64, device=self.rows.device)
        self.folded += self.rows.to(torch.int64)
        self.rows.zero_()
        self.since_fold = 0
        self._maybe_sparse()

    def _maybe_sparse(self) -> None:
        if self.nbytes <= _SPARSE_MIN_BYTES:
            return
        nonzero = int(torch.count_nonzero(self._int_rows()))
        if nonzero * _SPARSE_DENSITY < self.token_of.numel() * self.d_mlp:
            keys, counts = self._dense_table(keep_bos=False)
            self.sparse = SparseCounter(self.rows.device)
            self.sparse.add(keys, counts)
            self.rows = self.rows.new_zeros(0, self.d_mlp)
            self.folded = None

    def _add_sparse(
        self, tokens: Int[torch.Tensor, " m"], active: Float[torch.Tensor, "m d_mlp"]
    ) -> None:
        assert self.sparse is not None
        order = torch.argsort(tokens)
        ids, group_of = torch.unique_consecutive(tokens[order], return_inverse=True)
        block = active.new_zeros(ids.numel(), self.d_mlp)
        block.index_add_(0, group_of, active[order])
        g, i = block.nonzero(as_tuple=True)
        self.sparse.add(ids[g] * self.d_mlp + i, block[g, i].to(torch.int64))

    def _int_rows(self) -> Int[torch.Tensor, "rows d_mlp"]:
        used = self.token_of.numel()
        rows = self.rows[:used].to(torch.int64)
        return rows if self.folded is None else rows + self.folded[:used]

    def _dense_table(self, keep_bos: bool) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(self.token_of)
        tokens = self.token_of[order]
        rows = self._int_rows()[order]
        if not keep_bos:
            text = tokens != self.bos_token_id
            tokens, rows = tokens[text], rows[text]
        r, i = rows.nonzero(as_tuple=True)
        return tokens[r] * self.d_mlp + i, rows[r, i]

    def table(self) -> Table:
        """Counts at text positions: sorted keys ``token * d_mlp + neuron`` (CPU, int64)."""
        if self.sparse is not None:
            return self.sparse.table()
        keys, counts = self._dense_table(keep_bos=False)
        return Table(keys.cpu(), counts.cpu())
