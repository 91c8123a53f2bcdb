"""The package's public surface: explicit exports, one error type, a light import."""

import json
import pkgutil
import subprocess
import sys

import pytest

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
        "print(json.dumps([m for m in ('circuitsvis', 'matplotlib', 'datasets', 'wandb', 'accelerate', 'transformer_lens', 'torch', 'pandas') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["profile", "--help"], ["report", "--help"], ["profile", "--window", "foo"]],
)
def test_help_and_usage_errors_load_no_heavy_module(argv: list[str]) -> None:
    # --help and a bad argument answer before torch, pandas or TransformerLens load (each takes
    # seconds); the time itself is measured in benchmarks/cli_help.py, not asserted here.
    code = (
        "import sys, json\n"
        "from tl_neuronkinds.cli.main import main\n"
        "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as done:\n    status = done.code\n"
        "heavy = [m for m in ('torch', 'pandas', 'transformer_lens') if m in sys.modules]\n"
        "print(json.dumps([status, heavy]))"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    status, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [], argv
    assert status == (0 if "--help" in argv else 2)


def _lazy_packages() -> list[str]:
    return ["tl_neuronkinds", "tl_neuronkinds.recording", "tl_neuronkinds.universal"]


@pytest.mark.parametrize("package", _lazy_packages())
def test_no_lazy_name_is_also_a_submodule(package: str) -> None:
    # Importing a submodule binds its name on the package: a lazily imported function of the
    # same name would then be shadowed by the module, depending on import order.
    module = __import__(package, fromlist=["_NAMES"])
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not submodules & set(module._NAMES), submodules & set(module._NAMES)
    for name in module.__all__:
        assert not isinstance(getattr(module, name), type(sys)), name
