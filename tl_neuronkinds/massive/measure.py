"""Massive activations with their effects, as the command line and the run's report show them."""

from typing import Any

from tl_neuronkinds.massive.activations import MAGNITUDE, RATIO, massive_activations
from tl_neuronkinds.massive.effects import massive_attention, massive_intervention

#: Tokens the run's report looks at for massive activations (its first rows).
REPORT_TOKENS = 65_536


def measure_massive(
    model: Any,
    tokens: Any,
    k: int = 3,
    batch: int | None = None,
    magnitude: float = MAGNITUDE,
    ratio: float = RATIO,
    scheme: str = "threshold",
    *,
    progress: bool | None = None,
) -> Any:
    """``massive_activations`` over ``tokens`` (pooled, with Sun et al.'s per-sequence means in
    ``by_sequence``), with the effects where any is massive: the intervention (``scheme`` as
    ``massive_intervention``'s), its mean over the first half of the rows, its perplexity over
    the second half (Sun et al. 2024, §3), and the attention on them over every row (§4).

    ``progress``: show progress (default; False for none): each pass named with its total of
    tokens, ``massive activations pass 1/2`` and ``2/2``, then where anything is massive
    ``massive intervention pass 1/4`` to ``4/4`` and ``massive attention pass 1/1``
    (``tl_neuronkinds.progress``)."""
    found = massive_activations(
        model, tokens, k, batch_size=batch, magnitude=magnitude, ratio=ratio, progress=progress
    )
    if not found.top["massive"].any():
        return found
    half = max(1, tokens.shape[0] // 2)
    mean_rows, held_out = (tokens[:half], tokens[half:]) if tokens.shape[0] > 1 else (tokens,) * 2
    return found.with_effects(
        massive_intervention(
            model,
            found,
            held_out,
            mean_tokens=mean_rows,
            batch_size=batch,
            scheme=scheme,
            progress=progress,
        ),
        massive_attention(model, found, tokens, batch_size=batch, progress=progress),
    )


def massive_for_report(model: Any, tokens: Any, *, progress: bool | None = None) -> Any:
    """What a run's report shows of massive activations: ``measure_massive`` over the first rows
    of ``tokens`` (up to ``REPORT_TOKENS``), at the paper's thresholds; None without tokens.
    ``progress`` as ``measure_massive``'s."""
    if tokens is None:
        return None
    rows = max(1, REPORT_TOKENS // tokens.shape[1])
    return measure_massive(model, tokens[:rows], progress=progress)
