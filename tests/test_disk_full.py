"""A full disk: one line naming the file, nothing half-written, and a run that resumes.

The unit tests simulate the full disk (``ENOSPC`` raised the ways the writers raise it) and run
everywhere; the command line tests mount a small tmpfs, so they need root (or CAP_SYS_ADMIN)
and are skipped with the reason otherwise.
"""

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

import tl_neuronkinds as nk
from tl_neuronkinds.atomic import (
    DiskFull,
    atomic_dir,
    atomic_write,
    atomic_write_text,
    write_tensors,
)
from tl_neuronkinds.recording.checkpoint import RunCheckpoint

RUST_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


def _leftovers(root: Path) -> list[Path]:
    """Temporary files or directories of atomic writes under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _rust_full(*args: object, **kwargs: object) -> None:
    raise SafetensorError(RUST_ENOSPC)


# ------------------------------------------------------------------ simulated full disks
def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "out" / "table.csv"
    atomic_write_text(target, "old\n")

    def half_then_full(tmp: Path) -> None:
        tmp.write_text("half a ta")
        _full()

    with pytest.raises(DiskFull) as caught:
        atomic_write(target, half_then_full)
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: no space left on device (")
    assert message.endswith(" free)") and "\n" not in message
    assert caught.value.path == target and caught.value.free is not None
    assert target.read_text() == "old\n" and not _leftovers(tmp_path)


def test_text_writes_say_how_much_they_needed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Path, "write_bytes", _full)
    with pytest.raises(
        DiskFull, match=r"report\.html: no space left on device \(3\.0 KiB needed, "
    ):
        atomic_write_text(tmp_path / "report.html", "x" * 3072)
    assert not list(tmp_path.iterdir())


def test_safetensors_full_disk_names_the_file_and_its_size(tmp_path, monkeypatch) -> None:
    tensors = {"tokens": torch.zeros(256, 1024, dtype=torch.int32)}
    monkeypatch.setattr(safetensors.torch, "save_file", _rust_full)
    with pytest.raises(DiskFull, match=r"tokens\.safetensors: no space .* \(1\.0 MiB needed, "):
        atomic_write(tmp_path / "tokens.safetensors", lambda tmp: write_tensors(tensors, tmp))
    with pytest.raises(DiskFull, match=r"d/counts\.safetensors: no space .* \(1\.0 MiB needed"):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "profile.json").write_text("{}")
            write_tensors(tensors, tmp / "counts.safetensors")
    assert not (tmp_path / "d").exists() and not list(tmp_path.iterdir())


def test_quota_and_errors_inside_directories_and_nested_writes(tmp_path) -> None:
    def over_quota(tmp: Path) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp))

    with pytest.raises(DiskFull, match=r"q\.json: disk quota exceeded$"):
        atomic_write(tmp_path / "q.json", over_quota)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "kept").write_text("old")
    with pytest.raises(DiskFull, match=r"d/sub/x\.csv: no space left on device \(1 B needed"):
        with atomic_dir(tmp_path / "d") as tmp:  # the inner write names its final path
            atomic_write(tmp / "sub" / "x.csv", _full, size=1)
    with pytest.raises(DiskFull, match=r"cannot write .*/m: no space left"):
        with atomic_dir(tmp_path / "m"):
            _rust_full()  # no file named (a library's save_pretrained): the directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert (tmp_path / "d" / "kept").read_text() == "old"


def test_other_errors_pass_through_unchanged(tmp_path) -> None:
    def denied(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "a", denied)
    with pytest.raises(ValueError, match="not a disk"):
        with atomic_dir(tmp_path / "b"):
            raise ValueError("not a disk problem")
    assert not list(tmp_path.iterdir())


def _segment(seed: int) -> nk.NeuronProfile:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 9, (4, 10), generator=gen)
    tokens[:, 0] = 2
    acts = {0: torch.randn(4, 10, 6, generator=gen)}
    return nk.profile_from_activations(tokens, acts, d_vocab=9)


def test_a_checkpoint_that_hits_a_full_disk_resumes_from_the_last_segment(
    tmp_path, monkeypatch
) -> None:
    ckpt = RunCheckpoint(tmp_path / "ckpt", {"run": 1})
    ckpt.add_segment(_segment(0), rows_done=4, seconds=1.0)
    monkeypatch.setattr(safetensors.torch, "save_file", _rust_full)
    with pytest.raises(DiskFull, match=r"ckpt/seg-000001/counts\.safetensors: no space left"):
        ckpt.add_segment(_segment(1), rows_done=8, seconds=2.0)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["seg-000000", "state.json"]
    resumed = RunCheckpoint(tmp_path / "ckpt", {"run": 1})
    assert resumed.rows_done == 4 and len(resumed.segments()) == 1
    resumed.add_segment(_segment(1), rows_done=8, seconds=2.0)
    assert RunCheckpoint(tmp_path / "ckpt", {"run": 1}).rows_done == 8


# ------------------------------------------------------------------ a real full disk
@contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; the test is skipped where mounting is not
    allowed. Always unmounted."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a full disk needs root (or CAP_SYS_ADMIN)")
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _resize(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tl_neuronkinds", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _one_line_disk_error(done: subprocess.CompletedProcess, root: Path) -> str:
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert errors[0].startswith("tl-neuronkinds: error: cannot write "), errors
    assert "no space left on device" in errors[0], errors
    assert not _leftovers(root), _leftovers(root)
    return errors[0]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    text = "the cat sat on the mat. the dog sat on the log. " * 40
    path.write_text("\n".join(json.dumps({"text": f"{i} {text}"}) for i in range(4)))
    return path


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of ``disk``'s free space."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(os.statvfs(disk).f_bavail * 4096 - leave, 1))
    return filler


@pytest.mark.slow
def test_profile_on_a_full_disk_says_one_line_and_resumes_once_there_is_room(
    checkpoint_dir, corpus_file, tmp_path
) -> None:
    # Each checkpoint of this run takes about 0.4 MB: 1 MB holds the first ones, not all.
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "run"
        args = [
            "profile", "--model", checkpoint_dir, "--corpus", corpus_file, "--seq-len", "16",
            "--device", "cpu", "--tokens", "256", "--checkpoint-every", "64", "--no-report",
            "--out", out,
        ]  # fmt: skip
        _one_line_disk_error(_cli(*args), disk)
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        assert state["rows_done"] > 0 and not state["finished"]  # the checkpoints were kept
        assert not json.loads((out / "run.json").read_text())["finished"]
        _resize(disk, "16m")
        done = _cli(*args)
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "run.json").read_text())["finished"]
        assert not _leftovers(disk)
        # `tables` on a full disk: the same one line; with room again, it writes them.
        (out / "classification.csv").unlink()
        filler = _fill(disk, leave=4096)
        _one_line_disk_error(_cli("tables", out), disk)
        assert not (out / "classification.csv").exists()
        filler.unlink()
        assert _cli("tables", out).returncode == 0 and (out / "classification.csv").exists()
