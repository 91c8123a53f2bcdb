"""The settings of a recording, each default stated once: the command line, ``record`` and
``NeuronRecorder`` read them from here.

- ``DEFAULT_CAP`` (50): the n-gram cap. Bigram and trigram counts are kept only for the neurons
  that can have ``k95_n <= cap``; for the others ``k95_n > cap`` is proved from their unigram
  counts, so every detector (``k95_n <= 5``, Voita et al. 2024 §4.2) stays exact with any cap of
  at least 5.
- ``DEFAULT_TOP_K`` (16): each neuron's largest activations kept, for max-activating contexts.
- ``DEFAULT_WINDOW`` ((12, 4)): the context kept with each of them, 12 tokens before and 4 after,
  what ``show_neuron`` shows.
"""

from tl_neuronkinds.errors import NeuronKindsError

#: The n-gram cap of ``record`` and the command line (``NeuronRecorder`` keeps every neuron's).
DEFAULT_CAP = 50
#: Top activations kept per neuron.
DEFAULT_TOP_K = 16
#: The context kept with each top activation: tokens before it and after it.
DEFAULT_WINDOW = (12, 4)


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int >= 0, or a NeuronKindsError."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise NeuronKindsError(f"top_k must be an integer >= 0, got {top_k!r}")
    return top_k


#: Widest context window kept (``before + 1 + after`` positions).
MAX_WINDOW = 257


def check_window(window: object) -> tuple[int, int] | None:
    """``window`` as ``(before, after)`` ints >= 0, None, or a NeuronKindsError."""
    if window is None:
        return None
    if isinstance(window, tuple | list) and len(window) == 2:
        before, after = window
        numbers = [w for w in (before, after) if isinstance(w, int) and not isinstance(w, bool)]
        if len(numbers) == 2 and min(numbers) >= 0 and sum(numbers) + 1 <= MAX_WINDOW:
            return numbers[0], numbers[1]
    raise NeuronKindsError(
        f"window must be None or (before, after), integers >= 0 spanning at most {MAX_WINDOW} "
        f"positions, got {window!r}"
    )
