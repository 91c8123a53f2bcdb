"""Neuron kinds as pure functions of a NeuronProfile (docs/kinds.md; Voita et al. 2024, §3-§5).

Glossary: ``layer`` a recorded layer, ``neuron`` an index into ``d_mlp``, ``n`` an n-gram order,
``p`` a position (1..T-1), ``c_g`` / ``o_g`` / ``A`` as in docs/kinds.md. Every function returns a
pandas DataFrame and takes its cut-offs as one ``Cutoffs`` (the paper's defaults, each citing
its section) and/or keyword overrides of its fields (``classify(profile, k_max=10)``), so a
saved profile can be re-classified with other cut-offs in seconds, without the model.

Every function takes a NeuronProfile or an ``Analysis`` of one: an Analysis computes each
layer's n-gram coverage and positional statistics once for all the tables made from it::

    analysis = Analysis(profile)                   # or Analysis(profile, k_max=10)
    table = classify(analysis)
    tables = figure_tables(analysis)               # "fig1a" ... "fig8" and "layers"
"""

from tl_neuronkinds.kinds._common import EvidenceWarning, UndecidableWarning
from tl_neuronkinds.kinds.analysis import Analysis
from tl_neuronkinds.kinds.classify import KINDS, classify, classify_with_cautions
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.dead import dead_neurons
from tl_neuronkinds.kinds.moments import activation_moments
from tl_neuronkinds.kinds.per_neuron import ngram_coverage, positional_neurons, token_detectors
from tl_neuronkinds.kinds.positional import position_frequencies
from tl_neuronkinds.kinds.summaries import (
    coverage_by_layer,
    dead_by_layer,
    detectors_by_layer,
    figure_tables,
    frequency_by_layer,
    layer_summary,
    new_triggers_by_layer,
    position_teams,
    positional_by_layer,
    triggers_by_layer,
)

# The per-layer tables under their earlier names, the paper's figure numbers (users' code calls
# them so): each is the function named for what it counts.
fig1a = dead_by_layer
fig1b = frequency_by_layer
fig2 = coverage_by_layer
fig3a = detectors_by_layer
fig3b = triggers_by_layer
fig4 = new_triggers_by_layer
fig8 = positional_by_layer

__all__ = [
    "KINDS",
    "Analysis",
    "Cutoffs",
    "EvidenceWarning",
    "UndecidableWarning",
    "activation_moments",
    "classify",
    "classify_with_cautions",
    "coverage_by_layer",
    "dead_by_layer",
    "dead_neurons",
    "detectors_by_layer",
    "fig1a",
    "fig1b",
    "fig2",
    "fig3a",
    "fig3b",
    "fig4",
    "fig8",
    "figure_tables",
    "frequency_by_layer",
    "layer_summary",
    "new_triggers_by_layer",
    "ngram_coverage",
    "position_frequencies",
    "position_teams",
    "positional_by_layer",
    "positional_neurons",
    "token_detectors",
    "triggers_by_layer",
]
