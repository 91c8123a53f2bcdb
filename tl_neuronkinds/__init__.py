"""tl_neuronkinds: what the FFN neurons of OPT models are — dead, token and n-gram detectors,
positional — following Voita, Ferrando & Nalmpantis 2024, as a TransformerLens plugin.

Importing the package loads no optional heavy module (circuitsvis, matplotlib, datasets).
"""

from tl_neuronkinds.accumulate import profile_from_activations
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.profile import LayerCounts, NeuronProfile
from tl_neuronkinds.recording import NeuronRecorder, record
from tl_neuronkinds.version import __version__

__all__ = [
    "LayerCounts",
    "NeuronKindsError",
    "NeuronProfile",
    "NeuronRecorder",
    "__version__",
    "profile_from_activations",
    "record",
]
