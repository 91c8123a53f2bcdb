"""What neurons write (Voita et al. 2024, §4.4, Figures 5-6): the linear readout from a layer's
FFN update to the logits (``readout.py``), each neuron's promoted and suppressed tokens
(``projection.py``), and whether token detectors suppress their own triggers
(``suppression.py``)."""

from tl_neuronkinds.vocab.projection import (
    CHUNK_ELEMENTS,
    PROJECTION_COLUMNS,
    score_chunks,
    vocab_projection,
    vocab_scores,
)
from tl_neuronkinds.vocab.suppression import (
    SUPPRESSION_COLUMNS,
    suppression_by_layer,
    trigger_suppression,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "PROJECTION_COLUMNS",
    "SUPPRESSION_COLUMNS",
    "score_chunks",
    "suppression_by_layer",
    "trigger_suppression",
    "vocab_projection",
    "vocab_scores",
]
