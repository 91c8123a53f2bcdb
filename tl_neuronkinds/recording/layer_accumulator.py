"""The counts of one recorded layer, accumulated batch by batch on the activations' device.

Per batch, in chunks of rows (so no buffer exceeds ``_BLOCK_ELEMENTS``):

- **activity** as float32 0/1 in a reused buffer (``torch.gt(acts, threshold, out=...)``, one
  pass over the activations);
- **per-position counts**: one ``index_add_`` by position, where every non-text position (BOS
  and separators sharing its id) goes to an extra row ``seq_len``; so the text positions' rows
  are ``pos_active``, their sum is ``active_text`` and the sum of all rows is ``active``
  (Voita et al. 2024 §3, §5);
- **unigram counts** for every neuron (``unigrams.UnigramCounter``);
- **n-gram counts** (n >= 2) for the planned neurons only (all neurons where no plan is given):
  the active indicators of each n-gram group of the batch (``batch_context.py``) summed into a
  ``[groups, cols]`` block whose nonzero entries are the batch's (n-gram, neuron) counts in key
  order, merged into a ``SparseCounter``; a review (``plan.review_drop``) drops planned neurons
  whose tails prove them spread out;
- **power sums** ``S_k = sum h**k`` (k = 1..4) of every neuron's activations ``h`` over the
  text positions (the positions of ``active_text``), in float64: the activation mean, variance,
  skew and kurtosis of ``kinds.moments`` follow from them, and they merge exactly by addition;
- where asked, each neuron's **top-k activations** and **histogram** (``top_k.py``).

Glossary: ``rows`` a batch's flattened positions, ``d_mlp`` neurons, ``cols`` the planned
neurons of the layer, ``g1`` a batch's distinct n-grams plus one row for the rest.
"""

import torch
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.recording.batch_context import BatchContext
from tl_neuronkinds.recording.keys import SparseCounter
from tl_neuronkinds.recording.plan import review_drop
from tl_neuronkinds.recording.profile import LayerCounts
from tl_neuronkinds.recording.top_k import TopActivations
from tl_neuronkinds.recording.unigrams import UnigramCounter

# Largest [groups, cols] block built at once (128 MiB of float32).
_BLOCK_ELEMENTS = 1 << 25


class LayerAccumulator:
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
        # Row k - 1: the sum of h**k over the text positions (float64; docs/kinds.md,
        # "Universal neurons": the activation moments).
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
