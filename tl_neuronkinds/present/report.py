"""``nk.report``: one self-contained HTML page of a run's versions of the paper's figures.

The page (``render.page``: circuitsvis's bundle inlined once, a Content-Security-Policy that
allows no request) holds, for one profile and the model it was recorded from:

- the run (model, tokens, corpus, n-gram cap), the kinds' cautions and the per-layer summary;
- Voita et al. 2024's figures made from this run (each with its caption, the paper's section
  and the run, and its numbers in a ``data`` table): 1a, 1b (§3), 2 for every recorded n-gram
  order (§4.1, Appendix A; with the ``> cap`` bucket of a capped profile), 3a, 3b, 4 (§4.2-4.3),
  5 (promoted and suppressed tokens of a few token detectors, §4.4), 6 (the
  fraction of token detectors suppressing their triggers, §4.4), 7, 8, 9 (§5.2-5.3). Every
  number comes from ``tl_neuronkinds.kinds`` (one ``Analysis``) and ``tl_neuronkinds.vocab``;
  nothing is recomputed here;
- per-neuron sections (``NeuronView.fragment()``, with up to ``CONTEXTS`` max-activating
  contexts each where the tokens are given, all computed in one pass; separators marked) under
  a filter box (a few lines of inline JavaScript over each section's data attributes: fields
  ``layer:3``, ``neuron:211``, ``kind:positional``, ``type:``, ``strength:``, ``trigger:the``
  or a bare word, every term must hold; ``FILTER_FIELDS``). So that the file stays small
  (circuitsvis's 1.3 MB bundle plus some tens of kB per neuron), the neurons shown are bounded,
  at most ``MAX_DETECTORS + 8 + 8 + MAX_TEAM + 2 * PER_LAYER * layers``: the
  ``MAX_DETECTORS`` token / n-gram detectors with the most activations at text positions, those
  of Figure 5, the examples of Figure 7, up to ``MAX_TEAM`` neurons of Figure 9's team and, per
  layer, the ``PER_LAYER`` positional neurons with the highest mutual information and the
  ``PER_LAYER`` most frequent neurons of kind ``other``; the heading counts those shown;
- a contents bar that stays at the top of the window, linking the run, every figure and
  section, and every neuron section. Wide tables scroll in their own box.

``report`` shows its steps as it goes (``tl_neuronkinds.progress.Progress``): the tables, each
group of figures, the massive and universal sections, the contexts' forward, the neuron
sections and the writing.

Where things are: the page and the neuron sections here, the figure sections (captions, tables)
in ``report_sections.py``, the filter and the contents in ``report_nav.py``, the plots in
``plots.py`` (matplotlib, the ``report`` extra).
"""

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int

from tl_neuronkinds.atomic import atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds import Analysis
from tl_neuronkinds.loading.identity import check_same_model
from tl_neuronkinds.loading.tokens import check_tokens
from tl_neuronkinds.massive.activations import MassiveActivations
from tl_neuronkinds.present import plots
from tl_neuronkinds.present.report_nav import (
    FILTER_HELP,
    FILTER_JS,
    SEPARATOR_JS,
    attributes,
    contents,
)
from tl_neuronkinds.present.report_sections import FIGURE_STEPS, ReportTables
from tl_neuronkinds.progress import Progress
from tl_neuronkinds.recording.contexts import windows_cover
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.universal.families import UniversalNeurons

MAX_DETECTORS = 48  # detector sections, by decreasing evidence
MAX_TEAM = 16  # neurons of Figure 9's team with a section
PER_LAYER = 2  # per layer: top positional (by I) and most frequent "other" neurons
#: Max-activating contexts per neuron section. Their activations come from one forward over
#: the rows they lie in (``contexts_of``), the report's main cost on a CPU: bounded by the
#: neurons shown times this.
CONTEXTS = 8
_CSS = """
.nk-report{max-width:1150px;margin:0 auto;padding:0 12px}
.nk-report figure{margin:18px 0;padding:8px 0;border-top:1px solid #ddd}
.nk-report figcaption{max-width:900px;margin-top:4px}.nk-plot{max-width:100%;height:auto}
.nk-report details{margin:4px 0}.nk-report summary{cursor:pointer;color:#1f4e9c}
.nk-neuron{border-top:1px solid #eee;padding:6px 0}.nk-why{color:#555;margin:2px 0}
.nk-report [id]{scroll-margin-top:44px}
.nk-scroll{overflow-x:auto;max-width:100%}.nk-report .nk-row>div{min-width:0;max-width:100%}
.nk-report .nk-view{max-width:100%;overflow-x:auto}
.nk-toc{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid #ccc;
padding:4px 0;font-size:14px}
.nk-toc>details{display:inline-block;margin:0}.nk-toc a{margin-right:8px}
.nk-toc-body{max-height:60vh;overflow-y:auto;padding:4px 0;line-height:1.7}
.nk-toc-body p{margin:2px 0}
#nk-filter{font-size:15px;padding:4px 8px;width:360px}
.nk-filter-help{color:#555;font-size:13px;margin:4px 0}.nk-filter-help code{background:#f4f4f4}
"""


