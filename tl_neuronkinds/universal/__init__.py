"""Universal neurons (Gurnee et al. 2024, "Universal Neurons in GPT2 Language Models"):
correlations of neuron activations across models (``correlations.py``; their passes over the
tokens in ``passes.py``, their float64 sums in ``sums.py``, the baseline's rotations in
``rotations.py``), statistics of neurons' weights (``weights.py``), and both joined with
activation moments, with the families universal neurons fall into (``families.py``); the
defaults in ``settings.py``."""

from typing import TYPE_CHECKING

from tl_neuronkinds import lazy

if TYPE_CHECKING:
    from tl_neuronkinds.universal.correlations import (
        correlation_matrix,
        neuron_correlations,
        universal_neurons,
    )
    from tl_neuronkinds.universal.families import UniversalNeurons, find_universal
    from tl_neuronkinds.universal.weights import bos_attention_scores, weight_stats

# Imported when first used (``lazy.py``): the command line reads settings.py without torch.
_NAMES = {
    "correlation_matrix": ".correlations",
    "neuron_correlations": ".correlations",
    "universal_neurons": ".correlations",
    "UniversalNeurons": ".families",
    "find_universal": ".families",
    "bos_attention_scores": ".weights",
    "weight_stats": ".weights",
}
__getattr__, __dir__ = lazy.attach(__name__, _NAMES)

__all__ = [
    "UniversalNeurons",
    "find_universal",
    "bos_attention_scores",
    "correlation_matrix",
    "neuron_correlations",
    "universal_neurons",
    "weight_stats",
]
