"""The merge algebra of NeuronProfiles: one profile equal to a single recording over all the
parts' tokens, exactly.

Each field merges by its role (``profile.py``): settings must agree; totals and count tensors
add; sparse tables merge key by key; the n-gram cap becomes the smallest (a certificate
``k95_n > cap`` holds for any smaller cap too); top-k activations become the top-k of the
parts' top-k (``top_k.merge_top``); optional counts add where every part has them; n-gram state
follows the tail certificate (``_merge_ngrams``; ``plan.py``, "The tail certificate"). Counts
are integers, so every merge is exact and the order of the parts changes nothing but the
``seq`` numbering of the top activations.

This module knows the profile's classes only through the parts it is given (``type(part)``).
"""

import copy
from dataclasses import fields
from typing import Any

import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.identity import IDENTITY_KEYS
from tl_neuronkinds.recording.keys import Table, merge_tables
from tl_neuronkinds.recording.top_k import TopTable, merge_top


def merge_profiles(profiles: list[Any], *, same_tokens: bool = False) -> Any:
    """``NeuronProfile.merge`` (see there for ``same_tokens``)."""
    if not profiles:
        raise NeuronKindsError("NeuronProfile.merge needs at least one profile")
    first = profiles[0]
    for other in profiles[1:]:
        _check_mergeable(first, other)
    if len(profiles) == 1:
        merged = copy.copy(first)
    else:
        offsets = [0] * len(profiles)
        if not same_tokens:
            offsets = [sum(p.n_seqs for p in profiles[:i]) for i in range(len(profiles))]
        merged = _merge_profile(profiles, offsets)
    merged.meta = dict(first.meta)
    if len(profiles) > 1:
        merged.meta["merged_from"] = [p.meta.get("corpus") for p in profiles]
        merged.meta.pop("record_seconds", None)
        if "recording" in merged.meta:  # what the merged counts hold (cap, top-k: the least)
            merged.meta["recording"] = merged.settings.to_dict()
    return merged


def _merge_profile(parts: list[Any], offsets: list[int]) -> Any:
    """Merge whole profiles field by field, by each field's role (``offsets``: each part's
    shift of the top activations' ``seq``)."""
    caps = [p.ngram_cap for p in parts if p.ngram_cap is not None]
    cap = min(caps) if caps else None
    top_k = min(p.top_k for p in parts)
    windows = {p.window for p in parts}
    window = windows.pop() if len(windows) == 1 and top_k else None
    by_role = {"cap": cap, "examples_k": top_k, "examples_window": window}
    out: dict[str, Any] = {}
    for f in fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        role = f.metadata["role"]
        if role in by_role:
            out[f.name] = by_role[role]
        elif role == "layers":
            out[f.name] = {
                layer: _merge_layer(
                    [v[layer] for v in values], cap, offsets, top_k, window is not None
                )
                for layer in parts[0].layers
            }
        else:
            out[f.name] = _merge_common(role, values)
    return type(parts[0])(**out)


def _merge_layer(
    parts: list[Any], cap: int | None, offsets: list[int], top_k: int, windows: bool
) -> Any:
    """Merge one layer's counts of every part."""
    out: dict[str, Any] = {}
    for f in fields(parts[0]):
        role = f.metadata["role"]
        if role not in ("tables", "ngram_state", "examples"):
            out[f.name] = _merge_common(role, [getattr(p, f.name) for p in parts])
    out.update(_merge_ngrams(parts, cap))
    out.update(_merge_examples(parts, offsets, top_k, windows))
    return type(parts[0])(**out)


