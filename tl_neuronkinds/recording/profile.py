"""NeuronProfile: the counts one recording leaves, with save, load and exact merge.

Every kind (dead, n-gram detector, positional) is a function of these counts (SPEC.md), so a
profile is all a user needs to re-classify with other cut-offs, merge runs made elsewhere, or
resume. Counts are int64 and exact. The fields, and what each does on save and merge, are
declared once, in the dataclasses below (``_role``):

- ``setting``: stored in ``profile.json``; two profiles merge only where they agree.
- ``total``: stored in ``profile.json``; summed by a merge.
- ``counts``: a tensor in ``counts.safetensors``; summed by a merge.
- ``tables``: sparse count tables (``keys.Table``) per n-gram order; merged key by key.
- ``cap``: the n-gram cap, in ``profile.json``; a merge keeps the smallest (a certificate
  ``k95_n > cap`` holds for any smaller cap too).
- ``ngram_state``: per n >= 2, which neurons' tables are complete and, for the others, a lower
  bound of their *tail* (the certificate of ``k95_n > cap``, ``plan.py``). A merge keeps the
  neurons complete in every part and adds the tails (the others' k95 is then censored or
  unknown, never guessed — SPEC.md, "The n-gram cap").
- ``plan``: the neurons a recording set out to count n >= 2 for (its plan).
- ``top_k``: in ``profile.json``, how many top activations per neuron were kept; a merge keeps
  the smallest.
- ``examples``: per layer, the top-k activations ``[d_mlp, k]`` with their sequence and position
  and, where kept, their context windows ``[d_mlp, k, w]`` (``examples.py``), None where not
  kept; merged exactly (the top-k of the parts' top-k).
- ``examples_window``: the windows' ``(before, after)`` in ``profile.json``, None where none
  were kept; a merge keeps the windows where every part kept the same ones.
- ``optional_counts``: a tensor that may be absent (the activation histogram, the activation
  power sums); summed by a merge where every part has it (absent otherwise: a merge with a part
  recorded before it was kept has none, never a partial sum).

Per recorded layer (``LayerCounts``): ``active`` / ``active_text`` (active positions per neuron,
over all positions and over text positions, §3), ``pos_active`` (``[seq_len, d_mlp]`` active
counts at p over the sequences whose token at p is text, §5), ``ngrams[n]`` (the table of
``c_g(l, i)`` keyed ``g * d_mlp + i``, §4), ``complete`` / ``tail``, ``plan``, and where kept the
top-k activations (``top_values`` / ``top_seq`` / ``top_pos``, with their context windows
``top_window_acts`` / ``top_window_ids``) and the histogram ``hist``; ``moments``
(``[4, d_mlp]`` float64: row k - 1 holds the sum of ``h**k`` over the text positions, the
positions of ``active_text``, for ``kinds.moments``; None in profiles of format 4 and before).
Profile-wide: n-gram occurrences ``o_g``, the sequences with a text token at each position,
totals, the tokenizer's string for each id and provenance metadata.

On disk (format 5): ``counts.safetensors`` holds every integer tensor in the narrowest integer
type that holds its values (read back as int64), the power sums as float64 and the top-k values
and window activations as float32; ``profile.json`` holds the rest and the SHA-256 of
``counts.safetensors``, checked on load. Format 4 profiles (before the power sums) load without
``moments``; format 3 profiles (before context windows) without windows either; format 2 profiles
(before top-k and histograms) with neither; format 1 profiles (before the n-gram cap) as
exhaustive ones (every neuron complete).
"""

import copy
import hashlib
import html
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tl_neuronkinds.atomic import atomic_dir, follow_umask
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.examples import TopTable, merge_top
from tl_neuronkinds.recording.keys import Table, merge_tables

FORMAT_VERSION = 5
_READABLE_VERSIONS = (1, 2, 3, 4, 5)
_COUNTS_FILE = "counts.safetensors"
_META_FILE = "profile.json"
_HASH_BLOCK = 1 << 23
# What identifies the model whose neurons a profile counts (recording.identity).
IDENTITY_KEYS = ("config_hash", "model_fingerprint")


def _role(role: str, **kwargs: Any) -> Any:
    return field(metadata={"role": role}, **kwargs)


