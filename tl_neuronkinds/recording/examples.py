"""What fires a neuron, kept while recording: its top-k activations and an activation histogram.

Both are bounded (``layers × d_mlp × k`` and ``layers × d_mlp × HIST_BINS``), merge exactly and
need no second pass over the tokens (issue 8, §2):

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
"""

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import stop_at

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


# ------------------------------------------------------------------------------- reading them
def top_activations(profile: Any, layer: int, neuron: int | None = None) -> pd.DataFrame:
    """The top activations a profile kept, one row per (neuron, rank).

    Columns: ``layer``, ``neuron``, ``rank`` (0 = largest), ``value``, ``seq`` (row of the tokens
    the profile refers to), ``pos``. A neuron active fewer than ``top_k`` times has fewer rows.

    Raises:
        NeuronKindsError: The profile kept none (recorded with ``top_k=0`` or before format 3),
            or ``layer`` / ``neuron`` is not in it.
    """
    counts = _layer_counts(profile, layer, neuron)
    if counts.top_values is None or counts.top_seq is None or counts.top_pos is None:
        raise NeuronKindsError(
            "this profile kept no top activations: record it with top_k > 0 (nk.record's "
            "default is 16)"
        )
    neurons = torch.arange(profile.d_mlp) if neuron is None else torch.tensor([neuron])
    seqs = counts.top_seq[neurons]
    filled = seqs != EMPTY
    which, rank = filled.nonzero(as_tuple=True)
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": neurons[which].numpy(),
            "rank": rank.numpy(),
            "value": counts.top_values[neurons][filled].numpy(),
            "seq": seqs[filled].numpy(),
            "pos": counts.top_pos[neurons][filled].numpy(),
        }
    )


def activation_histogram(profile: Any, layer: int, neuron: int | None = None) -> pd.DataFrame:
    """A neuron's (or every neuron's) active values by histogram bin, one row per bin.

    Columns: ``layer``, ``neuron``, ``bin``, ``lo``, ``hi`` (the bin is ``[lo, hi)``; the first
    bin's ``lo`` is the threshold, the last bin's ``hi`` infinite), ``count``. The counts of a
    neuron sum to its active positions (§3).

    Raises:
        NeuronKindsError: The profile kept no histogram (record with ``histogram=True``), or
            ``layer`` / ``neuron`` is not in it.
    """
    counts = _layer_counts(profile, layer, neuron)
    if counts.hist is None:
        raise NeuronKindsError(
            "this profile kept no activation histogram: record it with histogram=True"
        )
    edges = HIST_EDGES.tolist()
    lo = [float(profile.threshold), *edges]
    hi = [*edges, float("inf")]
    neurons = range(profile.d_mlp) if neuron is None else [neuron]
    hist = counts.hist.numpy()
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": np.repeat(np.asarray(neurons), HIST_BINS),
            "bin": np.tile(np.arange(HIST_BINS), len(neurons)),
            "lo": np.tile(lo, len(neurons)),
            "hi": np.tile(hi, len(neurons)),
            "count": hist[list(neurons)].reshape(-1),
        }
    )


CONTEXT_COLUMNS = ["rank", "value", "seq", "pos", "token_ids", "tokens", "activations", "center"]
#: Rows per forward when computing contexts.
CONTEXT_BATCH = 32


def max_activating_contexts(
    model: Any,
    profile: Any,
    tokens: Int[torch.Tensor, "n_seq pos"] | None,
    layer: int,
    neuron: int,
    k: int | None = None,
    before: int = 12,
    after: int = 4,
) -> pd.DataFrame:
    """The contexts of a neuron's top activations, with its activation at every token of each.

    The positions come from the profile (no pass over the corpus). Where the profile kept
    context windows at least ``before`` / ``after`` wide (``record(..., window=...)``), the
    contexts come from it alone: ``tokens`` are then optional and, given, checked against
    it. Otherwise the activations come from one forward over just the rows of the contexts, up
    to ``layer``, which also checks that ``tokens`` are those the profile was recorded on. For
    many neurons at once, ``contexts_of``.

    Args:
        model: The profile's model (checked against it; may be None where the profile's windows
            suffice).
        profile: A profile recorded with ``top_k > 0``.
        tokens: The tokens the profile was recorded on (for a merged profile: the parts'
            tokens concatenated in the order merged), or None where its windows suffice.
        layer, neuron: The neuron.
        k: How many contexts (default: all kept).
        before, after: Tokens shown before and after the activating one.

    Returns:
        One row per context: ``rank``, ``value``, ``seq``, ``pos``, ``token_ids`` and ``tokens``
        (the window), ``activations`` (the neuron's activation at each token of the window) and
        ``center`` (the index of ``pos`` in the window).

    Raises:
        NeuronKindsError: No top activations kept, ``tokens`` of another shape or content than
            the profile's (or none where they are needed), a layer or neuron not in the
            profile, or the model not the profile's.
    """
    return contexts_of(model, profile, tokens, [(layer, neuron)], k, before, after)[(layer, neuron)]


