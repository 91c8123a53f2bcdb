"""Progress as a log shows it (stderr not a terminal): each pass named with an honest total, a
first line when it starts, its last line (at 100%) once, no ``nan``, no line twice; for
``Progress`` itself, ``nk.record``'s passes, and ``tl-neuronkinds massive`` / ``universal`` run
as a user runs them."""

import os
import re
import subprocess
import sys

import pytest
import torch
from recording_reference import BOS, random_tokens, tiny_model

import tl_neuronkinds as nk
from tl_neuronkinds import progress as progress_module
from tl_neuronkinds.data import embedded_model_dir
from tl_neuronkinds.progress import SECONDS_VARIABLE, Progress, line_seconds
from tl_neuronkinds.recording.checkpoint import RunCheckpoint

#: ``phase: [resuming at |stopped at ]done/total unit (percent%)...``
LINE = re.compile(
    r"^(?P<phase>.+?): (?:resuming at |stopped at )?(?P<done>[\d,]+)/(?P<total>[\d,]+) "
    r"(?P<unit>\S+) \((?P<percent>\d+)%\)"
)


def _parsed(err: str) -> list[dict]:
    """Every progress line of ``err``, parsed (numbers as ints)."""
    out = []
    for line in err.splitlines():
        match = LINE.match(line)
        if match:
            row = match.groupdict()
            out.append(
                {
                    "line": line,
                    "phase": row["phase"],
                    "done": int(row["done"].replace(",", "")),
                    "total": int(row["total"].replace(",", "")),
                    "percent": int(row["percent"]),
                }
            )
    return out


def _check_log(err: str) -> dict[str, list[dict]]:
    """The checks every log must pass; its lines by phase, in order."""
    assert "\r" not in err and "nan" not in err.lower()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), "a line shown twice"
    by_phase: dict[str, list[dict]] = {}
    for row in _parsed(err):
        by_phase.setdefault(row["phase"], []).append(row)
    assert by_phase, err
    for phase, rows in by_phase.items():
        announced = rows[0]["total"]
        assert rows[0]["done"] == 0 or "resuming" in rows[0]["line"], phase  # shown at the start
        assert all(row["total"] == announced for row in rows), phase  # one honest total
        last = rows[-1]
        assert last["done"] == last["total"] == announced and last["percent"] == 100, phase
        assert sum(row["percent"] == 100 for row in rows) == 1, phase  # the last line once
        assert [row["done"] for row in rows] == sorted(row["done"] for row in rows), phase
    return by_phase


@pytest.fixture
def log(monkeypatch):
    """Plain lines as in a log, every update shown."""
    monkeypatch.setattr(progress_module, "_watched", lambda: False)
    monkeypatch.setenv(SECONDS_VARIABLE, "0")


def test_a_pass_shows_its_start_its_progress_and_its_end_once(log, capsys) -> None:
    bar = Progress(10, unit="step", phase="steps")
    first = capsys.readouterr().err
    assert first == "steps: 0/10 step (0%)\n"  # at once, with its total
    for _ in range(10):
        bar.update(1)
    bar.close()
    bar.close()
    err = first + capsys.readouterr().err
    rows = _check_log(err)["steps"]
    assert len(rows) == 11 and re.search(r"\(100%\) in [\d.]+ s", rows[-1]["line"])


def test_a_resumed_pass_with_nothing_left_says_so_without_a_rate(log, capsys) -> None:
    bar = Progress(32_768, initial=32_768, phase="record")
    bar.close()
    err = capsys.readouterr().err
    assert err == "record: 32,768/32,768 tok (100%), already done\n"
    resumed = Progress(100, initial=40, phase="again")
    resumed.update(60)
    resumed.close()
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "again: resuming at 40/100 tok (40%)"
    _check_log(err)


def test_passes_each_have_their_total_and_a_stopped_pass_says_so(log, capsys) -> None:
    bar = Progress(0, enabled=None)
    assert capsys.readouterr().err == ""  # nothing before the first pass is named
    bar.set_phase("pass 1/2 (a)", 4)
    bar.update(4)
    bar.set_phase("pass 2/2 (b)", 6, unit="step")
    bar.update(6)
    bar.set_phase("extra pass (c)", 5, unit="tok")
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("extra pass (c): stopped at 2/5 tok (40%) in ")
    lines = _parsed(err)
    assert [r["phase"] for r in lines if r["percent"] == 100] == ["pass 1/2 (a)", "pass 2/2 (b)"]
    assert "6/6 step (100%)" in err