@dataclass(eq=False)
class LayerCounts:
    """The counts of one recorded layer (see the module docstring)."""

    active: Int[torch.Tensor, " d_mlp"] = _role("counts")
    active_text: Int[torch.Tensor, " d_mlp"] = _role("counts")
    pos_active: Int[torch.Tensor, "pos d_mlp"] = _role("counts")
    # n -> c_g table; for n >= 2 it holds the pairs of the ``complete`` neurons only.
    ngrams: dict[int, Table] = _role("tables")
    # n >= 2 -> neurons whose n-gram counts are complete; None: every neuron's (exhaustive).
    complete: dict[int, Bool[torch.Tensor, " d_mlp"]] | None = _role("ngram_state", default=None)
    # n >= 2 -> for the other neurons, a lower bound of their tail: A_n less the sum of their
    # ngram_cap largest c_g (``plan.py``, "The tail certificate"); 0 for complete neurons.
    tail: dict[int, Int[torch.Tensor, " d_mlp"]] | None = _role("ngram_state", default=None)
    # The neurons whose n >= 2 counts the recording set out to keep (its plan); None: all.
    plan: Bool[torch.Tensor, " d_mlp"] | None = _role("plan", default=None)
    # Each neuron's top-k activations (descending; ties by seq, then pos), -inf / -1 padded.
    top_values: Float[torch.Tensor, "d_mlp k"] | None = _role("examples", default=None)
    top_seq: Int[torch.Tensor, "d_mlp k"] | None = _role("examples", default=None)
    top_pos: Int[torch.Tensor, "d_mlp k"] | None = _role("examples", default=None)
    # Each top activation's context (the profile's ``window``): the neuron's activations and the
    # tokens at pos - before .. pos + after of its row, NaN / -1 outside the row.
    top_window_acts: Float[torch.Tensor, "d_mlp k w"] | None = _role("examples", default=None)
    top_window_ids: Int[torch.Tensor, "d_mlp k w"] | None = _role("examples", default=None)
    # Each neuron's active values in the fixed bins of ``examples.HIST_EDGES``.
    hist: Int[torch.Tensor, "d_mlp bins"] | None = _role("optional_counts", default=None)
    # Row k - 1: each neuron's sum of h**k over the text positions, float64; None before format 5.
    moments: Float[torch.Tensor, "4 d_mlp"] | None = _role("optional_counts", default=None)


