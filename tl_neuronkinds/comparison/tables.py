"""The comparison's long-form tables: each run's per-layer figure tables, stacked.

Every value comes from the single-run tables (``kinds.figure_tables``, ``vocab``'s Figure 6
tables, massive activations' tables): nothing is recomputed here, only reshaped. Each row
starts with ``model`` (the run's label), ``n_layers`` (the model's), ``layer`` and
``relative_depth`` (``layer / (n_layers - 1)``, docs/compare.md), so one plot call with one line
per model reproduces the paper's multi-model figures (Voita et al. 2024, Figures 1a, 1b, 3a, 3b,
4) and one panel or row per model its Figures 2, 8 and Appendix A.
"""

from typing import Any

import numpy as np
import pandas as pd

from tl_neuronkinds.comparison.runs import Run
from tl_neuronkinds.kinds.summaries import figure_tables

#: The columns that start every table.
KEYS = ["model", "n_layers", "layer", "relative_depth"]


def _keyed(run: Run, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a ``layer`` column and values) with the comparison's key columns in front."""
    out = frame.reset_index(drop=True)
    layers = out["layer"].astype(np.int64)
    out["layer"] = layers
    out.insert(0, "model", run.label)
    out.insert(1, "n_layers", np.int64(run.n_layers))
    out.insert(3, "relative_depth", [run.relative_depth(int(x)) for x in layers])
    return out


def _per_layer(run: Run, frame: pd.DataFrame) -> pd.DataFrame:
    """A table indexed by layer (one row per layer) as rows of the comparison."""
    return _keyed(run, frame.rename_axis("layer").reset_index())


def _melted(run: Run, frame: pd.DataFrame, what: str, split: bool = False) -> pd.DataFrame:
    """A table indexed by layer with one column per bucket (Figure 2) or per type and strength
    (Figure 8) as one row per (layer, column), in the table's own column order."""
    rows: list[dict[str, Any]] = []
    for layer, values in frame.iterrows():
        for column, value in values.items():
            row: dict[str, Any] = {"layer": int(layer)}  # type: ignore[call-overload]
            if split:
                row["type"], row["strength"] = str(column).rsplit("_", 1)
            else:
                row[what] = str(column)
            row["neurons"] = int(value)
            rows.append(row)
    return _keyed(run, pd.DataFrame(rows))


def run_tables(run: Run) -> dict[str, pd.DataFrame]:
    """The figure tables of one run (``figure_tables`` of its Analysis), in long form:
    ``fig2_n{n}`` one row per (layer, ``bucket``), ``fig8`` one row per (layer, ``type``,
    ``strength``) (its ``n_positional`` is ``layers``'s), every other one row per layer."""
    out = {}
    for name, frame in figure_tables(run.analysis).items():
        if name.startswith("fig2_"):
            out[name] = _melted(run, frame, "bucket")
        elif name == "fig8":
            out[name] = _melted(run, frame.drop(columns="n_positional"), "type", split=True)
        else:
            out[name] = _per_layer(run, frame)
    return out


def stack(per_run: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Each table's rows of every run that has it, runs in the order given (a table a run
    lacks, e.g. ``fig2_n3`` of a run recorded with ``ngram_max`` 2, has none of its rows)."""
    names: list[str] = []
    for tables in per_run:
        names += [name for name in tables if name not in names]
    return {
        name: pd.concat([t[name] for t in per_run if name in t], ignore_index=True)
        for name in names
    }


def suppression_table(run: Run, model: Any) -> pd.DataFrame:
    """Figure 6 (§4.4) of one run: per recorded layer, ``token_detectors``, ``suppressing`` and
    ``suppressing_fraction`` (``vocab.suppression_by_layer`` of ``trigger_suppression``)."""
    from tl_neuronkinds.vocab.suppression import suppression_by_layer, trigger_suppression

    table = trigger_suppression(model, run.analysis)
    return _keyed(run, suppression_by_layer(table, run.profile.layers))


def massive_table(run: Run, top: pd.DataFrame, median: pd.DataFrame) -> pd.DataFrame:
    """Massive activations (Sun et al. 2024) of one run: per layer, ``top_1`` (the largest
    hidden-state magnitude), ``median`` and ``n_massive`` (massive entries among the top-k), from
    ``MassiveActivations.top`` / ``.median`` (or the tables ``tl-neuronkinds massive`` wrote)."""
    first = top[top["rank"] == 0].set_index("layer")["magnitude"]
    frame = pd.DataFrame(
        {
            "top_1": first,
            "median": median.set_index("layer")["median"],
            "n_massive": top.groupby("layer")["massive"].sum().astype(np.int64),
        }
    )
    return _per_layer(run, frame.sort_index())


def _layers_text(layers: list[int]) -> str:
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(map(str, layers))


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its label, model, depth, what it recorded and where it came from."""
    rows = []
    for run in runs:
        profile = run.profile
        rows.append(
            {
                "model": run.label,
                "model_name": str(profile.meta.get("model_name") or ""),
                "n_layers": run.n_layers,
                "n_layers_from": run.n_layers_from,
                "layers_recorded": _layers_text(profile.layers),
                "tokens": profile.n_positions,
                "text_tokens": profile.n_text_positions,
                "n_seqs": profile.n_seqs,
                "seq_len": profile.seq_len,
                "corpus": str(profile.meta.get("corpus") or ""),
                "ngram_max": profile.ngram_max,
                "ngram_cap": "none" if profile.ngram_cap is None else str(profile.ngram_cap),
                "threshold": profile.threshold,
                "d_mlp": profile.d_mlp,
                "d_vocab": profile.d_vocab,
                "tokens_digest": str(profile.meta.get("tokens_digest") or ""),
                "source": "" if run.directory is None else str(run.directory),
                "report": "" if run.report is None else str(run.report),
            }
        )
    return pd.DataFrame(rows)
