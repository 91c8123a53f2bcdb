"""What fires a neuron, kept while recording: the streaming top-k activations and histogram.

Both are bounded (``layers × d_mlp × k`` and ``layers × d_mlp × HIST_BINS``), merge exactly and
need no second pass over the tokens:

- **Top-k activations.** Per neuron the ``k`` largest activations above the threshold, each with
  its sequence and position, ordered by value (descending), then sequence, then position: so
  ties resolve the same way however the tokens were batched, split or merged. ``seq`` indexes
  the rows of the tokens the profile refers to (for ``nk.record``: the ``tokens`` it was given;
  for a ``NeuronRecorder``: its forwards' rows in the order they ran; for a merge: see
  ``NeuronProfile.merge``).
- **Context windows.** Where asked (``window=(before, after)``), each kept activation carries
  its context: the tokens at positions ``pos - before .. pos + after`` of its row and the
  neuron's activation at each (``-1`` and NaN outside the row), gathered from the forward that
  produced it. Contexts then need no second forward, and not even the tokens.
- **Histogram.** Per neuron, its active values counted in fixed bins: bin 0 holds the values
  below ``2**HIST_LOW``, bin ``b`` (1 <= b < HIST_BINS - 1) the values in
  ``[2**(HIST_LOW + (b-1)/HIST_PER_OCTAVE), 2**(HIST_LOW + b/HIST_PER_OCTAVE))`` and the last
  bin those at or above ``2**HIST_HIGH``. Fixed edges make the merge a sum; the bins sum to the
  neuron's active count.

While recording, a position can only enter a neuron's top-k if its value is above the k-th
value kept so far (rows arrive in increasing ``seq``, so an equal value later loses the tie):
after the first batches that filter passes a handful of positions per neuron.

Reading them back: ``queries.py`` (tables of the kept values), ``contexts.py`` (the tokens
around them).
"""

from typing import NamedTuple

import torch
from jaxtyping import Float, Int

#: Histogram edges: 2**HIST_LOW to 2**HIST_HIGH, HIST_PER_OCTAVE bins per doubling.
HIST_LOW, HIST_HIGH, HIST_PER_OCTAVE = -8, 8, 4
HIST_EDGES = 2.0 ** (
    torch.arange((HIST_HIGH - HIST_LOW) * HIST_PER_OCTAVE + 1, dtype=torch.float64)
    / HIST_PER_OCTAVE
    + HIST_LOW
)
HIST_BINS = HIST_EDGES.numel() + 1
#: ``seq`` / ``pos`` of an empty top-k slot (a neuron active fewer than k times).
EMPTY = -1
#: Activations looked at per top-k update. Measured over 250k tokens of the embedded model
#: (BENCHMARKS.md): 2**19 5.9 s, 2**22 4.9 s, 2**24 9.7 s, 2**26 12.1 s. Small blocks pay
#: per-update overhead; large ones touch more neurons and copy a bigger ``[rows, touched]``.
TOP_BLOCK_ELEMENTS = 1 << 22


def histogram_bins(values: Float[torch.Tensor, " n"]) -> Int[torch.Tensor, " n"]:
    """The histogram bin of each value (see the module docstring)."""
    edges = HIST_EDGES.to(values.device, torch.float32)
    return torch.bucketize(values.float(), edges, right=True)


class TopTable(NamedTuple):
    """Each neuron's kept top activations, ``[d_mlp, k]`` padded with ``-inf`` / ``EMPTY``, and
    where kept their context windows ``[d_mlp, k, before + 1 + after]`` (NaN / ``EMPTY``)."""

    values: Float[torch.Tensor, "d_mlp k"]
    seqs: Int[torch.Tensor, "d_mlp k"]
    poss: Int[torch.Tensor, "d_mlp k"]
    window_acts: Float[torch.Tensor, "d_mlp k w"] | None = None
    window_ids: Int[torch.Tensor, "d_mlp k w"] | None = None

    def filled(self) -> list[torch.Tensor]:
        """The kept entries as flat columns: neuron, value, seq, pos and, where kept, the
        window activations and ids (``from_columns`` takes them back)."""
        filled = self.seqs != EMPTY
        columns = [filled.nonzero()[:, 0], self.values[filled], self.seqs[filled]]
        columns.append(self.poss[filled])
        if self.window_acts is not None and self.window_ids is not None:
            columns += [self.window_acts[filled], self.window_ids[filled]]
        return columns

    @staticmethod
    def from_columns(columns: list[torch.Tensor], d_mlp: int, k: int) -> "TopTable":
        """The top ``k`` per neuron of entries given as ``filled``'s columns."""
        acts, ids = (columns[4], columns[5]) if len(columns) == 6 else (None, None)
        return top_entries(columns[0], columns[1], columns[2], columns[3], d_mlp, k, acts, ids)

    def at(self, index: Int[torch.Tensor, " m"]) -> "TopTable":
        """The tables of neurons ``index`` (copies)."""
        acts, ids = self.window_acts, self.window_ids
        return TopTable(
            self.values[index],
            self.seqs[index],
            self.poss[index],
            None if acts is None else acts[index],
            None if ids is None else ids[index],
        )

    def put(self, index: Int[torch.Tensor, " m"], rows: "TopTable") -> None:
        """Write ``rows`` (from ``at(index)``, re-ranked) back into rows ``index``, in place."""
        self.values[index], self.seqs[index], self.poss[index] = rows.values, rows.seqs, rows.poss
        if self.window_acts is not None and rows.window_acts is not None:
            self.window_acts[index] = rows.window_acts
        if self.window_ids is not None and rows.window_ids is not None:
            self.window_ids[index] = rows.window_ids

    def cpu(self) -> "TopTable":
        acts, ids = self.window_acts, self.window_ids
        return TopTable(
            self.values.cpu(),
            self.seqs.cpu(),
            self.poss.cpu(),
            None if acts is None else acts.cpu(),
            None if ids is None else ids.cpu(),
        )