@dataclass(eq=False)
class NeuronProfile:
    """Counts of one or more recordings of a model's FFN neurons, plus their provenance.

    Attributes:
        layers: Recorded layer indices, ascending.
        d_mlp, d_vocab, seq_len, threshold, bos_token_id: Recording settings.
        ngram_max: Largest n-gram order counted (1 to 3).
        ngram_cap: The n-gram cap (SPEC.md): n >= 2 counts are kept for the neurons that can
            have ``k95_n <= ngram_cap``; None: for every neuron.
        top_k: Top activations kept per neuron (0: none; ``examples.py``).
        window: ``(before, after)`` of the context windows kept around them; None: none.
        n_seqs, n_positions, n_text_positions: Totals seen.
        occurrences: n -> sorted n-gram ids seen at text positions where the n-gram is
            defined, with their occurrences ``o_g`` (§4.2).
        pos_text_seqs: ``[seq_len]`` number of sequences whose token at p is text (§5).
        counts: Layer index -> its ``LayerCounts``.
        token_strings: The tokenizer's string for every token id (for triggers).
        meta: Model identity (name, config hash, weight fingerprint), tokenizer, corpus,
            package version, timings, ...
    """

    layers: list[int] = _role("setting")
    d_mlp: int = _role("setting")
    d_vocab: int = _role("setting")
    seq_len: int = _role("setting")
    ngram_max: int = _role("setting")
    ngram_cap: int | None = _role("cap")
    top_k: int = _role("examples_k")
    window: tuple[int, int] | None = _role("examples_window")
    threshold: float = _role("setting")
    bos_token_id: int = _role("setting")
    n_seqs: int = _role("total")
    n_positions: int = _role("total")
    n_text_positions: int = _role("total")
    occurrences: dict[int, Table] = _role("tables")
    pos_text_seqs: Int[torch.Tensor, " pos"] = _role("counts")
    counts: dict[int, LayerCounts] = _role("layers")
    token_strings: list[str] = _role("header")
    meta: dict[str, Any] = _role("header", default_factory=dict)

    @property
    def tokens_seen(self) -> int:
        """Positions recorded (BOS included)."""
        return self.n_positions

    @property
    def plan(self) -> dict[int, Bool[torch.Tensor, " d_mlp"]] | None:
        """Layer -> the neurons the recording counted n >= 2 for (pass it to ``record(plan=)``
        to record another run the same way); None for an exhaustive recording."""
        if all(self.counts[layer].plan is None for layer in self.layers):
            return None
        full = torch.ones(self.d_mlp, dtype=torch.bool)
        return {
            layer: full if (mask := self.counts[layer].plan) is None else mask
            for layer in self.layers
        }

    def complete(self, layer: int, n: int) -> Bool[torch.Tensor, " d_mlp"]:
        """The neurons of ``layer`` whose order-``n`` counts are complete."""
        state = self.counts[layer].complete
        if n == 1 or state is None:
            return torch.ones(self.d_mlp, dtype=torch.bool)
        return state[n]

    def tail(self, layer: int, n: int) -> Int[torch.Tensor, " d_mlp"]:
        """A lower bound of each incomplete neuron's order-``n`` tail (0 where complete)."""
        state = self.counts[layer].tail
        if n == 1 or state is None:
            return torch.zeros(self.d_mlp, dtype=torch.int64)
        return state[n]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held in memory."""
        return sum(t.numel() * t.element_size() for t in _flatten(self).values())

    # ---------------------------------------------------------------- display
    def _summary(self) -> dict[str, str]:
        n = self.ngram_max
        kept = (
            "all"
            if n < 2 or all(self.counts[layer].complete is None for layer in self.layers)
            else f"{sum(int(self.complete(layer, n).sum()) for layer in self.layers):,} of "
            f"{self.d_mlp * len(self.layers):,}"
        )
        return {
            "model": str(self.meta.get("model_name") or "?"),
            "layers": _ranges(self.layers),
            "tokens": f"{self.n_positions:,} ({self.n_seqs:,} x {self.seq_len})",
            "text tokens": f"{self.n_text_positions:,}",
            "d_mlp": f"{self.d_mlp:,}",
            "ngram_max": str(self.ngram_max),
            "ngram_cap": str(self.ngram_cap),
            "top activations kept": str(self.top_k)
            + ("" if self.window is None else f" (context {self.window[0]} + {self.window[1]})"),
            f"neurons with complete {n}-gram counts": kept,
            "size": f"{self.nbytes / 2**20:,.1f} MiB",
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{k.replace(' ', '_')}={v}" for k, v in self._summary().items())
        return f"NeuronProfile({inner})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self._summary().items()
        )
        return f"<table><caption>NeuronProfile</caption>{rows}</table>"

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the profile to ``directory`` (safetensors + JSON, no pickle), atomically.

        The files are written into a temporary sibling directory which then replaces
        ``directory``; an existing profile there is replaced only once the new one is complete.
        """
        with atomic_dir(directory) as tmp:
            save_file(_narrowed(_flatten(self)), str(tmp / _COUNTS_FILE))
            follow_umask(tmp / _COUNTS_FILE)
            header = {
                "format_version": FORMAT_VERSION,
                "sha256": {_COUNTS_FILE: _sha256(tmp / _COUNTS_FILE)},
                **{
                    f.name: getattr(self, f.name)
                    for f in _fields(
                        self, "setting", "cap", "examples_k", "examples_window", "total"
                    )
                },
                "meta": self.meta,
                "token_strings": self.token_strings,
            }
            (tmp / _META_FILE).write_text(json.dumps(header, indent=1))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, verify: bool = True) -> "NeuronProfile":
        """Read a profile written by ``save``.

        Args:
            directory: The profile's directory.
            verify: Check ``counts.safetensors`` against the SHA-256 in ``profile.json``
                (streamed: about a second per GB).

        Raises:
            NeuronKindsError: The profile is missing, damaged (the message names the file), or
                of a format version this package does not read.
        """
        path = Path(directory)
        header = _read_header(path)
        counts_path = path / _COUNTS_FILE
        expected = header.get("sha256", {}).get(_COUNTS_FILE)
        if verify and expected is not None:
            try:
                actual = _sha256(counts_path)
            except OSError as err:
                raise NeuronKindsError(f"corrupt profile at {path}: {_COUNTS_FILE}: {err}") from err
            if actual != expected:
                raise NeuronKindsError(
                    f"damaged profile at {path}: {counts_path} does not match its checksum in "
                    f"{_META_FILE} (the file was changed or corrupted after it was written)"
                )
        try:
            tensors = load_file(str(counts_path))
        except (FileNotFoundError, SafetensorError, OSError) as err:
            raise NeuronKindsError(f"corrupt profile at {path}: {_COUNTS_FILE}: {err}") from err
        try:
            widened = {
                k: v if v.is_floating_point() else v.to(torch.int64) for k, v in tensors.items()
            }
            return _unflatten(header, widened)
        except (KeyError, TypeError, ValueError) as err:
            raise NeuronKindsError(f"corrupt profile at {path}: {err!r}") from err

    # ---------------------------------------------------------------- merge
    @classmethod
    def merge(
        cls, profiles: "list[NeuronProfile]", *, same_tokens: bool = False
    ) -> "NeuronProfile":
        """One profile equal to a single recording over all the profiles' tokens, exactly.

        Where the parts kept n >= 2 counts for different neurons (different plans), the merged
        profile keeps them for the neurons complete in every part; the others are reported as
        censored or unknown by the kinds, never guessed.

        Args:
            profiles: The parts.
            same_tokens: False (default): the parts were recorded on different token tensors,
                taken in the order given; the merged top activations' ``seq`` index the rows of
                their concatenation (part i's rows shifted by the rows of the parts before it),
                as one recording over ``torch.cat`` of the tokens would. True: the parts recorded
                disjoint rows of one token tensor and their ``seq`` already index it (the ranks
                and checkpoint intervals of one ``nk.record``).

        Raises:
            NeuronKindsError: The profiles differ in model (config or weights), threshold,
                seq_len, layers, n-gram order or cap.
        """
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
            merged = _merge_parts(NeuronProfile, profiles, offsets=offsets)
        merged.meta = dict(first.meta)
        if len(profiles) > 1:
            merged.meta["merged_from"] = [p.meta.get("corpus") for p in profiles]
            merged.meta.pop("record_seconds", None)
        return merged


