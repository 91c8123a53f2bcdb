"""Warnings shared by the kinds."""

import inspect
import warnings
from pathlib import Path

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
    """Some n-gram detector tests cannot be decided from a capped profile (docs/kinds.md,
    "The n-gram cap"): their columns hold NA and their ``kind`` is ``"unknown"``."""


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
