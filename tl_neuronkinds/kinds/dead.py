"""Dead neurons and activation frequency (§3, Figure 1)."""

import numpy as np
import pandas as pd

from tl_neuronkinds.kinds.analysis import Analysis
from tl_neuronkinds.recording.profile import NeuronProfile


def dead_neurons(profile: NeuronProfile | Analysis) -> pd.DataFrame:
    """Per neuron: how often it is active, and whether it is dead (§3, Figure 1).

    A neuron is **dead** where it is never active (``count == 0``) on the recorded data: §3 finds
    that most of them "never activate on a large collection of diverse data". A live neuron is
    **bos_only** where it is active only at BOS positions (position 0 and document separators
    that share BOS's id), never at a text position; §4 excludes BOS from the n-gram statistics
    because it dominates many neurons' activations.

    Args:
        profile: A NeuronProfile (or an ``Analysis`` of one; no cut-off is involved).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``count`` (active positions, BOS
        included), ``active_text`` (active text positions), ``freq`` (``count / positions``),
        ``dead`` and ``bos_only`` (bools).
    """
    if isinstance(profile, Analysis):
        profile = profile.profile
    frames = []
    for layer in profile.layers:
        counts = profile.counts[layer]
        count = counts.active.numpy()
        active_text = counts.active_text.numpy()
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(profile.d_mlp),
                    "count": count,
                    "active_text": active_text,
                    "freq": count / profile.n_positions,
                    "dead": count == 0,
                    "bos_only": (count > 0) & (active_text == 0),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
