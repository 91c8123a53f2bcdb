"""Atomic writes: a file or a directory appears whole under its name, or not at all.

Everything the package writes (profiles, checkpoints, tables, run state) goes through here: the
content is written under a temporary name beside the target and then renamed over it, so an
interruption (Ctrl-C, SIGKILL, a full disk) leaves either the old content or the new one, never a
half-written file. Temporary names are created with ``os.open(..., 0o666)`` / ``os.mkdir(...,
0o777)``, so written files follow the user's umask (``tempfile.mkstemp`` would make them 0600).
"""

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tl_neuronkinds.errors import NeuronKindsError


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file written by a library that forces 0600 (safetensors) the umask's mode."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _temp_name(target: Path, tag: str = "") -> Path:
    return target.parent / f".{target.name}.{tag}{secrets.token_hex(4)}.tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``.

    Raises:
        NeuronKindsError: ``path`` is an existing directory.
    """
    target = Path(path)
    if target.is_dir():
        raise NeuronKindsError(f"cannot write {target}: it is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces the directory ``path``.

    An existing directory at ``path`` is replaced only once the new one is complete; on an
    error the temporary directory is removed and ``path`` is left as it was.

    Raises:
        NeuronKindsError: ``path`` is an existing file.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NeuronKindsError(f"cannot write the directory {target}: a file is there")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
