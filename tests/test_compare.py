"""nk.compare, the comparison page and `tl-neuronkinds compare`: the tables are the runs' own
figure tables on the models' relative depth, every bad input is refused by name, and the page
is escaped, offline and draws one line / panel per model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opt_fixtures import make_tiny_opt, random_tokens, tiny_tokenizer

import tl_neuronkinds as nk
from tl_neuronkinds import cli
from tl_neuronkinds.comparison.runs import ASSUMED, Run

pytestmark = [
    pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning"),
    pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.UndecidableWarning"),
    pytest.mark.filterwarnings("ignore:.*has no tokenizer files"),
]
V1 = Path(__file__).parent / "data" / "profile_v1"
TEXT = "the cat sat on the mat. the dog sat on the log. a bird flew over the hill. " * 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Random tiny OPTs of 2 and 6 layers, recorded on the same tokens (the 6-layer one also
    on its first three layers only)."""
    root = tmp_path_factory.mktemp("cmp")
    models = [
        nk.load_opt(make_tiny_opt(root / f"opt-{n}l", n_layers=n, seed=n, tokenizer=False))
        for n in (2, 6)
    ]
    tokens = random_tokens(8, 32, 97, seed=3)
    profiles = [nk.record(m, tokens, bos_token_id=2, progress=False) for m in models]
    part = nk.record(models[1], tokens, layers=[0, 1, 2], bos_token_id=2, progress=False)
    return models, profiles, part, tokens


