"""The paper's figures for one run, as HTML ``<figure>`` sections of the report (``report.py``).

``ReportTables`` computes, once, every table the figures and the neuron sections read, all from
one ``Analysis`` (``tl_neuronkinds.kinds``) and ``tl_neuronkinds.vocab``: nothing is
recomputed here. Each figure is drawn by ``plots.py`` (matplotlib, inline SVG) or is an HTML
table (Figure 5), with a caption naming the paper's figure and section (Voita et al. 2024) and
the run, and its numbers in a folded ``data`` table.
"""

import html
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from tl_neuronkinds.kinds import (
    Analysis,
    classify_with_cautions,
    figure_tables,
    position_frequencies,
    position_teams,
    positional_neurons,
)
from tl_neuronkinds.present import plots

FIG5_DETECTORS = 8  # token detectors in Figure 5's table
FIG5_K = 5  # promoted / suppressed tokens per detector in Figure 5
_ORDER_NAMES = {1: "unigrams (tokens)", 2: "bigrams", 3: "trigrams"}


#: Appended to Figure 2's caption for the orders a capped profile kept for some neurons only.
CENSORED = (
    " The last bucket, <b>&gt;{cap}</b> (hatched), is the n-gram cap: those neurons' k95 is "
    "proven above {cap} without their counts (censored: see docs/kinds.md, “The n-gram cap”), "
    "a bound rather than a value; <i>unknown</i>: counts missing without a proof."
)
#: Each figure's label, the paper's section and what it shows (the run is added to each).
# fmt: off
CAPTIONS = {
    "fig1a": ("Figure 1a", "§3", "Percentage of dead neurons per layer: never active on the "
              "recorded tokens, BOS positions included."),
    "fig1b": ("Figure 1b", "§3", "Mean activation frequency (active positions over positions) "
              "of the non-dead neurons of each layer."),
    "fig2": ("Figure 2", "§4.1", "Alive neurons of each layer by the number of {what} that "
             "cover 95% of their activations (k95). The paper shows the first half of the "
             "network; here every recorded layer. <i>undefined</i>: never active where the "
             "n-gram is defined.{censored}"),
    "fig3a": ("Figure 3a", "§4.2; Appendix A", "Token-detecting neurons per layer (k95 ≤ 5 "
              "and covered tokens making up ≥ 95% of the activations); dashed and dotted: "
              "bigram and trigram detectors."),
    "fig3b": ("Figure 3b", "§4.3", "Tokens that have a detecting neuron: solid with circles, "
              "per layer; dashed with squares, cumulative over layers (the same in the first "
              "layer, and wherever a layer adds no new token)."),
    "fig4": ("Figure 4", "§4.3", "Tokens covered by each layer's token detectors, those new "
             "overall (in no lower layer) and those new compared to the previous layer."),
    "fig5": ("Figure 5", "§4.4", "Top {k} promoted and suppressed tokens (the projection of the "
             "neuron's W_out row on the vocabulary) of the {n} token detectors with the most "
             "activations at text positions, and the mean score of their triggers."),
    "fig6": ("Figure 6", "§4.4", "Fraction of each layer's token detectors whose update "
             "suppresses their triggers (their mean projection score is negative). The paper "
             "finds over 80% for OPT-66b (dashed line); this run: {overall}."),
    "fig7": ("Figure 7", "§5.2", "Activation frequency f_p by position of one positional "
             "neuron of each type (columns) and strength (top row strong, bottom weak): the one "
             "with the highest mutual information with position."),
    "fig8": ("Figure 8", "§5.3", "Positional neurons (I(act; pos) > 0.05 nats, §5.1) of each "
             "layer by type; dark: strong, light: weak."),
    "fig9": ("Figure 9", "§5.3", "{text} A layer's <i>team</i> is its strong oscillatory "
             "neurons taken together (§5.3): each indicates a few ranges of positions, its "
             "high runs, where it fires in every row (docs/kinds.md, “Positional neurons”); "
             "together they may cover every position."),
}
#: Each figure's entry in the report's table of contents.
CONTENTS = {
    "fig1a": "1a dead", "fig1b": "1b frequency", "fig2-n1": "2 unigram coverage",
    "fig2-n2": "A bigrams", "fig2-n3": "A trigrams", "fig3a": "3a detectors",
    "fig3b": "3b detected tokens", "fig4": "4 new tokens", "fig5": "5 promoted/suppressed",
    "fig6": "6 suppression", "fig7": "7 positional types", "fig8": "8 positional by layer",
    "fig9": "9 position team",
}
# fmt: on


