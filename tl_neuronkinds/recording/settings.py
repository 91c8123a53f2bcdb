"""The settings of a recording, stated once: ``RecordingSettings`` and its defaults.

What a recording counts is decided by a few values that travel together from the command line
or ``nk.record`` / ``NeuronRecorder`` / ``profile_from_activations`` down to the accumulators,
and are stored with the profile (``profile.meta["recording"]``, ``RecordingSettings.to_dict``):

- ``threshold``: a neuron is *active* where its activation is ``> threshold`` (docs/kinds.md,
  "Terms"; 0.0 for OPT's ReLU).
- ``ngram_max``: the largest n-gram order counted (1 to 3; Voita et al. 2024 §4, Appendix A).
- ``ngram_cap`` (``DEFAULT_CAP``, 50): the n-gram cap. Bigram and trigram counts are kept only
  for the neurons that can have ``k95_n <= cap``; for the others ``k95_n > cap`` is proved from
  their unigram counts, so every detector (``k95_n <= 5``, §4.2) stays exact with any cap of at
  least 5. None keeps every neuron's.
- ``top_k`` (``DEFAULT_TOP_K``, 16): each neuron's largest activations kept, for max-activating
  contexts; 0 keeps none.
- ``histogram``: keep each neuron's activation histogram.
- ``window`` (``DEFAULT_WINDOW``, (12, 4)): the context kept with each top activation, 12 tokens
  before and 4 after, what ``show_neuron`` shows; None keeps none (and none without top-k).
- ``bos_token_id``: positions holding it are not text positions (§3). None means "the model's
  tokenizer's" (``resolve_bos``); without a model, OPT's ``OPT_BOS_TOKEN_ID``.
"""

import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any

from tl_neuronkinds.checks import check_int, is_int
from tl_neuronkinds.errors import NeuronKindsError

#: The n-gram cap of ``record`` and the command line (``NeuronRecorder`` keeps every neuron's).
DEFAULT_CAP = 50
#: Top activations kept per neuron.
DEFAULT_TOP_K = 16
#: The context kept with each top activation: tokens before it and after it.
DEFAULT_WINDOW = (12, 4)
#: Widest context window kept (``before + 1 + after`` positions).
MAX_WINDOW = 257
#: OPT's BOS token, ``</s>`` (id 2, prepended once to every sequence: docs/kinds.md, "Terms"); the
#: default where no model or tokenizer says otherwise (``profile_from_activations``).
OPT_BOS_TOKEN_ID = 2
#: The smallest n-gram cap: detectors need ``k95_n <= 5`` (§4.2), so any cap >= 5 keeps them exact.
MIN_CAP = 5


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int >= 0, or a NeuronKindsError."""
    return check_int("top_k", top_k, low=0)


def check_window(window: object) -> tuple[int, int] | None:
    """``window`` as ``(before, after)`` ints >= 0, None, or a NeuronKindsError."""
    if window is None:
        return None
    if isinstance(window, tuple | list) and len(window) == 2:
        before, after = window
        if is_int(before) and is_int(after):
            before, after = int(before), int(after)  # type: ignore[call-overload]
            if min(before, after) >= 0 and before + after + 1 <= MAX_WINDOW:
                return before, after
    raise NeuronKindsError(
        f"window must be None or (before, after), integers >= 0 spanning at most {MAX_WINDOW} "
        f"positions, got {window!r}"
    )


def check_cap(ngram_cap: object) -> int | None:
    """``ngram_cap`` as given, or a NeuronKindsError unless it is None or an integer >= 5."""
    if ngram_cap is None:
        return None
    if not is_int(ngram_cap) or ngram_cap < MIN_CAP:  # type: ignore[operator]
        raise NeuronKindsError(
            f"ngram_cap must be an integer >= {MIN_CAP} (detectors need k95 <= 5, §4.2) or None, "
            f"got {ngram_cap!r}"
        )
    return int(ngram_cap)  # type: ignore[call-overload]


@dataclass(frozen=True)
class RecordingSettings:
    """What a recording counts (see the module docstring), checked once, here.

    Built by ``nk.record``, ``NeuronRecorder`` and ``profile_from_activations`` from their
    keywords (each may also take a ``settings=`` instead); the accumulators and the passes of
    ``record`` take this one object. ``window`` is None wherever ``top_k`` is 0 (no top
    activations, no contexts).

    Raises:
        NeuronKindsError: A value out of range, naming it.
    """

    threshold: float = 0.0
    ngram_max: int = 3
    ngram_cap: int | None = DEFAULT_CAP
    top_k: int = DEFAULT_TOP_K
    histogram: bool = False
    window: tuple[int, int] | None = DEFAULT_WINDOW
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise NeuronKindsError(f"threshold must be a number, got {threshold!r}")
        if threshold != threshold:  # NaN: nothing would ever be active
            raise NeuronKindsError("threshold must be a number, got nan")
        object.__setattr__(self, "threshold", float(threshold))
        object.__setattr__(self, "ngram_max", check_int("ngram_max", self.ngram_max, 1, 3))
        object.__setattr__(self, "ngram_cap", check_cap(self.ngram_cap))
        top_k = check_top_k(self.top_k)
        object.__setattr__(self, "top_k", top_k)
        if not isinstance(self.histogram, bool):
            raise NeuronKindsError(f"histogram must be True or False, got {self.histogram!r}")
        object.__setattr__(self, "window", check_window(self.window) if top_k else None)
        if self.bos_token_id is not None:
            object.__setattr__(
                self, "bos_token_id", check_int("bos_token_id", self.bos_token_id, 0)
            )

    @property
    def bos(self) -> int:
        """The BOS id, once resolved (``resolve_bos``); a NeuronKindsError while still None."""
        if self.bos_token_id is None:
            raise NeuronKindsError(
                "the BOS token id is not known: pass bos_token_id, or a model with a tokenizer"
            )
        return self.bos_token_id

    @property
    def capped(self) -> bool:
        """Whether n >= 2 counts are kept only for the planned neurons (a cap and bigrams)."""
        return self.ngram_cap is not None and self.ngram_max >= 2

    def resolve_bos(self, model: Any) -> "RecordingSettings":
        """These settings with ``bos_token_id`` taken from ``model``'s tokenizer where None."""
        from tl_neuronkinds.loading.tokens import bos_of  # torch: not for the command line's --help

        if self.bos_token_id is not None:
            return self
        return replace(self, bos_token_id=bos_of(model, None))

    def unigram_sample(self) -> "RecordingSettings":
        """The settings of ``record``'s plan pass: unigrams only, uncapped, no examples."""
        return replace(self, ngram_max=1, ngram_cap=None, top_k=0, histogram=False, window=None)

    def without_examples(self) -> "RecordingSettings":
        """The same counts without top activations or histograms (``record``'s repair pass)."""
        return replace(self, top_k=0, histogram=False, window=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``window`` as a list); ``from_dict`` reads it back."""
        out = asdict(self)
        out["window"] = None if self.window is None else list(self.window)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecordingSettings":
        """Settings from ``to_dict``'s output, checked as any others; unknown keys refused."""
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise NeuronKindsError(f"unknown recording settings: {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("window"), list):
            values["window"] = tuple(values["window"])
        return cls(**values)


#: The defaults of a recording made without a model (``profile_from_activations`` and a bare
#: ``ProfileBuilder``): every neuron's n-gram counts, no top activations, OPT's BOS.
MODEL_FREE_SETTINGS = RecordingSettings(
    ngram_cap=None, top_k=0, window=None, bos_token_id=OPT_BOS_TOKEN_ID
)
