"""Checks shared by the kinds: cut-off arguments and the n-gram orders a profile holds."""

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.profile import NeuronProfile


def check_percent(name: str, value: int) -> int:
    """An integer percentage in 1..100 (every "at least 95%" is decided in integers, SPEC.md)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 100:
        raise NeuronKindsError(f"{name} must be an integer percentage in 1..100, got {value!r}")
    return value


def check_positive_int(name: str, value: int) -> int:
    """A positive integer cut-off (k_max, min_run)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NeuronKindsError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_order(profile: NeuronProfile, n: int) -> int:
    """An n-gram order the profile recorded (1..profile.ngram_max)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= profile.ngram_max:
        raise NeuronKindsError(
            f"n must be an n-gram order this profile recorded (1..{profile.ngram_max}), got {n!r}"
        )
    return n
