"""classify recovers every planted neuron of a hand-built model (tests/planted.py) exactly."""

import pandas as pd
import pytest
from planted import BOS, EXPECTED, VOCAB, planted_model, planted_tokens

from tl_neuronkinds.kinds import (
    Analysis,
    classify,
    coverage_by_layer,
    dead_by_layer,
    detectors_by_layer,
    figure_tables,
    layer_summary,
    new_triggers_by_layer,
    position_teams,
    positional_by_layer,
    positional_neurons,
    triggers_by_layer,
)
from tl_neuronkinds.recording import record
from tl_neuronkinds.recording.profile import NeuronProfile

pytestmark = pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning")


@pytest.fixture(scope="module")
def profile() -> NeuronProfile:
    """Recorded as ``record`` does by default: with the n-gram cap (50)."""
    recorded = record(planted_model(), planted_tokens(), bos_token_id=BOS, progress=False)
    recorded.token_strings = list(VOCAB)
    return recorded


@pytest.mark.slow
def test_capped_recording_classifies_as_the_exhaustive_one(profile):
    assert profile.ngram_cap == 50
    exhaustive = record(
        planted_model(), planted_tokens(), bos_token_id=BOS, ngram_cap=None, progress=False
    )
    exhaustive.token_strings = list(VOCAB)
    capped, full = classify(profile), classify(exhaustive)
    same = ["token_detector", "triggers", "trigger_n", "ngram_detector_2", "ngram_detector_3"]
    pd.testing.assert_frame_equal(capped[[*same, "kind", "k95_1"]], full[[*same, "kind", "k95_1"]])
    for n in (2, 3):
        status = capped[f"k95_{n}_status"]
        exact = (status == "exact").to_numpy()
        assert capped[f"k95_{n}"][exact].tolist() == full[f"k95_{n}"][exact].tolist()
        assert (full[f"k95_{n}"][(status == "censored").to_numpy()] > 50).all()
        assert set(status) <= {"exact", "censored", "undefined"}
        table = coverage_by_layer(profile, n)
        assert list(table.columns) == [
            "1-5", "6-10", "11-20", "21-50", ">50", "undefined", "unknown",
        ]  # fmt: skip
        assert table.sum(axis=1).tolist() == coverage_by_layer(exhaustive, n).sum(axis=1).tolist()
    # One Analysis gives the same tables as separate calls.
    analysis = Analysis(profile)
    pd.testing.assert_frame_equal(classify(analysis), capped)
    tables = figure_tables(analysis)
    pd.testing.assert_frame_equal(tables["fig2_n2"], coverage_by_layer(profile, 2))
    pd.testing.assert_frame_equal(tables["layers"], layer_summary(profile))


def test_every_neuron_has_its_planted_kind(profile):
    table = classify(profile).set_index(["layer", "neuron"])
    assert sorted(table.index) == sorted(EXPECTED)
    for key, expect in EXPECTED.items():
        row = table.loc[key]
        assert row["kind"] == expect["kind"], key
        assert row["dead"] == (expect["kind"] == "dead"), key
        assert row["bos_only"] == expect.get("bos_only", False), key
        assert row["token_detector"] == (expect["kind"] == "token_detector"), key
        assert set(row["triggers"]) == expect.get("triggers", set()), key
        trigger_n = {"token_detector": 1, "ngram_detector": expect.get("ngram")}
        assert row["trigger_n"] is pd.NA or row["trigger_n"] == trigger_n.get(expect["kind"]), key
        assert pd.isna(row["trigger_n"]) == (expect["kind"] not in trigger_n), key
        for n in (2, 3):
            assert row[f"ngram_detector_{n}"] == (expect.get("ngram") == n), key
        if expect["kind"] == "token_detector":
            assert row["k95_1"] == len(expect["triggers"]), key
        if expect["kind"] == "ngram_detector":
            assert row[f"k95_{expect['ngram']}"] == 1, key
        assert row["positional"] == (expect["kind"] == "positional"), key
        if row["positional"]:
            assert (row["pos_type"], row["pos_strength"]) == (
                expect["pos_type"],
                expect["pos_strength"],
            ), key
        else:
            assert pd.isna(row["pos_type"]) and pd.isna(row["pos_strength"]), key
        if expect["kind"] == "dead" or expect.get("bos_only"):
            assert pd.isna(row["k95_1"]), key