def top_entries(
    neuron: Int[torch.Tensor, " m"],
    value: Float[torch.Tensor, " m"],
    seq: Int[torch.Tensor, " m"],
    pos: Int[torch.Tensor, " m"],
    d_mlp: int,
    k: int,
    window_acts: Float[torch.Tensor, "m w"] | None = None,
    window_ids: Int[torch.Tensor, "m w"] | None = None,
) -> TopTable:
    """Each neuron's first ``k`` entries by (value descending, seq, pos), with their windows
    where given."""
    device = value.device
    values = torch.full((d_mlp, k), float("-inf"), device=device)
    seqs = torch.full((d_mlp, k), EMPTY, dtype=torch.int64, device=device)
    poss = torch.full((d_mlp, k), EMPTY, dtype=torch.int64, device=device)
    acts_w = ids_w = None
    if window_acts is not None and window_ids is not None:
        width = window_acts.shape[1]
        acts_w = torch.full((d_mlp, k, width), float("nan"), device=device)
        ids_w = torch.full((d_mlp, k, width), EMPTY, dtype=torch.int64, device=device)
    if neuron.numel() == 0:
        return TopTable(values, seqs, poss, acts_w, ids_w)
    # Three stable sorts, least significant key first: (seq, pos), then value, then neuron.
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(seq[order], stable=True)]
    order = order[torch.argsort(value[order], descending=True, stable=True)]
    order = order[torch.argsort(neuron[order], stable=True)]
    neuron = neuron[order]
    per_neuron = torch.bincount(neuron, minlength=d_mlp)
    starts = torch.cumsum(per_neuron, 0) - per_neuron
    rank = torch.arange(neuron.numel(), device=device) - starts[neuron]
    keep = rank < k
    chosen = order[keep]
    slot = (neuron[keep], rank[keep])
    values[slot], seqs[slot], poss[slot] = value[chosen], seq[chosen], pos[chosen]
    if acts_w is not None and ids_w is not None:
        assert window_acts is not None and window_ids is not None
        acts_w[slot], ids_w[slot] = window_acts[chosen], window_ids[chosen]
    return TopTable(values, seqs, poss, acts_w, ids_w)


def merge_top(parts: list[TopTable], k: int) -> TopTable:
    """The top-``k`` of several tables of one layer, exactly (windows kept where every part
    has them)."""
    d_mlp = parts[0].values.shape[0]
    flat = [part.filled() for part in parts]
    width = min(len(f) for f in flat)
    return TopTable.from_columns([torch.cat([f[i] for f in flat]) for i in range(width)], d_mlp, k)


def window_of(
    rows: Float[torch.Tensor, "rows d_mlp"],
    tokens: Int[torch.Tensor, " rows"],
    row: Int[torch.Tensor, " m"],
    neuron: Int[torch.Tensor, " m"],
    pos: Int[torch.Tensor, " m"],
    seq_len: int,
    window: tuple[int, int],
) -> tuple[Float[torch.Tensor, "m w"], Int[torch.Tensor, "m w"]]:
    """The context windows of entries at flat ``row`` (of ``rows``, whole sequences of
    ``seq_len`` laid end to end) of ``neuron``: the neuron's activations and the tokens at
    ``pos - before .. pos + after``, NaN / ``EMPTY`` outside the sequence."""
    before, after = window
    shift = torch.arange(-before, after + 1, device=rows.device)
    inside = (pos[:, None] + shift >= 0) & (pos[:, None] + shift < seq_len)
    at = torch.where(inside, row[:, None] + shift, row[:, None])
    acts = rows[at, neuron[:, None].expand_as(at)].float()
    acts = torch.where(inside, acts, torch.full_like(acts, float("nan")))
    ids = torch.where(inside, tokens[at].to(torch.int64), EMPTY)
    return acts, ids


