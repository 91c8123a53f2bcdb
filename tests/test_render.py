"""Offline circuitsvis pages (render.py) and show_neuron (views.py), on the planted model.

Escaping is checked by parsing what is written: hostile token strings must come back, after
the HTML and JSON layers are undone, as exactly the text shown, never as markup or script.
"""

import copy
import html
import json
import re
import sys
import types
import unicodedata
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from planted import BOS, EXPECTED, VOCAB, planted_model, planted_tokens
from tl_models import tl_model

import tl_neuronkinds as nk
from tl_neuronkinds.present import render, svg_plots
from tl_neuronkinds.present.views import NO_TOKENS, NeuronView, init_notebook

pytestmark = pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning")

#: Token strings that break pages that do not escape them (by vocabulary id of the planted model).
HOSTILE = {
    4: "<script>window.nkPwned=1</script>",  # " the"
    6: "<img/src/onerror=window.nkPwned=2>",  # " cat": no space for circuitsvis to turn into &nbsp;
    7: "</script><script>window.nkPwned=3</script>",  # " Cat"
    8: "a\u2028b\u2029c",  # " big"
    9: "&amp; & \"q\" 'q' &lt;",  # " dog"
    10: "\u202eevil\u200f\u200b",  # " red": right-to-left override, mark, zero-width space
    11: "<!--<script>",  # " sun"
    12: "\x00\x1b[31m\ufeff",  # " sat"
    13: '<img src="" onerror="window.nkPwned=4">',  # " mat"
}
_WIDGET = re.compile(
    r'<div id="(nk-cv-[0-9a-f]{16})" class="nk-widget">(.*?)</div><script>(.*?)</script>', re.S
)
_CALL = re.compile(r"\.render\(e\.id,C,(\{.*\})\)\};w\.CircuitsVis\?r\(\):", re.S)


def hostile_profile(profile: nk.NeuronProfile) -> nk.NeuronProfile:
    """A copy of ``profile`` whose token strings are ``HOSTILE`` where it names one."""
    out = copy.copy(profile)
    out.token_strings = [HOSTILE.get(i, s) for i, s in enumerate(profile.token_strings)]
    return out


@pytest.fixture(scope="module")
def model():
    return planted_model()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return planted_tokens(n_seq=64)


@pytest.fixture(scope="module")
def profile(model, tokens) -> nk.NeuronProfile:
    recorded = nk.record(model, tokens, bos_token_id=BOS, progress=False, top_k=6)
    recorded.token_strings = list(VOCAB)
    return recorded


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of every <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(text: str) -> Tags:
    parser = Tags()
    parser.feed(text)
    parser.close()
    return parser


def widget_props(fragment: str) -> list[dict]:
    """The JSON props of every widget of ``fragment`` (checking each script's shape)."""
    out = []
    for uid, _, script in _WIDGET.findall(fragment):
        assert f'getElementById("{uid}")' in script
        assert "<" not in script and script.isascii()
        out.append(json.loads(_CALL.search(script).group(1)))
    return out


# ---------------------------------------------------------------------------- page plumbing
def test_visible_writes_out_exactly_the_invisible_characters() -> None:
    for code in list(range(0x300)) + list(range(0x2000, 0x2070)) + [0xFEFF, 0xD800, 0xE000]:
        char = chr(code)
        invisible = unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
        if char in "\n\t":
            assert render.visible(char) == char
            assert render.visible(char, breaks=False) == {"\n": "↵", "\t": "⇥"}[char]
        elif invisible:
            assert render.visible(char) == f"⟨U+{code:04X}⟩"
        else:
            assert render.visible(char) == char
    assert render.visible("\u202eabc\u200f") == "⟨U+202E⟩abc⟨U+200F⟩"


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(
        st.text(st.characters(blacklist_categories=())) | st.sampled_from(list(HOSTILE.values())),
        min_size=1,
        max_size=8,
    ),
    label=st.text(),
)
def test_widget_props_round_trip_and_cannot_break_out(tokens: list[str], label: str) -> None:
    values = np.linspace(0, 1, len(tokens))
    fragment = render.widget("ColoredTokens", {"tokens": tokens, "values": values, "label": label})
    parsed = parse(fragment)
    assert [tag for tag, _ in parsed.tags] == ["div", "script"]
    (props,) = widget_props(fragment)
    # circuitsvis writes ``tokens`` as HTML: unescaped once, they are the visible strings.
    assert [html.unescape(t) for t in props["tokens"]] == [render.visible(t) for t in tokens]
    assert all(parse(t).tags == [] for t in props["tokens"])
    assert props["label"] == label and props["values"] == values.tolist()