def test_position_range_teams(profile):
    teams = position_teams(profile)
    assert teams.loc[0, "neurons"] == [7, 8]
    assert teams.loc[0, "ranges"][0] == [(1, 8), (17, 24), (33, 40), (49, 56)]
    assert teams.loc[0, "ranges"][1] == [(9, 16), (25, 32), (41, 48), (57, 64)]
    assert teams.loc[0, "covers_all"] and teams.loc[0, "n_uncovered"] == 0
    # Layer 1 plants three of the four shifts of a period-32 team: 25-32 and 57-64 stay uncovered.
    assert teams.loc[1, "neurons"] == [4, 5, 6]
    assert not teams.loc[1, "covers_all"] and teams.loc[1, "n_uncovered"] == 16
    ranges = positional_neurons(profile).set_index(["layer", "neuron"])["pos_ranges"]
    assert ranges.loc[(1, 5)] == [(9, 16), (41, 48)]
    assert ranges.loc[(0, 6)] == []  # both_extremes: no team


def test_per_layer_tables(profile):
    assert dead_by_layer(profile)["n_dead"].tolist() == [2, 7]
    assert detectors_by_layer(profile)["n_detectors"].tolist() == [2, 3]
    assert detectors_by_layer(profile, 2)["n_detectors"].tolist() == [1, 1]
    assert detectors_by_layer(profile, 3)["n_detectors"].tolist() == [1, 0]
    # Triggers: layer 0 {cat, Cat, the}; layer 1 {cat, mat, dog, ran}.
    assert triggers_by_layer(profile).values.tolist() == [[3, 3], [4, 6]]
    assert new_triggers_by_layer(profile).values.tolist() == [[3, 3], [3, 3]]
    table8 = positional_by_layer(profile)
    assert table8.loc[
        0, ["oscillatory_strong", "both_extremes_strong", "one_extreme_strong"]
    ].tolist() == [2, 1, 1]
    assert table8.loc[0, ["other_strong", "other_weak", "n_positional"]].tolist() == [1, 1, 6]
    assert table8.loc[1, ["oscillatory_strong", "n_positional"]].tolist() == [3, 3]
    summary = layer_summary(profile)
    assert summary.loc[
        0,
        [
            "kind_dead",
            "kind_token_detector",
            "kind_ngram_detector",
            "kind_positional",
            "kind_other",
        ],
    ].tolist() == [2, 2, 2, 6, 4]


def test_the_figure_numbered_names_still_work(profile):
    """Users' code written against the earlier names (the paper's figure numbers) gets the same
    tables from ``tl_neuronkinds.kinds``."""
    from tl_neuronkinds import kinds

    old = [kinds.fig1a, kinds.fig1b, kinds.fig2, kinds.fig3a, kinds.fig3b, kinds.fig4, kinds.fig8]
    new = [dead_by_layer, kinds.frequency_by_layer, coverage_by_layer, detectors_by_layer,
           triggers_by_layer, new_triggers_by_layer, positional_by_layer]  # fmt: skip
    for before, now in zip(old, new, strict=True):
        pd.testing.assert_frame_equal(before(profile), now(profile))


def test_saved_profile_reclassifies_with_other_cutoffs(profile, tmp_path):
    loaded = NeuronProfile.load(profile.save(tmp_path / "planted"))
    pd.testing.assert_frame_equal(classify(loaded), classify(profile))
    # Eight tokens trigger neuron (0, 14): a token detector once k95 <= 8 is allowed.
    wider = classify(loaded, k_max=8).set_index(["layer", "neuron"])
    assert wider.loc[(0, 14), "kind"] == "token_detector"
    assert len(wider.loc[(0, 14), "triggers"]) == 8
    # Only the neurons with I(act; pos) above 0.6 nats stay positional.
    strict = classify(loaded, mi_threshold=0.6)
    assert strict.loc[strict["positional"], ["layer", "neuron"]].values.tolist() == [
        [0, 6],
        [0, 7],
        [0, 8],
    ]