def windows_cover(profile: Any, before: int, after: int) -> bool:
    """Whether the profile's context windows hold ``before`` / ``after`` tokens around each top
    activation (so that contexts need neither a forward nor the tokens)."""
    window = getattr(profile, "window", None)
    return profile.top_k > 0 and window is not None and before <= window[0] and after <= window[1]


def contexts_of(
    model: Any,
    profile: Any,
    tokens: Int[torch.Tensor, "n_seq pos"] | None,
    neurons: list[tuple[int, int]],
    k: int | None = None,
    before: int = 12,
    after: int = 4,
) -> dict[tuple[int, int], pd.DataFrame]:
    """``max_activating_contexts`` of several neurons: ``{(layer, neuron): contexts}``.

    From the profile's windows where they are wide enough; otherwise from one pass over the
    rows the contexts need: each row forwarded once, only as far as its last context reaches
    (``pos + after``: the model is causal, so the activations before are those of the whole
    row) and only up to the highest layer asked for.
    """
    from tl_neuronkinds.loading.identity import check_same_model

    for name, value in (("before", before), ("after", after)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise NeuronKindsError(f"{name} must be an integer >= 0, got {value!r}")
    if model is not None:
        check_same_model(model, profile)
    if tokens is not None and tuple(tokens.shape) != (profile.n_seqs, profile.seq_len):
        raise NeuronKindsError(
            f"tokens of shape {tuple(tokens.shape)} are not those the profile was recorded on "
            f"({profile.n_seqs} x {profile.seq_len})"
        )
    tops = {}
    for layer, neuron in neurons:
        top = top_activations(profile, layer, neuron)
        tops[(layer, neuron)] = top if k is None else top[top["rank"] < k]
    window = profile.window
    if windows_cover(profile, before, after):
        contexts = {
            key: _window_contexts(profile, top, key, before, after) for key, top in tops.items()
        }
        if tokens is not None:
            _check_windows(tokens, contexts)
        return contexts
    if tokens is None:
        kept = "no context windows" if window is None else f"windows of {window[0]} + {window[1]}"
        raise NeuronKindsError(
            f"this profile kept {kept} around its top activations, fewer than the "
            f"{before} + {after} asked: pass the tokens it was recorded on"
        )
    if model is None:
        raise NeuronKindsError("these contexts need a forward: pass the profile's model")
    entries = pd.concat([t for t in tops.values() if not t.empty] or [pd.DataFrame()])
    acts = {} if entries.empty else _activations(model, tokens, entries, after)
    return {
        key: _contexts(profile, tokens, top, acts, key, before, after) for key, top in tops.items()
    }


def _record(profile: Any, entry: Any, ids: list[int], acts: list[float], center: int) -> dict:
    return {
        "rank": entry.rank,
        "value": float(entry.value),
        "seq": int(entry.seq),
        "pos": int(entry.pos),
        "token_ids": ids,
        "tokens": [profile.token_strings[i] for i in ids],
        "activations": acts,
        "center": center,
    }


def _window_contexts(
    profile: Any, top: pd.DataFrame, key: tuple[int, int], before: int, after: int
) -> pd.DataFrame:
    """One neuron's contexts from the windows its profile kept (trimmed to before / after)."""
    layer, neuron = key
    counts = profile.counts[layer]
    first = profile.window[0] - before
    records = []
    for entry in top.itertuples(index=False):
        ids = counts.top_window_ids[neuron, entry.rank, first : first + before + 1 + after]
        acts = counts.top_window_acts[neuron, entry.rank, first : first + before + 1 + after]
        inside = ids != EMPTY
        start = int(inside.int().argmax())
        records.append(
            _record(profile, entry, ids[inside].tolist(), acts[inside].tolist(), before - start)
        )
    return pd.DataFrame.from_records(records, columns=CONTEXT_COLUMNS)


def _check_windows(
    tokens: Int[torch.Tensor, "n_seq pos"], contexts: dict[tuple[int, int], pd.DataFrame]
) -> None:
    """The tokens must hold each window's tokens where the profile says they were."""
    for key, table in contexts.items():
        for c in table.itertuples(index=False):
            lo = c.pos - c.center
            if tokens[c.seq, lo : lo + len(c.token_ids)].tolist() != c.token_ids:
                raise NeuronKindsError(
                    f"row {c.seq} of these tokens differs from the context neuron {key} was "
                    f"recorded in at position {c.pos}: these are not the tokens the profile "
                    "was recorded on"
                )


def _contexts(
    profile: Any,
    tokens: Int[torch.Tensor, "n_seq pos"],
    top: pd.DataFrame,
    acts: dict[tuple[int, int], dict[int, np.ndarray]],
    key: tuple[int, int],
    before: int,
    after: int,
) -> pd.DataFrame:
    """One neuron's contexts from its top entries and the activations of its rows."""
    records = []
    for entry in top.itertuples(index=False):
        row = acts[key][entry.seq]
        seen = float(row[entry.pos])
        if not np.isclose(seen, entry.value, rtol=1e-3, atol=1e-4):
            raise NeuronKindsError(
                f"neuron {key} is {seen:.6g} at row {entry.seq}, position {entry.pos} of these "
                f"tokens, but the profile recorded {entry.value:.6g} there: these are not the "
                "tokens (or the model) the profile was recorded on"
            )
        lo, hi = max(0, entry.pos - before), min(profile.seq_len, entry.pos + after + 1)
        ids = tokens[entry.seq, lo:hi].tolist()
        records.append(_record(profile, entry, ids, row[lo:hi].tolist(), entry.pos - lo))
    return pd.DataFrame.from_records(records, columns=CONTEXT_COLUMNS)


def _activations(
    model: Any, tokens: Int[torch.Tensor, "n_seq pos"], entries: pd.DataFrame, after: int
) -> dict[tuple[int, int], dict[int, np.ndarray]]:
    """Each entry's neuron's activations (``blocks.{layer}.mlp.hook_post[..., neuron]``) over its
    row, up to the furthest position that row needs (``pos + after``):
    ``{(layer, neuron): {seq: activations}}``.

    Rows go longest first in batches of ``CONTEXT_BATCH``, each batch cut to its longest row,
    and the forward stops after the highest layer asked for.
    """
    seq_len = tokens.shape[1]
    reach = (entries.groupby("seq")["pos"].max() + after + 1).clip(upper=seq_len)
    order = reach.sort_values(ascending=False, kind="stable")
    needs = entries.groupby("seq")[["layer", "neuron"]].apply(
        lambda g: sorted(set(zip(g["layer"].tolist(), g["neuron"].tolist(), strict=True)))
    )
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in sorted({key for keys in needs for key in keys}):
        by_layer.setdefault(layer, []).append(neuron)
    column = {(layer, n): j for layer, ns in by_layer.items() for j, n in enumerate(ns)}
    out: dict[tuple[int, int], dict[int, np.ndarray]] = {key: {} for key in column}
    kept: dict[int, np.ndarray] = {}

    def keeper(layer: int) -> Any:
        wanted = torch.tensor(by_layer[layer])

        def keep(acts: torch.Tensor, hook: Any) -> None:
            kept[layer] = acts[..., wanted.to(acts.device)].detach().float().cpu().numpy()

        return keep

    hooks = [(f"blocks.{layer}.mlp.hook_post", keeper(layer)) for layer in by_layer]
    device = next(model.parameters()).device
    for first in range(0, len(order), CONTEXT_BATCH):
        part = order.iloc[first : first + CONTEXT_BATCH]
        seqs, length = [int(s) for s in part.index], int(part.iloc[0])
        with torch.no_grad(), stop_at(model, max(by_layer) + 1):
            model.run_with_hooks(
                tokens[seqs, :length].to(device),
                fwd_hooks=hooks,
                stop_at_layer=max(by_layer) + 1,
            )
        for i, seq in enumerate(seqs):
            for key in needs[seq]:
                out[key][seq] = kept[key[0]][i, : int(reach[seq]), column[key]]
    return out


def _layer_counts(profile: Any, layer: int, neuron: int | None) -> Any:
    if layer not in profile.counts:
        raise NeuronKindsError(f"layer {layer} is not in the profile (layers {profile.layers})")
    if neuron is not None and not 0 <= neuron < profile.d_mlp:
        raise NeuronKindsError(f"neuron {neuron} is out of range 0..{profile.d_mlp - 1}")
    return profile.counts[layer]