def test_widget_ids_are_deterministic_and_differ_by_content() -> None:
    a = render.widget("ColoredTokens", {"tokens": ["a"], "values": [1.0]})
    assert a == render.widget("ColoredTokens", {"tokens": ["a"], "values": [1.0]})
    b = render.widget("ColoredTokens", {"tokens": ["b"], "values": [1.0]})
    assert _WIDGET.match(a).group(1) != _WIDGET.match(b).group(1)


def test_widget_refuses_bad_components_and_props() -> None:
    for name in ("colored-tokens", "X);alert(1", "", "a b"):
        with pytest.raises(nk.NeuronKindsError, match="component"):
            render.widget(name, {})
    with pytest.raises(nk.NeuronKindsError, match="JSON"):
        render.widget("ColoredTokens", {"values": [float("nan")]})
    with pytest.raises(nk.NeuronKindsError, match="JSON"):
        render.widget("ColoredTokens", {"values": object()})


def test_bundle_is_inlined_safely() -> None:
    script = render.bundle_script()
    inner = script[script.index(">") + 1 : -len("</script>")]
    assert script.endswith("</script>") and not re.search(r"</script|<!--", inner, re.I)
    assert "sourceMappingURL" not in inner and "var CircuitsVis=" in inner
    assert render.inline_js('x="</SCRIPT>";y=/<!--/') == 'x="<\\/SCRIPT>";y=/<\\!--/'


def _remote_references(text: str) -> list[str]:
    """src/href-like attributes, CSS url()/@import, and URLs outside the bundle's script."""
    parsed = parse(text)
    linked = ("src", "href", "action", "formaction", "srcset", "poster", "data", "xlink:href")
    found = [
        f"{tag} {k}={v}" for tag, attrs in parsed.tags for k, v in attrs.items() if k in linked
    ]
    found += [f"<{tag}>" for tag, _ in parsed.tags if tag in ("link", "iframe", "object", "embed")]
    outside = text.replace(render.bundle_script(), "")
    found += re.findall(r"https?://\S*|url\(|@import|//[a-z0-9.-]+\.[a-z]{2,}/", outside, re.I)
    return found


