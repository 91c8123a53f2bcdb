"""Cut-offs, one Analysis for every table, evidence (min_count, warnings) and the cap's buckets."""

import dataclasses
import importlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds import (
    Analysis,
    Cutoffs,
    EvidenceWarning,
    classify,
    classify_with_cautions,
    coverage_by_layer,
    detectors_by_layer,
    figure_tables,
    layer_summary,
    ngram_coverage,
    positional_neurons,
    token_detectors,
)
from tl_neuronkinds.kinds import analysis as analysis_module
from tl_neuronkinds.kinds.classify import classification
from tl_neuronkinds.kinds.ngrams import fig2_buckets
from tl_neuronkinds.recording.accumulate import profile_from_activations

BOS = 2
#: The module (``tl_neuronkinds.kinds.classify`` is the function).
classify_module = importlib.import_module("tl_neuronkinds.kinds.classify")
quiet = pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning")


def _profile(ngram_cap=None, seed=0):
    """Random tokens; neuron 0 fires on the 3 occurrences of token 5 (a rare token detector),
    neuron 1 on token 3 (a common one), neuron 2 at random."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 5, size=(8, 30))
    tokens[:, 0] = BOS
    tokens[[1, 4, 6], [3, 9, 20]] = 5
    tokens = torch.tensor(tokens)
    noise = torch.from_numpy(rng.random(tokens.shape) < 0.3)  # seeded: every call the same
    acts = torch.stack([tokens == 5, tokens == 3, noise], -1).float()
    names = ["<s>", "<pad>", "</s>", " a", " b", " c"]
    return profile_from_activations(
        tokens, {0: acts, 1: acts}, d_vocab=6, ngram_cap=ngram_cap, token_strings=names
    )


def test_cutoffs_hold_the_papers_defaults_and_validate():
    cuts = Cutoffs()
    assert cuts.to_dict() == dict(
        k_max=5, coverage=95, mi_threshold=0.05, min_run=8, delta=0.05, smooth_r2=0.9, min_count=0
    )
    assert Cutoffs.from_dict(cuts.to_dict()) == cuts
    with pytest.raises(dataclasses.FrozenInstanceError):
        cuts.k_max = 3  # type: ignore[misc]
    assert Cutoffs.of(Cutoffs(k_max=8), coverage=90) == Cutoffs(k_max=8, coverage=90)
    assert Cutoffs.of(mi_threshold=0).mi_threshold == 0.0
    for bad, message in [
        (dict(k_max=0), "k_max"),
        (dict(coverage=95.5), "coverage"),
        (dict(min_count=-1), "min_count"),
        (dict(delta=0.5), "delta"),
        (dict(smooth_r2=float("nan")), "smooth_r2"),
        (dict(k_maxx=3), "unknown cut-off 'k_maxx'"),
    ]:
        with pytest.raises(NeuronKindsError, match=message):
            Cutoffs.of(**bad)


@quiet
def test_every_function_takes_cutoffs_or_keywords():
    profile = _profile()
    wide = Cutoffs(k_max=8, coverage=90, mi_threshold=0.01)
    pd.testing.assert_frame_equal(
        classify(profile, wide), classify(profile, k_max=8, coverage=90, mi_threshold=0.01)
    )
    pd.testing.assert_frame_equal(
        token_detectors(profile, 2, wide), token_detectors(profile, 2, k_max=8, coverage=90)
    )
    pd.testing.assert_frame_equal(
        coverage_by_layer(profile, 1, wide), coverage_by_layer(profile, 1, coverage=90)
    )
    pd.testing.assert_frame_equal(
        positional_neurons(profile, wide), positional_neurons(profile, mi_threshold=0.01)
    )
    with pytest.raises(NeuronKindsError, match="'kmax'"):
        classify(profile, kmax=3)
    with pytest.raises(NeuronKindsError, match="'cover'"):
        ngram_coverage(profile, 1, cover=90)


@quiet
def test_one_analysis_computes_each_layer_once(monkeypatch):
    """classify and every figure table from one Analysis: each layer's coverage per order and
    its positional statistics are computed once."""
    calls: dict[str, list] = {"coverage": [], "positional": []}
    coverage, positional = analysis_module.layer_coverage, analysis_module.layer_positional

    def counted_coverage(profile, layer, n, cutoffs, unigram=None):
        calls["coverage"].append((layer, n))
        return coverage(profile, layer, n, cutoffs, unigram)

    def counted_positional(profile, layer, cutoffs):
        calls["positional"].append(layer)
        return positional(profile, layer, cutoffs)

    monkeypatch.setattr(analysis_module, "layer_coverage", counted_coverage)
    monkeypatch.setattr(analysis_module, "layer_positional", counted_positional)
    profile = _profile(ngram_cap=5)
    analysis = Analysis(profile, k_max=4)
    table = classify(analysis)
    tables = figure_tables(analysis)
    assert sorted(calls["coverage"]) == [(layer, n) for layer in (0, 1) for n in (1, 2, 3)]
    assert sorted(calls["positional"]) == [0, 1]
    # analysis= beside the profile is the same Analysis; the results equal fresh ones.
    pd.testing.assert_frame_equal(classify(profile, analysis=analysis), table)
    assert len(calls["coverage"]) == 6
    assert set(tables) == {
        "fig1a", "fig1b", "fig8", "layers",
        *(f"{name}_n{n}" for name in ("fig2", "fig3a", "fig3b", "fig4") for n in (1, 2, 3)),
    }  # fmt: skip
    pd.testing.assert_frame_equal(table, classify(profile, k_max=4))
    pd.testing.assert_frame_equal(tables["layers"], layer_summary(profile, k_max=4))
    pd.testing.assert_frame_equal(tables["fig3a_n2"], detectors_by_layer(profile, 2, k_max=4))
    with pytest.raises(NeuronKindsError, match="Analysis was made with"):
        classify(analysis, k_max=5)
    with pytest.raises(NeuronKindsError, match="another profile"):
        classify(_profile(), analysis=analysis)


@quiet
def test_min_count_and_evidence():
    profile = _profile()
    table = classify(profile).set_index(["layer", "neuron"])
    assert table.loc[(0, 0), "evidence"] == 3 and table.loc[(0, 0), "token_detector"]
    assert table.loc[(0, 0), "triggers"] == [" c"]
    assert table["evidence"].tolist() == token_detectors(profile)["A"].tolist()
    assert layer_summary(profile)["n_detectors_under_10"].tolist() == [1, 1]
    strict = classify(profile, min_count=4).set_index(["layer", "neuron"])
    assert not strict.loc[(0, 0), "token_detector"] and strict.loc[(0, 1), "token_detector"]
    assert strict.loc[(0, 0), "triggers"] == [] and pd.isna(strict.loc[(0, 0), "trigger_n"])
    assert layer_summary(profile, min_count=4)["n_detectors_under_10"].tolist() == [0, 0]


def test_evidence_warning_below_a_million_text_tokens():
    with pytest.warns(EvidenceWarning, match=r"5M tokens.*§2") as caught:
        classify(_profile())
    assert caught[0].filename == __file__  # the caller's line, not one inside the package
    tokens = torch.randint(3, 40, (1000, 1001))
    tokens[:, 0] = BOS
    acts = {0: (torch.rand(1000, 1001, 2) < 0.01).float()}
    big = profile_from_activations(tokens, acts, d_vocab=40, ngram_max=1)
    assert big.n_text_positions == 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classify(big)


def test_cautions_come_back_as_notes_and_other_warnings_as_raised():
    """``classify_with_cautions``: the kinds' cautions as messages (a page or the command line
    shows them), every other warning re-emitted from where it was raised."""
    rng = np.random.default_rng(0)
    tokens = torch.tensor(rng.integers(3, 40, size=(8, 30)))
    tokens[:, 0] = BOS
    # Active on 3 tokens (unigram bound <= 3) after many others (k95_2 > cap 5: censored).
    acts = {0: (tokens < 6).float()[..., None]}
    profile = profile_from_activations(tokens, acts, d_vocab=40, ngram_cap=5)
    analysis = Analysis(profile, k_max=6)  # above the cap: the censored neuron is undecidable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table, cautions = classify_with_cautions(analysis)
    pd.testing.assert_frame_equal(table, classification(analysis))
    assert table["ngram_detector_2"].isna().tolist() == [True]
    assert [c.split(":")[0] for c in cautions] == [
        f"the profile holds {profile.n_text_positions:,} text tokens, fewer than 1,000,000",
        "1 neurons' n-gram detector test cannot be decided from this profile (ngram_cap=5)",
    ]

    def other(*args, **kwargs):
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
        return table

    with pytest.MonkeyPatch.context() as patch, pytest.warns(RuntimeWarning, match="else"):
        patch.setattr(classify_module, "classify", other)
        again, cautions = classify_with_cautions(analysis)
    assert again is table and cautions == []


@pytest.mark.parametrize(
    ("cap", "labels"),
    [
        (5, ["1-5", ">5"]),
        (7, ["1-5", "6-7", ">7"]),
        (30, ["1-5", "6-10", "11-20", "21-30", ">30"]),
        (50, ["1-5", "6-10", "11-20", "21-50", ">50"]),
        (1500, ["1-5", "6-10", "11-20", "21-50", "51-200", "201-1k", "1k-1500", ">1500"]),
    ],
)
def test_fig2_buckets_end_at_the_cap(cap, labels):
    assert [label for label, _, _ in fig2_buckets(cap)] == labels


@quiet
def test_fig2_of_a_capped_profile():
    capped, full = _profile(ngram_cap=5), _profile()
    table = coverage_by_layer(capped, 2)
    assert list(table.columns) == ["1-5", ">5", "undefined", "unknown"]
    exhaustive = coverage_by_layer(full, 2)
    assert list(exhaustive.columns)[-2:] == [">50k", "undefined"]
    assert (table["1-5"] == exhaustive["1-5"]).all()
    assert (table[">5"] == exhaustive.iloc[:, 1:-1].sum(axis=1)).all()
    assert table["unknown"].sum() == 0
    assert list(coverage_by_layer(capped, 1).columns) == list(coverage_by_layer(full, 1).columns)
    coverage = ngram_coverage(capped, 2)
    assert set(coverage["status"]) <= {"exact", "censored", "undefined"}
    assert (coverage["status"] == "censored").sum() == table[">5"].sum()
    assert coverage.loc[coverage["status"] == "censored", "n_ngrams"].isna().all()
