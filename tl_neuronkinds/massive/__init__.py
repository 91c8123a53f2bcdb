"""Massive activations (Sun et al. 2024): ``massive_activations`` (``activations.py``), from
exact streaming statistics of hidden-state magnitudes (``streaming.py``); what they do:
``massive_intervention`` and ``massive_attention`` (``effects.py``)."""

from tl_neuronkinds.massive.activations import MassiveActivations, massive_activations
from tl_neuronkinds.massive.effects import massive_attention, massive_intervention

__all__ = ["MassiveActivations", "massive_activations", "massive_attention", "massive_intervention"]
