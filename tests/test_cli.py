"""`tl-neuronkinds profile`: outputs, resume after an interruption, refusal of mismatched runs."""

import json
from pathlib import Path

import pandas as pd
import pytest
from opt_fixtures import make_tiny_opt, tiny_tokenizer
from profile_checks import assert_same

import tl_neuronkinds as nk
from tl_neuronkinds import cli, recording

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = make_tiny_opt(
        tmp_path_factory.mktemp("ckpt") / "m", vocab=300, n_ctx=32, tokenizer=False
    )
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"{i} {TEXT}"}) for i in range(4)))
    return path


def _args(checkpoint: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "profile",
        "--model",
        str(checkpoint),
        "--corpus",
        str(corpus),
        "--seq-len",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def test_profile_writes_profile_table_and_summaries(
    checkpoint, corpus_file, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    assert cli.main(_args(checkpoint, corpus_file, out, "--tokens", "256")) == 0
    profile = nk.NeuronProfile.load(out / "profile")
    assert profile.n_positions == 256 and profile.seq_len == 16
    table = pd.read_parquet(out / "classification.parquet")
    pd.testing.assert_frame_equal(
        table.drop(columns="triggers"),
        nk.classify(profile).drop(columns="triggers"),
        check_dtype=False,
    )
    assert len(pd.read_csv(out / "classification.csv")) == 2 * 64
    for name in (
        "fig1a",
        "fig1b",
        "fig2_n1",
        "fig2_n3",
        "fig3a_n2",
        "fig3b_n1",
        "fig4_n1",
        "fig8",
        "layers",
    ):
        assert (out / f"summary_{name}.csv").exists(), name
    assert "layer" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["finished"] is True
    # A finished run is refused without --overwrite; other settings too.
    assert cli.main(_args(checkpoint, corpus_file, out, "--tokens", "256")) == 2
    assert cli.main(_args(checkpoint, corpus_file, out, "--tokens", "128")) == 2
    assert cli.main(_args(checkpoint, corpus_file, out, "--tokens", "128", "--overwrite")) == 0
    assert nk.NeuronProfile.load(out / "profile").n_positions == 128


def test_interrupted_run_resumes_to_the_same_profile(
    checkpoint, corpus_file, tmp_path, monkeypatch
) -> None:
    straight = tmp_path / "straight"
    assert cli.main(_args(checkpoint, corpus_file, straight, "--tokens", "320")) == 0
    real_record = recording.record
    calls = {"n": 0}

    def failing_record(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user stops the run during the third chunk
        return real_record(*args, **kwargs)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(recording, "record", failing_record)
    with pytest.raises(KeyboardInterrupt):
        cli.main(
            _args(checkpoint, corpus_file, resumed, "--tokens", "320", "--checkpoint-every", "64")
        )
    assert nk.NeuronProfile.load(resumed / "profile").meta["rows_done"] == 8
    monkeypatch.setattr(recording, "record", real_record)
    assert (
        cli.main(
            _args(checkpoint, corpus_file, resumed, "--tokens", "320", "--checkpoint-every", "64")
        )
        == 0
    )
    a, b = nk.NeuronProfile.load(straight / "profile"), nk.NeuronProfile.load(resumed / "profile")
    assert a.n_positions == b.n_positions == 320
    assert_same(a, b)


def test_bad_input_is_reported_not_raised(checkpoint, tmp_path, capsys) -> None:
    missing = tmp_path / "nope.jsonl"
    assert (
        cli.main(
            [
                "profile",
                "--model",
                str(checkpoint),
                "--corpus",
                str(missing),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "nope.jsonl" in capsys.readouterr().err
    assert (
        cli.main(["profile", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o2")])
        == 2
    )
