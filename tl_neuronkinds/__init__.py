"""tl_neuronkinds: what the FFN neurons of OPT models are — dead, token and n-gram detectors,
positional — following Voita, Ferrando & Nalmpantis 2024, as a TransformerLens plugin.

Importing the package loads no optional heavy module (circuitsvis, matplotlib, datasets), nor
TransformerLens (which itself imports datasets and accelerate): ``load_opt`` is imported when
first used.
"""

from typing import Any

from tl_neuronkinds.corpus import Corpus
from tl_neuronkinds.data import embedded_model_dir
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds import (
    Analysis,
    Cutoffs,
    EvidenceWarning,
    UndecidableWarning,
    classify,
    dead_neurons,
    figure_tables,
    layer_summary,
    ngram_coverage,
    position_teams,
    positional_neurons,
    token_detectors,
)
from tl_neuronkinds.recording import (
    LayerCounts,
    NeuronProfile,
    NeuronRecorder,
    profile_from_activations,
    record,
)
from tl_neuronkinds.version import __version__

__all__ = [
    "Analysis",
    "Corpus",
    "Cutoffs",
    "EvidenceWarning",
    "LayerCounts",
    "NeuronKindsError",
    "NeuronProfile",
    "NeuronRecorder",
    "UndecidableWarning",
    "__version__",
    "classify",
    "dead_neurons",
    "embedded_model_dir",
    "figure_tables",
    "layer_summary",
    "load_opt",
    "ngram_coverage",
    "position_teams",
    "positional_neurons",
    "profile_from_activations",
    "record",
    "token_detectors",
]


def __getattr__(name: str) -> Any:
    if name == "load_opt":
        from tl_neuronkinds.loading import load_opt

        return load_opt
    raise AttributeError(f"module 'tl_neuronkinds' has no attribute {name!r}")
