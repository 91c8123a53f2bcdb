"""Finding an OPT checkpoint and reading its tensors, one block at a time if need be.

A checkpoint is a directory as ``save_pretrained`` writes it: ``config.json`` plus the weights
in one of four layouts (``model.safetensors``; shards with ``model.safetensors.index.json``;
``pytorch_model.bin``; shards with ``pytorch_model.bin.index.json``). Keys are stored either
as ``model.decoder.…`` (``OPTForCausalLM``) or as ``decoder.…`` (the facebook/opt-* hub
files); ``Checkpoint`` names every tensor by its key without the ``model.`` prefix.

Tensors come back backed by a private memory map of their file (safetensors' ``get_tensor``;
``torch.load(mmap=True, weights_only=True)`` for ``.bin``): pages are read when first touched
and the map lives as long as the tensor, so reading one block leaves no other block's pages
resident (what ``offload="disk"`` relies on). Callers that keep tensors copy them
(``opt._own``), so a loaded model never depends on its files staying unchanged; a
disk-offloaded model does, by design.
"""

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from tl_neuronkinds.errors import NeuronKindsError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_META_PATTERNS = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]
_WEIGHT_FILES = {
    "safetensors": ("model.safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model.bin", "pytorch_model.bin.index.json"),
}


def resolve_checkpoint_dir(name_or_dir: str | os.PathLike) -> tuple[Path, str]:
    """The local directory of ``name_or_dir`` and the model's name.

    A path that exists is used as is (its name is the directory's name). Otherwise a hub id
    such as ``facebook/opt-125m`` is fetched with ``huggingface_hub.snapshot_download`` (config,
    tokenizer and weights only; safetensors preferred, ``.bin`` when the repository has no
    safetensors). Under ``HF_HUB_OFFLINE=1`` this resolves from the local Hugging Face cache and
    never reaches the network.

    Raises:
        NeuronKindsError: Neither an existing directory nor a hub id, or the hub id could not
            be fetched (offline and not cached, unknown repository, no connection).
    """
    path = Path(name_or_dir).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NeuronKindsError(f"checkpoint {str(path)!r} is a file; expected a directory")
        return path, path.resolve().name
    name = str(name_or_dir)
    if not _HUB_ID.match(name):
        raise NeuronKindsError(
            f"checkpoint directory {name!r} does not exist (and is not a hub id like "
            "'facebook/opt-125m')"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, allow_patterns=_META_PATTERNS + ["*.safetensors*"]))
        if find_weight_format(folder) is None:
            folder = Path(snapshot_download(name, allow_patterns=_META_PATTERNS + ["*.bin*"]))
    except Exception as err:  # hub errors have many types; all mean "could not get it"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        hint = " (HF_HUB_OFFLINE=1 and it is not in the local cache)" if offline else ""
        raise NeuronKindsError(f"could not fetch hub model {name!r}{hint}: {err}") from err
    return folder, name


def find_weight_format(directory: Path) -> str | None:
    """``"safetensors"`` or ``"bin"`` for the weights found in ``directory`` (safetensors first)."""
    for fmt, (single, index) in _WEIGHT_FILES.items():
        if (directory / single).is_file() or (directory / index).is_file():
            return fmt
    return None


def read_config(directory: Path) -> dict:
    """The checkpoint's ``config.json`` as a dict, checked to be an OPT config.

    Raises:
        NeuronKindsError: ``config.json`` missing, not JSON, or ``model_type`` is not ``"opt"``.
    """
    path = directory / "config.json"
    if not path.is_file():
        raise NeuronKindsError(f"{path} is missing: not a save_pretrained checkpoint directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NeuronKindsError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("model_type") != "opt":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise NeuronKindsError(
            f"{path}: model_type is {found!r}, not 'opt'; load_opt reads OPT checkpoints only"
        )
    return config


class Checkpoint:
    """The tensors of one checkpoint directory, by key (without the ``model.`` prefix).

    Only file headers are read on construction: ``shapes`` holds every tensor's shape, so a
    checkpoint can be validated without loading it. ``read(keys)`` returns CPU tensors.

    Raises:
        NeuronKindsError: No weights file, a missing shard, or a file that is not a valid
            safetensors / PyTorch file (the message names the file).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        fmt = find_weight_format(directory)
        if fmt is None:
            names = " or ".join(n for pair in _WEIGHT_FILES.values() for n in pair)
            raise NeuronKindsError(f"{directory}: no weights found (expected {names})")
        self.format = fmt
        single, index = _WEIGHT_FILES[fmt]
        if (directory / single).is_file():
            files_by_key = None
            files = [directory / single]
        else:
            files_by_key = self._read_index(directory / index)
            files = sorted({directory / f for f in files_by_key.values()})
        self._file_of: dict[str, Path] = {}
        self._stored: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._bin_cache: dict[Path, dict[str, torch.Tensor]] = {}
        for file in files:
            if not file.is_file():
                raise NeuronKindsError(f"{file} is missing (listed in {directory / index})")
            for stored, shape in self._headers(file).items():
                key = stored.removeprefix("model.")
                self._file_of[key] = file
                self._stored[key] = stored
                self.shapes[key] = shape
        if files_by_key is not None:
            absent = sorted(k for k in files_by_key if k.removeprefix("model.") not in self.shapes)
            if absent:
                raise NeuronKindsError(
                    f"{directory / index} lists tensors its shards do not hold: {absent[:5]}"
                )

    @staticmethod
    def _read_index(path: Path) -> dict[str, str]:
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise NeuronKindsError(f"{path} is not a valid shard index: {err}") from err
        if not isinstance(weight_map, dict) or not weight_map:
            raise NeuronKindsError(f"{path}: weight_map is empty or not a mapping")
        return {str(k): str(v) for k, v in weight_map.items()}

    def _headers(self, file: Path) -> dict[str, tuple[int, ...]]:
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt") as handle:
                    return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            except Exception as err:  # SafetensorError is not importable by a stable name
                raise NeuronKindsError(f"{file} is not a valid safetensors file: {err}") from err
        state = self._load_bin(file)
        return {k: tuple(v.shape) for k, v in state.items()}

    def _load_bin(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._bin_cache:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # mmap needs the zip format; older files load without it
                try:
                    state = torch.load(file, map_location="cpu", weights_only=True)
                except Exception as err:
                    raise NeuronKindsError(f"{file} is not a readable PyTorch file: {err}") from err
            if not isinstance(state, dict) or not all(
                isinstance(v, torch.Tensor) for v in state.values()
            ):
                raise NeuronKindsError(f"{file} does not hold a state dict of tensors")
            self._bin_cache[file] = state
        return self._bin_cache[file]

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors named ``keys`` (CPU, as stored); each safetensors file opened once.

        Raises:
            NeuronKindsError: A key the checkpoint lacks, or a file that cannot be read.
        """
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            if key not in self._file_of:
                raise NeuronKindsError(f"{self.directory}: tensor {key!r} is missing")
            by_file.setdefault(self._file_of[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for file, wanted in by_file.items():
            if self.format == "bin":
                state = self._load_bin(file)
                out.update({k: state[self._stored[k]] for k in wanted})
                continue
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt") as handle:
                    out.update({k: handle.get_tensor(self._stored[k]) for k in wanted})
            except Exception as err:
                raise NeuronKindsError(f"{file}: cannot read tensors {wanted[:3]}: {err}") from err
        return out
