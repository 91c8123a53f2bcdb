"""Corpora: ordered collections of text documents, from texts, files, JSON Lines, Hugging
Face datasets or the embedded default; ``Corpus.tokenize`` packs them (``packing.py``).
"""

import json
import os
import platform
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int

from tl_neuronkinds.checks import is_int
from tl_neuronkinds.corpus.embedded import embedded_split
from tl_neuronkinds.corpus.files import read_files
from tl_neuronkinds.corpus.packing import pack
from tl_neuronkinds.errors import NeuronKindsError

__all__ = ["Corpus"]

_SPLITS = ("train", "heldout", "all")


class Corpus:
    """An ordered, non-empty collection of text documents, held in memory.

    Empty and whitespace-only documents are skipped and counted in ``n_empty_skipped``; the
    files ``from_files`` found under a folder but did not read (not text) are in ``skipped``.

    Args:
        documents: the document strings, in order (checked here: anything else raises).
        description: where the documents came from; stored in profiles as metadata.
        skipped: the files passed over while reading the documents (``from_files``).

    Raises:
        NeuronKindsError: a document is not a string, or no non-empty document remains.
    """

    def __init__(
        self,
        documents: Iterable[object],
        description: str,
        *,
        skipped: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
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
        self.skipped: tuple[Path, ...] = tuple(Path(p) for p in skipped)

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def __repr__(self) -> str:
        return (
            f"Corpus({self.description!r}, documents={len(self)}, "
            f"empty_skipped={self.n_empty_skipped}, files_skipped={len(self.skipped)})"
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
        glob: str | None = None,
    ) -> "Corpus":
        """A corpus with one document per UTF-8 text file.

        Files are *named* (a path to a file) or *found* (under a folder, or by a glob entry).
        A found file that is not text is skipped and listed in ``skipped``: binary (a NUL byte
        in its first 8 KiB: archives, images, UTF-16) or not valid UTF-8 (latin-1, say); the
        description counts them. A named file that is not text is an error.

        Args:
            paths_or_globs: files, folders (read recursively, hidden entries skipped, sorted)
                and glob patterns (``**`` recursive, matches sorted); each entry must match
                something. A file named twice is read once.
            suffixes: if given, only files under a folder with one of these suffixes (e.g.
                ``(".txt", ".md")``) are read.
            glob: if given, only files under a folder whose path matches this pattern are
                read (with ``suffixes`` too, both must hold). A pattern without ``/`` is
                matched against the file's name (``"*.txt"``: at any depth); one with ``/``,
                against its path relative to the folder, where ``*``, ``?`` and ``[...]``
                stay within one folder level and a ``**`` level matches any number of levels
                (``"**/*.md"``: every ``.md``; ``"guide/*.md"``: those right in ``guide/``).
                Case-sensitive. ``suffixes`` and ``glob`` leave named files and glob entries
                alone: those are always read.

        Raises:
            NeuronKindsError: a missing path, a glob or folder matching no file or no text
                file (the message names what was skipped), or a named file that is not UTF-8
                text (the message names it).
        """
        specs = (
            [paths_or_globs]
            if isinstance(paths_or_globs, (str, os.PathLike))
            else list(paths_or_globs)
        )
        docs, skipped, summary = read_files(specs, suffixes, glob)
        shown = ", ".join(os.fspath(s) for s in specs[:3]) + (", ..." if len(specs) > 3 else "")
        return cls(docs, f"files({shown}; {summary})", skipped=skipped)

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
        if max_documents is not None and (not is_int(max_documents) or max_documents < 1):
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
        and generated arithmetic, interleaved (see :mod:`tl_neuronkinds.corpus.embedded` for
        contents, sizes and the fixed 95% / 5% train / held-out split).

        Args:
            split: ``"train"``, ``"heldout"`` or ``"all"``.
            seed: seeds the arithmetic problems and the order of documents.
        """
        if split not in _SPLITS:
            raise NeuronKindsError(
                f"embedded corpus: split must be one of {_SPLITS}, not {split!r}"
            )
        if not is_int(seed):
            raise NeuronKindsError(f"embedded corpus: seed must be an integer, not {seed!r}")
        docs = [d.text for d in embedded_split(seed, split)]
        python = platform.python_version()
        return cls(docs, f"embedded(split={split}, seed={seed}, python={python})")

    # ---------------------------------------------------------------------------- transforms

    def shard(self, rank: int, world_size: int) -> "Corpus":
        """Documents ``rank::world_size``: the shards of all ranks partition the documents.

        A shard's ``n_empty_skipped`` is 0: skipped documents are counted by the corpus that
        read them. Its ``skipped`` files are the corpus's: they were not read for any shard.

        Raises:
            NeuronKindsError: ``world_size < 1``, ``rank`` outside ``[0, world_size)``, or more
                ranks than documents (a shard would be empty).
        """
        if not is_int(world_size) or world_size < 1:
            raise NeuronKindsError(
                f"shard: world_size must be a positive integer, not {world_size!r}"
            )
        if not is_int(rank) or not 0 <= rank < world_size:
            raise NeuronKindsError(f"shard: rank must be in [0, {world_size}), not {rank!r}")
        if world_size > len(self._docs):
            raise NeuronKindsError(
                f"shard: {world_size} shards of corpus {self.description} with only "
                f"{len(self._docs)} documents would leave some empty"
            )
        return Corpus(
            self._docs[rank::world_size],
            f"{self.description}[shard {rank}/{world_size}]",
            skipped=self.skipped,
        )

    def tokenize(
        self,
        tokenizer: Any,
        seq_len: int = 2048,
        n_tokens: int | None = None,
        progress: bool | None = None,
        max_len: int | None = None,
    ) -> Int[torch.Tensor, "batch pos"]:
        """Pack the documents into full rows ``[BOS, ...]`` of ``seq_len`` tokens.

        See :func:`tl_neuronkinds.corpus.packing.pack` for the rows, separators and arguments.
        """
        return pack(self._docs, self.description, tokenizer, seq_len, n_tokens, progress, max_len)