def test_percent_is_rounded_down_and_the_interval_is_honoured(log, monkeypatch, capsys) -> None:
    bar = Progress(1000, phase="p")
    bar.update(999)  # 99.9%: not 100 until done
    assert "999/1,000 tok (99%)" in capsys.readouterr().err
    monkeypatch.setenv(SECONDS_VARIABLE, "3600")
    quiet = Progress(10, phase="q")
    for _ in range(10):
        quiet.update(1)
    quiet.close()
    assert len(capsys.readouterr().err.splitlines()) == 2  # the start and the end only


def test_the_interval_is_read_from_the_environment_or_a_keyword(monkeypatch, capsys) -> None:
    monkeypatch.delenv(SECONDS_VARIABLE, raising=False)
    assert line_seconds() == progress_module.LINE_SECONDS == 30.0
    monkeypatch.setenv(SECONDS_VARIABLE, "0.5")
    assert line_seconds() == 0.5 and line_seconds(2.0) == 2.0
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(SECONDS_VARIABLE, bad)
        with pytest.raises(nk.NeuronKindsError, match=SECONDS_VARIABLE):
            line_seconds()
    with pytest.raises(nk.NeuronKindsError, match="seconds"):
        Progress(1, seconds=-2.0)
    monkeypatch.setattr(progress_module, "_watched", lambda: False)
    monkeypatch.setenv(SECONDS_VARIABLE, "0")
    silent = Progress(5, enabled=False, phase="x")
    silent.update(5)
    silent.note("hidden")
    silent.close()
    assert capsys.readouterr().err == ""


def test_record_shows_each_pass_with_its_own_total(log, capsys) -> None:
    tokens = random_tokens(32, n_seq=6)
    nk.record(tiny_model(), tokens, batch_size=2, bos_token_id=BOS)
    phases = _check_log(capsys.readouterr().err)
    assert list(phases) == ["record pass 1/2 (plan sample)", "record pass 2/2 (record)"]
    assert phases["record pass 2/2 (record)"][-1]["total"] == tokens.numel()
    nk.record(tiny_model(), tokens, batch_size=2, bos_token_id=BOS, ngram_cap=None)
    phases = _check_log(capsys.readouterr().err)
    assert list(phases) == ["record pass 1/1 (record)"]


def test_record_names_its_repair_as_an_extra_pass(log, capsys) -> None:
    """A given plan that misses every neuron leaves them to the repair pass."""
    model = tiny_model()
    tokens = random_tokens(34, n_seq=6)
    plan = {layer: torch.zeros(24, dtype=torch.bool) for layer in range(3)}
    profile = nk.record(model, tokens, batch_size=2, bos_token_id=BOS, plan=plan)
    assert "repair" in profile.meta["passes"]
    phases = _check_log(capsys.readouterr().err)
    assert list(phases) == ["record pass 1/1 (record)", "record extra pass (repair)"]
    assert all(rows[-1]["total"] == tokens.numel() for rows in phases.values())


def test_a_resumed_record_with_nothing_left_says_already_done(
    log, monkeypatch, tmp_path, capsys
) -> None:
    """Stopped after its last segment was saved, before it was marked finished."""
    tokens = random_tokens(35, n_seq=8)
    options = dict(
        batch_size=2, bos_token_id=BOS, ngram_cap=None, checkpoint_dir=tmp_path / "c",
        checkpoint_every=48,
    )  # fmt: skip

    def stop(self, profile, seconds):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(RunCheckpoint, "finish", stop)
        with pytest.raises(KeyboardInterrupt):
            nk.record(tiny_model(), tokens, **options)
    capsys.readouterr()
    nk.record(tiny_model(), tokens, **options)
    n = f"{tokens.numel():,}"
    assert capsys.readouterr().err.splitlines() == [
        f"resuming: {n} tokens already recorded, 0 remain",
        f"record pass 1/1 (record): {n}/{n} tok (100%), already done",
    ]
    nk.record(tiny_model(), tokens, **options)  # finished: the saved profile, said so
    saved = f"record: already done, the profile saved in {tmp_path / 'c'}\n"
    assert capsys.readouterr().err == saved


