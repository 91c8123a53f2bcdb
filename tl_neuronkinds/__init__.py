"""tl_neuronkinds: what the FFN neurons of OPT models are — dead, token and n-gram detectors,
positional — following Voita, Ferrando & Nalmpantis 2024, as a TransformerLens plugin.

``import tl_neuronkinds`` loads neither torch, pandas nor TransformerLens: every public name is
imported when first used (``lazy.py``), so the command line answers ``--help`` at once.
"""

import functools
from typing import TYPE_CHECKING, Any

from tl_neuronkinds import lazy
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.version import __version__

if TYPE_CHECKING:
    from tl_neuronkinds.comparison import Comparison, compare
    from tl_neuronkinds.corpus import Corpus
    from tl_neuronkinds.data import embedded_model_dir
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
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.massive import (
        MassiveActivations,
        massive_activations,
        massive_attention,
        massive_intervention,
    )
    from tl_neuronkinds.present.report import report
    from tl_neuronkinds.present.views import NeuronView, init_notebook, show_neuron
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
    from tl_neuronkinds.vocab import (
        suppression_by_layer,
        trigger_suppression,
        vocab_projection,
        vocab_scores,
    )

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
    "init_notebook",
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

#: Where each public name lives, imported when first used (``lazy.py``).
_NAMES = {
    "Comparison": "tl_neuronkinds.comparison",
    "Corpus": "tl_neuronkinds.corpus",
    "embedded_model_dir": "tl_neuronkinds.data",
    "ablate_neurons": "tl_neuronkinds.interventions",
    "Analysis": "tl_neuronkinds.kinds",
    "Cutoffs": "tl_neuronkinds.kinds",
    "EvidenceWarning": "tl_neuronkinds.kinds",
    "UndecidableWarning": "tl_neuronkinds.kinds",
    "activation_moments": "tl_neuronkinds.kinds",
    "classify": "tl_neuronkinds.kinds",
    "dead_neurons": "tl_neuronkinds.kinds",
    "figure_tables": "tl_neuronkinds.kinds",
    "layer_summary": "tl_neuronkinds.kinds",
    "ngram_coverage": "tl_neuronkinds.kinds",
    "position_teams": "tl_neuronkinds.kinds",
    "positional_neurons": "tl_neuronkinds.kinds",
    "token_detectors": "tl_neuronkinds.kinds",
    "load_opt": "tl_neuronkinds.loading",
    "MassiveActivations": "tl_neuronkinds.massive",
    "massive_activations": "tl_neuronkinds.massive",
    "massive_attention": "tl_neuronkinds.massive",
    "massive_intervention": "tl_neuronkinds.massive",
    "report": "tl_neuronkinds.present.report",
    "NeuronView": "tl_neuronkinds.present.views",
    "show_neuron": "tl_neuronkinds.present.views",
    "init_notebook": "tl_neuronkinds.present.views",
    "LayerCounts": "tl_neuronkinds.recording",
    "NeuronProfile": "tl_neuronkinds.recording",
    "NeuronRecorder": "tl_neuronkinds.recording",
    "activation_histogram": "tl_neuronkinds.recording",
    "max_activating_contexts": "tl_neuronkinds.recording",
    "profile_from_activations": "tl_neuronkinds.recording",
    "record": "tl_neuronkinds.recording",
    "top_activations": "tl_neuronkinds.recording",
    "UniversalNeurons": "tl_neuronkinds.universal",
    "bos_attention_scores": "tl_neuronkinds.universal",
    "correlation_matrix": "tl_neuronkinds.universal",
    "find_universal": "tl_neuronkinds.universal",
    "neuron_correlations": "tl_neuronkinds.universal",
    "universal_neurons": "tl_neuronkinds.universal",
    "weight_stats": "tl_neuronkinds.universal",
    "suppression_by_layer": "tl_neuronkinds.vocab",
    "trigger_suppression": "tl_neuronkinds.vocab",
    "vocab_projection": "tl_neuronkinds.vocab",
    "vocab_scores": "tl_neuronkinds.vocab",
}
_lazy_getattr, _ = lazy.attach(__name__, _NAMES)


def _compare() -> Any:
    """``nk.compare``: the comparison (comparison/) joined to its page (present/). The package's
    top floor is the composition root, so that neither floor imports the other's."""
    from tl_neuronkinds.comparison import compare as compare_runs
    from tl_neuronkinds.present.compare_page import compare_page

    @functools.wraps(compare_runs)
    def compare(runs: Any, labels: Any = None, cutoffs: Any = None, **options: Any) -> Any:
        return compare_runs(runs, labels, cutoffs, page=compare_page, **options)

    return compare


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    if name == "compare":
        globals()["compare"] = value = _compare()
        return value
    return _lazy_getattr(name)