def report(
    profile: NeuronProfile,
    model: Any,
    out: str | os.PathLike = "report.html",
    tokens: Int[torch.Tensor, "seq pos"] | None = None,
    *,
    analysis: Analysis | None = None,
    massive: MassiveActivations | None = None,
    universal: UniversalNeurons | None = None,
    progress: bool | None = None,
) -> Path:
    """Write the HTML report of ``profile`` (see the module) to ``out``, atomically.

    Args:
        profile: The NeuronProfile.
        model: The model it was recorded from (its weights give Figures 5-6).
        out: The HTML file to write.
        tokens: The ``[n_seq, seq_len]`` tokens the profile was recorded on (checked). The
            neuron sections show contexts from the profile's context windows, or where it kept
            none (``record(..., window=None)``, format 3) from the tokens; with neither, none.
        analysis: An ``Analysis`` of ``profile`` (its cut-offs are the report's; the paper's by
            default) to reuse what it computed (``tl-neuronkinds profile`` passes the one its
            tables came from).
        massive: ``massive_activations(model, ...)`` (with ``with_effects(...)`` where the
            intervention and attention tables are wanted too): adds a section after the
            paper's figures (Sun et al. 2024).
        universal: ``find_universal([model, ...], tokens)`` (``tl_neuronkinds.universal
            .families``): adds a universal-neurons section (Gurnee et al. 2024).
        progress: Show the steps as they run (``tl_neuronkinds.progress.Progress``: a bar in a
            terminal or notebook, a line per step where stderr is a log); None (the default)
            or True shows them, False is quiet.

    Returns:
        The path written.

    Raises:
        NeuronKindsError: matplotlib is missing (the ``report`` extra), the model is not the one
            the profile was recorded from (or the profile does not say which), the tokens are
            not the profile's, or ``analysis`` is of another profile.
    """
    plots.require_matplotlib()
    check_same_model(model, profile, strict=True)
    tokens = recorded_tokens(profile, model, tokens)
    if analysis is None:
        analysis = Analysis(profile)
    elif analysis.profile is not profile:
        raise NeuronKindsError("analysis= must be an Analysis of the profile given")
    from tl_neuronkinds.present.render import page

    sections: list[tuple[str, Callable[[ReportTables], list[str]]]] = list(FIGURE_STEPS)
    if massive is not None:
        from tl_neuronkinds.present.massive_page import massive_section

        sections.append(("massive activations section", lambda _: [massive_section(massive)]))
    if universal is not None:
        from tl_neuronkinds.present.universal_page import universal_section

        sections.append(("universal neurons section", lambda _: [universal_section(universal)]))
    steps = _Steps(len(sections) + 4, progress)
    steps.start("classification and figure tables")
    run = ReportTables(analysis, model, tokens)
    title = f"Neuron kinds: {run.model_name}"
    body = [_header(run, title)]
    for name, make in sections:
        steps.start(name)
        body += make(run)
    chosen = _selection(run)
    steps.start("max-activating contexts of the neurons shown")
    contexts = _contexts(run, list(chosen))
    steps.start(f"{len(chosen)} neuron sections")
    body += _neuron_sections(run, chosen, contexts)
    steps.start("writing the page")
    fragments = [f"<style>{_CSS}</style>", '<div class="nk-view nk-report" id="top">']
    fragments += [contents(body, {k: why.kind for k, why in chosen.items()}), *body, "</div>"]
    path = atomic_write_text(out, page(title, fragments))
    steps.close()
    return path


