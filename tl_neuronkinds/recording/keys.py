"""Exact sparse counting of n-grams and (n-gram, neuron) pairs as sorted int64 keys.

Glossary of axis names: ``batch pos`` index token positions, ``d_mlp`` neurons, ``k`` entries of
a sparse count table, ``g`` distinct n-grams.

An n-gram ``(x[p-n+1], ..., x[p])`` over a vocabulary of ``d_vocab`` tokens gets the id
``sum_j x[p-n+1+j] * d_vocab**(n-1-j)`` (the n-gram read as a number in base ``d_vocab``), and
the pair (n-gram g, neuron i) the key ``g * d_mlp + i``. For OPT's 50,272 tokens and ``d_mlp``
up to 36,864 a trigram key stays below 2**63, so every count is kept exactly in one int64 key
(no hashing, no sampling: counts stay exact at any scale). A sparse table is a pair of tensors (sorted unique
keys, positive counts); tables merge by concatenation and a sort.
"""

from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Int

from tl_neuronkinds.errors import NeuronKindsError

_INT64_MAX = 2**63 - 1
# Pending keys below which runs wait rather than merge (keeps merges few and large).
_MIN_MERGE = 1 << 22


class Table(NamedTuple):
    """A sparse count table: sorted unique int64 ``keys`` and their positive int64 ``counts``."""

    keys: Int[torch.Tensor, " k"]
    counts: Int[torch.Tensor, " k"]

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> "Table":
        return cls(
            torch.zeros(0, dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
        )

    def of_neurons(self, keep: Bool[torch.Tensor, " d_mlp"]) -> "Table":
        """The entries of the (n-gram, neuron) pairs whose neuron ``keep`` marks."""
        chosen = keep.to(self.keys.device)[self.keys % keep.numel()]
        return Table(self.keys[chosen], self.counts[chosen])

    def neuron_tails(
        self, d_mlp: int, k: int
    ) -> tuple[Int[torch.Tensor, " d_mlp"], Int[torch.Tensor, " d_mlp"]]:
        """Per neuron (keys ``g * d_mlp + i``): its total count ``A`` and its *tail*, ``A``
        less the sum of its ``k`` largest counts (0 where it has at most ``k`` entries).

        One sort of (neuron, count) packed into int64, then cumulative sums per neuron.
        """
        device = self.keys.device
        neuron = self.keys % d_mlp
        top = int(self.counts.max()) if self.counts.numel() else 0
        shift = max(1, top.bit_length())
        packed, _ = torch.sort((neuron << shift) | (top - self.counts))
        neuron_sorted = packed >> shift
        count_sorted = top - (packed & ((1 << shift) - 1))
        running = torch.zeros(packed.numel() + 1, dtype=torch.int64, device=device)
        torch.cumsum(count_sorted, 0, out=running[1:])
        ids = torch.arange(d_mlp, device=device)
        start = torch.searchsorted(neuron_sorted, ids, side="left")
        end = torch.searchsorted(neuron_sorted, ids, side="right")
        total = running[end] - running[start]
        return total, running[end] - running[torch.minimum(start + k, end)]


def check_key_space(n: int, d_vocab: int, d_mlp: int) -> None:
    """Raise NeuronKindsError where (n-gram, neuron) keys would not fit in int64."""
    if d_vocab**n * d_mlp > _INT64_MAX:
        raise NeuronKindsError(
            f"{n}-gram keys over a vocabulary of {d_vocab} and d_mlp={d_mlp} do not fit in "
            "int64; lower ngram_max"
        )


def ngram_ids(
    tokens: Int[torch.Tensor, "batch pos"], n: int, d_vocab: int
) -> Int[torch.Tensor, "batch pos"]:
    """Id of the n-gram ending at each position; -1 where it is undefined (``p - n + 1 < 0``)."""
    ids = tokens.clone()
    for j in range(1, n):
        ids[:, j:] += tokens[:, :-j] * d_vocab**j
    ids[:, : n - 1] = -1
    return ids


def split_ngram_ids(ids: Int[torch.Tensor, " g"], n: int, d_vocab: int) -> Int[torch.Tensor, "g n"]:
    """Token ids of each n-gram id, first token first (the inverse of ``ngram_ids``)."""
    parts = []
    rest = ids.clone()
    for _ in range(n):
        parts.append(rest % d_vocab)
        rest = rest // d_vocab
    return torch.stack(parts[::-1], dim=-1)


def merge_tables(
    keys: list[Int[torch.Tensor, " _k"]], counts: list[Int[torch.Tensor, " _k"]]
) -> Table:
    """Merge sparse count tables into one: sorted unique keys, counts summed per key.

    The inputs are sorted runs, so on the CPU NumPy's stable sort (a timsort, which finds and
    merges runs) orders their concatenation in near-linear time; on a GPU ``torch.sort`` is a
    radix sort. Equal keys are then summed as differences of a cumulative sum. Intermediates are
    released as soon as they are used: about 4 int64 values per entry at the peak.
    """
    if len(keys) == 1:
        return Table(keys[0], counts[0].to(torch.int64))
    all_keys = torch.cat(keys)
    if all_keys.device.type == "cpu":
        order = torch.from_numpy(np.argsort(all_keys.numpy(), kind="stable"))
    else:
        order = torch.argsort(all_keys)
    sorted_keys = all_keys[order]
    del all_keys
    running = torch.cat(counts).to(torch.int64)[order]
    del order
    running.cumsum_(0)
    last = torch.ones(sorted_keys.numel(), dtype=torch.bool, device=sorted_keys.device)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    unique = sorted_keys[last]
    del sorted_keys
    totals = running[last]
    del running
    totals[1:] -= totals[:-1].clone()
    return Table(unique, totals)


class SparseCounter:
    """A growing sparse count table with amortised merging.

    Batches append sorted runs; runs are merged into the table once their total size passes the
    table's (a log-structured merge), so each key is re-sorted O(log(total)) times overall.
    """

    def __init__(self, device: torch.device) -> None:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        self._keys: Int[torch.Tensor, " k"] = empty
        self._counts: Int[torch.Tensor, " k"] = empty.clone()
        self._pending_keys: list[torch.Tensor] = []
        self._pending_counts: list[torch.Tensor] = []
        self._pending_size = 0

    def add(self, keys: Int[torch.Tensor, " k"], counts: Int[torch.Tensor, " k"]) -> None:
        """Add a run of (key, count) pairs (keys unique within the run)."""
        if keys.numel() == 0:
            return
        self._pending_keys.append(keys)
        self._pending_counts.append(counts.to(torch.int64))
        self._pending_size += keys.numel()
        if self._pending_size > max(self._keys.numel(), _MIN_MERGE):
            self._flush()

    def _flush(self) -> None:
        if not self._pending_keys:
            return
        self._keys, self._counts = merge_tables(
            [self._keys, *self._pending_keys], [self._counts, *self._pending_counts]
        )
        self._pending_keys, self._pending_counts, self._pending_size = [], [], 0

    def table(self) -> Table:
        """The merged table as CPU int64 tensors (sorted keys, counts)."""
        merged = self.device_table()
        return Table(merged.keys.cpu(), merged.counts.cpu())

    def device_table(self) -> Table:
        """The merged table, on the counter's device."""
        self._flush()
        return Table(self._keys, self._counts)

    def restrict(self, keep: Bool[torch.Tensor, " d_mlp"]) -> None:
        """Drop the pairs of the neurons ``keep`` does not mark (keys ``g * d_mlp + i``)."""
        self._flush()
        self._keys, self._counts = Table(self._keys, self._counts).of_neurons(keep)

    @property
    def nbytes(self) -> int:
        """Bytes held (merged table and pending runs)."""
        pending = sum(k.numel() for k in self._pending_keys)
        return 16 * (self._keys.numel() + pending)
