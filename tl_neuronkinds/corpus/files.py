"""Text files into documents, for ``Corpus.from_files``: which files an entry names or finds
(a file, a folder walked recursively, a glob), and which of the found ones are text.

A file is *named* (a path to a file) or *found* (under a folder, or by a glob entry). A found
file that is not text is skipped and reported: binary (a NUL byte in its first 8 KiB) or not
valid UTF-8. A named file that is not text is an error.
"""

import os
from collections.abc import Sequence
from fnmatch import fnmatchcase
from glob import glob as glob_paths
from glob import has_magic
from pathlib import Path

from tl_neuronkinds.errors import NeuronKindsError

#: A file found under a folder with a NUL byte in its first bytes is binary.
_SNIFF_BYTES = 8192
#: How many names of skipped files an error message shows.
_NAMES_SHOWN = 5
_BINARY = "a binary file (NUL bytes), not text"


def read_files(
    specs: Sequence["str | os.PathLike[str]"],
    suffixes: Sequence[str] | None,
    pattern: str | None,
) -> tuple[list[str], list[Path], str]:
    """The documents of ``Corpus.from_files(specs, suffixes, glob=pattern)``, in order, the
    files skipped as not text (as found), and a summary for the description:
    ``"12 files"`` or ``"12 files; 3 skipped as not text: 2 binary, 1 not UTF-8"``.

    Raises:
        NeuronKindsError: see ``Corpus.from_files``.
    """
    if not specs:
        raise NeuronKindsError("Corpus.from_files: no paths given")
    if pattern is not None and (
        not isinstance(pattern, str) or not pattern or pattern.startswith("/")
    ):
        raise NeuronKindsError(
            f"glob must be a pattern relative to the folder, like '**/*.md', not {pattern!r}"
        )
    files: dict[Path, Path] = {}  # resolved -> as given, in order
    named: set[Path] = set()
    found: dict[str, list[Path]] = {}  # folder or glob entry -> the files it found (resolved)
    for spec in specs:
        paths, is_named = _expand(spec, suffixes, pattern)
        resolved = [path.resolve() for path in paths]
        for real, path in zip(resolved, paths, strict=True):
            files.setdefault(real, path)
        if is_named:
            named.update(resolved)
        else:
            found[os.fspath(spec)] = resolved
    docs: list[str] = []
    why: dict[Path, str] = {}  # resolved -> why it is not text
    for real, path in files.items():
        text, reason = _read_text(path)
        if text is not None:
            docs.append(text)
        elif real in named:
            raise NeuronKindsError(f"{path}: {reason}")
        else:
            why[real] = reason
    for spec, paths in found.items():
        if all(p in why for p in paths):
            shown = ", ".join(files[p].name for p in paths[:_NAMES_SHOWN])
            more = ", ..." if len(paths) > _NAMES_SHOWN else ""
            raise NeuronKindsError(
                f"{_what(spec)} holds no text file: {_skip_note(paths, why)} ({shown}{more})"
            )
    summary = f"{len(docs)} files" + (f"; {_skip_note(list(why), why)}" if why else "")
    return docs, [files[p] for p in why], summary


def _expand(
    spec: "str | os.PathLike[str]", suffixes: Sequence[str] | None, pattern: str | None
) -> tuple[list[Path], bool]:
    """The files one ``from_files`` entry names or finds, sorted, and whether it names them
    (a path to a file) rather than finds them (a folder or a glob entry)."""
    raw = os.fspath(spec)
    if has_magic(raw):
        matches = sorted(Path(m) for m in glob_paths(raw, recursive=True) if Path(m).is_file())
        if not matches:
            raise NeuronKindsError(f"glob {raw!r} matches no file")
        return matches, False
    path = Path(raw)
    if path.is_file():
        return [path], True
    if not path.is_dir():
        raise NeuronKindsError(f"{raw}: no such file or folder")
    found = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in names:
            if name.startswith(".") or (suffixes and not name.endswith(tuple(suffixes))):
                continue
            file = Path(folder, name)
            if pattern is None or _matches(file.relative_to(path).parts, pattern):
                found.append(file)
    if not found:
        wanted = [f"suffixes {list(suffixes)}"] if suffixes else []
        wanted += [f"glob {pattern!r}"] if pattern is not None else []
        filters = f" matching {' and '.join(wanted)}" if wanted else ""
        raise NeuronKindsError(f"folder {raw} holds no files{filters} to read")
    return sorted(found), False


def _matches(parts: Sequence[str], pattern: str) -> bool:
    """Whether a path relative to a folder (its ``parts``) matches ``from_files``'s ``glob``."""
    if "/" not in pattern:
        return fnmatchcase(parts[-1], pattern)
    return _match_levels(tuple(parts), tuple(p for p in pattern.split("/") if p))


def _match_levels(parts: tuple[str, ...], levels: tuple[str, ...]) -> bool:
    if not levels:
        return not parts
    if levels[0] == "**":
        return any(_match_levels(parts[i:], levels[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], levels[0]) and _match_levels(parts[1:], levels[1:])


def _read_text(path: Path) -> tuple[str | None, str]:
    """The text of ``path`` (UTF-8, a BOM dropped) and "", or None and why it is not text.

    Raises:
        NeuronKindsError: the file cannot be read at all.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            if b"\0" in head:
                return None, _BINARY
            data = head + handle.read()
    except OSError as err:
        raise NeuronKindsError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 text ({err.reason} at byte {err.start})"


def _what(spec: str) -> str:
    """A ``from_files`` entry that finds files, as a message names it."""
    return f"glob {spec!r}" if has_magic(spec) else f"folder {spec}"


def _skip_note(paths: list[Path], why: dict[Path, str]) -> str:
    """``3 skipped as not text: 2 binary, 1 not UTF-8``."""
    binary = sum(why[p] == _BINARY for p in paths)
    kinds = [f"{binary} binary"] if binary else []
    kinds += [f"{len(paths) - binary} not UTF-8"] if len(paths) > binary else []
    return f"{len(paths)} skipped as not text: {', '.join(kinds)}"