class ReportTables:
    """What every section reads: the profile's tables, computed once from one Analysis."""

    def __init__(self, analysis: Analysis, model: Any, tokens: torch.Tensor | None) -> None:
        profile = analysis.profile
        self.profile, self.analysis, self.model, self.tokens = profile, analysis, model, tokens
        self.table, self.cautions = classify_with_cautions(analysis)
        self.tables = figure_tables(analysis)
        self.positional = positional_neurons(analysis)
        self.teams = position_teams(analysis)
        self.model_name = str(profile.meta.get("model_name") or "unnamed model")
        cap = profile.ngram_cap
        self.summary = (
            f"{self.model_name}, {profile.n_positions:,} tokens ({profile.n_seqs:,} × "
            f"{profile.seq_len}), n-gram cap {'none' if cap is None else cap}"
        )
        self.examples = _fig7_examples(self.positional)
        self.team_layer = _team_layer(self.teams)
        self.detectors = _top_detectors(self.table)
        self.fig5 = self.detectors[self.detectors["token_detector"]].head(FIG5_DETECTORS)


def _figure(
    run: ReportTables,
    fid: str,
    body: str,
    data: pd.DataFrame | None = None,
    caption: str | None = None,
    **fill: object,
) -> str:
    """A ``<figure>`` with id ``fid``: ``body`` (an ``<svg>`` or HTML), its caption
    (``CAPTIONS[caption or fid]`` filled with ``fill``, then the run) and its numbers, ``data``,
    in a folded table."""
    label, section, text = CAPTIONS[caption or fid]
    if fid in ("fig2-n2", "fig2-n3"):
        label, section = f"Appendix A (n = {fid[-1]})", "§4.5, Appendix A"
    numbers = ""
    if data is not None:
        table = data.to_html(classes="nk-data", float_format=lambda x: f"{x:.4g}", na_rep="–")
        numbers = f'<details><summary>data</summary><div class="nk-scroll">{table}</div></details>'
    return (
        f'<figure id="{fid}" class="nk-fig">{body}<figcaption><b>{label}</b> ({section}). '
        f"{text.format(**fill)} <i>Run: {html.escape(run.summary)}.</i></figcaption>"
        f"{numbers}</figure>"
    )


def _note(text: str) -> str:
    return f'<p class="nk-note">{html.escape(text)}</p>'


def _tokens(strings: list[str]) -> str:
    from tl_neuronkinds.present.neuron_view import pill

    return " ".join(pill(s) for s in strings)


# ------------------------------------------------------------------------------ figures
def _dead_figures(run: ReportTables) -> list[str]:
    fig1a, fig1b = run.tables["fig1a"], run.tables["fig1b"]
    return [
        _figure(
            run,
            "fig1a",
            plots.layer_line("fig1a", {"dead": fig1a["pct_dead"]}, "% dead neurons"),
            fig1a,
        ),
        _figure(
            run,
            "fig1b",
            plots.layer_line("fig1b", {"mean": fig1b["mean_freq"]}, "activation frequency"),
            fig1b,
        ),
    ]


