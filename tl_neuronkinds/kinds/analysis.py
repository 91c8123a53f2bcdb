"""One analysis of a profile at one set of cut-offs: each layer's statistics computed once.

Every table of ``tl_neuronkinds.kinds`` reads the same per-layer statistics: the coverage of
each n-gram order (k95, statuses, the detector test and triggers, ``ngrams.layer_coverage``)
and the positional statistics (``positional.layer_positional``). An ``Analysis`` computes each
of them the first time it is asked for and keeps it, so a caller that wants the classification
and every figure table pays for them once::

    analysis = Analysis(profile, k_max=5)      # or Analysis(profile, Cutoffs(...))
    table = classify(analysis)                 # every kinds function takes an Analysis
    tables = figure_tables(analysis)           # ... and reuses what classify computed

Passing a profile instead builds a fresh Analysis for that one call; ``classify`` and
``figure_tables`` also take ``analysis=`` beside the profile (``classify(profile,
analysis=analysis)``).
"""

from collections.abc import Callable
from typing import Any

import numpy as np
from jaxtyping import Bool

from tl_neuronkinds.checks import is_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.ngrams import LayerCoverage, layer_coverage
from tl_neuronkinds.kinds.positional import LayerPositional, layer_positional
from tl_neuronkinds.recording.profile import NeuronProfile


class Analysis:
    """The per-layer statistics of ``profile`` at ``cutoffs``, each computed once (see module).

    Args:
        profile: A NeuronProfile. It must not change while the analysis is in use.
        cutoffs: The cut-offs (the paper's defaults where None).
        **overrides: Fields of ``Cutoffs`` to override, e.g. ``k_max=10``.

    Raises:
        NeuronKindsError: An override names no cut-off or a value is out of range.
    """

    def __init__(
        self, profile: NeuronProfile, cutoffs: Cutoffs | None = None, **overrides: object
    ) -> None:
        if not isinstance(profile, NeuronProfile):
            raise NeuronKindsError(f"expected a NeuronProfile, got {type(profile).__name__}")
        self.profile = profile
        self.cutoffs = Cutoffs.of(cutoffs, **overrides)
        self._coverage: dict[tuple[int, int], LayerCoverage] = {}
        self._positional: dict[int, LayerPositional] = {}
        self._memo: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Analysis({self.profile!r}, {self.cutoffs!r})"

    def check_layer(self, layer: int) -> int:
        """``layer`` if the profile recorded it, else a NeuronKindsError."""
        if layer not in self.profile.counts:
            raise NeuronKindsError(
                f"layer {layer} was not recorded (recorded: {self.profile.layers})"
            )
        return layer

    def check_order(self, n: int) -> int:
        """``n`` if the profile recorded that n-gram order, else a NeuronKindsError."""
        top = self.profile.ngram_max
        if not is_int(n) or not 1 <= n <= top:
            raise NeuronKindsError(
                f"n must be an n-gram order this profile recorded (1..{top}), got {n!r}"
            )
        return int(n)

    def coverage(self, layer: int, n: int) -> LayerCoverage:
        """Order-``n`` coverage and detector test of every neuron of ``layer`` (cached)."""
        key = (self.check_layer(layer), self.check_order(n))
        if key not in self._coverage:
            unigram = None if n == 1 else self.coverage(layer, 1)
            self._coverage[key] = layer_coverage(self.profile, layer, n, self.cutoffs, unigram)
        return self._coverage[key]

    def positional(self, layer: int) -> LayerPositional:
        """Positional statistics of every neuron of ``layer`` (cached)."""
        if self.check_layer(layer) not in self._positional:
            self._positional[layer] = layer_positional(self.profile, layer, self.cutoffs)
        return self._positional[layer]

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed the first time ``key`` is asked for and kept."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def trigger_set(self, layer: int, n: int) -> set[int]:
        """The distinct trigger n-gram ids of the order-``n`` detectors of ``layer``."""
        return {int(g) for gids in self.coverage(layer, n).triggers.values() for g in gids}

    def dead(self, layer: int) -> Bool[np.ndarray, " d_mlp"]:
        """``[d_mlp]`` bool: never active (§3)."""
        return self.profile.counts[self.check_layer(layer)].active.numpy() == 0


def analysis_of(
    source: NeuronProfile | Analysis,
    cutoffs: Cutoffs | None,
    overrides: dict[str, object],
    analysis: Analysis | None = None,
) -> Analysis:
    """The Analysis a kinds function works on: ``source`` itself, ``analysis`` (which must be
    of the profile ``source``), or a new one of the profile.

    Raises:
        NeuronKindsError: The cut-offs given differ from the Analysis's own (make another
            Analysis for other cut-offs), or ``analysis`` is of another profile.
    """
    if analysis is not None:
        if not isinstance(analysis, Analysis):
            raise NeuronKindsError(f"analysis must be an Analysis, got {analysis!r}")
        profile = source.profile if isinstance(source, Analysis) else source
        if analysis.profile is not profile:
            raise NeuronKindsError("analysis= was made from another profile than the one given")
        source = analysis
    if isinstance(source, Analysis):
        if cutoffs is None and not overrides:
            return source
        wanted = Cutoffs.of(source.cutoffs if cutoffs is None else cutoffs, **overrides)
        if wanted != source.cutoffs:
            raise NeuronKindsError(
                f"this Analysis was made with {source.cutoffs}; cut-offs {wanted} were asked "
                "for: make an Analysis with those (Analysis(profile, ...))"
            )
        return source
    if not isinstance(source, NeuronProfile):
        raise NeuronKindsError(
            f"expected a NeuronProfile or an Analysis, got {type(source).__name__}"
        )
    return Analysis(source, cutoffs, **overrides)
