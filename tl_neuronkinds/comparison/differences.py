"""What differs between the runs of a comparison besides the model, shown once, not hidden.

Every run is classified with the same cut-offs, but the counts behind the kinds depend on what
was recorded: how many tokens (a neuron is dead only until it fires, so fewer tokens find more
dead neurons and fewer triggers), from which corpus, at which sequence length (positional
neurons, §5), with which n-gram cap (Figure 2's buckets for n >= 2 end at the cap), threshold
and tokenizer (triggers are tokens). ``differences`` lists each setting on which the runs
disagree; ``notes`` what the reader should know of single runs (layers not recorded, a depth
assumed).
"""

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pandas as pd

from tl_neuronkinds.comparison.runs import ASSUMED, Run

#: Token counts that differ by more than this factor are a difference.
TOKEN_RATIO = 2.0
COLUMNS = ["setting", "values", "why"]


def _vocabulary(run: Run) -> str:
    """The tokenizer, as its vocabulary: a digest of every token id's string."""
    text = json.dumps(run.profile.token_strings, ensure_ascii=False)
    return (
        f"{run.profile.d_vocab} tokens, vocabulary {hashlib.sha256(text.encode()).hexdigest()[:8]}"
    )


# (setting, its value in a run, why a difference matters)
_SETTINGS: list[tuple[str, Callable[[Run], Any], str]] = [
    ("corpus", lambda r: str(r.profile.meta.get("corpus") or "unknown"),
     "what a neuron detects depends on the text it saw"),
    ("seq_len", lambda r: r.profile.seq_len,
     "positional neurons (§5) are measured over positions 1..seq_len-1"),
    ("ngram_max", lambda r: r.profile.ngram_max,
     "Appendix A's tables exist only for the orders every run recorded"),
    ("ngram_cap", lambda r: "none" if r.profile.ngram_cap is None else r.profile.ngram_cap,
     "Figure 2's buckets for n >= 2 end at the cap (a '>cap' bucket)"),
    ("threshold", lambda r: r.profile.threshold, "'active' means an activation above it"),
    ("tokenizer", _vocabulary, "triggers are tokens: other tokenizers, other triggers"),
]  # fmt: skip


def _values(runs: list[Run], value: Callable[[Run], Any]) -> str:
    return "; ".join(f"{run.label}: {value(run)}" for run in runs)


def differences(runs: list[Run]) -> pd.DataFrame:
    """One row per setting on which the runs differ: ``setting``, ``values`` (each run's, as
    ``label: value; ...``) and ``why`` it matters. Token counts count as different where the
    largest is more than ``TOKEN_RATIO`` times the smallest."""
    rows = []
    tokens = [run.profile.n_positions for run in runs]
    if max(tokens) > TOKEN_RATIO * min(tokens):
        rows.append(
            {
                "setting": "tokens",
                "values": _values(runs, lambda r: f"{r.profile.n_positions:,}"),
                "why": f"more than {TOKEN_RATIO:g}x apart: fewer tokens leave more neurons dead "
                "(never active yet) and find fewer triggers",
            }
        )
    for setting, value, why in _SETTINGS:
        if len({json.dumps(value(run), default=str) for run in runs}) > 1:
            rows.append({"setting": setting, "values": _values(runs, value), "why": why})
    return pd.DataFrame(rows, columns=COLUMNS)


def notes(runs: list[Run]) -> list[str]:
    """What to know of single runs: depths assumed, layers not recorded."""
    out = []
    for run in runs:
        layers = run.profile.layers
        if run.n_layers_from == ASSUMED:
            out.append(
                f"{run.label}: the model's number of layers is not stated (an older profile "
                f"without a model or run.json to read it from): taken as {run.n_layers}, its "
                "last recorded layer + 1; relative depths assume that. Pass its model in "
                "models=[...] to fix it."
            )
        elif len(layers) < run.n_layers:
            out.append(
                f"{run.label}: recorded {len(layers)} of its model's {run.n_layers} layers; "
                "they keep their place in the model's depth"
            )
    return out
