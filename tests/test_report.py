"""``nk.report`` and ``tl-neuronkinds report``: every figure of the paper, its numbers from the
kinds' tables (checked against the planted model's ground truth), a page that fetches nothing,
searchable neuron sections, escaped token strings, refusals of mismatched inputs."""

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from planted import TEXT, VOCAB, planted_model, planted_tokens
from safetensors.torch import load_file

import tl_neuronkinds as nk
from tl_neuronkinds import cli
from tl_neuronkinds.present.report import MAX_DETECTORS
from tl_neuronkinds.present.report_nav import FILTER_JS

FIGURES = {
    "fig1a": "Figure 1a", "fig1b": "Figure 1b", "fig2-n1": "Figure 2",
    "fig2-n2": "Appendix A (n = 2)", "fig2-n3": "Appendix A (n = 3)", "fig3a": "Figure 3a",
    "fig3b": "Figure 3b", "fig4": "Figure 4", "fig5": "Figure 5", "fig6": "Figure 6",
    "fig7": "Figure 7", "fig8": "Figure 8", "fig9": "Figure 9",
}  # fmt: skip
# Token strings a tokenizer may hold: markup, an ampersand, quotes, right-to-left overrides.
NASTY = {
    " cat": '<script>alert("x")</script>',
    " Cat": "a&b'\"",
    " the": "\u202eeht\u200f",
    " mat": " ",  # a space-only trigger
}


