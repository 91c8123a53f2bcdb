"""`tl-neuronkinds`: outputs, resume after an interruption, one-line errors with nothing
half-written, corpora of several files, and runs killed at several points."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from profile_checks import assert_same

import tl_neuronkinds as nk
from tl_neuronkinds import atomic, cli
from tl_neuronkinds.cli import common
from tl_neuronkinds.cli import run as cli_run
from tl_neuronkinds.recording import checkpoint

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"{i} {TEXT}"}) for i in range(4)))
    return path


def _args(model: Path, corpus: Path | list, out: Path, *extra: str) -> list[str]:
    corpora = [str(c) for c in corpus] if isinstance(corpus, list) else [str(corpus)]
    return [
        "profile", "--model", str(model), "--corpus", *corpora, "--seq-len", "16",
        "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def _one_line_error(capsys) -> str:
    """The error: the last line on stderr, one line, after at most the run's progress lines."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    assert err[-1].startswith("tl-neuronkinds: error: "), err
    return err[-1]


def test_profile_writes_profile_table_and_summaries(
    checkpoint_dir, corpus_file, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "256")) == 0
    profile = nk.NeuronProfile.load(out / "profile")
    assert profile.n_positions == 256 and profile.seq_len == 16 and profile.ngram_cap == 50
    table = pd.read_parquet(out / "classification.parquet")
    assert len(table) == 2 * 64 and "evidence" in table.columns
    assert len(pd.read_csv(out / "classification.csv")) == 2 * 64
    for name in ("fig1a", "fig1b", "fig2_n1", "fig2_n3", "fig3a_n2", "fig3b_n1", "fig4_n1"):
        assert (out / f"summary_{name}.csv").exists(), name
    assert (out / "summary_fig8.csv").exists() and (out / "summary_layers.csv").exists()
    assert "n_detectors_under_10" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["finished"] is True
    assert not (out / "checkpoint").exists()  # only a resume needed it
    # A finished run is refused without --overwrite; other settings too; tables rebuild.
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "256")) == 2
    assert "tables" in _one_line_error(capsys)
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "128")) == 2
    assert "other settings" in _one_line_error(capsys)
    (out / "summary_layers.csv").unlink()
    assert cli.main(["tables", str(out)]) == 0
    assert (out / "summary_layers.csv").exists()
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "128", "--overwrite")) == 0
    assert nk.NeuronProfile.load(out / "profile").n_positions == 128


