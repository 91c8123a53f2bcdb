"""Corpora of documents and their packing into full-length token rows.

The paper (Voita et al. 2024, §2) records activations over full-length sequences; this module
turns any collection of documents into such rows:

- **Row**: ``[BOS, t_1, ..., t_{seq_len-1}]``; every row starts with ``tokenizer.bos_token_id``
  (OPT: ``</s>``, id 2) and is full: a final partial row is dropped.
- **Separator**: the tokenizer's EOS id (``tokenizer.eos_token_id``; the BOS id when there is
  no EOS; for OPT both are ``</s>``, id 2) is placed before every document that starts inside a
  row after other text. A document that starts right after a row's BOS has no separator: the
  BOS already marks the boundary, and OPT never sees ``</s></s>``. ../shared/SPEC.md
  ("Positional neurons") leaves separators that share BOS's id out of text positions.
- **Continuation**: a document longer than the rest of its row continues in the next row,
  after that row's BOS.

So the rows with their BOS column removed, concatenated, are exactly the documents' tokens
(encoded one by one without special tokens), in order, joined by separators, less the
separators that would fall at a row's first text position. Documents are encoded as plain
text (``split_special_tokens=True``): a literal ``"</s>"`` in a document is text, never a BOS.
"""

import array
import glob
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from tqdm import tqdm

from tl_neuronkinds.embedded_corpus import embedded_split
from tl_neuronkinds.errors import NeuronKindsError

__all__ = ["Corpus"]

