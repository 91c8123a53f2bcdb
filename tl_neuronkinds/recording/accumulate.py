"""Streaming accumulators: batches of (tokens, activations) in, a NeuronProfile of counts out.

This is the model-free core of recording: ``NeuronRecorder`` (recorder.py) feeds it from hooks,
and ``profile_from_activations`` from tensors a user already has. Accumulators live on the
device of the activations and hold counts, never activations (DESIGN.md, "Rules of the house").

Glossary: ``batch pos`` a batch of token rows, ``rows`` its flattened positions, ``d_mlp``
neurons, ``cols`` the planned neurons of a layer, ``g`` distinct n-grams of a batch.

Per layer and batch, in chunks of rows (so no buffer exceeds ``_BLOCK_ELEMENTS``):

- **activity** as float32 0/1 in a reused buffer (``torch.gt(acts, threshold, out=...)``, one
  pass over the activations);
- **per-position counts**: one ``index_add_`` by position, where every non-text position (BOS
  and separators sharing its id) goes to an extra row ``seq_len``; so the text positions' rows
  are ``pos_active``, their sum is ``active_text`` and the sum of all rows is ``active`` (§3, §5);
- **unigram counts** for every neuron (``UnigramCounter``): dense rows for the tokens seen, or
  sparse keys where the measured density makes dense rows wasteful;
- **n-gram counts** (n >= 2) for the planned neurons only (all neurons where no plan is given):
  the batch's text positions are grouped by n-gram id once (shared by all layers), the active
  indicators of each group summed into a ``[groups, cols]`` block whose nonzero entries are the
  batch's (n-gram, neuron) counts in key order, merged into a ``SparseCounter``;
- **power sums** ``S_k = sum h**k`` (k = 1..4) of every neuron's activations ``h`` over the
  text positions (the positions of ``active_text``), in float64 (``_LayerAccumulator.moments``):
  the activation mean, variance, skew and kurtosis of ``kinds.moments`` follow from them, and
  they merge exactly by addition;
- where asked, each neuron's **top-k activations** and **histogram** (``examples.py``).

float32 sums of 0/1 values are exact below 2**24; the unigram table is folded into int64 long
before that, the other sums are per batch.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.examples import TopActivations
from tl_neuronkinds.recording.keys import SparseCounter, Table, check_key_space, ngram_ids
from tl_neuronkinds.recording.plan import Plan, check_cap, finalize, review_drop
from tl_neuronkinds.recording.profile import LayerCounts, NeuronProfile
from tl_neuronkinds.recording.settings import check_top_k, check_window

# Largest float32 buffer or [groups, cols] block built at once (128 MiB).
_BLOCK_ELEMENTS = 1 << 25
# Activations turned into 0/1 at once. On a CPU small enough to stay in cache while the
# per-position, unigram and n-gram sums read them (measured: 16 MiB chunks take 49 ms per layer
# and batch of the embedded model where one 128 MiB chunk takes 68 ms); on a GPU, large.
_CHUNK_ELEMENTS = {"cpu": 1 << 22}
_CHUNK_ELEMENTS_GPU = 1 << 27
# float32 counts are exact below 2**24: the dense unigram table is folded into int64 before.
_FOLD_POSITIONS = 1 << 23
# A dense unigram table larger than this turns sparse where fewer than 1 cell in
# _SPARSE_DENSITY is nonzero (16 bytes per sparse entry against 4 per dense cell).
_SPARSE_MIN_BYTES = 1 << 28
_SPARSE_DENSITY = 8
# Activations raised to powers at once, in two reused float64 buffers: on a CPU few enough to
# stay in cache (measured on the embedded model, 1 thread: the sums take 47 ms of CPU time per
# layer and batch of 16k tokens in 4 MiB blocks, 130 ms in 32 MiB ones), on a GPU many.
_POWER_ELEMENTS = {"cpu": 1 << 19}
_POWER_ELEMENTS_GPU = 1 << 24


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


class _LayerAccumulator:
    """Counts of one layer, on the activations' device (see the module docstring).

    ``cols`` are the neurons whose n >= 2 counts are kept (sorted), None for all.
    """

    def __init__(
        self,
        d_mlp: int,
        d_vocab: int,
        seq_len: int,
        ngram_max: int,
        bos_token_id: int,
        device: torch.device,
        cols: Int[torch.Tensor, " cols"] | None,
        examples: TopActivations | None = None,
    ) -> None:
        self.d_mlp, self.seq_len = d_mlp, seq_len
        self.examples = examples
        self.active = torch.zeros(d_mlp, dtype=torch.int64, device=device)
        self.active_text = torch.zeros(d_mlp, dtype=torch.int64, device=device)
        # int32: a count at one position is at most the number of sequences (checked below 2**31
        # by ProfileBuilder); OPT-66b's [2048, 36864] table per layer is then 302 MB, not 604.
        self.pos_active = torch.zeros(seq_len, d_mlp, dtype=torch.int32, device=device)
        # Row k - 1: the sum of h**k over the text positions (float64; SPEC.md, "Universal
        # neurons": the activation moments).
        self.moments = torch.zeros(4, d_mlp, dtype=torch.float64, device=device)
        self.unigrams = UnigramCounter(d_vocab, d_mlp, bos_token_id, device)
        self.cols = cols
        self.ngrams = {n: SparseCounter(device) for n in range(2, ngram_max + 1)}
        # With a plan: per order, the neurons still counted and the tails of those dropped.
        self.plan: Bool[torch.Tensor, " d_mlp"] | None = None
        self.complete: dict[int, Bool[torch.Tensor, " d_mlp"]] | None = None
        self.tail: dict[int, Int[torch.Tensor, " d_mlp"]] | None = None
        if cols is not None:
            self.restrict(
                torch.zeros(d_mlp, dtype=torch.bool, device=device).index_fill_(0, cols, True)
            )

    def add(
        self,
        ctx: BatchContext,
        acts: Float[torch.Tensor, "rows d_mlp"],
        threshold: float,
        buffer: Float[torch.Tensor, "chunk d_mlp"],
        powers: Float[torch.Tensor, "2 block d_mlp"],
    ) -> None:
        per_slot = torch.zeros(self.seq_len + 1, self.d_mlp, device=acts.device)
        blocks = self._ngram_blocks(ctx, acts.device)
        step = buffer.shape[0]
        for lo in range(0, acts.shape[0], step):
            chunk = acts[lo : lo + step]
            active = torch.gt(chunk, threshold, out=buffer[: chunk.shape[0]])
            per_slot.index_add_(0, ctx.position_slot[lo : lo + step], active)
            text = ctx.position_slot[lo : lo + step] < self.seq_len
            self.unigrams.add(ctx.tokens[lo : lo + step], text, active)
            self._add_powers(chunk, text, powers)
            if self.examples is not None:
                self.examples.add_histogram(chunk)
            for cols, by_order in blocks:
                planned = active if cols is None else active[:, cols]
                for n, block in by_order.items():
                    block.index_add_(0, ctx.groups[n].slot[lo : lo + step], planned)
        if self.examples is not None:
            self.examples.add_top(acts, ctx.tokens, ctx.row_seq, ctx.row_pos, self.seq_len)
        per_slot_int = per_slot.to(torch.int64)
        self.pos_active += per_slot_int[:-1].to(torch.int32)
        text_total = per_slot_int[:-1].sum(0)
        self.active_text += text_total
        self.active += text_total + per_slot_int[-1]
        for cols, by_order in blocks:
            for n, block in by_order.items():
                ids = ctx.groups[n].ids
                g, i = block[: ids.numel()].nonzero(as_tuple=True)
                neuron = i if cols is None else cols[i]
                self.ngrams[n].add(ids[g] * self.d_mlp + neuron, block[g, i].to(torch.int64))

    def _add_powers(
        self,
        chunk: Float[torch.Tensor, "rows d_mlp"],
        text: Bool[torch.Tensor, " rows"],
        powers: Float[torch.Tensor, "2 block d_mlp"],
    ) -> None:
        """Add ``h, h**2, h**3, h**4`` summed over the chunk's text rows to ``moments``, a
        block of rows at a time in the float64 buffers ``powers``: one matrix-vector product
        per power, weighted by the 0/1 text mask."""
        step = powers.shape[1]
        for lo in range(0, chunk.shape[0], step):
            block = chunk[lo : lo + step]
            weight = text[lo : lo + step].to(torch.float64)
            h = powers[0, : block.shape[0]].copy_(block)
            square = torch.mul(h, h, out=powers[1, : block.shape[0]])
            self.moments[0].addmv_(h.T, weight)
            self.moments[1].addmv_(square.T, weight)
            self.moments[2].addmv_(h.mul_(square).T, weight)
            self.moments[3].addmv_(square.mul_(square).T, weight)

    def _ngram_blocks(
        self, ctx: BatchContext, device: torch.device
    ) -> list[tuple[Int[torch.Tensor, " c"] | None, dict[int, Float[torch.Tensor, "g1 c"]]]]:
        """Per chunk of planned neurons (None: all of them at once), a zero ``[groups + 1,
        chunk]`` block per order for the batch's (n-gram, neuron) sums; chunks are sized to
        keep each block within _BLOCK_ELEMENTS."""
        if not self.ngrams:
            return []
        cols = self.cols
        width = self.d_mlp if cols is None else cols.numel()
        rows = {n: ctx.groups[n].ids.numel() + 1 for n in self.ngrams}
        step = max(1, _BLOCK_ELEMENTS // max(rows.values()))
        blocks = []
        for lo in range(0, width, step):
            if cols is None:
                part = (
                    None
                    if step >= width
                    else torch.arange(lo, min(lo + step, width), device=device)
                )
            else:
                part = cols[lo : lo + step]
            size = width if part is None else part.numel()
            blocks.append((part, {n: torch.zeros(r, size, device=device) for n, r in rows.items()}))
        return blocks

    def restrict(self, keep: Bool[torch.Tensor, " d_mlp"]) -> None:
        """From now on keep n >= 2 counts for the neurons ``keep`` marks (and drop the others',
        which were counted only so far: they are not complete)."""
        keep = keep.to(self.active.device)
        if self.complete is None or self.tail is None:
            self.plan = keep.clone()
            self.complete = {n: keep.clone() for n in self.ngrams}
            self.tail = {n: torch.zeros_like(self.active) for n in self.ngrams}
        else:
            self.plan = self.plan & keep if self.plan is not None else keep.clone()
            self.complete = {n: mask & keep for n, mask in self.complete.items()}
        for n, counter in self.ngrams.items():
            counter.restrict(self.complete[n])
        self._update_cols()

    def review(
        self,
        cap: int,
        fraction_done: float,
        carried: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        expected: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """Drop the planned neurons whose tails already prove them spread out (``plan.py``)."""
        if self.complete is None or self.tail is None:
            return
        for n, counter in self.ngrams.items():
            drop, own_tail = review_drop(
                counter.device_table(),
                self.complete[n],
                cap,
                fraction_done,
                None if carried is None else carried[n],
                None if expected is None else expected[n],
            )
            if bool(drop.any()):
                self.tail[n] = torch.where(drop, own_tail, self.tail[n])
                self.complete[n] = self.complete[n] & ~drop
                counter.restrict(self.complete[n])
        self._update_cols()

    def _update_cols(self) -> None:
        assert self.complete is not None
        counted = torch.stack(list(self.complete.values())).any(0) if self.complete else None
        if counted is not None:
            self.cols = counted.nonzero().squeeze(1)

    @property
    def nbytes(self) -> int:
        examples = 0 if self.examples is None else self.examples.nbytes
        return self.unigrams.nbytes + sum(c.nbytes for c in self.ngrams.values()) + examples

    def counts(self) -> LayerCounts:
        tables = {1: self.unigrams.table(), **{n: c.table() for n, c in self.ngrams.items()}}
        top, hist = (None, None) if self.examples is None else self.examples.tables()
        return LayerCounts(
            active=self.active.cpu(),
            active_text=self.active_text.cpu(),
            pos_active=self.pos_active.to("cpu", torch.int64),
            moments=self.moments.cpu(),
            ngrams=tables,
            complete=None
            if self.complete is None
            else {n: m.cpu() for n, m in self.complete.items()},
            tail=None if self.tail is None else {n: t.cpu() for n, t in self.tail.items()},
            plan=None if self.plan is None else self.plan.cpu(),
            top_values=None if top is None else top.values,
            top_seq=None if top is None else top.seqs,
            top_pos=None if top is None else top.poss,
            top_window_acts=None if top is None else top.window_acts,
            top_window_ids=None if top is None else top.window_ids,
            hist=hist,
        )


class ProfileBuilder:
    """Accumulates batches into the counts of a NeuronProfile.

    Args:
        layers: Layer indices to record.
        d_mlp, d_vocab: Sizes of the model.
        threshold: A neuron is active where its activation is > threshold (SPEC.md, "Terms").
        ngram_max: Largest n for the n-gram counts (1 to 3; §4, Appendix A).
        ngram_cap: The n-gram cap (SPEC.md); None keeps every neuron's n >= 2 counts.
        plan: Layer -> the neurons whose n >= 2 counts to keep (``plan.py``); None: every
            neuron's until ``restrict`` is called.
        bos_token_id: The BOS id; positions holding it are not text positions.
        top_k: Keep each neuron's ``top_k`` largest activations with their sequence and
            position (``examples.py``); 0 keeps none.
        histogram: Keep each neuron's activation histogram (``examples.py``).
        window: ``(before, after)``: keep each top activation's context, the tokens and the
            neuron's activations from ``before`` positions before it to ``after`` after
            (``examples.py``); None keeps none.
        first_row, row_stride: The sequence index, in the tokens the profile refers to, of the
            first row this builder sees, and the step between its rows (``nk.record``'s ranks
            record every ``world_size``-th row).
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
        ngram_cap: int | None = None,
        plan: Plan | None = None,
        bos_token_id: int = 2,
        top_k: int = 0,
        histogram: bool = False,
        window: tuple[int, int] | None = None,
        first_row: int = 0,
        row_stride: int = 1,
        token_strings: list[str] | None = None,
        meta: dict | None = None,
    ) -> None:
        if isinstance(ngram_max, bool) or ngram_max not in (1, 2, 3):
            raise NeuronKindsError(f"ngram_max must be 1, 2 or 3, got {ngram_max!r}")
        check_key_space(ngram_max, d_vocab, d_mlp)
        self.layers = sorted(layers)
        self.d_mlp, self.d_vocab = d_mlp, d_vocab
        self.threshold, self.ngram_max = float(threshold), ngram_max
        self.ngram_cap = check_cap(ngram_cap)
        if plan is not None:
            _check_plan(plan, self.layers, d_mlp)
        self.plan = plan
        self.bos_token_id = bos_token_id
        self.top_k, self.histogram = check_top_k(top_k), bool(histogram)
        self.window = check_window(window) if self.top_k else None
        self.first_row, self.row_stride = first_row, row_stride
        self.token_strings = token_strings or [f"<{i}>" for i in range(d_vocab)]
        self.meta = dict(meta or {})
        self.seq_len: int | None = None
        self.n_seqs = self.n_text_positions = 0
        self._layers: dict[int, _LayerAccumulator] = {}
        self._occ: dict[int, SparseCounter] = {}
        self._pos_text_seqs: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None
        self._powers: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the unigram and n-gram tables."""
        return sum(acc.nbytes for acc in self._layers.values())

    def context(self, tokens: Int[torch.Tensor, "batch pos"]) -> BatchContext:
        """Check a batch of tokens and prepare what its layers share."""
        if self.seq_len is None:
            self._start(tokens.shape[1], tokens.device)
        elif tokens.shape[1] != self.seq_len:
            raise NeuronKindsError(
                f"all sequences of a profile must have one length: got {tokens.shape[1]}, "
                f"earlier {self.seq_len}"
            )
        first = self.first_row + self.n_seqs * self.row_stride
        seqs = first + self.row_stride * torch.arange(tokens.shape[0], device=tokens.device)
        return BatchContext(
            tokens,
            bos_token_id=self.bos_token_id,
            ngram_max=self.ngram_max,
            d_vocab=self.d_vocab,
            seqs=seqs,
        )

    def _start(self, seq_len: int, device: torch.device) -> None:
        self.seq_len = seq_len
        for layer in self.layers:
            cols = None if self.plan is None else self.plan[layer].to(device).nonzero().squeeze(1)
            examples = (
                TopActivations(
                    self.d_mlp, self.top_k, self.histogram, self.threshold, device, self.window
                )
                if self.top_k or self.histogram
                else None
            )
            self._layers[layer] = _LayerAccumulator(
                self.d_mlp,
                self.d_vocab,
                seq_len,
                self.ngram_max,
                self.bos_token_id,
                device,
                cols,
                examples,
            )
        self._occ = {n: SparseCounter(device) for n in range(1, self.ngram_max + 1)}
        self._pos_text_seqs = torch.zeros(seq_len, dtype=torch.int64, device=device)

    def add_layer(
        self, ctx: BatchContext, layer: int, acts: Float[torch.Tensor, "batch pos d_mlp"]
    ) -> None:
        """Count one layer's activations for the batch of ``ctx``."""
        flat = acts.reshape(-1, self.d_mlp)
        chunk = _CHUNK_ELEMENTS.get(flat.device.type, _CHUNK_ELEMENTS_GPU)
        step = min(flat.shape[0], max(1, chunk // self.d_mlp))
        buffer = self._buffer
        if buffer is None or buffer.shape[0] < step or buffer.device != flat.device:
            buffer = self._buffer = torch.empty(step, self.d_mlp, device=flat.device)
        powers = self._powers
        if powers is None or powers.device != flat.device:
            block = _POWER_ELEMENTS.get(flat.device.type, _POWER_ELEMENTS_GPU) // self.d_mlp
            powers = self._powers = flat.new_empty(
                2, max(1, block), self.d_mlp, dtype=torch.float64
            )
        self._layers[layer].add(ctx, flat, self.threshold, buffer[:step], powers)

    def add_tokens(self, ctx: BatchContext) -> None:
        """Count the batch's sequences, text positions and n-gram occurrences (once per batch)."""
        assert self._pos_text_seqs is not None
        if self.n_seqs + ctx.text.shape[0] >= 2**31:
            raise NeuronKindsError(
                "a recording holds at most 2**31 - 1 sequences; record in parts and merge them"
            )
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

    def restrict(self, plan: Plan) -> None:
        """Fix the plan: from now on keep n >= 2 counts only for the neurons it names."""
        _check_plan(plan, self.layers, self.d_mlp)
        self.plan = {layer: plan[layer].cpu() for layer in self.layers}
        for layer, acc in self._layers.items():
            acc.restrict(self.plan[layer])

    def review(
        self,
        fraction_done: float,
        carried: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
        expected: dict[int, dict[int, torch.Tensor]] | None = None,
    ) -> None:
        """Drop planned neurons whose tails prove them spread out (``plan.review_drop``).

        ``fraction_done`` is how far into its pass the recording is; ``carried`` (layer -> n ->
        (tail bounds, activations)) what earlier checkpoint intervals of the pass counted;
        ``expected`` (layer -> n -> activations) the projected activations of the whole pass.
        """
        if self.ngram_cap is None:
            return
        for layer, acc in self._layers.items():
            acc.review(
                self.ngram_cap,
                fraction_done,
                None if carried is None else carried[layer],
                None if expected is None else expected[layer],
            )

    def profile(self) -> NeuronProfile:
        """The counts so far, as a NeuronProfile (CPU tensors)."""
        if self.seq_len is None or self._pos_text_seqs is None:
            raise NeuronKindsError("nothing was recorded: run at least one batch first")
        return NeuronProfile(
            layers=list(self.layers),
            d_mlp=self.d_mlp,
            d_vocab=self.d_vocab,
            seq_len=self.seq_len,
            ngram_max=self.ngram_max,
            ngram_cap=self.ngram_cap,
            top_k=self.top_k,
            window=self.window,
            threshold=self.threshold,
            bos_token_id=self.bos_token_id,
            n_seqs=self.n_seqs,
            n_positions=self.n_seqs * self.seq_len,
            n_text_positions=self.n_text_positions,
            occurrences={n: c.table() for n, c in self._occ.items()},
            pos_text_seqs=self._pos_text_seqs.cpu(),
            counts={layer: acc.counts() for layer, acc in self._layers.items()},
            token_strings=list(self.token_strings),
            meta=dict(self.meta),
        )


def _check_plan(plan: Plan, layers: list[int], d_mlp: int) -> None:
    for layer in layers:
        mask = plan.get(layer)
        if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != (d_mlp,):
            raise NeuronKindsError(
                f"the n-gram plan must give a bool mask of shape ({d_mlp},) for every recorded "
                f"layer; layer {layer} has {None if mask is None else (mask.dtype, tuple(mask.shape))}"
            )


def profile_from_activations(
    tokens: Int[torch.Tensor, "batch pos"],
    acts: dict[int, Float[torch.Tensor, "batch pos d_mlp"]],
    *,
    d_vocab: int,
    threshold: float = 0.0,
    ngram_max: int = 3,
    ngram_cap: int | None = None,
    plan: Plan | None = None,
    bos_token_id: int = 2,
    top_k: int = 0,
    histogram: bool = False,
    window: tuple[int, int] | None = None,
    token_strings: list[str] | None = None,
    meta: dict | None = None,
) -> NeuronProfile:
    """A NeuronProfile straight from activations a user already holds (no model needed).

    With ``ngram_cap`` and no ``plan``, every neuron is counted and then those whose exact
    ``k95_n`` exceeds the cap are dropped with their tails (``plan.finalize``): the result is
    what an exact capped recording keeps.
    """
    layers = sorted(acts)
    if not layers:
        raise NeuronKindsError("no activations given")
    builder = ProfileBuilder(
        layers,
        d_mlp=acts[layers[0]].shape[-1],
        d_vocab=d_vocab,
        threshold=threshold,
        ngram_max=ngram_max,
        ngram_cap=ngram_cap,
        plan=plan,
        bos_token_id=bos_token_id,
        top_k=top_k,
        histogram=histogram,
        window=window,
        token_strings=token_strings,
        meta=meta,
    )
    builder.add_batch(tokens, acts)
    profile = builder.profile()
    if ngram_cap is not None and plan is None:
        finalize(profile)
    return profile
