"""Activation moments and sparsity per neuron, from the power sums a profile keeps.

Gurnee et al. 2024 ("Universal Neurons in GPT2 Language Models"; docs/kinds.md) describe each
neuron by summary statistics of its activation distribution (mean, skew, kurtosis, sparsity)
beside statistics of its weights, and find that universal neurons stand apart in them: sparse,
with heavy right tails. The recorder keeps, per neuron, the float64 sums ``S_k = sum h**k``
(k = 1..4) over the text positions (``LayerCounts.moments``), so these statistics come from the
same single pass, and merge exactly, like every count of the profile.
"""

import numpy as np
import pandas as pd

from tl_neuronkinds.checks import is_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.analysis import Analysis
from tl_neuronkinds.recording.profile import NeuronProfile

#: A variance at most this share of the mean square is float64 rounding of ``S2/n - mean**2``
#: (the neuron does not vary, e.g. a dead one): its skew and kurtosis are NaN.
FLAT = 1e-12


def activation_moments(
    profile: NeuronProfile | Analysis, layers: list[int] | None = None
) -> pd.DataFrame:
    """Per neuron: the mean, variance, skew and kurtosis of its activations, and its sparsity.

    Over the profile's text positions (docs/kinds.md, "Terms": BOS positions are left out), from the
    power sums ``S1..S4`` in float64, with ``n`` positions and ``mean = S1 / n``::

        m2 = S2/n - mean**2
        m3 = S3/n - 3 mean S2/n + 2 mean**3
        m4 = S4/n - 4 mean S3/n + 6 mean**2 S2/n - 3 mean**4

    Args:
        profile: A NeuronProfile recorded with format 5 or later (or an ``Analysis`` of one).
        layers: The recorded layers to report (default: all of them).

    Returns:
        One row per (layer, neuron): ``layer``, ``neuron``, ``act_mean``, ``act_var`` (the
        population variance ``m2``), ``act_skew`` (``m3 / m2**1.5``), ``act_kurt`` (Pearson's
        ``m4 / m2**2``: 3 for a normal distribution; skew and kurtosis are NaN where the neuron
        does not vary, ``m2 <= FLAT * S2/n``), ``sparsity`` (the share of the positions where it
        is active, ``active_text / n``) and ``positions`` (``n``).

    Raises:
        NeuronKindsError: A layer was not recorded, or the profile predates the power sums.
    """
    if isinstance(profile, Analysis):
        profile = profile.profile
    chosen = profile.layers if layers is None else _check_layers(layers, profile.layers)
    n = profile.n_text_positions
    frames = []
    for layer in chosen:
        counts = profile.counts[layer]
        if counts.moments is None:
            raise NeuronKindsError(
                "this profile predates activation moments (it was recorded or merged without "
                "power sums, format 4 or before); record it again to get them"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            s1, s2, s3, s4 = counts.moments.numpy() / n
            mean = s1
            m2 = s2 - mean**2
            m3 = s3 - 3 * mean * s2 + 2 * mean**3
            m4 = s4 - 4 * mean * s3 + 6 * mean**2 * s2 - 3 * mean**4
            varies = m2 > FLAT * s2
            skew = np.where(varies, m3 / m2**1.5, np.nan)
            kurt = np.where(varies, m4 / m2**2, np.nan)
            sparsity = counts.active_text.numpy() / n
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": np.arange(profile.d_mlp),
                    "act_mean": mean,
                    "act_var": np.maximum(m2, 0.0),
                    "act_skew": skew,
                    "act_kurt": kurt,
                    "sparsity": sparsity,
                    "positions": n,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _check_layers(layers: object, recorded: list[int]) -> list[int]:
    """The distinct ``layers``, ascending, or a NeuronKindsError unless all were recorded."""
    if not isinstance(layers, list | tuple | range) or not all(is_int(x) for x in layers):
        raise NeuronKindsError(f"layers must be a list of layer indices, got {layers!r}")
    missing = sorted(set(layers) - set(recorded))
    if missing:
        raise NeuronKindsError(f"layers {missing} were not recorded (recorded: {recorded})")
    return sorted(set(layers))