_SPLITS = ("train", "heldout", "all")
#: At most this many documents, or this many characters, per call of the (fast,
#: batch-parallel) tokenizer; bounds what is encoded past ``n_tokens``.
_BATCH_DOCS = 512
_BATCH_CHARS = 2_000_000
#: A ``model_max_length`` at or above this is the "no limit" sentinel of transformers.
_SANE_MAX_LENGTH = 1_000_000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Corpus:
    """An ordered, non-empty collection of text documents, held in memory.

    Empty and whitespace-only documents are skipped and counted in ``n_empty_skipped``.

    Args:
        documents: the document strings, in order (checked here: anything else raises).
        description: where the documents came from; stored in profiles as metadata.

    Raises:
        NeuronKindsError: a document is not a string, or no non-empty document remains.
    """

    def __init__(self, documents: Iterable[object], description: str) -> None:
        kept, empty = [], 0
        for index, doc in enumerate(documents):
            if not isinstance(doc, str):
                raise NeuronKindsError(
                    f"corpus {description}: document {index} is a {type(doc).__name__}, "
                    "not a string"
                )
            if doc.strip():
                kept.append(doc)
            else:
                empty += 1
        if not kept:
            raise NeuronKindsError(
                f"corpus {description} is empty: no non-empty documents "
                f"({empty} empty or whitespace-only skipped)"
            )
        self._docs: list[str] = kept
        self.description: str = description
        self.n_empty_skipped: int = empty

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def __repr__(self) -> str:
        return (
            f"Corpus({self.description!r}, documents={len(self)}, "
            f"empty_skipped={self.n_empty_skipped})"
        )

    # ----------------------------------------------------------------------------- sources

    @classmethod
    def from_texts(cls, texts: Iterable[object], description: str | None = None) -> "Corpus":
        """A corpus of the given strings, one document each, in order."""
        texts = list(texts) if not isinstance(texts, str) else [texts]
        return cls(texts, description or f"texts(n={len(texts)})")

    @classmethod
    def from_files(
        cls,
        paths_or_globs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        suffixes: Sequence[str] | None = None,
    ) -> "Corpus":
        """A corpus with one document per UTF-8 text file.

        Args:
            paths_or_globs: files, folders (read recursively, hidden entries skipped, sorted)
                and glob patterns (``**`` recursive, matches sorted); each entry must match
                something. A file named twice is read once.
            suffixes: if given, only files under a folder with one of these suffixes (e.g.
                ``(".txt", ".md")``) are read; files named explicitly or by a glob always are.

        Raises:
            NeuronKindsError: a missing path, a glob or folder matching no file, or a file
                that is not valid UTF-8 (the message names it).
        """
        specs = (
            [paths_or_globs]
            if isinstance(paths_or_globs, (str, os.PathLike))
            else list(paths_or_globs)
        )
        if not specs:
            raise NeuronKindsError("Corpus.from_files: no paths given")
        files: dict[Path, Path] = {}  # resolved -> as named, in order
        for spec in specs:
            for path in _expand(spec, suffixes):
                files.setdefault(path.resolve(), path)
        docs = [_read_utf8(path) for path in files.values()]
        shown = ", ".join(os.fspath(s) for s in specs[:3]) + (", ..." if len(specs) > 3 else "")
        return cls(docs, f"files({shown}; {len(files)} files)")

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str], field: str = "text") -> "Corpus":
        """A corpus with one document per JSON Lines record, taken from ``record[field]``.

        Blank lines are ignored.

        Raises:
            NeuronKindsError: the file is missing or not UTF-8, or a line (named by its 1-based
                number) is not a JSON object with a string ``field``.
        """
        path = Path(path)
        if not path.is_file():
            raise NeuronKindsError(f"{path}: no such JSON Lines file")
        docs = []
        with path.open("rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise NeuronKindsError(
                        f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise NeuronKindsError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(record, dict) or field not in record:
                    raise NeuronKindsError(f"{path}:{lineno}: no field {field!r} in this record")
                if not isinstance(record[field], str):
                    raise NeuronKindsError(
                        f"{path}:{lineno}: field {field!r} is a "
                        f"{type(record[field]).__name__}, not a string"
                    )
                docs.append(record[field])
        return cls(docs, f"jsonl({path}, field={field})")

    @classmethod
    def from_hf(
        cls,
        name: str,
        split: str = "train",
        field: str = "text",
        *,
        max_documents: int | None = None,
        **load_kwargs: Any,
    ) -> "Corpus":
        """A corpus from a Hugging Face dataset, one document per record's ``field``.

        ``datasets`` is imported only here. ``name`` is a directory written by
        ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` or a name for
        ``datasets.load_dataset`` (which may download, unless ``HF_DATASETS_OFFLINE=1``).

        Args:
            name: the dataset directory or name.
            split: the split to read.
            field: the column holding the text.
            max_documents: read at most this many records (with ``streaming=True`` in
                ``load_kwargs``, only those are fetched).
            **load_kwargs: passed to ``datasets.load_dataset``.

        Raises:
            NeuronKindsError: ``datasets`` is missing, the dataset cannot be loaded, the split
                or the field does not exist.
        """
        try:
            import datasets
        except ImportError:
            raise NeuronKindsError(
                "Corpus.from_hf needs the `datasets` package: pip install datasets"
            ) from None
        if max_documents is not None and (not _is_int(max_documents) or max_documents < 1):
            raise NeuronKindsError(
                f"max_documents must be a positive integer, not {max_documents!r}"
            )
        try:
            if Path(name).is_dir():
                data = datasets.load_from_disk(name)
                if isinstance(data, datasets.DatasetDict):
                    if split not in data:
                        raise NeuronKindsError(
                            f"dataset {name}: no split {split!r} (it has {sorted(data)})"
                        )
                    data = data[split]
            else:
                data = datasets.load_dataset(name, split=split, **load_kwargs)
        except NeuronKindsError:
            raise
        except Exception as err:  # datasets raises many types; name the dataset
            raise NeuronKindsError(
                f"cannot load dataset {name!r} (split {split!r}): {err}"
            ) from err
        columns = data.column_names
        if columns is not None and field not in columns:
            raise NeuronKindsError(f"dataset {name}: no field {field!r} (columns: {columns})")
        docs = []
        for index, record in enumerate(data):
            if max_documents is not None and index >= max_documents:
                break
            if field not in record:
                raise NeuronKindsError(f"dataset {name}: record {index} has no field {field!r}")
            docs.append(record[field])
        return cls(docs, f"hf({name}, split={split}, field={field})")

    @classmethod
    def embedded(cls, split: str = "train", seed: int = 0) -> "Corpus":
        """The offline default corpus: the running Python's stdlib code, its documentation
        and generated arithmetic, interleaved (see :mod:`tl_neuronkinds.embedded_corpus` for
        contents, sizes and the fixed 95% / 5% train / held-out split).

        Args:
            split: ``"train"``, ``"heldout"`` or ``"all"``.
            seed: seeds the arithmetic problems and the order of documents.
        """
        if split not in _SPLITS:
            raise NeuronKindsError(
                f"embedded corpus: split must be one of {_SPLITS}, not {split!r}"
            )
        if not _is_int(seed):
            raise NeuronKindsError(f"embedded corpus: seed must be an integer, not {seed!r}")
        docs = [d.text for d in embedded_split(seed, split)]
        python = platform.python_version()
        return cls(docs, f"embedded(split={split}, seed={seed}, python={python})")

    # ---------------------------------------------------------------------------- transforms

    def shard(self, rank: int, world_size: int) -> "Corpus":
        """Documents ``rank::world_size``: the shards of all ranks partition the documents.

        A shard's ``n_empty_skipped`` is 0: skipped documents are counted by the corpus that
        read them.

        Raises:
            NeuronKindsError: ``world_size < 1``, ``rank`` outside ``[0, world_size)``, or more
                ranks than documents (a shard would be empty).
        """
        if not _is_int(world_size) or world_size < 1:
            raise NeuronKindsError(
                f"shard: world_size must be a positive integer, not {world_size!r}"
            )
        if not _is_int(rank) or not 0 <= rank < world_size:
            raise NeuronKindsError(f"shard: rank must be in [0, {world_size}), not {rank!r}")
        if world_size > len(self._docs):
            raise NeuronKindsError(
                f"shard: {world_size} shards of corpus {self.description} with only "
                f"{len(self._docs)} documents would leave some empty"
            )
        return Corpus(
            self._docs[rank::world_size], f"{self.description}[shard {rank}/{world_size}]"
        )

    def tokenize(
        self,
        tokenizer: Any,
        seq_len: int = 2048,
        n_tokens: int | None = None,
        progress: bool | None = None,
        max_len: int | None = None,
    ) -> Int[torch.Tensor, "batch pos"]:
        """Pack the documents into full rows ``[BOS, ...]`` of ``seq_len`` tokens (module doc).

        Args:
            tokenizer: a Hugging Face tokenizer (fast ones batch-encode in parallel) with a
                ``bos_token_id``.
            seq_len: tokens per row, BOS included; the paper uses the model's full context.
            n_tokens: if given, stop after ``ceil(n_tokens / seq_len)`` rows, the fewest whose
                tokens reach ``n_tokens``; otherwise use the whole corpus.
            progress: show a tqdm bar (None: only when it runs for more than 2 seconds).
            max_len: the model's context (``n_ctx``); ``seq_len`` may not exceed it.

        Returns:
            ``LongTensor[n_seq, seq_len]``; only full rows (a final partial row is dropped).

        Raises:
            NeuronKindsError: ``seq_len < 2``, ``seq_len`` above ``max_len`` or the tokenizer's
                ``model_max_length``, no ``bos_token_id``, bad ``n_tokens``, or fewer tokens
                than one row (or than ``n_tokens``).
        """
        if not _is_int(seq_len) or seq_len < 2:
            raise NeuronKindsError(
                f"seq_len must be an integer >= 2 (BOS plus text), not {seq_len!r}"
            )
        if max_len is not None and seq_len > max_len:
            raise NeuronKindsError(
                f"seq_len {seq_len} exceeds the model's context of {max_len} tokens"
            )
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < _SANE_MAX_LENGTH and seq_len > model_max:
            raise NeuronKindsError(
                f"seq_len {seq_len} exceeds the tokenizer's model_max_length of {model_max}"
            )
        if n_tokens is not None and (not _is_int(n_tokens) or n_tokens < 1):
            raise NeuronKindsError(f"n_tokens must be a positive integer or None, not {n_tokens!r}")
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise NeuronKindsError(
                f"tokenizer {type(tokenizer).__name__} has no bos_token_id; rows must start with BOS"
            )
        eos = getattr(tokenizer, "eos_token_id", None)
        sep = bos if eos is None else eos
        width = seq_len - 1  # text tokens per row
        want = None if n_tokens is None else math.ceil(n_tokens / seq_len) * width
        text = array.array("q")  # int64 text tokens, separators included, BOS excluded
        bar = tqdm(
            total=want,
            unit="tok",
            unit_scale=True,
            desc="tokenizing",
            disable=progress is False,
            delay=0 if progress else 2.0,
            mininterval=0.1 if sys.stderr is not None and sys.stderr.isatty() else 10.0,
            file=sys.stderr,
        )
        with bar:
            for batch in _batches(self._docs):
                encoded = tokenizer(
                    batch,
                    add_special_tokens=False,
                    split_special_tokens=True,
                    return_attention_mask=False,
                    verbose=False,
                )["input_ids"]
                before = len(text)
                for ids in encoded:
                    if len(text) % width:
                        text.append(sep)
                    text.extend(ids)
                bar.update((len(text) if want is None else min(len(text), want)) - before)
                if want is not None and len(text) >= want:
                    break
        n_rows = len(text) // width if want is None else want // width
        if n_rows == 0 or len(text) < n_rows * width:
            need = "one row" if want is None else f"the {n_rows} rows n_tokens={n_tokens} needs"
            raise NeuronKindsError(
                f"corpus {self.description} yields {len(text)} text tokens, "
                f"{len(text) // width} full rows of {seq_len}: fewer than {need}"
            )
        body = torch.frombuffer(text, dtype=torch.long)[: n_rows * width].view(n_rows, width)
        bos_column = torch.full((n_rows, 1), bos, dtype=torch.long)
        return torch.cat([bos_column, body], dim=1)


def _batches(docs: list[str]) -> Iterator[list[str]]:
    """Consecutive runs of documents, each within ``_BATCH_DOCS`` and ``_BATCH_CHARS``."""
    batch: list[str] = []
    chars = 0
    for doc in docs:
        if batch and (len(batch) == _BATCH_DOCS or chars + len(doc) > _BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(doc)
        chars += len(doc)
    if batch:
        yield batch


def _expand(spec: "str | os.PathLike[str]", suffixes: Sequence[str] | None) -> list[Path]:
    """The files one ``from_files`` entry names, sorted."""
    raw = os.fspath(spec)
    if glob.has_magic(raw):
        matches = sorted(Path(m) for m in glob.glob(raw, recursive=True) if Path(m).is_file())
        if not matches:
            raise NeuronKindsError(f"glob {raw!r} matches no file")
        return matches
    path = Path(raw)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NeuronKindsError(f"{raw}: no such file or folder")
    found = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in names:
            if name.startswith(".") or (suffixes and not name.endswith(tuple(suffixes))):
                continue
            found.append(Path(folder, name))
    if not found:
        raise NeuronKindsError(f"folder {raw} holds no files to read")
    return sorted(found)


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise NeuronKindsError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise NeuronKindsError(
            f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
