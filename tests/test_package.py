"""The package's public surface: explicit exports, one error type, a light import."""

import json
import subprocess
import sys

import tl_neuronkinds as nk

API_NAMES = [
    "load_opt", "Corpus", "NeuronRecorder", "record", "NeuronProfile", "classify", "dead_neurons",
    "ngram_coverage", "token_detectors", "positional_neurons", "NeuronKindsError",
]  # fmt: skip


def test_public_names_exported() -> None:
    for name in API_NAMES:
        assert name in nk.__all__ and hasattr(nk, name), name
    assert all(hasattr(nk, name) for name in nk.__all__)
    assert issubclass(nk.NeuronKindsError, Exception)


def test_import_loads_no_optional_heavy_module() -> None:
    code = (
        "import sys, json, tl_neuronkinds; "
        "print(json.dumps([m for m in ('circuitsvis', 'matplotlib', 'datasets', 'wandb', 'accelerate', 'transformer_lens') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
