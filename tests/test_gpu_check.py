"""benchmarks/gpu_check.py, the script a person with a CUDA machine runs, runs here on the CPU on
a tiny model so that it cannot rot; and its comparison finds a difference where there is one."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_runs_on_the_cpu_and_finds_every_mode_equal(tmp_path) -> None:
    out = tmp_path / "figures.json"
    command = [
        sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--check-size", "tiny",
        "--dtypes", "float32", "--tokens", "512", "--seq-len", "128", "--batch-tokens", "256",
        "--corr-tokens", "256", "--check-tokens", "512", "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for mode in ("resident", "cpu", "disk"):
        assert f"cpu, {mode:>8}: yes" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["equal"] is True
    assert [row["mode"] for row in figures["rows"]] == ["resident", "cpu", "disk"]
    for row in figures["rows"]:
        assert row["bare_tok_s"] > 0 and row["record_tok_s"] > 0 and row["corr_tok_s"] > 0


def test_the_comparison_names_what_differs() -> None:
    gpu_check = _module()
    counts = np.arange(6)
    reference = {
        "active": [counts], "pos_active": [counts.reshape(2, 3)],
        "kinds": pd.DataFrame({"kind": ["dead", "other"]}),
        "scores": np.ones((1, 2, 3)), "magnitudes": np.array([3.0, 2.0]),
        "corr": np.array([0.5, np.nan]),
    }  # fmt: skip
    assert gpu_check.compare(reference, reference, 1e-6) == []
    changed = {
        **reference,
        "active": [counts + (counts == 5)],
        "kinds": pd.DataFrame({"kind": ["dead", "positional"]}),
        "corr": np.array([0.5001, np.nan]),
    }
    wrong = gpu_check.compare(reference, changed, 1e-6)
    assert wrong[0] == "active of layer 0: 1 counts differ"
    assert "classify() differs" in wrong and any(w.startswith("corr:") for w in wrong)
