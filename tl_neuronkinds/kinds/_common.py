"""Checks and warnings shared by the kinds."""

import inspect
import warnings
from pathlib import Path

from tl_neuronkinds.errors import NeuronKindsError

# Frames in these directories are not the caller a warning should point at: the package and the
# runtime type-checkers that wrap its functions under the test suite.
_INNER = str(Path(__file__).resolve().parents[1])

#: Text tokens below which ``classify`` warns that the kinds rest on little data. The paper
#: collects its statistics over 5M tokens (§2); below a fifth of that, rare neurons pass the
#: detector tests on a handful of activations.
EVIDENCE_TOKENS = 1_000_000
#: The paper's data size (§2), named in the EvidenceWarning.
PAPER_TOKENS = 5_000_000


class EvidenceWarning(UserWarning):
    """The profile holds too few text tokens for the kinds to rest on much data (§2)."""


class UndecidableWarning(UserWarning):
    """Some n-gram detector tests cannot be decided from a capped profile (SPEC.md, "The
    n-gram cap"): their columns hold NA and their ``kind`` is ``"unknown"``."""


def warn(message: str, category: type[Warning]) -> None:
    """Warn, attributed to the first caller outside tl_neuronkinds (and its type-checkers)."""
    here = inspect.currentframe()
    level, frame = 2, here.f_back if here is not None else None
    while frame is not None:
        name = str(Path(frame.f_code.co_filename).resolve())
        if not (name.startswith(_INNER) or "jaxtyping" in name or "beartype" in name):
            break
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


def check_percent(name: str, value: object) -> int:
    """An integer percentage in 1..100 (every "at least 95%" is decided in integers, SPEC.md)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 100:
        raise NeuronKindsError(f"{name} must be an integer percentage in 1..100, got {value!r}")
    return value


def check_count(name: str, value: object) -> int:
    """A non-negative integer (min_count, a number of bytes that may be 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NeuronKindsError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_positive_int(name: str, value: object) -> int:
    """A positive integer cut-off (k_max, min_run)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NeuronKindsError(f"{name} must be a positive integer, got {value!r}")
    return value
