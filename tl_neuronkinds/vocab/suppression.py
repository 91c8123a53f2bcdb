"""Do token detectors suppress the tokens that trigger them? (Voita et al. 2024, §4.4, Figure 6)"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.interventions.triggers import trigger_probability_change
from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.per_neuron import token_detectors
from tl_neuronkinds.loading.identity import check_same_model
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.vocab.projection import score_chunks

SUPPRESSION_COLUMNS = [
    "layer",
    "neuron",
    "triggers",
    "trigger_ids",
    "mean_trigger_score",
    "trigger_rank_pct",
    "suppresses",
]


def trigger_suppression(
    model: Any,
    profile: NeuronProfile | Analysis,
    cutoffs: Cutoffs | None = None,
    *,
    tokens: torch.Tensor | None = None,
    batch_size: int | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Do token detectors suppress the tokens that trigger them? (§4.4, Figure 6)

    The token detectors (n = 1, §4.2) and their triggers come from ``token_detectors`` of the
    profile; each trigger t is looked up in the detector's vocabulary projection ``s``
    (``vocab_scores``). A detector *suppresses its triggers* where the mean of ``s_t`` over its
    triggers is negative (docs/kinds.md; §4.4 finds this for over 80% of OPT-66b's token
    detectors).

    Args:
        model: The model the profile was recorded on (a HookedTransformer or TransformerBridge
            of OPT); checked against the profile's ``config_hash`` and ``model_fingerprint``.
        profile: A NeuronProfile, or an ``Analysis`` of one.
        cutoffs, **overrides: The cut-offs of the detector test (``Cutoffs``; ``k_max``,
            ``coverage`` and ``min_count``, as in ``token_detectors``).
        tokens: Where given (``Int[n_seq seq_len]``, BOS first), the causal check too: each
            detector is zero-ablated over these tokens and the next-token probability of its
            triggers is compared at the positions where it is active
            (``interventions.trigger_probability_change``).
        batch_size: Rows per forward of the causal check (default 8).

    Returns:
        One row per token detector, by layer then neuron: ``layer``, ``neuron``, ``triggers``
        (token strings) and ``trigger_ids`` (lists, by decreasing activation count, as in
        ``token_detectors``), ``mean_trigger_score`` (float64 mean of the float32 ``s_t``),
        ``trigger_rank_pct`` (per trigger, ``100 * |{v : s_v < s_t}| / d_vocab``: the
        percentage of the vocabulary scored strictly below it; near 0 the most suppressed
        tokens, near 100 the most promoted) and ``suppresses`` (``mean_trigger_score < 0``).
        With ``tokens``, also ``active_positions``, ``trigger_prob`` (the mean next-token
        probability of its triggers where it is active) and ``trigger_prob_change`` (its mean
        change when the detector is ablated: positive where the detector suppressed them).

    Raises:
        NeuronKindsError: The profile was recorded on another model (or does not say which).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    check_same_model(model, analysis.profile, strict=True)
    detectors = token_detectors(analysis)
    detectors = detectors[detectors["detector"].fillna(False).to_numpy(dtype=bool)]
    rows = []
    for layer, group in detectors.groupby("layer", sort=True):
        neurons = torch.tensor(group["neuron"].to_numpy(dtype=np.int64))
        triggers = list(group["trigger_ids"])
        for part, scores in score_chunks(model, int(layer), neurons):
            for j in range(part.start, part.stop):
                row = scores[j - part.start]
                ids = torch.as_tensor(triggers[j], dtype=torch.int64, device=row.device)
                s_t = row[ids]
                below = (row[None, :] < s_t[:, None]).sum(dim=1)
                mean = float(s_t.to(torch.float64).mean())
                rows.append(
                    {
                        "layer": int(layer),
                        "neuron": int(neurons[j]),
                        "triggers": list(group["triggers"].iloc[j]),
                        "trigger_ids": [int(t) for t in triggers[j]],
                        "mean_trigger_score": mean,
                        "trigger_rank_pct": (100.0 * below.cpu().double() / row.numel()).tolist(),
                        "suppresses": mean < 0,
                    }
                )
    table = pd.DataFrame(rows, columns=SUPPRESSION_COLUMNS).astype(
        {"layer": np.int64, "neuron": np.int64, "mean_trigger_score": float, "suppresses": bool}
    )
    if tokens is None:
        return table
    prof = analysis.profile
    found = list(zip(table["layer"], table["neuron"], table["trigger_ids"], strict=True))
    causal = trigger_probability_change(
        model, tokens, found, threshold=prof.threshold, batch_size=batch_size,
        bos_token_id=prof.bos_token_id,
    )  # fmt: skip
    return pd.concat([table, causal.drop(columns=["layer", "neuron"])], axis=1)


def suppression_by_layer(table: pd.DataFrame, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Per layer, how many token detectors suppress their triggers (Figure 6).

    Args:
        table: ``trigger_suppression``'s output.
        layers: The layers to report (default: those in ``table``); pass ``profile.layers`` to
            list layers without token detectors too.

    Returns:
        One row per layer: ``layer``, ``token_detectors``, ``suppressing`` (how many suppress
        their triggers) and ``suppressing_fraction`` (their share; NaN without detectors).
    """
    missing = [c for c in ("layer", "suppresses") if c not in table.columns]
    if missing:
        raise NeuronKindsError(f"expected trigger_suppression's table; it lacks {missing}")
    wanted = sorted(set(table["layer"].tolist())) if layers is None else [int(x) for x in layers]
    grouped = table.groupby("layer")["suppresses"]
    counts = grouped.size().reindex(wanted, fill_value=0)
    suppressing = grouped.sum().reindex(wanted, fill_value=0)
    return pd.DataFrame(
        {
            "layer": np.asarray(wanted, dtype=np.int64),
            "token_detectors": counts.to_numpy(dtype=np.int64),
            "suppressing": suppressing.to_numpy(dtype=np.int64),
            "suppressing_fraction": np.divide(
                suppressing.to_numpy(dtype=float),
                counts.to_numpy(dtype=float),
                out=np.full(len(wanted), np.nan),
                where=counts.to_numpy() > 0,
            ),
        }
    )
