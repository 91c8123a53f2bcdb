"""What fires a neuron, kept while recording: its top-k activations and an activation histogram.

Both are bounded (``layers × d_mlp × k`` and ``layers × d_mlp × HIST_BINS``), merge exactly and
need no second pass over the tokens (issue 8, §2):

- **Top-k activations.** Per neuron the ``k`` largest activations above the threshold, each with
  its sequence and position, ordered by value (descending), then sequence, then position: so
  ties resolve the same way however the tokens were batched, split or merged. ``seq`` indexes
  the rows of the tokens the profile refers to (for ``nk.record``: the ``tokens`` it was given;
  for a ``NeuronRecorder``: its forwards' rows in the order they ran; for a merge: see
  ``NeuronProfile.merge``).
- **Histogram.** Per neuron, its active values counted in fixed bins: bin 0 holds the values
  below ``2**HIST_LOW``, bin ``b`` (1 <= b < HIST_BINS - 1) the values in
  ``[2**(HIST_LOW + (b-1)/HIST_PER_OCTAVE), 2**(HIST_LOW + b/HIST_PER_OCTAVE))`` and the last
  bin those at or above ``2**HIST_HIGH``. Fixed edges make the merge a sum; the bins sum to the
  neuron's active count.

While recording, a position can only enter a neuron's top-k if its value is above the k-th
value kept so far (rows arrive in increasing ``seq``, so an equal value later loses the tie):
after the first batches that filter passes a handful of positions per neuron.
"""

from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_neuronkinds.errors import NeuronKindsError

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


def histogram_bins(values: Float[torch.Tensor, " n"]) -> Int[torch.Tensor, " n"]:
    """The histogram bin of each value (see the module docstring)."""
    edges = HIST_EDGES.to(values.device, torch.float32)
    return torch.bucketize(values.float(), edges, right=True)


def top_entries(
    neuron: Int[torch.Tensor, " m"],
    value: Float[torch.Tensor, " m"],
    seq: Int[torch.Tensor, " m"],
    pos: Int[torch.Tensor, " m"],
    d_mlp: int,
    k: int,
) -> tuple[
    Float[torch.Tensor, "d_mlp k"], Int[torch.Tensor, "d_mlp k"], Int[torch.Tensor, "d_mlp k"]
]:
    """Each neuron's first ``k`` entries by (value descending, seq, pos), as ``[d_mlp, k]``
    tables padded with ``-inf`` / ``EMPTY``."""
    device = value.device
    values = torch.full((d_mlp, k), float("-inf"), device=device)
    seqs = torch.full((d_mlp, k), EMPTY, dtype=torch.int64, device=device)
    poss = torch.full((d_mlp, k), EMPTY, dtype=torch.int64, device=device)
    if neuron.numel() == 0:
        return values, seqs, poss
    # Three stable sorts, least significant key first: (seq, pos), then value, then neuron.
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(seq[order], stable=True)]
    order = order[torch.argsort(value[order], descending=True, stable=True)]
    order = order[torch.argsort(neuron[order], stable=True)]
    neuron, value, seq, pos = neuron[order], value[order], seq[order], pos[order]
    per_neuron = torch.bincount(neuron, minlength=d_mlp)
    starts = torch.cumsum(per_neuron, 0) - per_neuron
    rank = torch.arange(neuron.numel(), device=device) - starts[neuron]
    keep = rank < k
    slot = (neuron[keep], rank[keep])
    values[slot], seqs[slot], poss[slot] = value[keep], seq[keep], pos[keep]
    return values, seqs, poss


