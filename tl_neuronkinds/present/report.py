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
  contexts each where the tokens are given, all computed in one pass) under a text box that filters them (a few lines of inline JavaScript: a section
  stays shown where every word typed occurs, case-insensitively, in its ``data-search``: layer,
  neuron, kind, positional type, why it is shown, triggers). So that the file stays small
  (circuitsvis's 1.3 MB bundle plus some tens of kB per neuron), the neurons shown are bounded,
  at most ``MAX_DETECTORS + 8 + 8 + MAX_TEAM + 2 * PER_LAYER * layers``: the
  ``MAX_DETECTORS`` token / n-gram detectors with the most activations at text positions, those
  of Figure 5, the examples of Figure 7, up to ``MAX_TEAM`` neurons of Figure 9's team and, per
  layer, the ``PER_LAYER`` positional neurons with the highest mutual information and the
  ``PER_LAYER`` most frequent neurons of kind ``other``.

Where things are: the page and the neuron sections here, the figure sections (captions, tables)
in ``report_sections.py``, the plots in ``plots.py`` (matplotlib, the ``report`` extra).
"""

import html
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int

from tl_neuronkinds.atomic import atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds import Analysis
from tl_neuronkinds.loading.identity import check_same_model
from tl_neuronkinds.loading.tokens import check_tokens
from tl_neuronkinds.massive.activations import MassiveActivations
from tl_neuronkinds.present import plots
from tl_neuronkinds.present.report_sections import ReportTables, figure_sections
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
#nk-filter{font-size:15px;padding:4px 8px;width:420px}
"""
_FILTER_JS = """(function(){var box=document.getElementById("nk-filter"),
out=document.getElementById("nk-filter-count"),
items=document.querySelectorAll("section[data-search]");
function run(){var words=box.value.toLowerCase().split(/\\s+/).filter(Boolean),shown=0;
items.forEach(function(el){var text=el.getAttribute("data-search"),
ok=words.every(function(w){return text.indexOf(w)>=0;});el.hidden=!ok;if(ok)shown++;});
out.textContent=shown+" of "+items.length+" neurons shown";}
box.addEventListener("input",run);run();})();"""


def report(
    profile: NeuronProfile,
    model: Any,
    out: str | os.PathLike = "report.html",
    tokens: Int[torch.Tensor, "seq pos"] | None = None,
    *,
    analysis: Analysis | None = None,
    massive: MassiveActivations | None = None,
    universal: UniversalNeurons | None = None,
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

    run = ReportTables(analysis, model, tokens)
    title = f"Neuron kinds: {run.model_name}"
    fragments = [f"<style>{_CSS}</style>", '<div class="nk-view nk-report">', _header(run, title)]
    fragments += figure_sections(run)
    if massive is not None:
        from tl_neuronkinds.present.massive_page import massive_section

        fragments.append(massive_section(massive))
    if universal is not None:
        from tl_neuronkinds.present.universal_page import universal_section

        fragments.append(universal_section(universal))
    fragments += [*_neuron_sections(run), "</div>"]
    return atomic_write_text(out, page(title, fragments))


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
        f"<h1>{html.escape(title)}</h1><table>{body}</table>{cautions}"
        "<p>The figures of Voita, Ferrando &amp; Nalmpantis 2024, <i>Neurons in Large Language "
        'Models: Dead, N-gram, Positional</i>, for this run; then <a href="#neurons">the '
        f"neurons</a>.</p><details><summary>per-layer summary</summary>{layers}</details>"
    )


# ------------------------------------------------------------------------------ selection
def _selection(run: ReportTables) -> dict[tuple[int, int], list[str]]:
    """(layer, neuron) -> why it has a section, in (layer, neuron) order (see the module)."""
    chosen: dict[tuple[int, int], list[str]] = {}

    def add(layer: int, neuron: int, why: str) -> None:
        chosen.setdefault((int(layer), int(neuron)), []).append(why)

    for row in run.detectors.head(MAX_DETECTORS).itertuples():
        add(row.layer, row.neuron, f"detector with {row.evidence:,} text activations")
    for row in run.fig5.itertuples():
        add(row.layer, row.neuron, "Figure 5")
    for (kind, strength), (layer, neuron) in run.examples.items():
        add(layer, neuron, f"Figure 7 example ({kind}, {strength})")
    if run.team_layer is not None:
        for neuron in run.teams.loc[run.team_layer, "neurons"][:MAX_TEAM]:
            add(run.team_layer, neuron, "Figure 9 team")
    positional = run.positional[run.positional["positional"]]
    for row in (
        positional.sort_values(["pos_mi", "layer", "neuron"], ascending=[False, True, True])
        .groupby("layer")
        .head(PER_LAYER)
        .itertuples()
    ):
        add(row.layer, row.neuron, f"top positional of its layer (I = {row.pos_mi:.3f} nats)")
    other = run.table[run.table["kind"] == "other"]
    for row in (
        other.sort_values(["freq", "layer", "neuron"], ascending=[False, True, True])
        .groupby("layer")
        .head(PER_LAYER)
        .itertuples()
    ):
        add(row.layer, row.neuron, f"most frequent 'other' of its layer (freq {row.freq:.3f})")
    return dict(sorted(chosen.items()))


def _neuron_sections(run: ReportTables) -> list[str]:
    from tl_neuronkinds.present.render import visible
    from tl_neuronkinds.present.views import show_neuron
    from tl_neuronkinds.recording.contexts import contexts_of

    chosen = _selection(run)
    contexts: dict[tuple[int, int], pd.DataFrame] = {}
    if run.profile.top_k > 0 and (run.tokens is not None or windows_cover(run.profile, 12, 4)):
        contexts = contexts_of(run.model, run.profile, run.tokens, list(chosen), k=CONTEXTS)
    rows = run.table.set_index(["layer", "neuron"])
    head = (
        '<h2 id="neurons">Neurons</h2><p>'
        f"{len(chosen)} neurons: the {MAX_DETECTORS} token and n-gram detectors with the most "
        "activations at text positions, those of Figures 5 and 7, up to "
        f"{MAX_TEAM} of Figure 9's team, and per layer the {PER_LAYER} positional neurons with "
        f"the highest mutual information and the {PER_LAYER} most frequent of kind 'other'. "
        '<input type="search" id="nk-filter" placeholder="filter: layer 3, token_detector, a '
        'trigger, oscillatory …" aria-label="filter neurons"> <span id="nk-filter-count">'
        "</span></p>"
    )
    out = [head]
    for (layer, neuron), why in chosen.items():
        row = rows.loc[(layer, neuron)]
        kind = str(row["kind"])
        pos = "" if pd.isna(row["pos_type"]) else f"{row['pos_type']} {row['pos_strength']}"
        search = " ".join(
            [
                f"l{layer} n{neuron} layer {layer} neuron {neuron}",
                kind,
                pos,
                *why,
                *map(str, row["triggers"]),
            ]
        )
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
            f'<section class="nk-neuron" id="n-{layer}-{neuron}" data-layer="{layer}" '
            f'data-neuron="{neuron}" data-kind="{html.escape(kind)}" '
            f'data-search="{html.escape(visible(search.lower(), breaks=False), quote=True)}">'
            f'<p class="nk-why">Shown as: {html.escape("; ".join(why))}.</p>{view.fragment()}'
            "</section>"
        )
    out.append(f"<script>{_FILTER_JS}</script>")
    return out