def _ngram_figures(run: ReportTables) -> list[str]:
    p, t, out = run.profile, run.tables, []
    for n in (1, 2, 3):
        fid, what = f"fig2-n{n}", _ORDER_NAMES[n]
        if n > p.ngram_max:
            note = _note(f"{what} were not recorded (ngram_max = {p.ngram_max}).")
            out.append(_figure(run, fid, note, caption="fig2", what=what, censored=""))
            continue
        cap = p.ngram_cap if n >= 2 else None
        censored = "" if cap is None else CENSORED.format(cap=cap)
        svg = plots.coverage_bars(fid, t[f"fig2_n{n}"], None if cap is None else f">{cap}")
        fill = {"what": what, "censored": censored}
        out.append(_figure(run, fid, svg, t[f"fig2_n{n}"], caption="fig2", **fill))
    detectors = {
        ("token" if n == 1 else f"{n}-gram") + " detectors": t[f"fig3a_n{n}"]["n_detectors"]
        for n in range(1, p.ngram_max + 1)
    }
    fig3b, fig4 = t["fig3b_n1"], t["fig4_n1"]
    triggers = {"per layer": fig3b["n_triggers"], "cumulative": fig3b["n_triggers_cumulative"]}
    new = {
        "covered": fig3b["n_triggers"],
        "new overall": fig4["new_overall"],
        "new vs previous layer": fig4["new_vs_previous"],
    }
    return [
        *out,
        _figure(
            run,
            "fig3a",
            plots.layer_line("fig3a", detectors, "neurons", styles=["-", "--", ":"], counts=True),
            pd.DataFrame(detectors),
        ),
        _figure(
            run,
            "fig3b",
            plots.layer_line("fig3b", triggers, "tokens", styles=["-", "--"], counts=True),
            fig3b,
        ),
        _figure(
            run,
            "fig4",
            plots.layer_bars("fig4", new, "tokens", counts=True),
            pd.concat([fig3b, fig4], axis=1),
        ),
    ]


def _fig5_rows(run: ReportTables, chosen: pd.DataFrame, suppression: pd.DataFrame) -> list[str]:
    from tl_neuronkinds.vocab import vocab_projection

    mean_score = suppression.set_index(["layer", "neuron"])["mean_trigger_score"]
    rows = []
    for layer, group in chosen.groupby("layer", sort=True):
        neurons = [int(i) for i in group["neuron"]]
        proj = vocab_projection(run.model, int(layer), neurons, k=FIG5_K)
        for row in group.itertuples():
            mine = proj[proj["neuron"] == row.neuron]
            cells = []
            for direction in ("promoted", "suppressed"):
                top = mine[mine["direction"] == direction].sort_values("rank")
                pairs = zip(top["token"], top["score"], strict=True)
                cells.append("<br>".join(f"{_tokens([tok])} {score:+.3f}" for tok, score in pairs))
            link = f'<a href="#n-{row.layer}-{row.neuron}">L{row.layer} N{row.neuron}</a>'
            rows.append(
                f"<tr><td>{link}</td><td>{_tokens(list(row.triggers))}</td><td>{cells[0]}</td>"
                f"<td>{cells[1]}</td><td>{mean_score.loc[(row.layer, row.neuron)]:+.3f}</td></tr>"
            )
    return rows


def _vocab_figures(run: ReportTables) -> list[str]:
    from tl_neuronkinds.vocab import suppression_by_layer, trigger_suppression

    suppression = trigger_suppression(run.model, run.analysis)
    rows = _fig5_rows(run, run.fig5, suppression)
    head = (
        "<tr><th>neuron</th><th>triggers</th><th>top promoted</th><th>top suppressed</th>"
        "<th>mean trigger score</th></tr>"
    )
    body = (
        f'<div class="nk-scroll"><table>{head}{"".join(rows)}</table></div>'
        if rows
        else _note("No token detectors.")
    )
    fig5 = _figure(run, "fig5", body, k=FIG5_K, n=len(run.fig5))
    data = suppression_by_layer(suppression, run.profile.layers).set_index("layer")
    total, supp = int(data["token_detectors"].sum()), int(data["suppressing"].sum())
    overall = f"{supp:,} of {total:,} ({100 * supp / total:.0f}%)" if total else "no detectors"
    svg = plots.layer_bars(
        "fig6",
        {"suppress their triggers": data["suppressing_fraction"]},
        "fraction of token detectors",
        reference=(0.8, "80% (OPT-66b)"),
        notes={
            int(row.Index): f"{row.suppressing}/{row.token_detectors}"
            for row in data.itertuples()
            if row.token_detectors
        },
    )
    return [fig5, _figure(run, "fig6", svg, data, overall=overall)]