def merge_top(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``k`` of several ``(values, seqs, poss)`` tables of one layer, exactly."""
    d_mlp = parts[0][0].shape[0]
    neuron, value, seq, pos = [], [], [], []
    for values, seqs, poss in parts:
        filled = seqs != EMPTY
        neuron.append(filled.nonzero()[:, 0])
        value.append(values[filled])
        seq.append(seqs[filled])
        pos.append(poss[filled])
    return top_entries(
        torch.cat(neuron), torch.cat(value), torch.cat(seq), torch.cat(pos), d_mlp, k
    )


class TopActivations:
    """Streaming top-k activations (and, where asked, the histogram) of every neuron of one
    layer, on the device (see the module docstring)."""

    def __init__(
        self, d_mlp: int, k: int, histogram: bool, threshold: float, device: torch.device
    ) -> None:
        self.d_mlp, self.k, self.threshold = d_mlp, k, threshold
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        self.values, self.seqs, self.poss = top_entries(
            empty, empty.float(), empty, empty, d_mlp, k
        )
        self.hist = (
            torch.zeros(d_mlp * HIST_BINS, dtype=torch.int64, device=device) if histogram else None
        )
        # A position enters a neuron's top-k only above this: the k-th value kept, or the
        # threshold while fewer than k are kept.
        self._floor = torch.full((d_mlp,), float(threshold), device=device)

    def add(
        self,
        acts: Float[torch.Tensor, "rows d_mlp"],
        seq: Int[torch.Tensor, " rows"],
        pos: Int[torch.Tensor, " rows"],
    ) -> None:
        """Count a chunk of rows (their ``seq`` not below any seen before)."""
        if self.hist is not None:
            row, neuron = (acts > self.threshold).nonzero(as_tuple=True)
            self.hist += torch.bincount(
                neuron * HIST_BINS + histogram_bins(acts[row, neuron]),
                minlength=self.hist.numel(),
            )
        if self.k == 0:
            return
        # One pass finds the neurons whose column can enter; only those are looked at closer.
        touched = (acts.amax(0) > self._floor).nonzero().squeeze(1)
        if touched.numel() == 0:
            return
        sub = acts[:, touched]
        floor = self._floor[touched]
        # Within the chunk, a neuron's entrants are among its k largest (ties included).
        kth = torch.topk(sub, min(self.k, sub.shape[0]), dim=0).values[-1]
        row, col = ((sub > floor) & (sub >= kth)).nonzero(as_tuple=True)
        filled = self.seqs != EMPTY
        self.values, self.seqs, self.poss = top_entries(
            torch.cat([filled.nonzero()[:, 0], touched[col]]),
            torch.cat([self.values[filled], sub[row, col].float()]),
            torch.cat([self.seqs[filled], seq[row]]),
            torch.cat([self.poss[filled], pos[row]]),
            self.d_mlp,
            self.k,
        )
        full = self.seqs[:, -1] != EMPTY
        self._floor = torch.where(full, self.values[:, -1], self._floor)

    def tables(
        self,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(values, seqs, positions, histogram) on the CPU; None for what is not kept."""
        hist = None if self.hist is None else self.hist.view(self.d_mlp, HIST_BINS).cpu()
        if self.k == 0:
            return None, None, None, hist
        return self.values.cpu(), self.seqs.cpu(), self.poss.cpu(), hist

    @property
    def nbytes(self) -> int:
        hist = 0 if self.hist is None else self.hist.numel() * 8
        return self.values.numel() * 20 + hist


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
    tokens: Int[torch.Tensor, "n_seq pos"],
    layer: int,
    neuron: int,
    k: int | None = None,
    before: int = 12,
    after: int = 4,
) -> pd.DataFrame:
    """The contexts of a neuron's top activations, with its activation at every token of each.

    The positions come from the profile (no pass over the corpus); the activations around them
    from one forward over just those rows, up to ``layer``, which also checks that ``tokens``
    are those the profile was recorded on. For many neurons at once, ``contexts_of``.

    Args:
        model: The profile's model.
        profile: A profile recorded with ``top_k > 0``.
        tokens: The tokens the profile was recorded on (for a merged profile: the parts'
            tokens concatenated in the order merged).
        layer, neuron: The neuron.
        k: How many contexts (default: all kept).
        before, after: Tokens shown before and after the activating one.

    Returns:
        One row per context: ``rank``, ``value``, ``seq``, ``pos``, ``token_ids`` and ``tokens``
        (the window), ``activations`` (the neuron's activation at each token of the window) and
        ``center`` (the index of ``pos`` in the window).

    Raises:
        NeuronKindsError: No top activations kept, ``tokens`` of another shape or content than
            the profile's, a layer or neuron not in the profile, or the model not the profile's.
    """
    return contexts_of(model, profile, tokens, [(layer, neuron)], k, before, after)[(layer, neuron)]


def contexts_of(
    model: Any,
    profile: Any,
    tokens: Int[torch.Tensor, "n_seq pos"],
    neurons: list[tuple[int, int]],
    k: int | None = None,
    before: int = 12,
    after: int = 4,
) -> dict[tuple[int, int], pd.DataFrame]:
    """``max_activating_contexts`` of several neurons, from one pass over the rows they need.

    Each row any of them needs is forwarded once, only as far as its last context reaches
    (``pos + after``: the model is causal, so the activations before are those of the whole
    row) and only up to the highest layer asked for, with every neuron's activations kept from
    that same forward. Returns ``{(layer, neuron): contexts}`` (see ``max_activating_contexts``).
    """
    from tl_neuronkinds.recording.identity import check_same_model

    check_same_model(model, profile)
    if tuple(tokens.shape) != (profile.n_seqs, profile.seq_len):
        raise NeuronKindsError(
            f"tokens of shape {tuple(tokens.shape)} are not those the profile was recorded on "
            f"({profile.n_seqs} x {profile.seq_len})"
        )
    tops = {}
    for layer, neuron in neurons:
        top = top_activations(profile, layer, neuron)
        tops[(layer, neuron)] = top if k is None else top[top["rank"] < k]
    entries = pd.concat([t for t in tops.values() if not t.empty] or [pd.DataFrame()])
    acts = {} if entries.empty else _activations(model, tokens, entries, after)
    return {
        key: _contexts(profile, tokens, top, acts, key, before, after) for key, top in tops.items()
    }


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
        records.append(
            {
                "rank": entry.rank,
                "value": float(entry.value),
                "seq": int(entry.seq),
                "pos": int(entry.pos),
                "token_ids": ids,
                "tokens": [profile.token_strings[i] for i in ids],
                "activations": row[lo:hi].tolist(),
                "center": entry.pos - lo,
            }
        )
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
        with torch.no_grad():
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