def _run(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    """``python -m tl_neuronkinds ARGS`` with stderr a pipe (not a terminal)."""
    env = {
        **os.environ,
        SECONDS_VARIABLE: "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tl_neuronkinds", *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_the_massive_command_logs_its_passes(tmp_path) -> None:
    # Low thresholds, so that the effects' passes run too.
    args = ["massive", "--tokens", "2048", "--seq-len", "128", "--batch-size", "4", "--no-page"]
    done = _run([*args, "--magnitude", "1", "--ratio", "2"], tmp_path)
    assert "2,048 tokens (16 x 128)" in done.stdout
    phases = _check_log(done.stderr)
    names = [
        "massive activations pass 1/2 (top-k and median counts)",
        "massive activations pass 2/2 (exact median)",
        "massive intervention pass 1/4 (means)",
        "massive intervention pass 2/4 (perplexity, none)",
        "massive intervention pass 3/4 (perplexity, zero)",
        "massive intervention pass 4/4 (perplexity, mean)",
        "massive attention pass 1/1",
    ]
    assert list(phases) == names
    assert phases[names[0]][-1]["total"] == 2048 and len(phases[names[0]]) > 2  # lines between
    assert phases[names[2]][-1]["total"] == 1024  # the means over the first half of the rows


@pytest.mark.slow
def test_the_universal_command_logs_its_passes(tmp_path) -> None:
    models = [str(embedded_model_dir()), str(embedded_model_dir("nopos"))]
    args = ["universal", "--models", *models, "--tokens", "512", "--seq-len", "64"]
    done = _run([*args, "--layers", "3", "--batch-size", "2", "--no-page"], tmp_path)
    phases = _check_log(done.stderr)
    with_b = "correlations with embedded_model_nopos (1/1)"
    assert list(phases) == [
        f"{with_b}: the baseline's rotations",
        f"{with_b} pass 1/1",
        f"{with_b} pass 1/1: baseline and matches",
        "record pass 1/1 (record)",
        "weight statistics",
    ]
    text = re.search(r"^([\d,]+) text tokens", done.stdout, re.M)
    assert text and phases[f"{with_b} pass 1/1"][-1]["total"] == int(text[1].replace(",", ""))
    assert len(phases[f"{with_b} pass 1/1"]) > 2
    # 512 tokens support few correlations: the command says so, in one note.
    notes = [line for line in done.stderr.splitlines() if line.startswith("tl-neuronkinds: note:")]
    assert len(notes) == 1 and "use more tokens" in notes[0]


def test_a_terminal_gets_one_bar_per_pass(monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress_module, "_watched", lambda: True)
    bar = Progress(0)
    bar.set_phase("pass 1/2 (a)", 8)
    bar.update(8)
    bar.set_phase("pass 2/2 (b)", 3, initial=3, unit="step")
    bar.note("a note")
    bar.close()
    bar.close()
    err = capsys.readouterr().err
    assert "pass 1/2 (a): 100%" in err and "8.00/8.00" in err  # tok: scaled (k, M)
    assert "pass 2/2 (b): 100%" in err and "3/3" in err and "already done" in err
    assert "a note" in err and "nan" not in err.lower()


def test_a_disabled_display_prints_nothing_even_when_renamed(capsys) -> None:
    bar = Progress(3, enabled=False, unit="step")
    bar.set_phase("first")
    bar.update(1)
    bar.set_phase("second")
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_notebook_without_ipywidgets_gets_the_text_bar(monkeypatch, capsys) -> None:
    # tqdm.auto would warn "IProgress not found" in every such notebook.
    import warnings

    monkeypatch.setattr(progress_module, "_watched", lambda: True)
    monkeypatch.setitem(sys.modules, "ipykernel", sys.modules.get("ipykernel", sys))
    real_find_spec = progress_module.importlib.util.find_spec
    monkeypatch.setattr(
        progress_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = Progress(0)
        bar.set_phase("pass 1/1", 4)
        bar.update(4)
        bar.close()
    assert "pass 1/1: 100%" in capsys.readouterr().err