@pytest.mark.slow
def test_an_interrupted_run_says_so_in_one_line_and_resumes(
    checkpoint_dir, corpus_file, tmp_path, monkeypatch, capsys
) -> None:
    straight = tmp_path / "straight"
    args = ("--tokens", "320", "--checkpoint-every", "64", "--batch-size", "2")
    assert cli.main(_args(checkpoint_dir, corpus_file, straight, *args)) == 0
    real = checkpoint.RunCheckpoint.add_segment
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second checkpoint

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(checkpoint.RunCheckpoint, "add_segment", interrupted)
    capsys.readouterr()
    assert cli.main(_args(checkpoint_dir, corpus_file, resumed, *args)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "8 sequences are saved" in err and "resume" in err
    assert json.loads((resumed / "run.json").read_text())["finished"] is False
    monkeypatch.undo()
    assert cli.main(_args(checkpoint_dir, corpus_file, resumed, *args)) == 0
    assert "128 tokens already recorded, 192 remain" in capsys.readouterr().err
    assert_same(
        nk.NeuronProfile.load(straight / "profile"), nk.NeuronProfile.load(resumed / "profile")
    )


@pytest.mark.slow
def test_top_k_and_histogram_reach_the_profile(checkpoint_dir, corpus_file, tmp_path) -> None:
    out = tmp_path / "h"
    extra = ("--tokens", "128", "--top-k", "3", "--histogram", "--window", "2,1", "--no-report")
    assert cli.main(_args(checkpoint_dir, corpus_file, out, *extra)) == 0
    profile = nk.NeuronProfile.load(out / "profile")
    assert profile.top_k == 3 and all(c.hist is not None for c in profile.counts.values())
    assert profile.window == (2, 1) and profile.counts[0].top_window_ids.shape[-1] == 4
    hist = nk.activation_histogram(profile, 0)
    active = profile.counts[0].active.numpy()
    assert (hist.groupby("neuron")["count"].sum().to_numpy() == active).all()
    out0 = tmp_path / "none"
    assert cli.main(_args(checkpoint_dir, corpus_file, out0, "--tokens", "64", "--top-k", "0")) == 0
    assert nk.NeuronProfile.load(out0 / "profile").top_k == 0
    assert nk.NeuronProfile.load(out0 / "profile").window is None
    assert (out0 / "report.html").exists()  # without contexts, and says so


@pytest.mark.slow
def test_invalid_settings_write_nothing(checkpoint_dir, corpus_file, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    for extra, message in (
        (("--layers", "0,9"), "layers"),
        (("--layers", "a"), "--layers"),
        (("--tokens", "x"), "--tokens"),
        (("--ngram-cap", "3"), "--ngram-cap"),
        (("--checkpoint-every", "0"), "--checkpoint-every"),
        (("--top-k", "-1"), "--top-k"),
        (("--window", "3"), "--window"),
        (("--window", "300,4"), "--window"),
    ):
        assert cli.main(_args(checkpoint_dir, corpus_file, out, *extra)) == 2
        assert message in _one_line_error(capsys)
        assert not out.exists()
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "64")) == 0  # then fine
    file = tmp_path / "a-file"
    file.write_text("x")
    assert cli.main(_args(checkpoint_dir, corpus_file, file)) == 2
    assert "a file is there" in _one_line_error(capsys)
    missing = tmp_path / "nope.jsonl"
    assert cli.main(_args(checkpoint_dir, missing, tmp_path / "o2")) == 2
    assert "nope.jsonl" in _one_line_error(capsys)
    assert (
        cli.main(["profile", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o3")])
        == 2
    )
    _one_line_error(capsys)


@pytest.mark.slow
def test_a_disk_error_is_one_line_and_the_run_is_not_marked_finished(
    checkpoint_dir, corpus_file, tmp_path, monkeypatch, capsys
) -> None:
    real = atomic.atomic_write

    def full_disk(path, write):
        if str(path).endswith(".csv"):
            raise OSError(28, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(cli_run, "atomic_write", full_disk)
    out = tmp_path / "full"
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "64")) == 2
    assert "No space left on device" in _one_line_error(capsys)
    assert json.loads((out / "run.json").read_text())["finished"] is False
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind
    monkeypatch.undo()
    assert cli.main(_args(checkpoint_dir, corpus_file, out, "--tokens", "64")) == 0


@pytest.mark.slow
def test_every_jsonl_is_parsed_and_text_files_mix_in(checkpoint_dir, corpus_file, tmp_path) -> None:
    second = tmp_path / "more.jsonl"
    second.write_text(json.dumps({"text": "a jsonl document " * 30}) + "\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("a plain text document " * 30)
    corpus = common.corpus(
        argparse.Namespace(
            corpus=[str(corpus_file), str(second), str(plain)], suffix=None, glob=None
        )
    )
    docs = list(corpus)
    assert len(docs) == 6 and docs[4].startswith("a jsonl") and docs[5].startswith("a plain")
    assert not any(doc.startswith("{") for doc in docs)  # no JSON read as text
    out = tmp_path / "mixed"
    assert cli.main(_args(checkpoint_dir, [corpus_file, second, plain], out, "--tokens", "64")) == 0


# ------------------------------------------------------------------ real processes
def _command(model: Path, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tl_neuronkinds"] + _args(
        model, corpus, out, "--tokens", "2048", "--checkpoint-every", "64", "--batch-size", "1"
    )


def _env() -> dict[str, str]:
    """The subprocess's environment: offline, and one compute thread, so that on a 2-core
    machine the test process that watches its checkpoints to interrupt it is not starved past
    the moment. A 2,048-token run writes its 32 checkpoints over about 2.4 s on one thread of
    this machine, so a watcher starved for a second still finds it running."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def _interruptible() -> None:
    # A job started in the background by a non-interactive shell (nohup cmd &) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: Ctrl-C, as a user's
    # terminal sends it, needs the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait(command: list[str], ready) -> subprocess.Popen:
    proc = subprocess.Popen(
        command,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def _segments(out: Path) -> int:
    try:
        return len(json.loads((out / "checkpoint" / "state.json").read_text())["segments"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_ctrl_c_and_kill_9_at_several_points_end_in_the_uninterrupted_profile(
    checkpoint_dir, corpus_file, tmp_path
) -> None:
    straight = tmp_path / "straight"
    subprocess.run(
        _command(checkpoint_dir, corpus_file, straight), env=_env(), check=True, capture_output=True
    )
    reference = nk.NeuronProfile.load(straight / "profile")
    out = tmp_path / "stopped"
    command = _command(checkpoint_dir, corpus_file, out)
    # Ctrl-C after two checkpoints: one line, exit 130, nothing else.
    proc = _start_and_wait(command, lambda: _segments(out) >= 2)
    assert proc.poll() is None, "the run ended before the test could interrupt it"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "tl-neuronkinds: interrupted"
    )
    # kill -9 at three points: while recording, before any new checkpoint, while writing outputs.
    for ready in (
        lambda: _segments(out) >= 5,
        lambda: True,
        lambda: (
            (out / "profile").exists()
            or _segments(out) == 0
            and (out / "checkpoint" / "profile").exists()
        ),
    ):
        proc = _start_and_wait(command, ready)
        proc.kill()
        proc.communicate(timeout=120)
    finished = subprocess.run(command, env=_env(), capture_output=True, text=True)
    state = json.loads((out / "run.json").read_text())
    assert finished.returncode == 0 or (finished.returncode == 2 and state["finished"]), (
        finished.stderr
    )
    assert state["finished"] is True and (out / "summary_layers.csv").exists()
    assert_same(nk.NeuronProfile.load(out / "profile"), reference)


@pytest.mark.slow
def test_torchrun_records_data_parallel(checkpoint_dir, corpus_file, tmp_path) -> None:
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    base = _args(checkpoint_dir, corpus_file, single, "--tokens", "256", "--ngram-cap", "none")
    assert cli.main(base) == 0
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", "29517", "-m", "tl_neuronkinds",
        *_args(checkpoint_dir, corpus_file, parallel, "--tokens", "256", "--ngram-cap", "none"),
    ]  # fmt: skip
    env = {**_env(), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = nk.NeuronProfile.load(parallel / "profile")
    assert got.meta["world_size"] == 2
    assert_same(got, nk.NeuronProfile.load(single / "profile"))


def test_a_token_count_rounded_up_to_whole_rows_is_said(
    checkpoint_dir, corpus_file, tmp_path, capsys
) -> None:
    assert cli.main(_args(checkpoint_dir, corpus_file, tmp_path / "o", "--tokens", "10")) == 0
    note = "--tokens 10: using 16 tokens, whole rows of --seq-len 16 (1 row)"
    assert note in capsys.readouterr().err
    assert nk.NeuronProfile.load(tmp_path / "o" / "profile").n_positions == 16


def test_classification_csv_keeps_one_row_per_line() -> None:
    table = pd.DataFrame(
        {"layer": [0, 0], "neuron": [1, 2], "triggers": [["\n", " the", "a\tb"], ["\u200b"]]}
    )
    csv = cli_run.csv_table(table).to_csv(index=False)
    assert csv.splitlines() == ["layer,neuron,triggers", "0,1,↵ |  the | a⇥b", "0,2,⟨U+200B⟩"]
    assert table["triggers"][0] == ["\n", " the", "a\tb"]  # the table itself is left as it was


def test_report_without_matplotlib_names_the_extra_and_no_missing_option(
    tmp_path, monkeypatch, capsys
) -> None:
    # `report` has no --no-report: the error names the extra to install, and no option.
    from tl_neuronkinds.present import plots

    def missing() -> None:
        raise nk.NeuronKindsError(f"drawing the figures needs matplotlib: {plots.EXTRA}")

    monkeypatch.setattr(plots, "require_matplotlib", missing)
    cli_run.write_run(tmp_path, {"model": "embedded"}, finished=True, report=True)
    (tmp_path / "profile").mkdir()
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "--no" not in err and len(err.strip().splitlines()) == 1


def test_folder_corpus_skips_binary_files_with_a_note(tmp_path, capsys) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("plain text here", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("more text", encoding="utf-8")
    (folder / "c.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    (folder / "d.txt").write_bytes("caf\xe9".encode("latin-1"))

    def namespace(**options: Any) -> argparse.Namespace:
        return argparse.Namespace(corpus=[str(folder)], **{"suffix": None, "glob": None} | options)

    everything = common.corpus(namespace())
    assert sorted(everything) == ["more text", "plain text here"]
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "skipped 2 file(s)" in note
    assert "c.gz" in note and "d.txt" in note
    assert list(common.corpus(namespace(suffix=[".md"]))) == ["more text"]
    assert list(common.corpus(namespace(glob="*.txt"))) == ["plain text here"]
    with pytest.raises(nk.NeuronKindsError, match="--corpus"):
        common.corpus(argparse.Namespace(corpus=["embedded"], suffix=[".md"], glob=None))


def test_tokens_rounding_is_noted_for_massive_and_universal(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for argv in (["massive", "--tokens", "10", "--no-page", "--out", str(tmp_path / "m")],):
        done = subprocess.run(
            [sys.executable, "-m", "tl_neuronkinds", *argv], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert "note: --tokens 10: using 256 tokens, whole rows of --seq-len 256" in done.stderr
