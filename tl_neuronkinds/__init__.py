"""tl_neuronkinds: what the FFN neurons of OPT models are — dead, token and n-gram detectors,
positional — following Voita, Ferrando & Nalmpantis 2024, as a TransformerLens plugin.

Importing the package loads no optional heavy module (circuitsvis, matplotlib, datasets), nor
TransformerLens (which itself imports datasets and accelerate): ``load_opt`` is imported when
first used.
"""

import functools
from typing import Any

from tl_neuronkinds.compare import Comparison
from tl_neuronkinds.compare import compare as _compare_runs
from tl_neuronkinds.corpus import Corpus
from tl_neuronkinds.data import embedded_model_dir
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.interventions import ablate_neurons
from tl_neuronkinds.kinds import (
    Analysis,
    Cutoffs,
    EvidenceWarning,
    UndecidableWarning,
    activation_moments,
    classify,
    dead_neurons,
    figure_tables,
    layer_summary,
    ngram_coverage,
    position_teams,
    positional_neurons,
    token_detectors,
)
from tl_neuronkinds.massive import (
    MassiveActivations,
    massive_activations,
    massive_attention,
    massive_intervention,
)
from tl_neuronkinds.present.compare_page import compare_page as _compare_page
from tl_neuronkinds.present.report import report
from tl_neuronkinds.recording import (
    LayerCounts,
    NeuronProfile,
    NeuronRecorder,
    activation_histogram,
    max_activating_contexts,
    profile_from_activations,
    record,
    top_activations,
)
from tl_neuronkinds.universal import (
    UniversalNeurons,
    bos_attention_scores,
    correlation_matrix,
    find_universal,
    neuron_correlations,
    universal_neurons,
    weight_stats,
)
from tl_neuronkinds.version import __version__

__all__ = [
    "Analysis",
    "Comparison",
    "Corpus",
    "Cutoffs",
    "EvidenceWarning",
    "LayerCounts",
    "MassiveActivations",
    "NeuronKindsError",
    "NeuronProfile",
    "NeuronRecorder",
    "NeuronView",
    "UndecidableWarning",
    "UniversalNeurons",
    "__version__",
    "ablate_neurons",
    "activation_histogram",
    "activation_moments",
    "bos_attention_scores",
    "classify",
    "compare",
    "correlation_matrix",
    "dead_neurons",
    "embedded_model_dir",
    "figure_tables",
    "find_universal",
    "layer_summary",
    "load_opt",
    "massive_activations",
    "massive_attention",
    "massive_intervention",
    "max_activating_contexts",
    "neuron_correlations",
    "ngram_coverage",
    "position_teams",
    "positional_neurons",
    "profile_from_activations",
    "record",
    "report",
    "show_neuron",
    "suppression_by_layer",
    "token_detectors",
    "top_activations",
    "trigger_suppression",
    "universal_neurons",
    "vocab_projection",
    "vocab_scores",
    "weight_stats",
]

#: Imported when first used (``tl_neuronkinds.vocab``).
_VOCAB = ("suppression_by_layer", "trigger_suppression", "vocab_projection", "vocab_scores")


# ``report`` is imported eagerly (it loads neither matplotlib nor circuitsvis until a report
# is written); the views and the vocabulary projection on first use.


@functools.wraps(_compare_runs)
def compare(runs: Any, labels: Any = None, cutoffs: Any = None, **options: Any) -> Comparison:
    # The composition root joins the comparison (compare/) to its page (present/), so that
    # neither imports the other's floor: nk.compare's Comparison.to_html draws with it.
    return _compare_runs(runs, labels, cutoffs, page=_compare_page, **options)


def __getattr__(name: str) -> Any:
    if name == "load_opt":
        from tl_neuronkinds.loading import load_opt

        return load_opt
    if name in _VOCAB:
        from tl_neuronkinds import vocab

        return getattr(vocab, name)
    if name in ("show_neuron", "NeuronView"):
        from tl_neuronkinds.present import views

        return getattr(views, name)
    raise AttributeError(f"module 'tl_neuronkinds' has no attribute {name!r}")
