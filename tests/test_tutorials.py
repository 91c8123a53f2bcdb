"""The tutorials run as scripts, offline, on a few tokens.

``paper_opt125m.py`` is written for facebook/opt-125m from the hub; here it runs on a tiny
local checkpoint of the same format (``NK_TUTORIAL_MODEL``), so every call it makes is run;
``paper_scale.py`` likewise on two tiny local checkpoints of different depths, and
``over_training.py`` trains for a few steps (``NK_TUTORIAL_STEPS``). Without the hub or a
local checkpoint, the paper tutorials say so in one line; and classifying one profile again, as
the tutorials do, does not repeat its ``EvidenceWarning``.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from opt_fixtures import OPT_VOCAB, has_opt_tokenizer, make_tiny_opt, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NK_TUTORIAL_TOKENS": "2048",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TMPDIR": str(tmp_path),
    }
    if path.name == "paper_opt125m.py":
        if not has_opt_tokenizer():
            pytest.skip("the paper tutorial tokenizes with OPT's tokenizer, which is absent")
        model = make_tiny_opt(tmp_path / "opt", n_layers=3, vocab=OPT_VOCAB, n_ctx=128)
        env["NK_TUTORIAL_MODEL"] = str(model)
    args: list[str] = []
    if path.name == "over_training.py":
        env["NK_TUTORIAL_STEPS"] = "6"
    if path.name == "paper_scale.py":
        vocab = OPT_VOCAB if has_opt_tokenizer() else len(tiny_tokenizer())
        dirs = [make_tiny_opt(tmp_path / f"opt-{n}l", n_layers=n, vocab=vocab, n_ctx=128, seed=n)
                for n in (2, 3)]  # fmt: skip
        args = [*map(str, dirs), "--out", str(tmp_path / "scale")]
    result = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "positions recorded" in result.stdout
    if "report" in path.read_text():
        assert any(tmp_path.rglob("report.html")), "the tutorial wrote no report"
    if "compare.html" in path.read_text():
        assert any(tmp_path.rglob("compare.html")), "the tutorial wrote no comparison"


def test_paper_scale_needs_the_hub_or_a_directory(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    script = ROOT / "tutorials" / "paper_scale.py"
    argv = [sys.executable, str(script), "facebook/opt-125m", "--out", str(tmp_path / "out")]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "facebook/opt-125m needs the Hugging Face hub" in result.stderr
    assert "local checkpoint directories" in result.stderr
    assert not (tmp_path / "out").exists()


def test_paper_opt125m_needs_the_hub_or_a_directory(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("NK_TUTORIAL_MODEL", None)
    script = ROOT / "tutorials" / "paper_opt125m.py"
    for model in (None, str(tmp_path / "no-such-dir")):
        if model:
            env["NK_TUTORIAL_MODEL"] = model
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode != 0 and result.stdout == ""
        (line,) = result.stderr.strip().splitlines()  # one line: no traceback
        assert line.startswith(f"paper_opt125m.py: {model or 'facebook/opt-125m'} ")
        assert "needs the Hugging Face hub or a local checkpoint directory" in line
        assert "NK_TUTORIAL_MODEL=" in line
    assert "HF_HUB_OFFLINE is set" in line or "not a directory" in line


def test_evidence_warning_once_per_profile() -> None:
    """The tutorials classify one profile several times: it warns the first time only, and
    once for every other profile; a page's cautions (``classify_with_cautions``) keep it."""
    import torch

    import tl_neuronkinds as nk
    from tl_neuronkinds.kinds import classify_with_cautions
    from tl_neuronkinds.recording.accumulate import profile_from_activations

    def small(n_seq: int) -> nk.NeuronProfile:
        tokens = torch.randint(3, 9, (n_seq, 12), generator=torch.Generator().manual_seed(n_seq))
        tokens[:, 0] = 0
        return profile_from_activations(tokens, {0: (tokens == 3).float()[..., None]}, d_vocab=9)

    def warned(*calls) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for call in calls:
                call()
        return sum(issubclass(w.category, nk.EvidenceWarning) for w in caught)

    one, two = small(4), small(5)
    assert warned(lambda: nk.classify(one), lambda: nk.classify(one, k_max=10)) == 1
    assert warned(lambda: nk.classify(nk.Analysis(one)), lambda: nk.positional_neurons(one)) == 0
    assert warned(lambda: nk.classify(two), lambda: nk.classify(small(4))) == 2
    _, cautions = classify_with_cautions(nk.Analysis(one))
    assert len(cautions) == 1 and "fewer than 1,000,000" in cautions[0]
    assert warned(lambda: nk.classify(one)) == 0