class _Page(HTMLParser):
    """Every element's attributes, and the tables (rows of cell texts) inside each figure."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.figure: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag == "figure":
            self.figure = attributes["id"]
        elif self.figure and tag == "table":
            self.tables.setdefault(self.figure, []).append([])
        elif self.figure and tag == "tr":
            self.tables[self.figure][-1].append([])
        elif self.figure and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.figure = None
        elif tag in ("td", "th") and self.cell is not None:
            self.tables[self.figure][-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _rows(page: _Page, fid: str, table: int = -1) -> dict[str, list[str]]:
    """A figure's table as {first cell: the other cells}."""
    return {row[0]: row[1:] for row in page.tables[fid][table] if row}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted model and a capped profile of it, with nasty token strings, and layer 1's
    updates set so that two of its three token detectors suppress their triggers."""
    model = planted_model()
    cat, mat, dog, ran = (VOCAB.index(w) for w in (" cat", " mat", " dog", " ran"))
    with torch.no_grad():  # after the last MLP: no recorded activation changes
        w_u = model.unembed.W_U
        w_u.copy_(torch.randn(w_u.shape, generator=torch.Generator().manual_seed(0)))
        w_out = model.blocks[1].mlp.W_out
        w_out[1] = -w_u[:, cat]
        w_out[2] = w_u[:, mat]
        w_out[3] = -(w_u[:, dog] + w_u[:, ran])
    tokens = planted_tokens(64)
    profile = nk.record(model, tokens, ngram_cap=5, bos_token_id=2)
    for word, string in NASTY.items():  # the planted model has no tokenizer: "<id>" strings
        profile.token_strings[VOCAB.index(word)] = string
    out = nk.report(profile, model, tmp_path_factory.mktemp("report") / "r.html", tokens)
    return model, profile, tokens, out


def test_every_figure_has_its_caption_and_the_run(planted) -> None:
    _, _, _, out = planted
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    ids = [a["id"] for tag, a in page.elements if tag == "figure"]
    assert ids == list(FIGURES)
    for fid, label in FIGURES.items():
        figure = re.search(rf'<figure id="{fid}".*?</figure>', text, re.DOTALL).group()
        caption = re.search(r"<figcaption>(.*?)</figcaption>", figure, re.DOTALL).group(1)
        assert f"<b>{label}</b>" in caption and "§" in caption, fid
        assert "Run: custom, 4,160 tokens (64 × 65), n-gram cap 5." in caption, fid
        if fid not in ("fig5", "fig9"):
            assert '<svg class="nk-plot"' in figure, fid
    for n in (2, 3):  # the capped orders end in the "> cap" bucket, and the caption says so
        caption = re.search(rf'<figure id="fig2-n{n}".*?</figcaption>', text, re.DOTALL).group()
        assert "&gt;5</b> (hatched)" in caption and "censored" in caption
        assert ">5" in page.tables[f"fig2-n{n}"][0][0]
    figure_ids = [a["id"] for _, a in page.elements if a.get("id", "").startswith("fig")]
    assert len(figure_ids) > 500 and len(figure_ids) == len(set(figure_ids))  # SVGs share none


def test_the_figures_show_the_planted_ground_truth(planted) -> None:
    _, profile, _, out = planted
    page = _parse(out.read_text(encoding="utf-8"))
    assert _rows(page, "fig1a")["0"][-1] == "12.5" and _rows(page, "fig1a")["1"][-1] == "43.75"
    assert [_rows(page, "fig3a")[str(layer)][0] for layer in (0, 1)] == ["2", "3"]
    # triggers: layer 0 {cat, Cat, the}, layer 1 {cat, mat, dog, ran}
    assert [_rows(page, "fig3b")[str(layer)] for layer in (0, 1)] == [["3", "3"], ["4", "6"]]
    assert [_rows(page, "fig4")[str(layer)][2:] for layer in (0, 1)] == [["3", "3"], ["3", "3"]]
    # Figure 6: layer 1's cat and dog/ran detectors point away from their triggers.
    fig6 = _rows(page, "fig6")
    assert fig6["0"][:2] == ["2", "0"] and fig6["1"] == ["3", "2", "0.6667"]
    assert "this run: 2 of 5 (40%)." in out.read_text(encoding="utf-8")
    fig6_svg = re.search(r'<figure id="fig6".*?</svg>', out.read_text(), re.DOTALL).group()
    assert ">0/2<" in fig6_svg and ">2/3<" in fig6_svg  # the bars' counts
    fig5 = {row[0]: row for row in page.tables["fig5"][0][1:]}
    assert set(fig5) == {"L0 N2", "L0 N3", "L1 N1", "L1 N2", "L1 N3"}
    assert fig5["L1 N1"][3].startswith("<6> -") and float(fig5["L1 N1"][4]) < 0
    assert fig5["L1 N2"][2].startswith("<13> +") and float(fig5["L1 N2"][4]) > 0
    assert NASTY[" cat"] in fig5["L1 N1"][1]
    examples = {(r[1], r[2]): (r[3], r[4]) for r in page.tables["fig7"][0][1:] if len(r) == 5}
    assert examples[("both_extremes", "strong")] == ("0", "6")
    assert examples[("one_extreme", "strong")] == ("0", "9")
    assert examples[("other", "strong")] == ("0", "10")
    assert examples[("other", "weak")] == ("0", "11")
    assert examples[("oscillatory", "strong")] in {("0", "7"), ("0", "8"), ("1", "4"), ("1", "5"), ("1", "6")}  # fmt: skip
    assert _rows(page, "fig9")["0"][:1] == ["[7, 8]"]
    assert "neurons of layer 0: together they cover every position" in out.read_text()
    assert profile.ngram_cap == 5


def test_the_page_fetches_nothing(planted) -> None:
    _, _, _, out = planted
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    for tag, attrs in page.elements:
        for name in ("src", "href", "action", "poster", "srcset", "data"):
            value = attrs.get(name, "")
            assert not value or value.startswith("#"), (tag, name, value)
        assert tag not in ("link", "iframe", "img", "object", "embed", "base"), tag
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    outside = re.sub(r"<script data-nk-bundle.*?</script>", "", text, flags=re.DOTALL)
    assert len(text) - len(outside) > 1_000_000  # circuitsvis's bundle, once
    for remote in ("http:", "https:", "//cdn", "@import", "url(http", "fetch(", "XMLHttp"):
        assert remote not in outside, remote


def test_token_strings_are_escaped(planted) -> None:
    _, _, _, out = planted
    text = out.read_text(encoding="utf-8")
    outside = re.sub(r"<script data-nk-bundle.*?</script>", "", text, flags=re.DOTALL)
    assert "<script>alert(" not in outside
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in outside
    assert "a&amp;b&#x27;&quot;" in outside
    assert "\u202e" not in text and "\u200f" not in text  # shown as ⟨U+202E⟩, never applied
    assert "⟨U+202E⟩eht⟨U+200F⟩" in outside
    sections = {
        (int(a["data-layer"]), int(a["data-neuron"])): json.loads(a["data-triggers"])
        for tag, a in _parse(text).elements
        if tag == "section" and "data-triggers" in a
    }
    assert NASTY[" cat"] in sections[(0, 2)]  # the attribute holds the string intact
    assert "a&b'\"" in sections[(0, 2)]
    assert '<script>alert("x")</script>' in sections[(1, 7)]  # the bigram's tokens too


def _node_filter(
    sections: list[dict[str, str]], queries: list[str], tmp_path: Path
) -> tuple[list[list[bool]], list[str]]:
    """Run the page's filter script in node over sections with these attributes: for each
    query, which sections stay shown, and the count it writes."""
    driver = tmp_path / "filter.js"
    driver.write_text(
        "const data = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));\n"
        "const items = data.sections.map(a => ({hidden: false, getAttribute: n => a[n]}));\n"
        "let listener; const box = {value: '', addEventListener: (e, f) => { listener = f; }};\n"
        "const out = {textContent: ''};\n"
        "global.document = {getElementById: id => id === 'nk-filter' ? box : out,\n"
        "  querySelectorAll: s => s === 'section.nk-neuron' ? items : []};\n"
        f"{FILTER_JS}\n"
        "console.log(JSON.stringify(data.queries.map(q => { box.value = q; listener();\n"
        "  return [items.map(i => !i.hidden), out.textContent]; })));\n"
    )
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"sections": sections, "queries": queries}))
    done = subprocess.run(["node", str(driver), str(data)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    return [r[0] for r in results], [r[1] for r in results]


def _sections(text: str) -> dict[tuple[int, int], dict[str, str]]:
    return {
        (int(a["data-layer"]), int(a["data-neuron"])): a
        for tag, a in _parse(text).elements
        if tag == "section" and "nk-neuron" in a.get("class", "")
    }


def test_neuron_sections_are_searchable(planted, tmp_path) -> None:
    _, _, _, out = planted
    text = out.read_text(encoding="utf-8")
    assert 'id="nk-filter"' in text and FILTER_JS in text
    assert "<code>layer:3</code>" in text and "<code>trigger:the</code>" in text  # the syntax
    sections = _sections(text)
    detectors = {(0, 2), (0, 3), (0, 4), (0, 5), (1, 1), (1, 2), (1, 3), (1, 7)}
    positional = {(0, 6), (0, 7), (0, 8), (0, 9), (0, 10), (0, 11)}
    assert detectors | positional <= set(sections)
    assert all(a["id"] == f"n-{layer}-{i}" for (layer, i), a in sections.items())
    assert sections[(0, 5)]["data-kind"] == "ngram_detector"
    assert sections[(0, 7)]["data-type"] == "oscillatory"
    assert text.count('class="nk-view"') >= len(sections)  # a NeuronView in each
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the filter script itself is not run")
    keys = list(sections)
    queries = [
        "", "layer:1", "neuron:3", "layer:1 neuron:3", "LAYER:0,1 kind:token",
        '<SCRIPT>alert("X")</SCRIPT>', "kind:positional type:oscillatory strength:strong",
        'trigger:"<8> <9>"', "no such neuron",
        "colour:red", "1",
    ]  # fmt: skip
    shown, counts = _node_filter([sections[k] for k in keys], queries, tmp_path)
    picked = [{k for k, s in zip(keys, row, strict=True) if s} for row in shown]
    assert picked[0] == set(keys) and counts[0] == f"{len(keys)} of {len(keys)} neurons shown"
    assert picked[1] == {k for k in keys if k[0] == 1} and picked[1]
    assert picked[2] == {k for k in keys if k[1] == 3} == {(0, 3), (1, 3)}
    assert picked[3] == {(1, 3)} and counts[3] == f"1 of {len(keys)} neurons shown"
    kinds = {k for k in keys if sections[k]["data-kind"] == "token_detector"}
    assert picked[4] == kinds and kinds
    assert picked[5] == {(0, 2), (1, 1), (1, 7)}  # " cat" (markup) and the bigram " the cat"
    assert (0, 7) in picked[6] and (0, 8) in picked[6] and not picked[6] & detectors
    assert all(sections[k]["data-type"] == "oscillatory" for k in picked[6])
    assert picked[7] == {(0, 4)}  # a bigram trigger, quoted
    assert picked[8] == set()
    assert picked[9] == set() and counts[9].startswith("unknown field colour:")
    assert picked[10] == set()  # a bare number is no longer a substring of "n1693" or "0.033"


def test_the_report_is_deterministic(planted, tmp_path) -> None:
    model, profile, tokens, out = planted
    again = nk.report(profile, model, tmp_path / "again.html", tokens)
    assert again.read_bytes() == out.read_bytes()


def test_figures_ignore_and_keep_the_users_matplotlib_settings() -> None:
    import matplotlib
    import pandas as pd

    from tl_neuronkinds.present import plots

    series = {"a": pd.Series([1.0, 2.5, 0.5], index=pd.Index([0, 1, 2], name="layer"))}
    plain = plots.layer_line("x", series, "y")
    user = {"lines.linewidth": 5.0, "font.size": 20.0, "svg.hashsalt": None}
    with matplotlib.rc_context(user):
        assert plots.layer_line("x", series, "y") == plain
        assert {k: matplotlib.rcParams[k] for k in user} == user


def test_mismatched_inputs_are_refused(planted, tmp_path) -> None:
    model, profile, tokens, _ = planted
    other = planted_model()
    with torch.no_grad():
        other.blocks[0].mlp.b_in[0] += 1.0
    target = tmp_path / "r.html"
    with pytest.raises(nk.NeuronKindsError, match="model_fingerprint"):
        nk.report(profile, other, target, tokens)
    with pytest.raises(nk.NeuronKindsError, match="shape"):
        nk.report(profile, model, target, tokens[:10])
    swapped = tokens.clone()
    swapped[0, 1] = TEXT[0] if swapped[0, 1] != TEXT[0] else TEXT[1]
    with pytest.raises(nk.NeuronKindsError, match="not the ones the profile was recorded on"):
        nk.report(profile, model, target, swapped)
    bare = nk.NeuronProfile.merge([profile])
    bare.meta = {k: v for k, v in profile.meta.items() if k != "model_fingerprint"}
    with pytest.raises(nk.NeuronKindsError, match="model_fingerprint"):
        nk.report(bare, model, target, tokens)
    assert not target.exists()


@pytest.mark.slow
def test_contexts_come_from_the_windows_or_the_tokens(planted, tmp_path) -> None:
    """The profile's windows give the same page as the tokens; without windows (window=None)
    or tokens, the report has no contexts and says so."""
    model, profile, tokens, out = planted
    without = nk.report(profile, model, tmp_path / "w.html").read_text(encoding="utf-8")
    assert "from the profile&#x27;s windows" in without or "from the profile's windows" in without
    with_tokens = out.read_text(encoding="utf-8")
    assert without.count('class="nk-ctx"') == with_tokens.count('class="nk-ctx"') > 0
    bare = nk.record(model, tokens, ngram_cap=5, bos_token_id=2, window=None, progress=False)
    text = nk.report(bare, model, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "not shown (no tokens given)" in text and 'id="fig9"' in text
    assert 'class="nk-ctx"' not in text
    shown = nk.report(bare, model, tmp_path / "t.html", tokens).read_text(encoding="utf-8")
    assert "from the tokens" in shown and shown.count('class="nk-ctx"') > 0


def test_missing_matplotlib_is_a_clear_error(planted, tmp_path, monkeypatch) -> None:
    model, profile, tokens, _ = planted
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        nk.NeuronKindsError, match=re.escape('pip install "tl_neuronkinds[report]"')
    ):
        nk.report(profile, model, tmp_path / "r.html", tokens)
    assert not (tmp_path / "r.html").exists()


def test_the_package_import_keeps_report_a_function_and_loads_no_matplotlib() -> None:
    code = (
        "import sys, tl_neuronkinds as nk, tl_neuronkinds.present.report; "
        "assert nk.report is sys.modules['tl_neuronkinds.present.report'].report; "
        "print('matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_contents_link_every_figure_and_neuron(planted) -> None:
    """A bar at the top of the window (sticky) links the run, every figure and every neuron
    section; every in-page link of the report has its target."""
    _, _, _, out = planted
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    nav = re.search(r'<nav class="nk-toc".*?</nav>', text, re.DOTALL)
    assert nav is not None and re.search(r"\.nk-toc\{position:sticky;top:0", text)
    links = re.findall(r'href="#([^"]+)"', nav.group())
    assert {"top", "run", "layers", "neurons", *FIGURES} <= set(links)
    assert {f"n-{layer}-{neuron}" for layer, neuron in _sections(text)} <= set(links)
    ids = [a["id"] for _, a in page.elements if "id" in a]
    targets = [a["href"][1:] for tag, a in page.elements if tag == "a" and "href" in a]
    assert targets and set(targets) <= set(ids)
    named = [i for i in ids if not i.startswith("nk-cv-")]  # widgets' ids are numbered later
    assert len(set(named)) == len(named)


def test_triggers_beyond_the_coverage_cut_are_folded(planted) -> None:
    """The triggers that make up 95% of A_n are listed; the rest, each a small share, under a
    "+N more" that opens without JavaScript (<details>)."""
    import dataclasses

    import pandas as pd

    from tl_neuronkinds.present.neuron_view import coverage_cut

    assert [coverage_cut(c, 1000) for c in ([900, 60, 1], [950, 1], [10, 10], [])] == [2, 1, 2, 0]
    model, profile, tokens, _ = planted
    view = nk.show_neuron(model, profile, 0, 2, tokens=tokens)
    counts = [900, 60, *[1] * 40]
    triggers = pd.DataFrame(
        {
            "n": 1, "rank": range(len(counts)), "ids": [(i,) for i in range(len(counts))],
            "tokens": [(f"t{i}",) for i in range(len(counts))],
            "text": [f"t{i}" for i in range(len(counts))], "count": counts,
            "occurrences": counts, "share": [c / 1000 for c in counts],
        }
    )[list(view.triggers.columns)]  # fmt: skip
    coverage = view.coverage.copy()
    coverage.loc[coverage["n"] == 1, "A"] = 1000
    fragment = dataclasses.replace(view, triggers=triggers, coverage=coverage).fragment()
    part = re.search(r"<h3>Triggers.*?(?=<h3>)", fragment, re.DOTALL).group()
    listed, folded = part.split("<details", 1)
    assert ">t0<" in listed and ">t1<" in listed and ">t2<" not in listed
    assert re.search(r'class="nk-more"><summary>\+40 more \(n = 1\)', "<details" + folded)
    assert ">t2<" in folded and ">t41<" in folded
    # In the report: L0 N2's two triggers each hold half its activations, none folded.
    section = re.search(r'<section class="nk-neuron" id="n-0-2".*?</section>', out_text(planted))
    assert section is not None and 'class="nk-more"' not in section.group()


def out_text(planted) -> str:
    return planted[3].read_text(encoding="utf-8")


def test_space_tokens_show_as_open_boxes(planted) -> None:
    from tl_neuronkinds.present.neuron_view import pill

    assert pill(" ") == '<span class="nk-tok" title=" ">␣</span>'
    assert pill(" the ") == '<span class="nk-tok" title=" the ">␣the␣</span>'
    assert pill("<b>") == '<span class="nk-tok">&lt;b&gt;</span>'
    text = out_text(planted)
    section = re.search(r'id="n-1-2".*?</section>', text, re.DOTALL).group()  # " mat" is " "
    assert '<span class="nk-tok" title=" ">␣</span>' in section
    fig5 = re.search(r'<figure id="fig5".*?</figure>', text, re.DOTALL).group()
    assert '<span class="nk-tok" title=" ">␣</span>' in fig5


def test_the_words_say_what_is_shown(planted) -> None:
    text = out_text(planted)
    sections = _sections(text)
    head = re.search(r'<h2 id="neurons">Neurons</h2><p>(.*?)</p>', text).group(1)
    detectors = [a for a in sections.values() if a["data-kind"].endswith("_detector")]
    assert head.startswith(f"{len(sections)} neurons: all {len(detectors)} token and n-gram")
    assert str(MAX_DETECTORS) not in head and len(detectors) == 8
    fig9 = re.search(r'<figure id="fig9".*?</figcaption>', text, re.DOTALL).group()
    assert "<i>team</i> is its strong oscillatory neurons taken together" in fig9
    # Contexts reaching back to a row's start show its BOS as a separator, not text.
    assert 'data-nk-separators="0' in text
    assert 'title="separator, not text (BOS / end of document)"' in text


def test_lines_that_coincide_stay_visible_and_counts_have_integer_ticks(planted) -> None:
    import pandas as pd

    from tl_neuronkinds.present import plots

    same = pd.Series([0, 1, 1], index=pd.Index([0, 1, 2], name="layer"))
    svg = plots.layer_line("f", {"a": same, "b": same, "c": same}, "tokens", counts=True)
    groups = dict(re.findall(r'<g id="f-series-(\d)">(.*?)</g>', svg, re.DOTALL))
    assert sorted(groups) == ["0", "1", "2"]
    dashes = {tuple(re.findall(r"stroke-dasharray: ([^;]*);", g)) for g in groups.values()}
    widths = {re.search(r"stroke-width: ([\d.]+)", g).group(1) for g in groups.values()}
    shapes = {
        re.search(r'<path id="f-m[0-9a-f]+" d="([^"]*)"', g).group(1) for g in groups.values()
    }
    assert len(dashes) == len(widths) == len(shapes) == 3

    def ticks(fragment: str) -> list[str]:
        texts = re.findall(r"<text[^>]*>([^<]*)</text>", fragment)
        return [t for t in texts if re.fullmatch(r"[−-]?[\d.]+", t.strip())]

    assert ticks(svg) and all("." not in t for t in ticks(svg))
    text = out_text(planted)
    for fid in ("fig3a", "fig3b", "fig4", "fig8"):
        figure = re.search(rf'<figure id="{fid}".*?</svg>', text, re.DOTALL).group()
        assert ticks(figure) and all("." not in t for t in ticks(figure)), fid


# ------------------------------------------------------------------ command line
def _profile_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "profile", "--model", str(model), "--corpus", str(corpus), "--seq-len", "16",
        "--tokens", "256", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.mark.slow
def test_profile_writes_tokens_and_report_and_report_rebuilds_it(
    checkpoint_dir, tmp_path, capsys
) -> None:
    corpus = tmp_path / "docs.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    out = tmp_path / "run"
    assert cli.main(_profile_args(checkpoint_dir, corpus, out)) == 0
    state = json.loads((out / "run.json").read_text())
    assert state["finished"] is True and state["report"] is True
    saved = load_file(str(out / "tokens.safetensors"))["tokens"]
    assert saved.dtype == torch.int32 and tuple(saved.shape) == (16, 16)
    first = (out / "report.html").read_bytes()
    assert b'id="fig9"' in first and b"Run: " in first
    # `report DIR` from the saved run: the same page, byte for byte.
    assert cli.main(["report", str(out), "--out", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_bytes() == first
    # A run missing its report is not finished; `report DIR` then `tables DIR` complete it.
    (out / "report.html").unlink()
    assert cli.main(["tables", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["finished"] is False
    assert cli.main(["report", str(out), "--device", "cpu"]) == 0
    assert (out / "report.html").read_bytes() == first
    assert cli.main(["tables", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["finished"] is True
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in _error(capsys)
    assert cli.main(["report", str(out), "--out", str(tmp_path)]) == 2
    assert "a directory is there" in _error(capsys)


@pytest.mark.slow
def test_report_command_shows_its_steps_in_a_log(checkpoint_dir, tmp_path) -> None:
    """``tl-neuronkinds report DIR`` with stderr a pipe (a log, not a terminal): plain lines that
    name the report's steps, no NaN, no line twice."""
    corpus = tmp_path / "docs.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    out = tmp_path / "run"
    assert cli.main(_profile_args(checkpoint_dir, corpus, out, "--no-report")) == 0
    done = subprocess.run(
        [sys.executable, "-m", "tl_neuronkinds", "report", str(out), "--device", "cpu"],
        capture_output=True,  # stderr a pipe: not a terminal
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "report.html").is_file()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    for step in (
        "classification and figure tables", "figures 1a-1b", "figures 5-6", "figures 7-9",
        "max-activating contexts", "neuron sections", "writing the page",
    ):  # fmt: skip
        assert any(line.startswith(step) or f" {step}" in line for line in lines), (step, lines)
    assert "\r" not in done.stderr and "nan" not in done.stderr.lower()
    assert len(lines) == len(set(lines)), lines


def test_no_report_and_missing_matplotlib(checkpoint_dir, tmp_path, monkeypatch, capsys) -> None:
    corpus = tmp_path / "docs.txt"
    corpus.write_text("a few words of text to record here. " * 60)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    blocked = tmp_path / "blocked"
    assert cli.main(_profile_args(checkpoint_dir, corpus, blocked)) == 2
    line = _error(capsys)
    assert 'pip install "tl_neuronkinds[report]"' in line and "--no-report" in line
    assert not blocked.exists()  # refused before anything was written
    plain = tmp_path / "plain"
    assert cli.main(_profile_args(checkpoint_dir, corpus, plain, "--no-report")) == 0
    assert not (plain / "report.html").exists() and (plain / "tokens.safetensors").exists()
    assert json.loads((plain / "run.json").read_text()) | {"settings": None} == {
        "settings": None, "finished": True, "report": False,
    }  # fmt: skip


@pytest.mark.slow
def test_demo_writes_the_report(tmp_path) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--tokens", "1024"]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    assert all(f'<figure id="{fid}"' in text for fid in FIGURES)
    assert "Run: " in text and "1,024 tokens (4 × 256)" in text
