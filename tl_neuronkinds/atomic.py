"""Atomic writes: a file or a directory appears whole under its name, or not at all.

Everything the package writes (profiles, checkpoints, tables, run state) goes through here: the
content is written under a temporary name beside the target and then renamed over it, so an
interruption (Ctrl-C, SIGKILL, a full disk) leaves either the old content or the new one, never a
half-written file; on any error the temporary file or directory is removed. Temporary names are
created with ``os.open(..., 0o666)`` / ``os.mkdir(..., 0o777)``, so written files follow the
user's umask (``tempfile.mkstemp`` would make them 0600).

A full disk or an exceeded quota, however the writer reports it (``OSError`` with ``ENOSPC`` /
``EDQUOT``, pyarrow's ``OSError``, safetensors' ``SafetensorError`` carrying the system's
message), becomes one ``DiskFull`` error naming the file under its final name, with the space
it needed where known and the space left.
"""

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tl_neuronkinds.errors import NeuronKindsError

#: The error numbers of a full disk, with the words the messages use.
_FULL = {
    code: words
    for code, words in (
        (errno.ENOSPC, "no space left on device"),
        (getattr(errno, "EDQUOT", None), "disk quota exceeded"),
    )
    if code is not None
}


class DiskFull(NeuronKindsError):
    """A write failed for want of space (or quota); nothing was left half-written.

    Attributes:
        path: The file (or directory) that could not be written, under its final name.
        reason: ``"no space left on device"`` or ``"disk quota exceeded"``.
        needed: The bytes the file needed, where the writer knew them, else None.
        free: The bytes left on the device once the temporary file was removed, else None.
    """

    def __init__(self, path: Path, reason: str, needed: int | None, free: int | None) -> None:
        self.path, self.reason, self.needed, self.free = path, reason, needed, free
        sizes = [f"{_size(needed)} needed"] if needed is not None else []
        sizes += [f"{_size(free)} free"] if free is not None else []
        detail = f" ({', '.join(sizes)})" if sizes else ""
        super().__init__(f"cannot write {path}: {reason}{detail}")


class _NoSpace(OSError):
    """A full disk reported by a writer that knows how many bytes the file needed."""

    def __init__(self, code: int, filename: Path, needed: int) -> None:
        super().__init__(code, os.strerror(code), str(filename))
        self.needed = needed


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file written by a library that forces 0600 (safetensors) the umask's mode."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_tensors(tensors: Mapping[str, Any], path: Path) -> None:
    """Save the torch ``tensors`` as a safetensors file at ``path``, with the umask's mode.

    The writer of a temporary file of ``atomic_write`` or ``atomic_dir``: a full disk raises
    an ``OSError`` that carries the bytes of the tensors, for ``DiskFull``'s message.
    """
    from safetensors.torch import save_file

    try:
        save_file(dict(tensors), str(path))
    except Exception as err:
        code = disk_full_code(err)
        if code is None:
            raise
        needed = sum(t.numel() * t.element_size() for t in tensors.values())
        raise _NoSpace(code, path, needed) from err
    follow_umask(path)


def _temp_name(target: Path, tag: str = "") -> Path:
    return target.parent / f".{target.name}.{tag}{secrets.token_hex(4)}.tmp"


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], object], *, size: int | None = None
) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``.

    Args:
        path: The file to write.
        write: Fills the temporary file whose path it is given.
        size: The bytes the file takes, where known: said when the disk is full.

    Raises:
        NeuronKindsError: ``path`` is an existing directory.
        DiskFull: The disk or the quota is full (the temporary file is removed).
    """
    target = Path(path)
    if target.is_dir():
        raise NeuronKindsError(f"cannot write {target}: it is a directory")
    tmp = _temp_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_if_full(err, tmp, target, size)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), size=len(data))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces the directory ``path``.

    An existing directory at ``path`` is replaced only once the new one is complete; on an
    error the temporary directory is removed and ``path`` is left as it was.

    Raises:
        NeuronKindsError: ``path`` is an existing file.
        DiskFull: The disk or the quota is full, naming the file inside ``path`` that did
            not fit where the writer said which.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NeuronKindsError(f"cannot write the directory {target}: a file is there")
    tmp = _temp_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp, 0o777)
        yield tmp
        _replace_dir(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_full(err, tmp, target, None)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete directory ``new`` to ``target``, replacing what was there."""
    if not target.exists():
        os.replace(new, target)
        return
    old = _temp_name(target, "old.")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ full disks
def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the errors it was raised from (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full_code(err: BaseException) -> int | None:
    """``ENOSPC`` or ``EDQUOT`` where ``err``, or an error it was raised from, reports one."""
    for current in _chain(err):
        if isinstance(current, OSError):
            if current.errno in _FULL:
                return current.errno
        elif isinstance(current, Exception):
            # safetensors (Rust) says "I/O error: No space left on device (os error 28)"
            text = str(current)
            for code in _FULL:
                if os.strerror(code) in text or f"os error {code})" in text:
                    return code
    return None


def _raise_if_full(err: BaseException, tmp: Path, target: Path, size: int | None) -> None:
    """Raise ``DiskFull`` from ``err`` where it reports a full disk, naming the file that did
    not fit under its final name (the temporary ``tmp`` becomes ``target``)."""
    if isinstance(err, DiskFull):  # from an atomic write inside this one's temporary directory
        path, reason, needed = err.path, err.reason, err.needed
    else:
        code = disk_full_code(err)
        if code is None:
            return
        named = next((e for e in _chain(err) if isinstance(e, OSError) and e.filename), None)
        path = Path(os.fsdecode(named.filename)) if named is not None else tmp
        path = path if tmp in path.parents else tmp  # not the temporary's: say the target
        reason = _FULL[code]
        no_space = next((e for e in _chain(err) if isinstance(e, _NoSpace)), None)
        needed = no_space.needed if no_space is not None else size
    if path == tmp or tmp in path.parents:
        path = target / path.relative_to(tmp)
    free = _free_bytes(path) if reason == _FULL[errno.ENOSPC] else None
    raise DiskFull(path, reason, needed, free) from err


def _free_bytes(path: Path) -> int | None:
    """The bytes free on the device of ``path`` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _size(n_bytes: int) -> str:
    """``n_bytes`` for a person: ``"512 B"``, ``"3.4 KiB"``, ``"1.2 MiB"``, ``"5.0 GiB"``."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    value = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
