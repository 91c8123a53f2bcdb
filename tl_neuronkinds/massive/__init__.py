"""Massive activations (Sun et al. 2024): ``massive_activations`` (``activations.py``), from
exact streaming statistics of hidden-state magnitudes (``streaming.py``)."""

from tl_neuronkinds.massive.activations import MassiveActivations, massive_activations

__all__ = ["MassiveActivations", "massive_activations"]
