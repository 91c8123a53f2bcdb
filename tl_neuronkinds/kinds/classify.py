"""One table of every neuron's kind: dead, token detector, n-gram detector, positional, other."""

import numpy as np
import pandas as pd

from tl_neuronkinds.kinds._common import check_percent, check_positive_int
from tl_neuronkinds.kinds.ngrams import (
    detector_trigger_ids,
    k95_column,
    layer_coverage,
)
from tl_neuronkinds.kinds.positional import check_cutoffs, layer_positional, type_labels
from tl_neuronkinds.recording.profile import NeuronProfile

COLUMNS = [
    "layer",
    "neuron",
    "count",
    "freq",
    "dead",
    "bos_only",
    "k95_1",
    "k95_2",
    "k95_3",
    "token_detector",
    "triggers",
    "ngram_detector_2",
    "ngram_detector_3",
    "pos_mi",
    "positional",
    "pos_type",
    "pos_strength",
    "kind",
]
KINDS = ["dead", "token_detector", "ngram_detector", "positional", "other"]


def classify(
    profile: NeuronProfile,
    *,
    k_max: int = 5,
    coverage: int = 95,
    mi_threshold: float = 0.05,
    min_run: int = 8,
    delta: float = 0.05,
    smooth_r2: float = 0.9,
) -> pd.DataFrame:
    """Every recorded neuron's kind, from the profile alone (SPEC.md; API.md's columns).

    ``kind`` is the first that holds of: ``dead`` (never active, §3), ``token_detector`` (§4.2),
    ``ngram_detector`` (a bigram or trigram detector, §4.5), ``positional`` (§5.1), ``other``.
    Re-running with other cut-offs needs no model: everything comes from the counts.

    Args:
        profile: A NeuronProfile.
        k_max, coverage: Detector cut-offs (see ``token_detectors``; 5 and 95% in §4.2).
        mi_threshold, min_run, delta, smooth_r2: Positional cut-offs (see
            ``positional_neurons``; 0.05 nats in §5.1).

    Returns:
        One row per (layer, neuron) with exactly the columns ``COLUMNS``: ``k95_n`` are
        nullable Int64 (NA where the neuron has no activation at a text position where the
        n-gram is defined); ``triggers`` is the list of a token detector's trigger strings
        (empty for other neurons); ``pos_type`` / ``pos_strength`` are NA for neurons that are
        not positional. Orders above ``profile.ngram_max`` were not recorded: their ``k95_n``
        are NA and their ``ngram_detector_n`` False.
    """
    check_positive_int("k_max", k_max)
    check_percent("coverage", coverage)
    check_cutoffs(mi_threshold, min_run, delta, smooth_r2)
    frames = []
    for layer in profile.layers:
        frames.append(
            _layer_table(
                profile,
                layer,
                dict(k_max=k_max, coverage=coverage),
                dict(mi_threshold=mi_threshold, min_run=min_run, delta=delta, smooth_r2=smooth_r2),
            )
        )
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def _layer_table(
    profile: NeuronProfile, layer: int, detector_cuts: dict, positional_cuts: dict
) -> pd.DataFrame:
    d_mlp = profile.d_mlp
    counts = profile.counts[layer]
    count = counts.active.numpy()
    dead = count == 0
    table: dict[str, object] = {
        "layer": layer,
        "neuron": np.arange(d_mlp),
        "count": count,
        "freq": count / profile.n_positions,
        "dead": dead,
        "bos_only": (count > 0) & (counts.active_text.numpy() == 0),
    }
    detectors = {}
    for n in (1, 2, 3):
        if n <= profile.ngram_max:
            cov = layer_coverage(profile, layer, n, **detector_cuts)
            table[f"k95_{n}"] = k95_column(cov.k95)
            detectors[n] = cov.detector
            if n == 1:
                triggers: list[list[str]] = [[] for _ in range(d_mlp)]
                for i, gids in detector_trigger_ids(cov).items():
                    triggers[i] = [profile.token_strings[int(g)] for g in gids]
                table["triggers"] = triggers
        else:
            table[f"k95_{n}"] = pd.array([pd.NA] * d_mlp, dtype="Int64")
            detectors[n] = np.zeros(d_mlp, dtype=bool)
    table["token_detector"] = detectors[1]
    table["ngram_detector_2"] = detectors[2]
    table["ngram_detector_3"] = detectors[3]

    pos = layer_positional(profile, layer, **positional_cuts)
    table["pos_mi"] = pos.mi
    table["positional"] = pos.positional
    table["pos_type"], table["pos_strength"] = type_labels(pos)

    kind = np.full(d_mlp, KINDS[4], dtype=object)
    # The first that holds wins: assign in reverse order of precedence.
    for label, holds in reversed(
        list(zip(KINDS[:4], [dead, detectors[1], detectors[2] | detectors[3], pos.positional]))
    ):
        kind[holds] = label
    table["kind"] = kind
    return pd.DataFrame(table)