def _wide(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """A long table's rows of one model back in the single-run table's shape."""
    order = list(dict.fromkeys(rows[column]))
    return rows.pivot(index="layer", columns=column, values="neurons")[order]


def _check_against_figure_tables(comparison, label: str, profile, n_layers: int) -> None:
    own = nk.figure_tables(profile, comparison.cutoffs)
    for name, expected in own.items():
        rows = comparison.tables[name]
        rows = rows[rows["model"] == label]
        assert (rows["n_layers"] == n_layers).all(), name
        depth = rows["layer"] / (n_layers - 1) if n_layers > 1 else 0.0 * rows["layer"]
        np.testing.assert_allclose(rows["relative_depth"], depth)
        if name.startswith("fig2_"):
            got = _wide(rows, "bucket")
        elif name == "fig8":
            got = _wide(rows.assign(c=rows["type"] + "_" + rows["strength"]), "c")
            expected = expected.drop(columns="n_positional")[got.columns]
            assert list(got.columns) == list(own["fig8"].columns[:-1])
        else:
            got = rows.drop(columns=["model", "n_layers", "relative_depth"]).set_index("layer")
        assert sorted(set(rows["layer"])) == profile.layers, name
        pd.testing.assert_frame_equal(
            got.rename_axis(index="layer", columns=None),
            expected.rename_axis(index="layer", columns=None),
            check_dtype=False,
            obj=f"{label} {name}",
        )


def test_tables_are_each_runs_figure_tables_on_relative_depth(runs) -> None:
    _, profiles, _, _ = runs
    comparison = nk.compare(profiles)
    assert comparison.labels == ["opt-2l", "opt-6l"]
    for label, profile, n in zip(comparison.labels, profiles, (2, 6), strict=True):
        _check_against_figure_tables(comparison, label, profile, n)
    fig1a = comparison.tables["fig1a"]
    assert list(fig1a.columns[:4]) == ["model", "n_layers", "layer", "relative_depth"]
    assert fig1a["relative_depth"].tolist() == [0.0, 1.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert len(comparison.differences) == 0 and comparison.notes == []
    assert list(comparison.runs["n_layers_from"]) == ["the profile", "the profile"]
    assert "fig6" not in comparison.tables  # no model at hand


def test_a_run_of_some_layers_keeps_their_true_depth(runs) -> None:
    models, profiles, part, _ = runs
    comparison = nk.compare([profiles[0], part], labels=["two", "six, first half"])
    _check_against_figure_tables(comparison, "six, first half", part, 6)
    rows = comparison.tables["fig1b"]
    assert rows[rows["model"] == "six, first half"]["relative_depth"].tolist() == [0, 0.2, 0.4]
    assert comparison.notes == [
        "six, first half: recorded 3 of its model's 6 layers; they keep their place in the "
        "model's depth"
    ]
    # A profile that does not store the model's depth (older ones): assumed, and said so;
    # a model given corrects it.
    old = nk.NeuronProfile.merge([part])
    del old.meta["n_layers"]
    assumed = nk.compare([profiles[0], old], labels=["a", "b"])
    assert assumed.runs["n_layers_from"].tolist()[1] == ASSUMED
    assert assumed.tables["fig1a"]["relative_depth"].tolist()[2:] == [0, 0.5, 1.0]
    assert "not stated" in assumed.notes[0]
    fixed = nk.compare([profiles[0], old], labels=["a", "b"], models=[None, models[1]])
    assert fixed.tables["fig1a"]["relative_depth"].tolist()[2:] == [0, 0.2, 0.4]


def test_relative_depth_is_layer_over_n_layers_minus_one(runs) -> None:
    _, profiles, _, _ = runs
    analysis = nk.Analysis(profiles[0])
    assert Run("one", analysis, 1, "the model given").relative_depth(0) == 0.0  # one layer
    assert [Run("x", analysis, 5, "").relative_depth(x) for x in range(5)] == [
        0.0, 0.25, 0.5, 0.75, 1.0,
    ]  # fmt: skip


def test_every_run_is_classified_with_the_same_cutoffs(runs) -> None:
    _, profiles, _, _ = runs
    cutoffs = nk.Cutoffs(k_max=3, coverage=90)
    comparison = nk.compare(profiles, cutoffs=cutoffs)
    assert comparison.cutoffs == cutoffs
    for label, profile, n in zip(comparison.labels, profiles, (2, 6), strict=True):
        _check_against_figure_tables(comparison, label, profile, n)
    # Analyses given: their common cut-offs, or another set for all when asked.
    analyses = [nk.Analysis(p, cutoffs) for p in profiles]
    assert nk.compare(analyses).cutoffs == cutoffs
    assert nk.compare(analyses, cutoffs=nk.Cutoffs()).cutoffs == nk.Cutoffs()
    with pytest.raises(nk.NeuronKindsError, match="different cut-offs"):
        nk.compare([analyses[0], nk.Analysis(profiles[1])])


def test_figure_6_is_the_runs_own_suppression_table(runs) -> None:
    from tl_neuronkinds.vocab import suppression_by_layer, trigger_suppression

    models, profiles, _, _ = runs
    comparison = nk.compare(profiles, models=models)
    fig6 = comparison.tables["fig6"]
    for label, model, profile in zip(comparison.labels, models, profiles, strict=True):
        expected = suppression_by_layer(trigger_suppression(model, profile), profile.layers)
        got = fig6[fig6["model"] == label].drop(columns=["model", "n_layers", "relative_depth"])
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    assert comparison.runs["n_layers_from"].tolist() == ["the model given"] * 2
    with pytest.raises(nk.NeuronKindsError, match="names no model"):
        nk.compare(profiles, with_suppression=True)
    with pytest.raises(nk.NeuronKindsError, match="recorded on another model"):
        nk.compare(profiles, models=models[::-1])
    with pytest.raises(nk.NeuronKindsError, match="one model"):
        nk.compare(profiles, models=models[:1])


@pytest.mark.slow
def test_differences_between_the_runs_are_listed_once(runs) -> None:
    models, profiles, _, tokens = runs
    fewer = nk.record(models[1], tokens[:3], bos_token_id=2, progress=False, ngram_cap=None)
    fewer.token_strings = [f"t{i}" for i in range(fewer.d_vocab)]
    fewer.meta["corpus"] = "another corpus"
    comparison = nk.compare([profiles[0], fewer])
    diffs = comparison.differences.set_index("setting")
    assert list(diffs.index) == ["tokens", "corpus", "ngram_cap", "tokenizer"]
    assert diffs.loc["tokens", "values"] == "opt-2l: 256; opt-6l: 96"
    assert diffs.loc["ngram_cap", "values"] == "opt-2l: 50; opt-6l: none"
    assert all(diffs["why"].str.len() > 0)
    # Half the tokens (within 2x) and otherwise the same settings: no difference.
    close = nk.record(models[1], tokens[:4], bos_token_id=2, progress=False)
    assert nk.compare([profiles[0], close]).differences.empty


def test_bad_inputs_are_refused_by_name(runs, tmp_path) -> None:
    _, profiles, _, _ = runs
    cases = [
        ([], "empty"),
        ([profiles[0]], "nk.report for one run"),
        (profiles[0], "nk.report for one run"),
        ("some/dir", "got one"),
        ([profiles[0], 3], "run 1 is a int"),
        ([profiles[0], tmp_path], "neither a run directory"),
        ([profiles[1], profiles[1]], "pass labels="),
    ]
    for runs_given, message in cases:
        with pytest.raises(nk.NeuronKindsError, match=message):
            nk.compare(runs_given)
    with pytest.raises(nk.NeuronKindsError, match="3 names for 2 runs"):
        nk.compare(profiles, labels=["a", "b", "c"])
    with pytest.raises(nk.NeuronKindsError, match="both labelled 'a'"):
        nk.compare(profiles, labels=["a", "a"])
    with pytest.raises(nk.NeuronKindsError, match="non-empty strings"):
        nk.compare(profiles, labels=["a", ""])
    # An unfinished run directory, and profiles too new or too old for what is asked.
    run = tmp_path / "run"
    profiles[0].save(run / "profile")
    (run / "run.json").write_text(json.dumps({"settings": {}, "finished": False}))
    with pytest.raises(nk.NeuronKindsError, match="unfinished run"):
        nk.compare([run, profiles[1]])
    newer = tmp_path / "newer"
    shutil.copytree(run / "profile", newer)
    header = json.loads((newer / "profile.json").read_text())
    (newer / "profile.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(nk.NeuronKindsError, match="format version 99"):
        nk.compare([newer, profiles[1]])
    with pytest.raises(nk.NeuronKindsError, match="does not say which model"):
        nk.compare([V1, profiles[1]], with_suppression=True)


def test_an_old_profile_compares_on_an_assumed_depth() -> None:
    old = nk.NeuronProfile.load(V1)
    comparison = nk.compare([V1, old], labels=["from disk", "object"])
    assert comparison.runs["n_layers_from"].tolist() == [ASSUMED] * 2
    assert len(comparison.notes) == 2
    fig1a = comparison.tables["fig1a"]
    a, b = (fig1a[fig1a["model"] == x].drop(columns="model") for x in ("from disk", "object"))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_the_page_escapes_labels_and_writes_its_tables(runs, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    models, profiles, _, _ = runs
    comparison = nk.compare(profiles, labels=["<b>x</b>", "$y & z"], models=models)
    path = comparison.to_html(tmp_path / "out" / "compare.html")
    text = path.read_text(encoding="utf-8")
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "$y &amp; z" in text
    assert "http://" not in text.replace("http://www.w3.org", "")  # SVG namespaces only
    for name in [*comparison.tables, "runs", "differences"]:
        csv = pd.read_csv(tmp_path / "out" / f"compare_{name}.csv")
        parquet = pd.read_parquet(tmp_path / "out" / f"compare_{name}.parquet")
        assert len(csv) == len(parquet) == len(comparison.tables.get(name, parquet))
    fig1a = pd.read_parquet(tmp_path / "out" / "compare_fig1a.parquet")
    pd.testing.assert_frame_equal(fig1a, comparison.tables["fig1a"])


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Two run directories written by `tl-neuronkinds profile` (2 and 6 layers, one corpus)."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "docs.txt"
    corpus.write_text(TEXT)
    dirs = []
    for n in (2, 6):
        model = make_tiny_opt(root / f"m{n}", n_layers=n, vocab=300, n_ctx=32, tokenizer=False)
        tiny_tokenizer().save_pretrained(model)
        out = root / f"run{n}"
        argv = ["profile", "--model", str(model), "--corpus", str(corpus), "--seq-len", "16"]
        assert cli.main([*argv, "--tokens", "512", "--no-report", "--out", str(out)]) == 0
        dirs.append(out)
    (dirs[0] / "report.html").write_text("<!DOCTYPE html><title>its report</title>")
    return dirs


@pytest.mark.slow
def test_the_command_line_writes_the_page_and_tables(run_dirs, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "pages" / "cmp.html"
    argv = ["compare", *map(str, run_dirs), "--labels", "two,six", "--suppression"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert 'href="../../' in text and "run2/report.html" in text  # relative link
    assert 'id="cmp-fig6"' in text
    assert (out.parent / "cmp_fig3b_n1.csv").exists() and (out.parent / "cmp_fig8.parquet").exists()
    assert "two" in capsys.readouterr().out
    assert cli.main(["compare", str(run_dirs[0]), "--out", str(out)]) == 2
    assert "one run" in capsys.readouterr().err
    assert cli.main(["compare", *map(str, run_dirs), "--labels", "a", "--out", str(out)]) == 2
    assert "1 names for 2 runs" in capsys.readouterr().err


@pytest.mark.slow
def test_massive_activations_by_depth_are_the_runs_own(run_dirs, tmp_path) -> None:
    """Measured on each run's model over its first recorded tokens (--massive), or read from
    the tables `tl-neuronkinds massive` wrote into a run directory."""
    from tl_neuronkinds.massive import massive_activations
    from tl_neuronkinds.recording.run_dir import load_tokens

    measured = nk.compare(run_dirs, with_massive=True).tables["massive"]
    expected = []
    for run in run_dirs:
        settings = json.loads((run / "run.json").read_text())["settings"]
        model = nk.load_opt(settings["model"])
        found = massive_activations(model, load_tokens(run / "tokens.safetensors"))
        top = found.top[found.top["rank"] == 0]
        expected.append(top["magnitude"].to_numpy())
        if run == run_dirs[0]:
            kept = tmp_path / "kept"
            shutil.copytree(run, kept)
            found.top.to_parquet(kept / "massive_top.parquet")
            found.median.to_parquet(kept / "massive_median.parquet")
            medians = found.median["median"].to_numpy()
    np.testing.assert_allclose(measured["top_1"], np.concatenate(expected))
    assert measured["relative_depth"].tolist() == [0, 1, 0, 0.2, 0.4, 0.6, 0.8, 1.0]
    read = nk.compare([kept, run_dirs[1]], labels=["kept", "six"]).tables["massive"]
    assert read["model"].tolist() == ["kept", "kept"]  # the other run has no tables
    np.testing.assert_allclose(read["top_1"], expected[0])
    np.testing.assert_allclose(read["median"], medians)


@pytest.mark.slow
def test_the_page_opens_offline_with_one_line_and_panel_per_model(runs, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    browser = pytest.importorskip("test_browser", reason="needs Chromium (tests/test_browser.py)")
    models, profiles, part, _ = runs
    labels = ["two", "six", "six, half"]
    path = nk.compare([*profiles, part], labels, models=[*models, models[1]]).to_html(
        tmp_path / "compare.html"
    )
    chromium = browser.Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            chromium.page(f"{domain}.enable")
        chromium.page("Page.navigate", url=path.as_uri())
        chromium.wait_for("document.readyState === 'complete'")
        state = chromium.evaluate(
            """(() => {
              const n = (q) => document.querySelectorAll(q).length;
              const lines = {};
              for (const f of ['fig1a', 'fig1b', 'fig3a', 'fig3b', 'fig3b-cumulative', 'fig4',
                               'fig4-previous', 'fig6']) {
                lines[f] = n(`svg[aria-label="cmp-${f}"] g[id^="cmp-${f}-model-"]`);
              }
              const legend = [...document.querySelectorAll('svg[aria-label="cmp-fig1a"] text')]
                .map(t => t.textContent);
              return {lines, legend, fig2: n('svg[aria-label^="cmp-fig2-n1-m"]'),
                      fig8: n('svg[aria-label="cmp-fig8"] g[id^="cmp-fig8-model-"]'),
                      images: document.images.length};
            })()"""
        )
    finally:
        chromium.close()
    state["events"] = chromium.events
    browser.check_quiet_and_offline(state)
    assert state["lines"] == dict.fromkeys(state["lines"], 3)
    assert all(label in state["legend"] for label in labels)
    assert state["fig2"] == state["fig8"] == 3 and state["images"] == 0


@pytest.mark.slow
def test_three_seeds_of_the_embedded_model_through_the_command_line(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from tl_neuronkinds.data import SEEDS

    dirs = []
    for seed in SEEDS:
        out = tmp_path / f"seed{seed}"
        model = str(nk.embedded_model_dir("standard", seed))
        argv = ["profile", "--model", model, "--tokens", "1024", "--no-report", "--out", str(out)]
        assert cli.main([*argv, "--device", "cpu"]) == 0
        dirs.append(str(out))
    page = tmp_path / "seeds.html"
    assert cli.main(["compare", *dirs, "--out", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    for name in ("embedded_model", "embedded_model_seed1", "embedded_model_seed2"):
        assert name in text
    fig1a = pd.read_csv(tmp_path / "seeds_fig1a.csv")
    assert (
        fig1a.groupby("model")["relative_depth"].apply(list).tolist()
        == [[0, 1 / 3, 2 / 3, 1.0]] * 3
    )
    assert "Nothing else" in text  # same corpus, tokens and settings


def test_a_comparison_without_its_page_says_how_to_draw_it(runs, tmp_path) -> None:
    from tl_neuronkinds.comparison import compare as compare_runs

    _, profiles, _, _ = runs
    bare = compare_runs(profiles)
    assert bare.tables.keys() == nk.compare(profiles).tables.keys()
    with pytest.raises(nk.NeuronKindsError, match="built without a page"):
        bare.to_html(tmp_path / "c.html")
