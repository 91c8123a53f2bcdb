"""The cut-offs of every kind, in one frozen dataclass with the paper's defaults.

Every public function of ``tl_neuronkinds.kinds`` takes ``cutoffs: Cutoffs | None = None`` and
keyword overrides of its fields, so ``classify(profile, k_max=10, coverage=90)`` and
``classify(profile, Cutoffs(k_max=10, coverage=90))`` are the same call.
"""

from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction
from typing import Any

import numpy as np

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError

#: Denominators of ``delta`` read as an exact fraction (0.05 = 1/20) stay at most this.
_MAX_DENOMINATOR = 10**6


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise NeuronKindsError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_delta(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 0.5:
        raise NeuronKindsError(f"delta must be a number in [0, 0.5), got {value!r}")
    return float(value)


def _check(name: str, value: object) -> Any:
    """``value`` as the field ``name`` holds it, or a NeuronKindsError saying what is wrong."""
    if name in ("k_max", "min_run"):
        return check_int(name, value, low=1)
    if name == "coverage":  # a percentage: every "at least p%" is decided in integers
        return check_int(name, value, low=1, high=100)
    if name == "delta":
        return _check_delta(value)
    if name == "min_count":
        return check_int(name, value, low=0)
    return _check_number(name, value)


@dataclass(frozen=True)
class Cutoffs:
    """The cut-offs of the kinds (docs/kinds.md; Voita et al. 2024). Validated when made.

    Attributes:
        k_max: A detector has ``k95_n <= k_max``: §4.2 keeps neurons "triggered by only 1-5
            tokens".
        coverage: The integer percentage of k95 and of detector conditions (2)-(3): 95 in
            §4.1 and §4.2; every "at least p%" is decided in integers.
        mi_threshold: Positional where ``I(act; pos) > mi_threshold`` nats: 0.05 in §5.1.
        min_run: Shortest run of positions counted by the positional types
            (docs/kinds.md, "Positional neurons": m = 8; §5.2).
        delta: Tolerance of a weak positional pattern's extremes (0.05; §5.2).
        smooth_r2: Cut on ``smooth_r2`` for a strong "other" positional neuron (the paper leaves
            the measure open; this one is ``positional.py``'s; §5.2's "thin vs thick graph").
        min_count: A detector of order n needs ``A_n >= min_count`` text activations. 0, the
            paper's rule (§4.2), asks for none beyond the one that makes k95 defined; a larger
            value keeps rare neurons, whose few activations meet the 95% conditions by chance,
            out of the detectors.
    """

    k_max: int = 5  # §4.2
    coverage: int = 95  # §4.1, §4.2 (integer percent)
    mi_threshold: float = 0.05  # §5.1
    min_run: int = 8  # docs/kinds.md "Positional neurons" (§5.2)
    delta: float = 0.05  # docs/kinds.md "Positional neurons" (§5.2)
    smooth_r2: float = 0.9  # docs/kinds.md "Positional neurons"; positional.py
    min_count: int = 0  # the paper's rule (§4.2): no minimum

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name)))

    @classmethod
    def of(cls, cutoffs: "Cutoffs | None" = None, **overrides: object) -> "Cutoffs":
        """``cutoffs`` (the defaults where None) with ``overrides`` of its fields.

        Raises:
            NeuronKindsError: An override names no cut-off, or a value is out of range.
        """
        if cutoffs is not None and not isinstance(cutoffs, Cutoffs):
            raise NeuronKindsError(f"cutoffs must be a Cutoffs or None, got {cutoffs!r}")
        base = cls() if cutoffs is None else cutoffs
        if not overrides:
            return base
        names = [f.name for f in fields(cls)]
        for name in overrides:
            if name not in names:
                raise NeuronKindsError(
                    f"unknown cut-off {name!r}; the cut-offs are: {', '.join(names)}"
                )
        return replace(base, **{k: _check(k, v) for k, v in overrides.items()})

    @property
    def delta_fraction(self) -> Fraction:
        """``delta`` as an exact fraction (its shortest decimal form: 0.05 = 1/20)."""
        return Fraction(repr(self.delta)).limit_denominator(_MAX_DENOMINATOR)

    def to_dict(self) -> dict[str, Any]:
        """The cut-offs as a plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Cutoffs":
        """Cut-offs from ``to_dict``'s output (missing keys take the defaults)."""
        return cls.of(None, **values)