class TopActivations:
    """Streaming top-k activations (with, where asked, their context windows) and histogram of
    every neuron of one layer, on the device (see the module docstring)."""

    def __init__(
        self,
        d_mlp: int,
        k: int,
        histogram: bool,
        threshold: float,
        device: torch.device,
        window: tuple[int, int] | None = None,
    ) -> None:
        self.d_mlp, self.k, self.threshold = d_mlp, k, threshold
        self.window = window if k else None
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        columns = [empty, empty.float(), empty, empty]
        if self.window is not None:
            width = sum(self.window) + 1
            columns += [torch.zeros(0, width, device=device), empty.view(0, 1).repeat(1, width)]
        self.top = TopTable.from_columns(columns, d_mlp, k)
        self.hist = (
            torch.zeros(d_mlp * HIST_BINS, dtype=torch.int64, device=device) if histogram else None
        )
        # A position enters a neuron's top-k only above this: the k-th value kept, or the
        # threshold while fewer than k are kept.
        self._floor = torch.full((d_mlp,), float(threshold), device=device)

    def add_histogram(self, acts: Float[torch.Tensor, "rows d_mlp"]) -> None:
        """Count a chunk of rows' active values into the histogram (where kept)."""
        if self.hist is None:
            return
        row, neuron = (acts > self.threshold).nonzero(as_tuple=True)
        self.hist += torch.bincount(
            neuron * HIST_BINS + histogram_bins(acts[row, neuron]), minlength=self.hist.numel()
        )

    def add_top(
        self,
        rows: Float[torch.Tensor, "rows d_mlp"],
        tokens: Int[torch.Tensor, " rows"],
        seq: Int[torch.Tensor, " rows"],
        pos: Int[torch.Tensor, " rows"],
        seq_len: int,
    ) -> None:
        """Take a batch's rows (whole sequences of ``seq_len`` laid end to end, their ``seq``
        not below any seen before) into the top-k, ``TOP_BLOCK_ELEMENTS`` at a time."""
        if self.k == 0:
            return
        step = max(seq_len, TOP_BLOCK_ELEMENTS // self.d_mlp // seq_len * seq_len)
        for lo in range(0, rows.shape[0], step):
            self._add_block(rows, tokens, seq, pos, seq_len, lo, min(lo + step, rows.shape[0]))

    def _add_block(
        self,
        rows: Float[torch.Tensor, "rows d_mlp"],
        tokens: Int[torch.Tensor, " rows"],
        seq: Int[torch.Tensor, " rows"],
        pos: Int[torch.Tensor, " rows"],
        seq_len: int,
        lo: int,
        hi: int,
    ) -> None:
        acts = rows[lo:hi]
        # One pass finds the neurons whose column can enter; only those are looked at closer.
        touched = (acts.amax(0) > self._floor).nonzero().squeeze(1)
        if touched.numel() == 0:
            return
        sub = acts[:, touched]
        above = sub > self._floor[touched]
        if int(above.sum()) > 4 * self.k * touched.numel():
            # Early on (low floors) many positions pass: within the block, a neuron's entrants
            # are among its k largest (ties included), which bounds what is ranked below.
            kth = torch.topk(sub, min(self.k, sub.shape[0]), dim=0).values[-1]
            above &= sub >= kth
        row, col = above.nonzero(as_tuple=True)
        neuron = touched[col]
        # Only the neurons with entrants change: their kept entries and the entrants are
        # ranked together, numbered 0..len(affected)-1, and written back.
        affected, local = torch.unique(neuron, return_inverse=True)
        at = lo + row
        new = [local, sub[row, col].float(), seq[at], pos[at]]
        if self.window is not None:
            new += window_of(rows, tokens, at, neuron, pos[at], seq_len, self.window)
        columns = [
            torch.cat(pair) for pair in zip(self.top.at(affected).filled(), new, strict=True)
        ]
        after = TopTable.from_columns(columns, affected.numel(), self.k)
        self.top.put(affected, after)
        full = after.seqs[:, -1] != EMPTY
        self._floor[affected] = torch.where(full, after.values[:, -1], self._floor[affected])

    def tables(self) -> tuple[TopTable | None, torch.Tensor | None]:
        """(the top-k table, the histogram ``[d_mlp, HIST_BINS]``) on the CPU; None for what is
        not kept."""
        hist = None if self.hist is None else self.hist.view(self.d_mlp, HIST_BINS).cpu()
        return (self.top.cpu() if self.k else None), hist

    @property
    def nbytes(self) -> int:
        hist = 0 if self.hist is None else self.hist.numel() * 8
        windows = 0 if self.top.window_acts is None else self.top.window_acts.numel() * 12
        return self.top.values.numel() * 20 + windows + hist