def _fields(obj: Any, *roles: str) -> list[Any]:
    return [f for f in fields(obj) if f.metadata["role"] in roles]


def _merge_parts(
    cls: Any,
    parts: list[Any],
    cap: int | None = None,
    *,
    offsets: list[int],
    top_k: int = 0,
    window: tuple[int, int] | None = None,
) -> Any:
    """Merge same-type dataclasses field by field, by each field's role (``offsets``: each
    part's shift of the top activations' ``seq``)."""
    out: dict[str, Any] = {}
    first = parts[0]
    if cls is NeuronProfile:
        caps = [p.ngram_cap for p in parts if p.ngram_cap is not None]
        cap = min(caps) if caps else None
        top_k = min(p.top_k for p in parts)
        windows = {p.window for p in parts}
        window = windows.pop() if len(windows) == 1 and top_k else None
    for f in fields(cls):
        values = [getattr(p, f.name) for p in parts]
        role = f.metadata["role"]
        if role in ("setting", "header"):
            out[f.name] = values[0]
        elif role == "cap":
            out[f.name] = cap
        elif role == "examples_k":
            out[f.name] = top_k
        elif role == "examples_window":
            out[f.name] = window
        elif role == "optional_counts":
            present = all(v is not None for v in values)
            out[f.name] = torch.stack(values).sum(0) if present else None
        elif role == "total":
            out[f.name] = sum(values)
        elif role == "counts":
            out[f.name] = torch.stack(values).sum(0)
        elif role == "plan":
            kept = [v for v in values if v is not None]
            out[f.name] = torch.stack(kept).all(0) if kept else None
        elif role == "tables" and cls is NeuronProfile:
            out[f.name] = {n: _merge_tables([v[n] for v in values]) for n in values[0]}
        elif role == "layers":
            out[f.name] = {
                layer: _merge_parts(
                    LayerCounts,
                    [v[layer] for v in values],
                    cap,
                    offsets=offsets,
                    top_k=top_k,
                    window=window,
                )
                for layer in first.layers
            }
    if cls is LayerCounts:
        out.update(_merge_ngrams(parts, cap))
        out.update(_merge_examples(parts, offsets, top_k, window is not None))
    return cls(**out)


def _merge_examples(
    parts: list[LayerCounts], offsets: list[int], k: int, windows: bool
) -> dict[str, Any]:
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


def _merge_ngrams(parts: list[LayerCounts], cap: int | None) -> dict[str, Any]:
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


def _check_mergeable(a: NeuronProfile, b: NeuronProfile) -> None:
    for key in IDENTITY_KEYS:
        if a.meta.get(key) != b.meta.get(key):
            raise NeuronKindsError(
                f"cannot merge profiles of different models: {key} {a.meta.get(key)} "
                f"({a.meta.get('model_name')}) vs {b.meta.get(key)} ({b.meta.get('model_name')})"
            )
    for f in _fields(a, "setting"):
        if getattr(a, f.name) != getattr(b, f.name):
            raise NeuronKindsError(
                f"cannot merge profiles with different {f.name}: "
                f"{getattr(a, f.name)} vs {getattr(b, f.name)}"
            )


# -------------------------------------------------------------------- tensors <-> files
def _flatten(profile: NeuronProfile) -> dict[str, torch.Tensor]:
    """Every tensor of the profile, under its name in ``counts.safetensors``."""
    out: dict[str, torch.Tensor] = {}
    _flatten_into(out, "", profile)
    for layer in profile.layers:
        _flatten_into(out, f"layer.{layer}.", profile.counts[layer])
    return out


