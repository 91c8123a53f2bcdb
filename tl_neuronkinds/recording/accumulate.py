"""Streaming accumulators: batches of (tokens, activations) in, a NeuronProfile of counts out.

This is the model-free core of recording: ``NeuronRecorder`` (recording.py) feeds it from hooks,
and ``profile_from_activations`` from tensors a user already has. Accumulators live on the
device of the activations and hold counts, never activations (DESIGN.md, "Rules of the house").

How the n-gram counts stay exact and fast: per batch, the text positions where an n-gram is
defined are grouped by n-gram id once (a sort of the batch's positions, shared by all layers).
For each layer the active indicators of a group's positions are summed with ``index_add_`` into
a ``[groups, d_mlp]`` block (in chunks of bounded size), whose nonzero entries are already the
batch's (n-gram, neuron) counts in sorted key order; these runs merge into a ``SparseCounter``.
Memory therefore grows with the number of distinct active (n-gram, neuron) pairs, not with
tokens.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.keys import SparseCounter, check_key_space, ngram_ids
from tl_neuronkinds.recording.profile import LayerCounts, NeuronProfile

# Largest [groups, d_mlp] int32 block built at once (64 MiB).
_BLOCK_ELEMENTS = 1 << 24
# Largest dense [d_vocab, d_mlp] int64 unigram table (256 MiB); sparse above.
_DENSE_UNIGRAM_ELEMENTS = 1 << 25


@dataclass
class _Groups:
    """Text positions where the n-gram is defined, grouped by n-gram id.

    N-grams seen once in the batch (most trigrams) are kept apart: their positions' active
    neurons are their counts, with no summing.
    """

    ids: Int[torch.Tensor, " g"]  # the distinct n-gram ids, ascending
    occurrences: Int[torch.Tensor, " g"]
    single_positions: Int[torch.Tensor, " s"]  # flat index of each n-gram seen once
    single_ids: Int[torch.Tensor, " s"]  # its id, ascending
    positions: Int[torch.Tensor, " m"]  # flat indices of the repeated n-grams, by id
    group_of: Int[torch.Tensor, " m"]  # group index of each (non-decreasing)
    group_ids: Int[torch.Tensor, " r"]  # the repeated n-grams' ids, ascending
    starts: Int[torch.Tensor, " r_plus_1"]  # positions[starts[j]:starts[j+1]] are group j

    @classmethod
    def of(cls, ids: Int[torch.Tensor, " rows"], positions: Int[torch.Tensor, " m"]) -> "_Groups":
        """Group ``positions`` (flat indices) by their n-gram ``ids``."""
        positions = positions[torch.argsort(ids[positions], stable=True)]
        unique, group_of, occurrences = torch.unique_consecutive(
            ids[positions], return_inverse=True, return_counts=True
        )
        single = (occurrences == 1)[group_of]
        repeated = positions[~single]
        group_ids, group_of, sizes = torch.unique_consecutive(
            ids[repeated], return_inverse=True, return_counts=True
        )
        starts = torch.zeros(group_ids.numel() + 1, dtype=torch.int64, device=ids.device)
        starts[1:] = torch.cumsum(sizes, 0)
        singles = positions[single]
        return cls(
            unique, occurrences, singles, ids[singles], repeated, group_of, group_ids, starts
        )


class BatchContext:
    """What every layer of one batch shares: the text mask and the n-gram groups."""

    def __init__(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        *,
        bos_token_id: int,
        ngram_max: int,
        d_vocab: int,
    ) -> None:
        self.text: Bool[torch.Tensor, "batch pos"] = tokens != bos_token_id
        flat_text = self.text.reshape(-1)
        # BOS positions (column 0 of every row, and separators sharing BOS's id): few rows.
        self.non_text_rows = (~flat_text).nonzero().squeeze(1)
        self.non_text_pos = self.non_text_rows % tokens.shape[1]
        self.groups: dict[int, _Groups] = {}
        for n in range(1, ngram_max + 1):
            ids = ngram_ids(tokens, n, d_vocab).reshape(-1)
            positions = ((ids >= 0) & flat_text).nonzero().squeeze(1)
            self.groups[n] = _Groups.of(ids, positions)


class _LayerAccumulator:
    """Counts of one layer, on the activations' device.

    Unigram counts are kept dense (``[d_vocab, d_mlp]``) where that table is small
    (``_DENSE_UNIGRAM_ELEMENTS``), which saves sorting the most repeated keys; otherwise, and
    for n >= 2, they are sparse.
    """

    def __init__(
        self, d_mlp: int, d_vocab: int, seq_len: int, ngram_max: int, device: torch.device
    ) -> None:
        self.d_mlp = d_mlp
        self.active = torch.zeros(d_mlp, dtype=torch.int64, device=device)
        self.active_text = torch.zeros(d_mlp, dtype=torch.int64, device=device)
        self.pos_active = torch.zeros(seq_len, d_mlp, dtype=torch.int64, device=device)
        self.dense_unigrams = (
            torch.zeros(d_vocab, d_mlp, dtype=torch.int64, device=device)
            if d_vocab * d_mlp <= _DENSE_UNIGRAM_ELEMENTS
            else None
        )
        first_sparse = 1 if self.dense_unigrams is None else 2
        self.ngrams = {n: SparseCounter(device) for n in range(first_sparse, ngram_max + 1)}

    def add(self, ctx: BatchContext, active: Bool[torch.Tensor, "batch pos d_mlp"]) -> None:
        # Summing uint8 into int32 is several times faster than summing bool (into int64).
        per_position = active.view(torch.uint8).sum(0, dtype=torch.int32)
        self.active += per_position.sum(0)
        flat = active.reshape(-1, self.d_mlp)
        per_position.index_add_(0, ctx.non_text_pos, -flat[ctx.non_text_rows].int())
        self.pos_active += per_position
        self.active_text += per_position.sum(0)
        for n, groups in ctx.groups.items():
            self._add_ngrams(n, groups, flat)

    def _add_ngrams(self, n: int, groups: _Groups, flat: Bool[torch.Tensor, "rows d_mlp"]) -> None:
        step = max(1, _BLOCK_ELEMENTS // self.d_mlp)
        dense = self.dense_unigrams if n == 1 else None
        for lo in range(0, groups.single_ids.numel(), step):
            rows = flat[groups.single_positions[lo : lo + step]]
            ids = groups.single_ids[lo : lo + step]
            if dense is not None:
                dense.index_add_(0, ids, rows.long())
                continue
            r, i = rows.nonzero(as_tuple=True)
            self.ngrams[n].add(ids[r] * self.d_mlp + i, torch.ones_like(r))
        n_groups = groups.group_ids.numel()
        for g0 in range(0, n_groups, step):
            g1 = min(g0 + step, n_groups)
            lo, hi = int(groups.starts[g0]), int(groups.starts[g1])
            block = torch.zeros(g1 - g0, self.d_mlp, dtype=torch.int32, device=flat.device)
            block.index_add_(0, groups.group_of[lo:hi] - g0, flat[groups.positions[lo:hi]].int())
            if dense is not None:
                dense.index_add_(0, groups.group_ids[g0:g1], block.long())
                continue
            g, i = block.nonzero(as_tuple=True)
            self.ngrams[n].add(groups.group_ids[g0 + g] * self.d_mlp + i, block[g, i])

    @staticmethod
    def _dense_unigram_table(
        dense: Int[torch.Tensor, "d_vocab d_mlp"],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flat = dense.reshape(-1)
        keys = flat.nonzero().squeeze(1)  # row-major: token * d_mlp + neuron, ascending
        return keys.cpu(), flat[keys].cpu()

    def counts(self) -> LayerCounts:
        tables = {n: c.table() for n, c in self.ngrams.items()}
        if self.dense_unigrams is not None:
            tables[1] = self._dense_unigram_table(self.dense_unigrams)
        return LayerCounts(
            active=self.active.cpu(),
            active_text=self.active_text.cpu(),
            ngram_keys={n: t[0] for n, t in tables.items()},
            ngram_counts={n: t[1] for n, t in tables.items()},
            pos_active=self.pos_active.cpu(),
        )


class ProfileBuilder:
    """Accumulates batches into the counts of a NeuronProfile.

    Args:
        layers: Layer indices to record.
        d_mlp, d_vocab: Sizes of the model.
        threshold: A neuron is active where its activation is > threshold (SPEC.md, "Terms").
        ngram_max: Largest n for the n-gram counts (1 to 3; §4, Appendix A).
        bos_token_id: The BOS id; positions holding it are not text positions.
        token_strings: The tokenizer's string for every id (stored for triggers).
        meta: Provenance stored with the profile.
    """

    def __init__(
        self,
        layers: list[int],
        *,
        d_mlp: int,
        d_vocab: int,
        threshold: float = 0.0,
        ngram_max: int = 3,
        bos_token_id: int = 2,
        token_strings: list[str] | None = None,
        meta: dict | None = None,
    ) -> None:
        if not 1 <= ngram_max <= 3:
            raise NeuronKindsError(f"ngram_max must be 1, 2 or 3, got {ngram_max}")
        check_key_space(ngram_max, d_vocab, d_mlp)
        self.layers = sorted(layers)
        self.d_mlp, self.d_vocab = d_mlp, d_vocab
        self.threshold, self.ngram_max, self.bos_token_id = (
            float(threshold),
            ngram_max,
            bos_token_id,
        )
        self.token_strings = token_strings or [f"<{i}>" for i in range(d_vocab)]
        self.meta = dict(meta or {})
        self.seq_len: int | None = None
        self.n_seqs = self.n_text_positions = 0
        self._layers: dict[int, _LayerAccumulator] = {}
        self._occ: dict[int, SparseCounter] = {}
        self._pos_text_seqs: torch.Tensor | None = None

    def context(self, tokens: Int[torch.Tensor, "batch pos"]) -> BatchContext:
        """Check a batch of tokens and prepare what its layers share."""
        if self.seq_len is None:
            self._start(tokens.shape[1], tokens.device)
        elif tokens.shape[1] != self.seq_len:
            raise NeuronKindsError(
                f"all sequences of a profile must have one length: got {tokens.shape[1]}, "
                f"earlier {self.seq_len}"
            )
        return BatchContext(
            tokens, bos_token_id=self.bos_token_id, ngram_max=self.ngram_max, d_vocab=self.d_vocab
        )

    def _start(self, seq_len: int, device: torch.device) -> None:
        self.seq_len = seq_len
        for layer in self.layers:
            self._layers[layer] = _LayerAccumulator(
                self.d_mlp, self.d_vocab, seq_len, self.ngram_max, device
            )
        self._occ = {n: SparseCounter(device) for n in range(1, self.ngram_max + 1)}
        self._pos_text_seqs = torch.zeros(seq_len, dtype=torch.int64, device=device)

    def add_layer(
        self, ctx: BatchContext, layer: int, acts: Float[torch.Tensor, "batch pos d_mlp"]
    ) -> None:
        """Count one layer's activations for the batch of ``ctx``."""
        self._layers[layer].add(ctx, acts > self.threshold)

    def add_tokens(self, ctx: BatchContext) -> None:
        """Count the batch's sequences, text positions and n-gram occurrences (once per batch)."""
        assert self._pos_text_seqs is not None
        self.n_seqs += ctx.text.shape[0]
        self.n_text_positions += int(ctx.text.sum())
        self._pos_text_seqs += ctx.text.sum(0)
        for n, groups in ctx.groups.items():
            self._occ[n].add(groups.ids, groups.occurrences)

    def add_batch(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        acts: dict[int, Float[torch.Tensor, "batch pos d_mlp"]],
    ) -> None:
        """Count a batch given every recorded layer's activations."""
        missing = set(self.layers) - set(acts)
        if missing:
            raise NeuronKindsError(f"activations missing for layers {sorted(missing)}")
        ctx = self.context(tokens)
        for layer in self.layers:
            self.add_layer(ctx, layer, acts[layer])
        self.add_tokens(ctx)

    def profile(self) -> NeuronProfile:
        """The counts so far, as a NeuronProfile (CPU tensors)."""
        if self.seq_len is None or self._pos_text_seqs is None:
            raise NeuronKindsError("nothing was recorded: run at least one batch first")
        occ = {n: c.table() for n, c in self._occ.items()}
        return NeuronProfile(
            layers=list(self.layers),
            counts={layer: acc.counts() for layer, acc in self._layers.items()},
            d_mlp=self.d_mlp,
            d_vocab=self.d_vocab,
            seq_len=self.seq_len,
            ngram_max=self.ngram_max,
            threshold=self.threshold,
            bos_token_id=self.bos_token_id,
            n_seqs=self.n_seqs,
            n_positions=self.n_seqs * self.seq_len,
            n_text_positions=self.n_text_positions,
            ngram_occ_ids={n: t[0] for n, t in occ.items()},
            ngram_occ_counts={n: t[1] for n, t in occ.items()},
            pos_text_seqs=self._pos_text_seqs.cpu(),
            token_strings=list(self.token_strings),
            meta=dict(self.meta),
        )


def profile_from_activations(
    tokens: Int[torch.Tensor, "batch pos"],
    acts: dict[int, Float[torch.Tensor, "batch pos d_mlp"]],
    *,
    d_vocab: int,
    threshold: float = 0.0,
    ngram_max: int = 3,
    bos_token_id: int = 2,
    token_strings: list[str] | None = None,
    meta: dict | None = None,
) -> NeuronProfile:
    """A NeuronProfile straight from activations a user already holds (no model needed)."""
    layers = sorted(acts)
    if not layers:
        raise NeuronKindsError("no activations given")
    builder = ProfileBuilder(
        layers,
        d_mlp=acts[layers[0]].shape[-1],
        d_vocab=d_vocab,
        threshold=threshold,
        ngram_max=ngram_max,
        bos_token_id=bos_token_id,
        token_strings=token_strings,
        meta=meta,
    )
    builder.add_batch(tokens, acts)
    return builder.profile()
