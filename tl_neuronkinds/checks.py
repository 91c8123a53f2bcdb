"""Checks of the values users pass, shared by every step: each either returns the value, in the
type the code wants, or raises a ``NeuronKindsError`` that names the argument and what it
expected."""

from typing import TypeGuard

import numpy as np

from tl_neuronkinds.errors import NeuronKindsError


def is_int(value: object) -> TypeGuard[int | np.integer]:
    """Whether ``value`` is an integer (Python's or NumPy's) and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within ``low..high`` (either bound may be None), or a
    NeuronKindsError such as ``"k must be an integer >= 1, got 0"``."""
    inside = is_int(value) and (low is None or value >= low) and (high is None or value <= high)  # type: ignore[operator]
    if not inside:
        if low is not None and high is not None:
            wanted = f"an integer in {low}..{high}"
        elif low is not None:
            wanted = f"an integer >= {low}"
        elif high is not None:
            wanted = f"an integer <= {high}"
        else:
            wanted = "an integer"
        raise NeuronKindsError(f"{name} must be {wanted}, got {value!r}")
    return int(value)  # type: ignore[call-overload]
