"""Neuron kinds as pure functions of a NeuronProfile (SPEC.md; Voita et al. 2024, §3-§5).

Glossary: ``layer`` a recorded layer, ``neuron`` an index into ``d_mlp``, ``n`` an n-gram order,
``p`` a position (1..T-1), ``c_g`` / ``o_g`` / ``A`` as in SPEC.md. Every function returns a
pandas DataFrame and takes its cut-offs as keyword arguments with the paper's defaults, so a
saved profile can be re-classified with other cut-offs in seconds, without the model.
"""

from tl_neuronkinds.kinds.classify import classify
from tl_neuronkinds.kinds.dead import dead_neurons
from tl_neuronkinds.kinds.ngrams import ngram_coverage, token_detectors
from tl_neuronkinds.kinds.positional import position_frequencies, position_teams, positional_neurons
from tl_neuronkinds.kinds.summaries import (
    fig1a,
    fig1b,
    fig2,
    fig3a,
    fig3b,
    fig4,
    fig8,
    layer_summary,
)

__all__ = [
    "classify",
    "dead_neurons",
    "fig1a",
    "fig1b",
    "fig2",
    "fig3a",
    "fig3b",
    "fig4",
    "fig8",
    "layer_summary",
    "ngram_coverage",
    "position_frequencies",
    "position_teams",
    "positional_neurons",
    "token_detectors",
]
