"""Recording: from a model's hooks to a NeuronProfile of counts.

``recorder.py`` (``NeuronRecorder``: hooks on ``blocks.{l}.mlp.hook_post``) feeds
``accumulate.py`` (per-layer counters and float64 activation power sums on the activations'
device), which keys n-grams with ``keys.py``; ``record.py`` drives whole runs (batches, the
n-gram plan, checkpoints, ``torch.distributed``); ``examples.py`` keeps each neuron's top
activations and histogram; ``profile.py`` holds the result (``NeuronProfile``: save, load,
merge).
"""

from tl_neuronkinds.recording.accumulate import profile_from_activations
from tl_neuronkinds.recording.examples import (
    activation_histogram,
    max_activating_contexts,
    top_activations,
)
from tl_neuronkinds.recording.profile import LayerCounts, NeuronProfile
from tl_neuronkinds.recording.record import record
from tl_neuronkinds.recording.recorder import NeuronRecorder

__all__ = [
    "LayerCounts",
    "NeuronProfile",
    "NeuronRecorder",
    "activation_histogram",
    "max_activating_contexts",
    "profile_from_activations",
    "record",
    "top_activations",
]