class _Steps:
    """The report's named steps on a ``Progress`` (unit ``step``; none where ``enabled`` is
    False): each named as it starts (where stderr is a log, a plain line), counted as it ends."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.bar = None if enabled is False else Progress(total, enabled=enabled, unit="step")
        self.started = 0

    def start(self, what: str) -> None:
        if self.bar is None:
            return
        if self.started:
            self.bar.update(1)
        self.started += 1
        self.bar.set_phase(what)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()


def recorded_tokens(
    profile: NeuronProfile, model: Any, tokens: Int[torch.Tensor, "seq pos"] | None
) -> Int[torch.Tensor, "seq pos"] | None:
    """``tokens`` on the CPU if they are the ones the profile was recorded on: token ids the
    model runs (``loading.tokens.check_tokens``), of the profile's shape, with the same count of
    every token at text positions (the profile's unigram occurrences)."""
    if tokens is None:
        return None
    check_tokens(tokens, model, profile.bos_token_id)
    expected = (profile.n_seqs, profile.seq_len)
    if tuple(tokens.shape) != expected:
        raise NeuronKindsError(
            f"tokens of shape {tuple(tokens.shape)} are not the profile's {expected} "
            "(n_seqs x seq_len)"
        )
    tokens = tokens.detach().to("cpu", torch.int64)
    counts = torch.bincount(tokens[tokens != profile.bos_token_id], minlength=profile.d_vocab)
    table = profile.occurrences[1]
    recorded = torch.zeros(profile.d_vocab, dtype=torch.int64)
    recorded[table.keys] = table.counts
    if not torch.equal(counts, recorded):
        raise NeuronKindsError(
            "these tokens are not the ones the profile was recorded on (their token counts "
            "differ from the profile's)"
        )
    return tokens


def _header(run: "ReportTables", title: str) -> str:
    p = run.profile
    rows = {
        "model": run.model_name,
        "cut-offs": ", ".join(f"{k}={v}" for k, v in run.analysis.cutoffs.to_dict().items()),
        "tokens": f"{p.n_positions:,} ({p.n_seqs:,} sequences × {p.seq_len}); "
        f"{p.n_text_positions:,} at text positions",
        "corpus": str(p.meta.get("corpus") or "not recorded"),
        "layers": ", ".join(map(str, p.layers)),
        "n-gram orders, cap": f"1..{p.ngram_max}, {p.ngram_cap}",
        "contexts": "from the profile's windows"
        if windows_cover(p, 12, 4)
        else ("from the tokens" if run.tokens is not None else "not shown (no tokens given)"),
    }
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows.items()
    )
    cautions = "".join(f'<p class="nk-note">{html.escape(c)}</p>' for c in run.cautions)
    layers = run.tables["layers"].to_html(float_format=lambda x: f"{x:.4g}", na_rep="–")
    return (
        f'<h1>{html.escape(title)}</h1><div class="nk-scroll" id="run"><table>{body}</table>'
        f"</div>{cautions}<p>The figures of Voita, Ferrando &amp; Nalmpantis 2024, <i>Neurons in "
        'Large Language Models: Dead, N-gram, Positional</i>, for this run; then <a href="#neurons'
        '">the neurons</a>.</p><details id="layers"><summary>per-layer summary</summary>'
        f'<div class="nk-scroll">{layers}</div></details>'
    )