def _merge_common(role: str, values: list[Any]) -> Any:
    """The merge of one field whose role needs nothing but its values."""
    if role in ("setting", "header"):
        return values[0]
    if role == "optional_counts":
        present = all(v is not None for v in values)
        return torch.stack(values).sum(0) if present else None
    if role == "total":
        return sum(values)
    if role == "counts":
        return torch.stack(values).sum(0)
    if role == "plan":
        kept = [v for v in values if v is not None]
        return torch.stack(kept).all(0) if kept else None
    if role == "tables":
        return {n: _merge_tables([v[n] for v in values]) for n in values[0]}
    raise ValueError(f"no merge for the role {role!r}")


def _merge_examples(parts: list[Any], offsets: list[int], k: int, windows: bool) -> dict[str, Any]:
    """The merged top-``k`` activations of one layer's parts (their ``seq`` shifted), with their
    windows where ``windows``."""
    names = ("top_values", "top_seq", "top_pos", "top_window_acts", "top_window_ids")
    if k == 0 or any(p.top_values is None for p in parts):
        return dict.fromkeys(names)
    tables = []
    for part, offset in zip(parts, offsets, strict=True):
        assert part.top_values is not None and part.top_seq is not None
        assert part.top_pos is not None
        seqs = torch.where(part.top_seq >= 0, part.top_seq + offset, part.top_seq)
        kept = (part.top_window_acts, part.top_window_ids) if windows else (None, None)
        tables.append(TopTable(part.top_values, seqs, part.top_pos, *kept))
    return dict(zip(names, merge_top(tables, k), strict=True))


def _merge_tables(tables: list[Table]) -> Table:
    return merge_tables([t.keys for t in tables], [t.counts for t in tables])


def _merge_ngrams(parts: list[Any], cap: int | None) -> dict[str, Any]:
    """Merged n-gram tables, complete masks and tails of one layer's parts.

    A neuron is complete where it is complete in every part; the others' pairs are dropped.
    Tails add up (the largest ``cap`` counts of a sum are at most the sums of each part's
    largest ``cap``), so the merged tail bound is the sum of each part's: its stored bound where
    the neuron was incomplete there, its exact tail (from the part's counts) where complete.
    """
    orders = sorted(parts[0].ngrams)
    tables = {1: _merge_tables([p.ngrams[1] for p in parts])}
    if all(p.complete is None for p in parts):
        tables.update({n: _merge_tables([p.ngrams[n] for p in parts]) for n in orders[1:]})
        return {"ngrams": tables, "complete": None, "tail": None}
    assert cap is not None  # a part with incomplete neurons was recorded with a cap
    d_mlp = parts[0].active.numel()
    complete, tail = {}, {}
    for n in orders[1:]:
        masks = [
            torch.ones(d_mlp, dtype=torch.bool) if p.complete is None else p.complete[n]
            for p in parts
        ]
        both = torch.stack(masks).all(0)
        total = torch.zeros(d_mlp, dtype=torch.int64)
        for part, mask in zip(parts, masks, strict=True):
            exact = part.ngrams[n].neuron_tails(d_mlp, cap)[1]
            stored = torch.zeros(d_mlp, dtype=torch.int64) if part.tail is None else part.tail[n]
            total += torch.where(mask, exact, stored)
        complete[n], tail[n] = both, torch.where(both, 0, total)
        tables[n] = _merge_tables([p.ngrams[n].of_neurons(both) for p in parts])
    return {"ngrams": tables, "complete": complete, "tail": tail}


def _check_mergeable(a: Any, b: Any) -> None:
    for key in IDENTITY_KEYS:
        if a.meta.get(key) != b.meta.get(key):
            raise NeuronKindsError(
                f"cannot merge profiles of different models: {key} {a.meta.get(key)} "
                f"({a.meta.get('model_name')}) vs {b.meta.get(key)} ({b.meta.get('model_name')})"
            )
    for f in [f for f in fields(a) if f.metadata["role"] == "setting"]:
        if getattr(a, f.name) != getattr(b, f.name):
            raise NeuronKindsError(
                f"cannot merge profiles with different {f.name}: "
                f"{getattr(a, f.name)} vs {getattr(b, f.name)}"
            )