def test_page_carries_the_bundle_once_and_requests_nothing() -> None:
    widgets = [
        render.widget("ColoredTokens", {"tokens": [f"t{i}"], "values": [i]}) for i in range(25)
    ]
    text = render.page("<many> & widgets", widgets)
    assert text.count("data-nk-bundle") == 1 and text.count("var CircuitsVis=") == 1
    assert text.index("data-nk-bundle") < text.index("nk-cv-")
    assert "<title>&lt;many&gt; &amp; widgets</title>" in text
    assert _remote_references(text) == []
    with pytest.raises(nk.NeuronKindsError, match="fragment"):
        render.page("twice", [render.notebook_html(widgets[0], bundle=True)])
    (csp,) = [a for t, a in parse(text).tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp["content"] and "connect-src 'none'" in csp["content"]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    """A fresh notebook state; the (cell id, request id) the kernel runs is the list's last."""
    running: list[tuple[str | None, str | None]] = [(None, None)]
    monkeypatch.setattr(render, "_NOTEBOOK", render._Notebook())
    monkeypatch.setattr(render, "_request", lambda: running[-1])
    return running


def _carries(output: str) -> bool:
    return output.count("data-nk-bundle") == 1 and output.count("var CircuitsVis=") == 1


def test_the_first_notebook_output_carries_the_bundle(kernel) -> None:
    fragment = render.widget("ColoredTokens", {"tokens": ["a"], "values": [1.0]})
    first, second, third = (render.notebook_html(fragment) for _ in range(3))
    assert _carries(first) and first.endswith(fragment) and first.startswith("<style>")
    assert second == third == f"<style>{render.CSS}</style>{fragment}"
    assert _carries(render.notebook_html(fragment, bundle=True))
    render.notebook_mode(every_view=True)
    assert _carries(render.notebook_html(fragment)) and _carries(render.notebook_html(fragment))
    render.notebook_mode(every_view=False)
    assert not _carries(render.notebook_html(fragment))
    assert render.notebook_html(fragment, bundle=False) == second


def test_rerunning_the_cell_that_carried_the_bundle_sends_it_again(kernel) -> None:
    def shown(cell: str, request: str) -> bool:
        kernel.append((cell, request))
        return _carries(render.notebook_html("<p>view</p>"))

    assert shown("cell-a", "r1") and not shown("cell-a", "r1")  # two views of one run
    assert not shown("cell-b", "r2")
    assert shown("cell-a", "r3")  # a re-run replaces the output that held the bundle
    assert not shown("cell-a", "r3") and not shown("cell-b", "r4")
    kernel.append((None, "r5"))  # a front-end that names no cell: once per kernel
    assert not render.notebook_html("<p>view</p>").count("data-nk-bundle")


def test_each_output_carries_the_bundle_in_colab(kernel, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert all(_carries(render.notebook_html("<p>view</p>")) for _ in range(2))


def test_init_notebook_displays_the_bundle_once_for_the_views(kernel, monkeypatch) -> None:
    display = pytest.importorskip("IPython.display")
    shown: list[str] = []
    monkeypatch.setattr(display, "display", lambda obj: shown.append(obj.data))
    init_notebook()
    assert len(shown) == 1 and _carries(shown[0])
    assert not _carries(render.notebook_html("<p>view</p>"))
    init_notebook()  # the first cell re-run: its output is replaced, so it shows the bundle again
    assert len(shown) == 2 and _carries(shown[1])
    init_notebook(every_view=True)
    assert len(shown) == 2 and _carries(render.notebook_html("<p>view</p>"))


def test_the_queued_widget_renders_when_the_bundle_arrives() -> None:
    """A widget's script before the bundle's queues its render; the bundle's script runs it."""
    script = parse(render.widget("ColoredTokens", {"tokens": ["a"], "values": [1.0]})).scripts[0]
    assert script.endswith("w.CircuitsVis?r():(w.nkPending=w.nkPending||[]).push(r)})();")
    bundle = parse(render.bundle_script()).scripts[0]
    assert bundle.endswith("(window.nkPending||[]).splice(0).forEach(function(r){r()})")


def test_line_plot_maps_values_and_breaks_at_nan() -> None:
    svg = svg_plots.line_plot([1, 2, 3, 4, 5], [0.0, 1.0, float("nan"), 0.5, 0.25],
                           x_label="p", y_label="f", width=140, height=138)  # fmt: skip
    lines = re.findall(r'points="([^"]*)"', svg)
    assert len(lines) == 2  # the NaN splits the curve
    points = [tuple(map(float, p.split(","))) for line in lines for p in line.split()]
    # Plot area: x 40..130 over positions 1..5, y 8 (value 1) .. 108 (value 0).
    assert points == [(40, 108), (62.5, 8), (107.5, 58), (130, 83)]


def test_bar_plot_heights_are_proportional() -> None:
    svg = svg_plots.bar_plot(["a", "b", "c"], [4, 2, 0], x_label="v", width=320, height=138)
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([^"]*)"', svg)]
    assert heights == [100, 50, 0]
    assert "<title>a: 4</title>" in svg


# ---------------------------------------------------------------------------- show_neuron
def _brute_force(model, tokens, layer, neuron) -> torch.Tensor:
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer}.mlp.hook_post"][..., neuron]


@pytest.mark.parametrize("layer, neuron", [(0, 2), (0, 4), (0, 5), (1, 3), (0, 7), (0, 0)])
def test_show_neuron_matches_brute_force(model, tokens, profile, layer, neuron) -> None:
    view = nk.show_neuron(model, profile, layer, neuron, tokens=tokens)
    expected = EXPECTED[(layer, neuron)]
    acts = _brute_force(model, tokens, layer, neuron)
    active, text = acts > 0, tokens != BOS
    table = nk.classify(profile)
    mine = table[(table.layer == layer) & (table.neuron == neuron)].reset_index(drop=True)
    pd.testing.assert_frame_equal(view.kinds, mine)
    assert view.kinds["kind"].iloc[0] == expected["kind"]

    # Triggers: the planted ones, with c_g and o_g counted by hand.
    n = expected.get("ngram", 1)
    assert set(view.triggers["text"]) == expected.get("triggers", set())
    for t in view.triggers.itertuples():
        assert t.n == n and "".join(VOCAB[i] for i in t.ids) == t.text
        at = torch.ones_like(text[:, n - 1 :])
        for j, token_id in enumerate(t.ids):
            at &= tokens[:, j : tokens.shape[1] - n + 1 + j] == token_id
        at &= text[:, n - 1 :]
        assert t.occurrences == int(at.sum())
        assert t.count == int((at & active[:, n - 1 :]).sum())
        assert t.share == pytest.approx(t.count / int(view.coverage["A"][n - 1]))

    # f_p by hand.
    seqs = text[:, 1:].sum(0)
    hits = (active & text)[:, 1:].sum(0)
    assert view.positions["active"].tolist() == hits.tolist()
    assert view.positions["seqs"].tolist() == seqs.tolist()
    np.testing.assert_allclose(view.positions["f_p"], (hits / seqs).numpy())

    # Contexts: the largest activations, by (value desc, seq, pos), with their windows.
    flat = [(-float(acts[s, p]), s, p) for s, p in active.nonzero().tolist()]
    top = sorted(flat)[:6]
    assert [(-v, s, p) for v, s, p in top] == [
        (pytest.approx(c.value), c.seq, c.pos) for c in view.contexts.itertuples()
    ]
    for c in view.contexts.itertuples():
        lo = max(0, c.pos - 12)
        assert c.token_ids == tokens[c.seq, lo : c.pos + 5].tolist()
        np.testing.assert_allclose(c.activations, acts[c.seq, lo : c.pos + 5], atol=1e-6)
        assert c.center == c.pos - lo

    pd.testing.assert_frame_equal(view.vocab, nk.vocab_projection(model, layer, [neuron], k=10))
    statuses = set(view.coverage["status"])
    assert statuses <= {"exact", "undefined", "censored"}
    # The fragment: one ColoredTokens widget per context, whose values are the activations.
    fragment = view.fragment()
    props = widget_props(fragment)
    assert len(props) == len(view.contexts)
    for p, c in zip(props, view.contexts.itertuples(), strict=True):
        assert p["values"] == pytest.approx(c.activations)
        assert [html.unescape(t) for t in p["tokens"]] == [
            render.visible(VOCAB[i]) for i in c.token_ids
        ]
    assert "data-nk-bundle" not in fragment and NO_TOKENS not in fragment


def test_show_neuron_without_tokens_uses_the_windows_or_says_how_to_get_contexts(
    model, profile, tokens
) -> None:
    from_windows = nk.show_neuron(model, profile, 0, 3)  # the profile kept 12 + 4 windows
    assert from_windows.contexts.equals(nk.show_neuron(model, profile, 0, 3, tokens).contexts)
    assert not from_windows.notes and "nk-cv-" in from_windows.fragment()
    view = nk.show_neuron(model, profile, 0, 3, before=13)  # wider than kept, and no tokens
    assert view.contexts is None and view.notes[0] == NO_TOKENS
    fragment = view.fragment()
    assert html.escape(NO_TOKENS) in fragment and "nk-cv-" not in fragment
    assert " the" in view.triggers["text"].tolist()


def test_censored_and_unknown_statuses_are_shown(model, profile) -> None:
    view = nk.show_neuron(model, profile, 0, 13)  # always active: k95_2 far above the cap
    row = view.coverage.set_index("n")
    assert row.loc[2, "status"] == "censored" and pd.isna(row.loc[2, "k95"])
    assert row.loc[2, "cap"] == 50 and "&gt; 50" in view.fragment()
    assert row.loc[1, "status"] == "exact" and row.loc[1, "k95"] >= 6


def test_hostile_token_strings_render_as_text(model, tokens, profile) -> None:
    bad = hostile_profile(profile)
    fragments = []
    for layer, neuron in [(0, 2), (0, 3), (0, 5), (1, 3)]:
        view = nk.show_neuron(model, bad, layer, neuron, tokens=tokens)
        fragment = view.fragment()
        fragments.append(fragment)
        parsed = parse(fragment)
        assert {tag for tag, _ in parsed.tags} <= {
            "div", "h2", "h3", "p", "table", "tr", "th", "td", "span", "b", "sub", "svg", "rect",
            "text", "line", "polyline", "script",
        }  # fmt: skip
        assert not any(k.startswith("on") for _, attrs in parsed.tags for k in attrs)
        assert len(parsed.scripts) == len(view.contexts) == len(widget_props(fragment))
        for t in view.triggers.itertuples():
            for s in t.tokens:
                assert html.escape(render.visible(s, breaks=False)) in fragment
    page = render.page("hostile", fragments)
    assert page.count("data-nk-bundle") == 1 and _remote_references(page) == []
    assert "\u2028" not in page and "\u202e" not in page


def test_view_save_repr_and_determinism(model, tokens, profile, tmp_path) -> None:
    view = nk.show_neuron(model, profile, 0, 2, tokens=tokens, k=3)
    assert len(view.contexts) == 3
    again = nk.show_neuron(model, profile, 0, 2, tokens=tokens, k=3)
    assert view.fragment() == again.fragment()
    path = view.save(tmp_path / "sub" / "neuron.html")
    text = path.read_text(encoding="utf-8")
    assert text == render.page(view.title, [view.fragment()])
    assert text.count("data-nk-bundle") == 1 and _remote_references(text) == []
    assert [p.name for p in path.parent.iterdir()] == ["neuron.html"]  # no temporary left
    with pytest.MonkeyPatch.context() as patch:  # a kernel that has shown no view yet
        patch.setattr(render, "_NOTEBOOK", render._Notebook())
        first, later = view._repr_html_(), view._repr_html_()
    assert first.endswith(view.fragment()) and first.count("data-nk-bundle") == 1
    assert later.endswith(view.fragment()) and "data-nk-bundle" not in later
    assert repr(view) == "NeuronView(layer=0, neuron=2, kind='token_detector')"
    assert isinstance(view, NeuronView) and nk.NeuronView is NeuronView


def test_bad_input_raises(model, tokens, profile) -> None:
    cases = [
        ((model, profile, 2, 0), "layer 2 was not recorded"),
        ((model, profile, 0, 16), "neuron 16 is out of range"),
        ((model, profile, 0, -1), "neuron -1 is out of range"),
        ((model, profile, True, 0), "layer must be an integer"),
    ]
    for args, message in cases:
        with pytest.raises(nk.NeuronKindsError, match=message):
            nk.show_neuron(*args)
    assert nk.show_neuron(model, profile, np.int64(0), np.int64(3)).layer == 0
    other = planted_model()
    with torch.no_grad():
        other.blocks[0].mlp.b_in[3] += 0.25
    with pytest.raises(nk.NeuronKindsError, match="model_fingerprint"):
        nk.show_neuron(other, profile, 0, 3)
    from recording_reference import tiny_model

    with pytest.raises(nk.NeuronKindsError, match="d_mlp"):
        nk.show_neuron(tiny_model(), profile, 0, 3)
    with pytest.raises(nk.NeuronKindsError):
        nk.show_neuron(model, profile, 0, 3, tokens=tokens[:, :-1])


def test_histogram_is_drawn_where_the_profile_kept_one(model, tokens) -> None:
    kept = nk.record(model, tokens, bos_token_id=BOS, progress=False, histogram=True)
    kept.token_strings = list(VOCAB)
    view = nk.show_neuron(model, kept, 0, 10)  # the ramp: activations of many sizes
    acts = _brute_force(model, tokens, 0, 10)
    assert view.histogram["count"].sum() == int((acts > 0).sum())
    for row in view.histogram[view.histogram["count"] > 0].itertuples():
        inside = (acts > 0) & (acts >= row.lo) & (acts < row.hi)
        if row.bin == 0:
            inside = (acts > 0) & (acts < row.hi)
        assert row.count == int(inside.sum())
    used = view.histogram.index[view.histogram["count"] > 0]
    svg = view.fragment().split("Activation histogram")[1]
    assert svg.count("<rect ") == used[-1] - used[0] + 1
    assert nk.show_neuron(model, kept, 0, 0).fragment().count("Never active: an empty") == 1


def test_views_share_an_analysis_and_take_cutoffs(model, tokens, profile) -> None:
    analysis = nk.Analysis(profile)
    shared = nk.show_neuron(model, profile, 1, 3, tokens=tokens, analysis=analysis)
    alone = nk.show_neuron(model, profile, 1, 3, tokens=tokens)
    assert shared.fragment() == alone.fragment()
    strict = nk.show_neuron(model, profile, 1, 3, cutoffs=nk.Cutoffs(k_max=1))
    table = nk.classify(profile, k_max=1)
    expected = table[(table.layer == 1) & (table.neuron == 3)].reset_index(drop=True)
    pd.testing.assert_frame_equal(strict.kinds, expected)
    assert strict.kinds["kind"].iloc[0] != "token_detector" and strict.triggers.empty
    with pytest.raises(nk.NeuronKindsError, match="another profile"):
        nk.show_neuron(model, profile, 1, 3, analysis=nk.Analysis(copy.copy(profile)))


def test_unknown_status_and_a_profile_without_top_activations(model, tokens) -> None:
    """A merge of parts that kept different neurons' bigram counts (as in
    test_kinds_bruteforce): the neuron's k95_2 is unknown and its bigram test undecided."""
    from recording_reference import tiny_model

    part_a = torch.tensor([[BOS] + [3, 4] * 7 + [3]] * 8)
    row_b = [BOS] + [t for first in range(5, 12) for t in (first, 4)] + [3]
    tokens_ab = torch.cat([part_a, torch.tensor([row_b])])
    acts = torch.stack([tokens_ab == 4, tokens_ab == 3], -1).float()
    parts = [
        nk.profile_from_activations(
            t, {0: a}, d_vocab=40, ngram_max=2, ngram_cap=5, token_strings=list(HOSTILE.values())
            + [f"t{i}" for i in range(len(HOSTILE), 40)],
        )
        for t, a in ((part_a, acts[:8]), (tokens_ab[8:], acts[8:]))
    ]  # fmt: skip
    merged = nk.NeuronProfile.merge(parts)
    small = tiny_model()  # d_vocab 40, d_mlp 24: refused, the profile has 2 neurons
    with pytest.raises(nk.NeuronKindsError, match=r"the profile \(d_mlp 2, .* does not fit"):
        nk.show_neuron(small, merged, 0, 0)
    cfg = dict(n_layers=1, d_model=8, d_mlp=2, d_head=4, n_heads=2, n_ctx=16,
                                  d_vocab=40, act_fn="relu", normalization_type="LN", seed=0)  # fmt: skip
    view = nk.show_neuron(tl_model(**cfg), merged, 0, 0)
    coverage = view.coverage.set_index("n")
    assert coverage.loc[2, "status"] == "unknown" and pd.isna(coverage.loc[2, "k95"])
    assert coverage.loc[3, "status"] == "not recorded" and pd.isna(coverage.loc[3, "A"])
    assert pd.isna(view.kinds["ngram_detector_2"].iloc[0])
    fragment = view.fragment()
    assert "<td>undecided / not recorded</td>" in fragment and "<td>unknown</td>" in fragment
    # Recorded without top activations: tokens give a note, not contexts.
    bare = nk.record(model, tokens, bos_token_id=BOS, progress=False, top_k=0)
    view = nk.show_neuron(model, bare, 0, 2, tokens=tokens)
    assert view.contexts is None and "kept none" in view.notes[0]
