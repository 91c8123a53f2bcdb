"""The tutorials run as scripts, offline, on a few tokens.

``paper_opt125m.py`` is written for facebook/opt-125m from the hub; here it runs on a tiny
local checkpoint of the same format (``NK_TUTORIAL_MODEL``), so every call it makes is run.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.opt_fixtures import OPT_VOCAB, has_opt_tokenizer, make_tiny_opt

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


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
    result = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "positions recorded" in result.stdout
    if "report" in path.read_text():
        assert any(tmp_path.rglob("report.html")), "the tutorial wrote no report"