# ------------------------------------------------------------------------------ selection
class _Why:
    """Why a neuron has a section: its kind, the reasons (text) and their categories."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.reasons: list[str] = []
        self.categories: set[str] = set()


#: The selection's categories, in the order the neurons' heading counts them.
_CATEGORIES = ("detector", "fig5", "fig7", "team", "positional", "other")


def _selection(run: ReportTables) -> dict[tuple[int, int], _Why]:
    """(layer, neuron) -> why it has a section, in (layer, neuron) order (see the module)."""
    chosen: dict[tuple[int, int], _Why] = {}
    kinds = run.table.set_index(["layer", "neuron"])["kind"]

    def add(layer: int, neuron: int, category: str, why: str) -> None:
        key = (int(layer), int(neuron))
        entry = chosen.setdefault(key, _Why(str(kinds.loc[key])))
        entry.reasons.append(why)
        entry.categories.add(category)

    for row in run.detectors.head(MAX_DETECTORS).itertuples():
        add(row.layer, row.neuron, "detector", f"detector with {row.evidence:,} text activations")
    for row in run.fig5.itertuples():
        add(row.layer, row.neuron, "fig5", "Figure 5")
    for (kind, strength), (layer, neuron) in run.examples.items():
        add(layer, neuron, "fig7", f"Figure 7 example ({kind}, {strength})")
    if run.team_layer is not None:
        for neuron in run.teams.loc[run.team_layer, "neurons"][:MAX_TEAM]:
            add(run.team_layer, neuron, "team", "Figure 9 team")
    positional = run.positional[run.positional["positional"]]
    for row in (
        positional.sort_values(["pos_mi", "layer", "neuron"], ascending=[False, True, True])
        .groupby("layer")
        .head(PER_LAYER)
        .itertuples()
    ):
        why = f"top positional of its layer (I = {row.pos_mi:.3f} nats)"
        add(row.layer, row.neuron, "positional", why)
    other = run.table[run.table["kind"] == "other"]
    for row in (
        other.sort_values(["freq", "layer", "neuron"], ascending=[False, True, True])
        .groupby("layer")
        .head(PER_LAYER)
        .itertuples()
    ):
        why = f"most frequent 'other' of its layer (freq {row.freq:.3f})"
        add(row.layer, row.neuron, "other", why)
    return dict(sorted(chosen.items()))


def _shown(run: ReportTables, chosen: dict[tuple[int, int], _Why]) -> str:
    """What the neuron sections are, counted as shown (a neuron may be counted twice)."""
    count = {c: sum(c in why.categories for why in chosen.values()) for c in _CATEGORIES}
    n_detectors = len(run.detectors)
    detectors = (
        f"all {count['detector']} token and n-gram detectors"
        if n_detectors <= MAX_DETECTORS
        else f"the {count['detector']} of the {n_detectors:,} token and n-gram detectors with the "
        "most activations at text positions"
    )
    team = f"{count['team']} of Figure 9's team" if run.team_layer is not None else None
    parts = [
        detectors,
        f"{count['fig5']} of Figure 5",
        f"{count['fig7']} of Figure 7 (its examples)",
        team,
        f"{count['positional']} positional neurons (per layer, the {PER_LAYER} with the highest "
        "mutual information)",
        f"{count['other']} of kind 'other' (per layer, the {PER_LAYER} most frequent)",
    ]
    listed = ", ".join(p for p in parts if p)
    return (
        f"{len(chosen)} neurons: {listed}; a neuron shown for several reasons is counted in each."
    )


def _contexts(run: ReportTables, neurons: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """The neurons' max-activating contexts (``CONTEXTS`` each), from one pass; {} where the
    profile kept no top activations or neither windows nor tokens give them."""
    from tl_neuronkinds.recording.contexts import contexts_of

    if run.profile.top_k > 0 and (run.tokens is not None or windows_cover(run.profile, 12, 4)):
        return contexts_of(run.model, run.profile, run.tokens, neurons, k=CONTEXTS)
    return {}


def _neuron_sections(
    run: ReportTables,
    chosen: dict[tuple[int, int], _Why],
    contexts: dict[tuple[int, int], Any],
) -> list[str]:
    from tl_neuronkinds.present.views import show_neuron

    head = (
        f'<h2 id="neurons">Neurons</h2><p>{html.escape(_shown(run, chosen))}</p>'
        '<p><input type="search" id="nk-filter" placeholder="filter: layer:3 kind:positional '
        'trigger:the …" aria-label="filter neurons" aria-describedby="nk-filter-help"> '
        f'<span id="nk-filter-count"></span></p>{FILTER_HELP}'
    )
    out = [head]
    for (layer, neuron), why in chosen.items():
        view = show_neuron(
            run.model,
            run.profile,
            layer,
            neuron,
            tokens=run.tokens,
            analysis=run.analysis,
            contexts=contexts.get((layer, neuron)),
        )
        out.append(
            f'<section class="nk-neuron" id="n-{layer}-{neuron}" '
            f"{attributes(view.kinds.iloc[0], view.triggers)}>"
            f'<p class="nk-why">Shown as: {html.escape("; ".join(why.reasons))}.</p>'
            f"{view.fragment()}</section>"
        )
    out.append(f"<script>{FILTER_JS}</script><script>{SEPARATOR_JS}</script>")
    return out
