"""Per-layer tables behind the paper's figures (Figures 1a, 1b, 2, 3a, 3b, 4, 8, 9; Appendix A),
each named for what it counts per layer (``dead_by_layer`` is Figure 1a; each docstring names
its figure, and ``figure_tables`` keys them by figure number).

Every table is a DataFrame indexed by the profile's recorded layers. Comparisons "over lower
layers" and "with the previous layer" (Figures 3b, 4) are over the recorded layers: the previous
layer is the previous recorded one, and the first recorded layer's triggers all count as new.

Each function takes a NeuronProfile or an ``Analysis`` (``analysis.py``); ``figure_tables``
makes every table from one Analysis, so each layer's coverage and positional statistics are
computed once for all of them (and for ``classify`` when it is given the same Analysis).
"""

import numpy as np
import pandas as pd

from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.classify import KINDS, classification
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.dead import dead_neurons
from tl_neuronkinds.kinds.ngrams import UNDEFINED, UNKNOWN, fig2_buckets, k95_bucket
from tl_neuronkinds.kinds.positional import TYPES
from tl_neuronkinds.recording.profile import NeuronProfile

#: ``layer_summary``'s ``n_detectors_under_{FEW_ACTIVATIONS}``: detectors whose ``evidence``
#: (text activations, ``classify``) is below this rest on too little to trust.
FEW_ACTIVATIONS = 10


def _frame(profile: NeuronProfile, rows: dict[int, dict]) -> pd.DataFrame:
    out = pd.DataFrame.from_dict(rows, orient="index")
    return out.reindex(pd.Index(profile.layers, name="layer"))


def dead_by_layer(profile: NeuronProfile | Analysis) -> pd.DataFrame:
    """Figure 1a: ``n_neurons``, ``n_dead`` and ``pct_dead`` (percentage of dead neurons) per layer."""
    table = dead_neurons(profile)
    prof = profile.profile if isinstance(profile, Analysis) else profile
    dead = table.groupby("layer")["dead"]
    out = pd.DataFrame({"n_neurons": dead.size(), "n_dead": dead.sum()})
    out["pct_dead"] = 100 * out["n_dead"] / out["n_neurons"]
    return out.reindex(pd.Index(prof.layers, name="layer"))


def frequency_by_layer(profile: NeuronProfile | Analysis) -> pd.DataFrame:
    """Figure 1b: ``mean_freq``, the mean activation frequency of the non-dead neurons (NaN if none)."""
    table = dead_neurons(profile)
    prof = profile.profile if isinstance(profile, Analysis) else profile
    alive = table[~table["dead"]].groupby("layer")["freq"].mean()
    return pd.DataFrame({"mean_freq": alive}).reindex(pd.Index(prof.layers, name="layer"))


