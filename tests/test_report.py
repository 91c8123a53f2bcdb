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
from tl_neuronkinds.present.report import _FILTER_JS

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
        (int(a["data-layer"]), int(a["data-neuron"])): a["data-search"]
        for tag, a in _parse(text).elements
        if tag == "section" and "data-search" in a
    }
    assert NASTY[" cat"].lower() in sections[(0, 2)]  # the attribute holds the string intact
    assert "a&b'\"" in sections[(0, 2)]


def _node_filter(searches: list[str], queries: list[str], tmp_path: Path) -> list[list[bool]]:
    """Run the page's filter script in node over sections with these ``data-search`` texts:
    for each query, which sections stay shown."""
    driver = tmp_path / "filter.js"
    driver.write_text(
        "const data = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));\n"
        "const items = data.searches.map(t => ({hidden: false, getAttribute: () => t}));\n"
        "let listener; const box = {value: '', addEventListener: (e, f) => { listener = f; }};\n"
        "global.document = {getElementById: id => id === 'nk-filter' ? box : {},\n"
        "  querySelectorAll: () => items};\n"
        f"{_FILTER_JS}\n"
        "console.log(JSON.stringify(data.queries.map(q => { box.value = q; listener();\n"
        "  return items.map(i => !i.hidden); })));\n"
    )
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"searches": searches, "queries": queries}))
    done = subprocess.run(["node", str(driver), str(data)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_neuron_sections_are_searchable(planted, tmp_path) -> None:
    _, _, _, out = planted
    text = out.read_text(encoding="utf-8")
    assert 'id="nk-filter"' in text and _FILTER_JS in text
    sections = {
        (int(a["data-layer"]), int(a["data-neuron"])): a
        for tag, a in _parse(text).elements
        if tag == "section" and "data-search" in a
    }
    detectors = {(0, 2), (0, 3), (0, 4), (0, 5), (1, 1), (1, 2), (1, 3), (1, 7)}
    positional = {(0, 6), (0, 7), (0, 8), (0, 9), (0, 10), (0, 11)}
    assert detectors | positional <= set(sections)
    assert all(a["id"] == f"n-{layer}-{i}" for (layer, i), a in sections.items())
    assert sections[(0, 5)]["data-kind"] == "ngram_detector"
    assert text.count('class="nk-view"') >= len(sections)  # a NeuronView in each
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the filter script itself is not run")
    keys = list(sections)
    searches = [sections[k]["data-search"] for k in keys]
    queries = ["", "l1 n3", "<SCRIPT>", "oscillatory strong", "no such neuron"]
    shown = _node_filter(searches, queries, tmp_path)
    picked = [{k for k, s in zip(keys, row) if s} for row in shown]
    assert picked[0] == set(keys)
    assert picked[1] == {(1, 3)}
    assert picked[2] == {(0, 2), (1, 1), (1, 7)}  # " cat" (markup) and the bigram " the cat"
    assert (0, 7) in picked[3] and (0, 8) in picked[3] and not picked[3] & detectors
    assert picked[4] == set()


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
