"""Reading back what a profile kept of each neuron's activations: its top activations and its
activation histogram, as tables (``top_k.py`` keeps them while recording; ``contexts.py`` adds
the tokens around each top activation).
"""

from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.top_k import EMPTY, HIST_BINS, HIST_EDGES


def top_activations(profile: Any, layer: int, neuron: int | None = None) -> pd.DataFrame:
    """The top activations a profile kept, one row per (neuron, rank).

    Columns: ``layer``, ``neuron``, ``rank`` (0 = largest), ``value``, ``seq`` (row of the tokens
    the profile refers to), ``pos``. A neuron active fewer than ``top_k`` times has fewer rows.

    Raises:
        NeuronKindsError: The profile kept none (recorded with ``top_k=0`` or before format 3),
            or ``layer`` / ``neuron`` is not in it.
    """
    counts = layer_counts(profile, layer, neuron)
    if counts.top_values is None or counts.top_seq is None or counts.top_pos is None:
        raise NeuronKindsError(
            "this profile kept no top activations: record it with top_k > 0 (nk.record's "
            "default is 16)"
        )
    neurons = torch.arange(profile.d_mlp) if neuron is None else torch.tensor([neuron])
    seqs = counts.top_seq[neurons]
    filled = seqs != EMPTY
    which, rank = filled.nonzero(as_tuple=True)
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": neurons[which].numpy(),
            "rank": rank.numpy(),
            "value": counts.top_values[neurons][filled].numpy(),
            "seq": seqs[filled].numpy(),
            "pos": counts.top_pos[neurons][filled].numpy(),
        }
    )


def activation_histogram(profile: Any, layer: int, neuron: int | None = None) -> pd.DataFrame:
    """A neuron's (or every neuron's) active values by histogram bin, one row per bin.

    Columns: ``layer``, ``neuron``, ``bin``, ``lo``, ``hi`` (the bin is ``[lo, hi)``; the first
    bin's ``lo`` is the threshold, the last bin's ``hi`` infinite), ``count``. The counts of a
    neuron sum to its active positions (§3).

    Raises:
        NeuronKindsError: The profile kept no histogram (record with ``histogram=True``), or
            ``layer`` / ``neuron`` is not in it.
    """
    counts = layer_counts(profile, layer, neuron)
    if counts.hist is None:
        raise NeuronKindsError(
            "this profile kept no activation histogram: record it with histogram=True"
        )
    edges = HIST_EDGES.tolist()
    lo = [float(profile.threshold), *edges]
    hi = [*edges, float("inf")]
    neurons = range(profile.d_mlp) if neuron is None else [neuron]
    hist = counts.hist.numpy()
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": np.repeat(np.asarray(neurons), HIST_BINS),
            "bin": np.tile(np.arange(HIST_BINS), len(neurons)),
            "lo": np.tile(lo, len(neurons)),
            "hi": np.tile(hi, len(neurons)),
            "count": hist[list(neurons)].reshape(-1),
        }
    )


def layer_counts(profile: Any, layer: int, neuron: int | None) -> Any:
    if layer not in profile.counts:
        raise NeuronKindsError(f"layer {layer} is not in the profile (layers {profile.layers})")
    if neuron is not None and not 0 <= neuron < profile.d_mlp:
        raise NeuronKindsError(f"neuron {neuron} is out of range 0..{profile.d_mlp - 1}")
    return profile.counts[layer]
