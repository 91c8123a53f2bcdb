"""Hypothesis settings and strategies shared by the brute-force property tests."""

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def reproducible(max_examples: int) -> settings:
    """``max_examples`` examples, the same ones on every run (derandomized), with no deadline:
    each builds and classifies a profile, which takes longer than Hypothesis expects."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def case_sizes(
    *,
    n_seq: tuple[int, int] = (1, 6),
    seq_len: tuple[int, int] = (2, 20),
    d_vocab: tuple[int, int] = (3, 7),
    d_mlp: tuple[int, int] = (1, 6),
) -> dict[str, st.SearchStrategy[int]]:
    """``@given`` keyword strategies for a random case: its seed and its sizes (inclusive
    ranges), to be spread into ``@given(**case_sizes(...), other=...)``."""
    return {
        "seed": st.integers(0, 2**32 - 1),
        "n_seq": st.integers(*n_seq),
        "seq_len": st.integers(*seq_len),
        "d_vocab": st.integers(*d_vocab),
        "d_mlp": st.integers(*d_mlp),
    }