def _flatten_into(out: dict[str, torch.Tensor], prefix: str, obj: Any) -> None:
    for f in fields(obj):
        value, role = getattr(obj, f.name), f.metadata["role"]
        optional = role in ("plan", "examples", "optional_counts")
        if role == "counts" or (optional and value is not None):
            out[prefix + f.name] = value
        elif role == "tables":
            for n, table in value.items():
                out[f"{prefix}{f.name}.{n}.keys"] = table.keys
                out[f"{prefix}{f.name}.{n}.counts"] = table.counts
        elif role == "ngram_state" and value is not None:
            for n, tensor in value.items():
                out[f"{prefix}{f.name}.{n}"] = tensor


def _unflatten(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> NeuronProfile:
    if header["format_version"] == 1:
        header, tensors = _from_version_1(header, tensors)
    ns = range(1, int(header["ngram_max"]) + 1)

    def build(cls: Any, prefix: str, extra: dict[str, Any]) -> Any:
        values: dict[str, Any] = dict(extra)
        for f in fields(cls):
            role, name = f.metadata["role"], prefix + f.name
            if role in ("setting", "cap", "total"):
                values[f.name] = header[f.name]
            elif role == "examples_k":
                values[f.name] = int(header.get(f.name, 0))
            elif role == "examples_window":
                window = header.get(f.name)
                values[f.name] = None if window is None else (int(window[0]), int(window[1]))
            elif role in ("examples", "optional_counts"):
                values[f.name] = tensors.get(name)
            elif role == "counts":
                values[f.name] = tensors[name]
            elif role == "plan":
                values[f.name] = tensors[name].bool() if name in tensors else None
            elif role == "ngram_state":
                state = {n: tensors[f"{name}.{n}"] for n in ns if f"{name}.{n}" in tensors}
                if f.name == "complete":
                    state = {n: t.bool() for n, t in state.items()}
                values[f.name] = state or None
            elif role == "tables":
                values[f.name] = {
                    n: Table(tensors[f"{name}.{n}.keys"], tensors[f"{name}.{n}.counts"]) for n in ns
                }
        return cls(**values)

    layers = [int(x) for x in header["layers"]]
    counts = {layer: build(LayerCounts, f"layer.{layer}.", {}) for layer in layers}
    extra = {
        "counts": counts,
        "token_strings": list(header["token_strings"]),
        "meta": dict(header["meta"]),
    }
    profile = build(NeuronProfile, "", extra)
    profile.layers = layers
    return profile


def _from_version_1(
    header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Format 1 (exhaustive, before the n-gram cap) in format 2's names."""
    renamed = {}
    for name, tensor in tensors.items():
        if name.startswith("occ."):
            _, n, part = name.split(".")
            name = f"occurrences.{n}.{'keys' if part == 'ids' else 'counts'}"
        elif ".ngram." in name:
            name = name.replace(".ngram.", ".ngrams.")
        renamed[name] = tensor
    return {**header, "ngram_cap": None}, renamed


def _narrowed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each integer tensor in the narrowest of uint8 / int32 / int64 that holds its values;
    float64 ones (power sums) as they are, other floating point ones (top-k values) as float32."""
    out = {}
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        elif t.is_floating_point():
            t = t if t.dtype == torch.float64 else t.to(torch.float32)
        elif t.numel() and int(t.min()) >= -(2**31) and int(t.max()) < 2**31:
            t = t.to(torch.int32)
        out[name] = t
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _read_header(path: Path) -> dict[str, Any]:
    try:
        header = json.loads((path / _META_FILE).read_text())
    except FileNotFoundError as err:
        raise NeuronKindsError(f"no profile at {path}: {_META_FILE} is missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NeuronKindsError(f"corrupt profile at {path}: {_META_FILE}: {err}") from err
    version = header.get("format_version") if isinstance(header, dict) else None
    if not isinstance(version, int):
        raise NeuronKindsError(f"corrupt profile at {path}: no format_version in {_META_FILE}")
    if version > FORMAT_VERSION:
        raise NeuronKindsError(
            f"profile at {path} has format version {version}, newer than this "
            f"tl_neuronkinds reads ({FORMAT_VERSION}); upgrade tl_neuronkinds"
        )
    if version not in _READABLE_VERSIONS:
        raise NeuronKindsError(
            f"profile at {path} has format version {version}, which this tl_neuronkinds "
            f"does not read (it reads {_READABLE_VERSIONS}); record it again"
        )
    return header


def _ranges(values: list[int]) -> str:
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ",".join(map(str, values))
