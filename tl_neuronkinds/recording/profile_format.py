"""The on-disk format of a NeuronProfile: a directory of ``counts.safetensors`` and
``profile.json``, and how each earlier format version is read.

Format 5 (current): ``counts.safetensors`` holds every tensor of the profile (``flatten``: a
field's name, prefixed ``layer.{l}.`` for a layer's, suffixed ``.{n}`` / ``.{n}.keys`` /
``.{n}.counts`` per n-gram order), integers in the narrowest integer type that holds their
values (read back as int64), the power sums as float64 and the top-k values and window
activations as float32. ``profile.json`` holds the settings and totals, the metadata, the
tokenizer's strings, and the SHA-256 of ``counts.safetensors``, checked on load. No pickle.

Earlier formats load as follows (``tests/data`` keeps a profile of each of 1 to 3):

- 4 (before the power sums): without ``moments``;
- 3 (before context windows): without windows either;
- 2 (before top-k activations and histograms): with neither;
- 1 (before the n-gram cap): as exhaustive profiles, every neuron complete, with the
  occurrence and n-gram tables under format 2's names (``_from_version_1``).

A profile of a newer format is refused with a message, never misread.

The version is bumped whenever what ``counts.safetensors`` or ``profile.json`` must hold for a
profile to be read changes. It was not bumped for ``meta["recording"]`` (the recording's
settings, ``settings.RecordingSettings.to_dict``): an entry of the free-form metadata that no
reader needs (the same values are the profile's own fields, which every format stores) and that
older readers carry along untouched.

This module reads and writes the fields by their role (``profile.py``) and knows the profile's
classes only as the ``profile_cls`` / ``layer_cls`` it is given.
"""

import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tl_neuronkinds.atomic import atomic_dir, write_tensors
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.keys import Table

FORMAT_VERSION = 5
_READABLE_VERSIONS = (1, 2, 3, 4, 5)
_COUNTS_FILE = "counts.safetensors"
_META_FILE = "profile.json"
_HASH_BLOCK = 1 << 23
#: The roles whose fields ``profile.json`` holds (the others are tensors).
_HEADER_ROLES = ("setting", "cap", "examples_k", "examples_window", "total")


def write_profile(profile: Any, directory: Path) -> None:
    """Write ``profile`` to ``directory`` atomically: the files go into a temporary sibling
    directory which then replaces ``directory`` once complete."""
    with atomic_dir(directory) as tmp:
        write_tensors(_narrowed(flatten(profile)), tmp / _COUNTS_FILE)
        header = {
            "format_version": FORMAT_VERSION,
            "sha256": {_COUNTS_FILE: _sha256(tmp / _COUNTS_FILE)},
            **{
                f.name: getattr(profile, f.name)
                for f in fields(profile)
                if f.metadata["role"] in _HEADER_ROLES
            },
            "meta": profile.meta,
            "token_strings": profile.token_strings,
        }
        (tmp / _META_FILE).write_text(json.dumps(header, indent=1))


def read_profile(path: Path, profile_cls: Any, layer_cls: Any, *, verify: bool = True) -> Any:
    """The profile ``write_profile`` (of this or an earlier format) wrote to ``path``, built
    as ``profile_cls`` with ``layer_cls`` per layer; a NeuronKindsError naming the damaged file
    or the unreadable version otherwise."""
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
        widened = {k: v if v.is_floating_point() else v.to(torch.int64) for k, v in tensors.items()}
        return _unflatten(header, widened, profile_cls, layer_cls)
    except (KeyError, TypeError, ValueError) as err:
        raise NeuronKindsError(f"corrupt profile at {path}: {err!r}") from err


def flatten(profile: Any) -> dict[str, torch.Tensor]:
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


def _unflatten(
    header: dict[str, Any], tensors: dict[str, torch.Tensor], profile_cls: Any, layer_cls: Any
) -> Any:
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
    counts = {layer: build(layer_cls, f"layer.{layer}.", {}) for layer in layers}
    extra = {
        "counts": counts,
        "token_strings": list(header["token_strings"]),
        "meta": dict(header["meta"]),
    }
    profile = build(profile_cls, "", extra)
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