def _positional_figures(run: ReportTables) -> list[str]:
    curves: dict[tuple[str, str], tuple[str, pd.Series] | None] = {}
    frequencies: dict[int, pd.DataFrame] = {}
    for key, (layer, neuron) in run.examples.items():
        if layer not in frequencies:
            frequencies[layer] = position_frequencies(run.profile, layer)
        curves[key] = (f"L{layer} N{neuron}", frequencies[layer][neuron])
    examples = pd.DataFrame(
        [(*key, *run.examples[key]) for key in sorted(run.examples)],
        columns=["pos_type", "pos_strength", "layer", "neuron"],
    )
    fig8 = run.tables["fig8"]
    if run.team_layer is None:
        body = _note(
            "No strong oscillatory neurons in this run: no team (a layer's strong oscillatory "
            "neurons, whose position ranges together may cover every position) to show."
        )
        text = "Position ranges indicated by a layer's strong oscillatory neurons: none here."
    else:
        team = run.teams.loc[run.team_layer]
        body = plots.team_ranges("fig9", team["neurons"], team["ranges"], run.profile.seq_len - 1)
        cover = (
            "together they cover every position"
            if team["covers_all"]
            else f"{team['n_uncovered']} positions are covered by none"
        )
        text = (
            f"Position ranges indicated by the {len(team['neurons'])} strong oscillatory "
            f"neurons of layer {run.team_layer}: {cover}."
        )
    return [
        _figure(run, "fig7", plots.position_curves("fig7", curves), examples),
        _figure(run, "fig8", plots.positional_bars("fig8", fig8), fig8),
        _figure(run, "fig9", body, run.teams, text=text),
    ]


#: The figures in the paper's order, in steps that the report's progress names: (what, how).
FIGURE_STEPS: list[tuple[str, Callable[[ReportTables], list[str]]]] = [
    ("figures 1a-1b (dead neurons)", _dead_figures),
    ("figures 2-4 (n-gram coverage, detectors)", _ngram_figures),
    ("figures 5-6 (vocabulary projections)", _vocab_figures),
    ("figures 7-9 (positional neurons)", _positional_figures),
]


def figure_sections(run: ReportTables) -> list[str]:
    """Every figure of the report, in the paper's order (1a to 9)."""
    return [section for _, step in FIGURE_STEPS for section in step(run)]


# ------------------------------------------------------------------------------ selection
def _fig7_examples(positional: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """(type, strength) -> (layer, neuron) of the positional neuron with the highest I."""
    pos = positional[positional["positional"]].sort_values(
        ["pos_mi", "layer", "neuron"], ascending=[False, True, True]
    )
    first = pos.groupby(["pos_type", "pos_strength"], sort=False).head(1)
    return {
        (str(r.pos_type), str(r.pos_strength)): (int(r.layer), int(r.neuron))
        for r in first.itertuples()
    }


def _team_layer(teams: pd.DataFrame) -> int | None:
    """The layer of Figure 9's team: of the layers with strong oscillatory neurons, one whose
    team covers every position if any (as the paper's example), then the largest, then the
    lowest; None where no layer has any."""
    ranked = teams.reset_index().assign(size=lambda t: t["neurons"].map(len))
    ranked = ranked[ranked["size"] > 0]
    if ranked.empty:
        return None
    ranked = ranked.sort_values(["covers_all", "size", "layer"], ascending=[False, False, True])
    return int(ranked["layer"].iloc[0])


def _top_detectors(table: pd.DataFrame) -> pd.DataFrame:
    """Token and n-gram detectors by decreasing evidence (then layer, neuron)."""
    detector = table["token_detector"].to_numpy(bool).copy()
    for n in (2, 3):
        detector |= table[f"ngram_detector_{n}"].fillna(False).to_numpy(bool)
    return table[detector].sort_values(
        ["evidence", "layer", "neuron"], ascending=[False, True, True], kind="stable"
    )