def coverage_by_layer(
    profile: NeuronProfile | Analysis,
    n: int = 1,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Figure 2 (n = 1) and Appendix A (n = 2, 3): alive neurons per bucket of ``k95_n``.

    Columns: one per Figure 2 bucket (``ngrams.FIG2_BUCKETS``, inclusive integer ranges) and
    ``undefined`` for alive neurons with no activation at a text position where the n-gram is
    defined (bos_only neurons, for example); each row sums to the layer's alive neurons.

    On a capped profile (``ngram_cap`` set), for n >= 2: the buckets up to the cap (a bucket
    straddling it is cut there: cap 30 gives "21-30"), then ``>{cap}`` (e.g. ``>50``: the
    censored neurons and those whose exact k95 passes the cap), ``undefined``, and ``unknown``
    (neurons whose counts the profile lacks without a proof; docs/kinds.md, "The n-gram cap").
    ``coverage`` is the cut-off used (``cutoffs`` / ``**overrides``).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    analysis.check_order(n)
    prof = analysis.profile
    cap = prof.ngram_cap if n >= 2 else None
    labels = [label for label, _, _ in fig2_buckets(cap)]
    extra = ["undefined"] if cap is None else ["undefined", "unknown"]
    rows = {}
    for layer in prof.layers:
        cov = analysis.coverage(layer, n)
        alive = ~analysis.dead(layer)
        bucket = k95_bucket(cov, cap)[alive]
        status = cov.status[alive]
        row = {label: int((bucket == label).sum()) for label in labels}
        row["undefined"] = int((status == UNDEFINED).sum())
        if cap is not None:
            row["unknown"] = int((status == UNKNOWN).sum())
        rows[layer] = row
    return _frame(prof, rows)[[*labels, *extra]].astype(np.int64)


def detectors_by_layer(
    profile: NeuronProfile | Analysis,
    n: int = 1,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Figure 3a (Appendix A for n >= 2): ``n_detectors``, the token / n-gram detectors per layer,
    and ``n_undecided``, the neurons whose test a capped profile cannot decide (``classify``)."""
    analysis = analysis_of(profile, cutoffs, overrides)
    analysis.check_order(n)
    rows = {
        layer: {
            "n_detectors": int(analysis.coverage(layer, n).detector.sum()),
            "n_undecided": int((~analysis.coverage(layer, n).decided).sum()),
        }
        for layer in analysis.profile.layers
    }
    return _frame(analysis.profile, rows)


def triggers_by_layer(
    profile: NeuronProfile | Analysis,
    n: int = 1,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Figure 3b: ``n_triggers`` (distinct triggers of a layer's detectors) and
    ``n_triggers_cumulative`` (distinct triggers of this and all lower recorded layers)."""
    analysis = analysis_of(profile, cutoffs, overrides)
    analysis.check_order(n)
    seen: set[int] = set()
    rows = {}
    for layer in analysis.profile.layers:
        mine = analysis.trigger_set(layer, n)
        seen |= mine
        rows[layer] = {"n_triggers": len(mine), "n_triggers_cumulative": len(seen)}
    return _frame(analysis.profile, rows)


def new_triggers_by_layer(
    profile: NeuronProfile | Analysis,
    n: int = 1,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Figure 4: a layer's triggers that are ``new_overall`` (in no lower recorded layer) and
    ``new_vs_previous`` (not among the previous recorded layer's triggers)."""
    analysis = analysis_of(profile, cutoffs, overrides)
    analysis.check_order(n)
    seen: set[int] = set()
    previous: set[int] = set()
    rows = {}
    for layer in analysis.profile.layers:
        mine = analysis.trigger_set(layer, n)
        rows[layer] = {"new_overall": len(mine - seen), "new_vs_previous": len(mine - previous)}
        seen |= mine
        previous = mine
    return _frame(analysis.profile, rows)


def positional_by_layer(
    profile: NeuronProfile | Analysis, cutoffs: Cutoffs | None = None, **overrides: object
) -> pd.DataFrame:
    """Figure 8: positional neurons per layer by type and strength.

    Columns ``{type}_{strength}`` for the four types (oscillatory, both_extremes, one_extreme,
    other) and the two strengths, and ``n_positional``. Cut-offs as for ``positional_neurons``.
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    rows = {}
    for layer in analysis.profile.layers:
        pos = analysis.positional(layer)
        row = {}
        for rank in reversed(range(len(TYPES))):
            for strength, strong in (("strong", True), ("weak", False)):
                chosen = pos.positional & (pos.type_rank == rank) & (pos.strong == strong)
                row[f"{TYPES[rank]}_{strength}"] = int(chosen.sum())
        row["n_positional"] = int(pos.positional.sum())
        rows[layer] = row
    return _frame(analysis.profile, rows)


def position_teams(
    profile: NeuronProfile | Analysis, cutoffs: Cutoffs | None = None, **overrides: object
) -> pd.DataFrame:
    """Per layer: the strong oscillatory neurons' position ranges and whether they cover all (Fig. 9).

    §5.3: the strong oscillatory neurons of a layer indicate position ranges that are "similar
    up to a shift" and together "cover all positions". Cut-offs as for ``positional_neurons``.

    Returns:
        A DataFrame indexed by layer: ``neurons`` (list), ``ranges`` (list, per neuron, of
        inclusive ``(first, last)`` positions), ``n_uncovered`` (positions 1..T-1 with an
        ``f_p`` that no range covers) and ``covers_all`` (bool; False for a layer without
        strong oscillatory neurons).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    rows = []
    kept = analysis.profile.pos_text_seqs.numpy()[1:] > 0
    for layer in analysis.profile.layers:
        pos = analysis.positional(layer)
        neurons = np.flatnonzero(pos.positional & (pos.type_rank == 3) & pos.strong)
        covered = np.zeros(kept.shape, dtype=bool)
        for i in neurons:
            for first, last in pos.ranges[i]:
                covered[first - 1 : last] = True
        n_uncovered = int((kept & ~covered).sum())
        rows.append(
            {
                "layer": layer,
                "neurons": [int(i) for i in neurons],
                "ranges": [pos.ranges[i] for i in neurons],
                "n_uncovered": n_uncovered,
                "covers_all": bool(len(neurons) > 0 and n_uncovered == 0),
            }
        )
    return pd.DataFrame(rows).set_index("layer")


def layer_summary(
    profile: NeuronProfile | Analysis, cutoffs: Cutoffs | None = None, **overrides: object
) -> pd.DataFrame:
    """One row per layer: neurons, dead, mean frequency of the alive, and counts of every kind.

    Args:
        profile: A NeuronProfile or an ``Analysis`` of one.
        cutoffs, **overrides: As for ``classify``.

    Returns:
        Columns ``n_neurons``, ``n_dead``, ``pct_dead``, ``mean_freq_alive``, ``n_bos_only``,
        ``n_token_detectors``, ``n_ngram_detectors_2``, ``n_ngram_detectors_3``,
        ``n_positional`` (each test on its own, so a neuron may count in several; undecidable
        n-gram tests count in none), ``n_detectors_under_10`` (token or n-gram detectors whose
        ``evidence`` is below 10 text activations: kinds resting on little data) and
        ``kind_{kind}`` for each of ``classify``'s ``KINDS`` (they sum to ``n_neurons``).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    table = classification(analysis)
    grouped = table.groupby("layer")
    detector = (
        table["token_detector"].fillna(False)
        | table["ngram_detector_2"].fillna(False)
        | table["ngram_detector_3"].fillna(False)
    ).astype(bool)
    few = (detector & (table["evidence"] < FEW_ACTIVATIONS)).groupby(table["layer"]).sum()
    out = pd.DataFrame(
        {
            "n_neurons": grouped.size(),
            "n_dead": grouped["dead"].sum(),
            "mean_freq_alive": table[~table["dead"]].groupby("layer")["freq"].mean(),
            "n_bos_only": grouped["bos_only"].sum(),
            "n_token_detectors": grouped["token_detector"].sum(),
            "n_ngram_detectors_2": grouped["ngram_detector_2"].sum().astype(np.int64),
            "n_ngram_detectors_3": grouped["ngram_detector_3"].sum().astype(np.int64),
            "n_positional": grouped["positional"].sum(),
            f"n_detectors_under_{FEW_ACTIVATIONS}": few,
        }
    )
    out.insert(2, "pct_dead", 100 * out["n_dead"] / out["n_neurons"])
    kinds = pd.crosstab(table["layer"], table["kind"]).reindex(columns=KINDS, fill_value=0)
    for kind in KINDS:
        out[f"kind_{kind}"] = kinds[kind]
    return out.reindex(pd.Index(analysis.profile.layers, name="layer"))


def figure_tables(
    profile: NeuronProfile | Analysis,
    cutoffs: Cutoffs | None = None,
    *,
    analysis: Analysis | None = None,
    **overrides: object,
) -> dict[str, pd.DataFrame]:
    """Every per-layer table, from one ``Analysis``, under the paper's figure numbers:
    ``fig1a`` (``dead_by_layer``), ``fig1b`` (``frequency_by_layer``), and for n in
    1..ngram_max ``fig2_n{n}`` (``coverage_by_layer``), ``fig3a_n{n}`` (``detectors_by_layer``),
    ``fig3b_n{n}`` (``triggers_by_layer``), ``fig4_n{n}`` (``new_triggers_by_layer``); ``fig8``
    (``positional_by_layer``) and ``layers`` (``layer_summary``).

    Pass the Analysis that ``classify`` was given to compute the classification and every
    table with each layer's coverage and positional statistics computed once::

        analysis = Analysis(profile)
        table, tables = classify(analysis), figure_tables(analysis)

    (``classify(profile, analysis=analysis)`` and ``figure_tables(profile,
    analysis=analysis)`` are the same.)
    """
    analysis = analysis_of(profile, cutoffs, overrides, analysis)
    tables = {"fig1a": dead_by_layer(analysis), "fig1b": frequency_by_layer(analysis)}
    for n in range(1, analysis.profile.ngram_max + 1):
        tables[f"fig2_n{n}"] = coverage_by_layer(analysis, n)
        tables[f"fig3a_n{n}"] = detectors_by_layer(analysis, n)
        tables[f"fig3b_n{n}"] = triggers_by_layer(analysis, n)
        tables[f"fig4_n{n}"] = new_triggers_by_layer(analysis, n)
    tables["fig8"] = positional_by_layer(analysis)
    tables["layers"] = layer_summary(analysis)
    return tables
