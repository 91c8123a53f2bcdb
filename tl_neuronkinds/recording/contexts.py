"""Max-activating contexts: the tokens around each top activation a profile kept, with the
neuron's activation at each of them (what ``show_neuron`` and the report show; Voita et al. 2024
§4 read neurons through such contexts).

Where the profile kept context windows (``record(..., window=...)``, ``top_k.py``) wide enough,
the contexts come from the profile alone; otherwise from one forward over just the rows they
need, each row only as far as its last context reaches, stopping after the highest layer asked.
"""

from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.hook_names import mlp_post
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.recording.queries import top_activations
from tl_neuronkinds.recording.top_k import EMPTY

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

    hooks = [(mlp_post(layer), keeper(layer)) for layer in by_layer]
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
