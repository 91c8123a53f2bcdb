"""NeuronProfile: the counts one recording leaves, with save, load and exact merge.

Every kind (dead, n-gram detector, positional) is a function of these counts (SPEC.md), so a
profile is all a user needs to re-classify with other cut-offs, merge runs made elsewhere, or
resume. Counts are int64 and exact. Per recorded layer (``LayerCounts``):

- ``active`` / ``active_text``: active positions per neuron, over all positions and over text
  positions (token != BOS) — §3, Figure 1.
- ``ngram_keys[n]`` / ``ngram_counts[n]``: the sparse table of ``c_g(l, i)``, active counts at
  text positions whose n-gram is g, keyed ``g * d_mlp + i`` (see ``ngram_keys.py``) — §4.
- ``pos_active``: ``[seq_len, d_mlp]`` active counts at position p over the sequences whose token
  at p is a text token — §5.

Profile-wide: n-gram occurrences ``o_g`` (sorted ids and counts), the sequences with a text token
at each position, totals, the tokenizer's string for each id and provenance metadata.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.keys import merge_tables

FORMAT_VERSION = 1
_COUNTS_FILE = "counts.safetensors"
_META_FILE = "profile.json"
# Settings that must agree for two profiles to be merged.
_MERGE_KEYS = ("d_mlp", "d_vocab", "seq_len", "ngram_max", "threshold", "bos_token_id", "layers")


@dataclass
class LayerCounts:
    """The counts of one recorded layer (see the module docstring)."""

    active: Int[torch.Tensor, " d_mlp"]
    active_text: Int[torch.Tensor, " d_mlp"]
    ngram_keys: dict[int, Int[torch.Tensor, " k"]]
    ngram_counts: dict[int, Int[torch.Tensor, " k"]]
    pos_active: Int[torch.Tensor, "pos d_mlp"]


@dataclass
class NeuronProfile:
    """Counts of one or more recordings of a model's FFN neurons, plus their provenance.

    Attributes:
        layers: Recorded layer indices, ascending.
        counts: Layer index -> its ``LayerCounts``.
        d_mlp, d_vocab, seq_len, ngram_max, threshold, bos_token_id: Recording settings.
        n_seqs, n_positions, n_text_positions: Totals seen.
        ngram_occ_ids, ngram_occ_counts: n -> sorted n-gram ids seen at text positions where the
            n-gram is defined, and their occurrences ``o_g`` (§4.2).
        pos_text_seqs: ``[seq_len]`` number of sequences whose token at p is text (§5).
        token_strings: The tokenizer's string for every token id (for triggers).
        meta: model name and config hash, tokenizer, corpus, package version, ...
    """

    layers: list[int]
    counts: dict[int, LayerCounts]
    d_mlp: int
    d_vocab: int
    seq_len: int
    ngram_max: int
    threshold: float
    bos_token_id: int
    n_seqs: int
    n_positions: int
    n_text_positions: int
    ngram_occ_ids: dict[int, Int[torch.Tensor, " g"]]
    ngram_occ_counts: dict[int, Int[torch.Tensor, " g"]]
    pos_text_seqs: Int[torch.Tensor, " pos"]
    token_strings: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_seen(self) -> int:
        """Positions recorded (BOS included)."""
        return self.n_positions

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the profile to ``directory`` (safetensors + JSON, no pickle), atomically.

        The files are written into a temporary sibling directory which then replaces
        ``directory``; an existing profile there is replaced only once the new one is complete.
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            save_file(self._tensors(), str(tmp / _COUNTS_FILE))
            (tmp / _META_FILE).write_text(json.dumps(self._header(), indent=1))
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "NeuronProfile":
        """Read a profile written by ``save``; NeuronKindsError if it is missing or corrupt."""
        path = Path(directory)
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
        try:
            tensors = load_file(str(path / _COUNTS_FILE))
        except (FileNotFoundError, SafetensorError, OSError) as err:
            raise NeuronKindsError(f"corrupt profile at {path}: {_COUNTS_FILE}: {err}") from err
        try:
            return cls._from_parts(header, tensors)
        except (KeyError, TypeError, ValueError) as err:
            raise NeuronKindsError(f"corrupt profile at {path}: {err!r}") from err

    def _header(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "layers": self.layers,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
            "seq_len": self.seq_len,
            "ngram_max": self.ngram_max,
            "threshold": self.threshold,
            "bos_token_id": self.bos_token_id,
            "n_seqs": self.n_seqs,
            "n_positions": self.n_positions,
            "n_text_positions": self.n_text_positions,
            "meta": self.meta,
            "token_strings": self.token_strings,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"pos_text_seqs": self.pos_text_seqs}
        for n in range(1, self.ngram_max + 1):
            out[f"occ.{n}.ids"] = self.ngram_occ_ids[n]
            out[f"occ.{n}.counts"] = self.ngram_occ_counts[n]
        for layer, c in self.counts.items():
            out[f"layer.{layer}.active"] = c.active
            out[f"layer.{layer}.active_text"] = c.active_text
            out[f"layer.{layer}.pos_active"] = c.pos_active
            for n in range(1, self.ngram_max + 1):
                out[f"layer.{layer}.ngram.{n}.keys"] = c.ngram_keys[n]
                out[f"layer.{layer}.ngram.{n}.counts"] = c.ngram_counts[n]
        return {k: v.contiguous().cpu() for k, v in out.items()}

    @classmethod
    def _from_parts(cls, header: dict[str, Any], t: dict[str, torch.Tensor]) -> "NeuronProfile":
        ngram_max = int(header["ngram_max"])
        layers = [int(x) for x in header["layers"]]
        ns = range(1, ngram_max + 1)
        counts = {
            layer: LayerCounts(
                active=t[f"layer.{layer}.active"],
                active_text=t[f"layer.{layer}.active_text"],
                ngram_keys={n: t[f"layer.{layer}.ngram.{n}.keys"] for n in ns},
                ngram_counts={n: t[f"layer.{layer}.ngram.{n}.counts"] for n in ns},
                pos_active=t[f"layer.{layer}.pos_active"],
            )
            for layer in layers
        }
        return cls(
            layers=layers,
            counts=counts,
            d_mlp=int(header["d_mlp"]),
            d_vocab=int(header["d_vocab"]),
            seq_len=int(header["seq_len"]),
            ngram_max=ngram_max,
            threshold=float(header["threshold"]),
            bos_token_id=int(header["bos_token_id"]),
            n_seqs=int(header["n_seqs"]),
            n_positions=int(header["n_positions"]),
            n_text_positions=int(header["n_text_positions"]),
            ngram_occ_ids={n: t[f"occ.{n}.ids"] for n in ns},
            ngram_occ_counts={n: t[f"occ.{n}.counts"] for n in ns},
            pos_text_seqs=t["pos_text_seqs"],
            token_strings=list(header["token_strings"]),
            meta=dict(header["meta"]),
        )

    # ---------------------------------------------------------------- merge
    @classmethod
    def merge(cls, profiles: "list[NeuronProfile]") -> "NeuronProfile":
        """One profile equal to a single recording over all the profiles' tokens, exactly.

        Raises NeuronKindsError where the profiles differ in model, threshold, seq_len, layers
        or n-gram order.
        """
        if not profiles:
            raise NeuronKindsError("NeuronProfile.merge needs at least one profile")
        first = profiles[0]
        for other in profiles[1:]:
            _check_mergeable(first, other)
        ns = range(1, first.ngram_max + 1)
        occ = {
            n: merge_tables(
                [p.ngram_occ_ids[n] for p in profiles], [p.ngram_occ_counts[n] for p in profiles]
            )
            for n in ns
        }
        counts = {}
        for layer in first.layers:
            parts = [p.counts[layer] for p in profiles]
            tables = {
                n: merge_tables(
                    [c.ngram_keys[n] for c in parts], [c.ngram_counts[n] for c in parts]
                )
                for n in ns
            }
            counts[layer] = LayerCounts(
                active=_total([c.active for c in parts]),
                active_text=_total([c.active_text for c in parts]),
                ngram_keys={n: tables[n][0] for n in ns},
                ngram_counts={n: tables[n][1] for n in ns},
                pos_active=_total([c.pos_active for c in parts]),
            )
        meta = dict(first.meta)
        meta["merged_from"] = [p.meta.get("corpus") for p in profiles]
        return cls(
            layers=list(first.layers),
            counts=counts,
            d_mlp=first.d_mlp,
            d_vocab=first.d_vocab,
            seq_len=first.seq_len,
            ngram_max=first.ngram_max,
            threshold=first.threshold,
            bos_token_id=first.bos_token_id,
            n_seqs=sum(p.n_seqs for p in profiles),
            n_positions=sum(p.n_positions for p in profiles),
            n_text_positions=sum(p.n_text_positions for p in profiles),
            ngram_occ_ids={n: occ[n][0] for n in ns},
            ngram_occ_counts={n: occ[n][1] for n in ns},
            pos_text_seqs=_total([p.pos_text_seqs for p in profiles]),
            token_strings=list(first.token_strings),
            meta=meta,
        )


def _total(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors).sum(0)


def _check_mergeable(a: NeuronProfile, b: NeuronProfile) -> None:
    model_a, model_b = a.meta.get("config_hash"), b.meta.get("config_hash")
    if model_a != model_b:
        raise NeuronKindsError(
            f"cannot merge profiles of different models ({a.meta.get('model_name')} "
            f"{model_a} vs {b.meta.get('model_name')} {model_b})"
        )
    for key in _MERGE_KEYS:
        if getattr(a, key) != getattr(b, key):
            raise NeuronKindsError(
                f"cannot merge profiles with different {key}: {getattr(a, key)} vs {getattr(b, key)}"
            )


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete directory ``new`` to ``target``, replacing what was there."""
    if not target.exists():
        os.replace(new, target)
        return
    if not target.is_dir():
        raise NeuronKindsError(f"cannot write a profile to {target}: it is a file")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
