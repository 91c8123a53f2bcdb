"""Interventions on neurons: ablate them and measure what the model's predictions lose
(``ablation.py``: ``ablate_neurons``, the change in loss and entropy, as Gurnee et al. 2024's
code measures it; ``triggers.py``: ``trigger_probability_change``, the causal side of Voita et al. 2024 §4.4's
claim that token detectors suppress their own triggers).

Below ``vocab`` and ``universal`` in the flow, so that both can use it: it needs only a model and
tokens."""

from tl_neuronkinds.interventions.ablation import ablate_neurons
from tl_neuronkinds.interventions.triggers import trigger_probability_change

__all__ = ["ablate_neurons", "trigger_probability_change"]
