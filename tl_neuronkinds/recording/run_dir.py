"""A run directory, as ``tl-neuronkinds profile`` writes it: what it holds and how it is read.

::

    DIR/run.json             the settings, whether every output is written, whether they
                             include report.html
    DIR/profile/             the NeuronProfile (``NeuronProfile.save``)
    DIR/tokens.safetensors   the recorded tokens: int32 ``tokens`` [n_seq, seq_len]
    DIR/checkpoint/          progress of an unfinished run (removed once it is finished)
    DIR/report.html          the run's report, unless it was made with --no-report
    DIR/classification.csv, .parquet and summary_*.csv: the tables

The command line writes these; ``nk.compare`` and ``tl-neuronkinds report`` read them.
"""

import json
from pathlib import Path
from typing import Any

from tl_neuronkinds.atomic import atomic_write, atomic_write_text, write_tensors
from tl_neuronkinds.errors import NeuronKindsError

RUN_FILE = "run.json"
PROFILE_DIR = "profile"
CHECKPOINT_DIR = "checkpoint"
TOKENS_FILE = "tokens.safetensors"
REPORT_FILE = "report.html"

#: What a run directory holds, for messages that name a directory that is not one.
HOLDS = f"a run directory holds {RUN_FILE} and {PROFILE_DIR}/, as `tl-neuronkinds profile` writes"


def read_run(directory: Path) -> dict[str, Any]:
    """``run.json`` of ``directory`` as a dict (NeuronKindsError where it is damaged)."""
    path = directory / RUN_FILE
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NeuronKindsError(f"corrupt {path}: {err}") from err
    if not isinstance(state, dict):
        raise NeuronKindsError(f"corrupt {path}: not a JSON object")
    return state


def write_run(
    directory: Path, settings: dict[str, Any], *, finished: bool, report: bool = False
) -> None:
    """``run.json``: the settings, whether every output is written, whether they include
    ``report.html`` (a run is finished only once it exists)."""
    state = {"settings": settings, "finished": finished, "report": report}
    atomic_write_text(directory / RUN_FILE, json.dumps(state, indent=1))


def is_run_dir(directory: Path) -> bool:
    """Whether ``directory`` holds a run (``run.json`` and ``profile/``)."""
    return (directory / RUN_FILE).is_file() and (directory / PROFILE_DIR).is_dir()


def save_tokens(path: Path, tokens: Any) -> None:
    """The recorded tokens as int32 ``tokens`` in a safetensors file, written atomically."""
    import torch

    tensors = {"tokens": tokens.to("cpu", torch.int32).contiguous()}
    atomic_write(path, lambda tmp: write_tensors(tensors, tmp))


def load_tokens(path: Path) -> Any:
    """The tokens ``save_tokens`` wrote (int64), or None where the file is absent."""
    if not path.exists():
        return None
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["tokens"].to(torch.int64)
    except (SafetensorError, KeyError, OSError) as err:
        raise NeuronKindsError(f"corrupt {path}: {err}") from err
