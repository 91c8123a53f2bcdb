"""Universal neurons with what they are: the joined table, per-layer shares and families against
hand computations, the report's section and page, and ``tl-neuronkinds universal``."""

import numpy as np
import pandas as pd
import pytest
from recording_reference import BOS, D_VOCAB, random_tokens, tiny_model
from test_correlations import permuted

import tl_neuronkinds as nk
from tl_neuronkinds.data import (
    SEEDS,
    embedded_model_dir,
    embedded_tokenizer_dir,
    shared_tokenizer_dir,
)
from tl_neuronkinds.universal.families import FAMILY_STATS, find_universal


@pytest.fixture(scope="module")
def found():
    a = tiny_model(0)
    b, _ = permuted(a, seed=3)
    c = tiny_model(5)
    tokens = random_tokens(8, n_seq=16, seq_len=24, vocab=D_VOCAB)
    return a, tokens, find_universal([a, b, c], tokens, bos_token_id=BOS, k=2)


def test_the_table_joins_correlations_weights_and_moments(found) -> None:
    model, tokens, result = found
    table = result.table
    first = ["layer", "neuron", "max_corr", "baseline_max_corr", "excess", "universal"]
    assert len(table) == 3 * 24 and list(table.columns[:6]) == first
    weights = nk.weight_stats(model)
    profile = nk.record(model, tokens, ngram_max=1, progress=False, bos_token_id=BOS)
    moments = nk.activation_moments(profile)
    for column in ("vocab_kurt", "w_out_norm", "entropy_score", "partition"):
        assert table[column].tolist() == weights[column].tolist(), column
    for column in ("act_mean", "act_kurt", "sparsity"):
        np.testing.assert_allclose(table[column], moments[column], rtol=1e-12, equal_nan=True)
    assert result.tokens == int((tokens != BOS).sum()) and result.threshold == 0.5
    # Against a permuted copy each neuron correlates 1.0; against another seed it does not.
    by_model = np.array(list(table["excess_by_model"]))
    np.testing.assert_allclose(table["excess"], by_model.mean(axis=1))
    assert (by_model[:, 0] > by_model[:, 1]).mean() > 0.9
    assert table["universal"].tolist() == (table["excess"] > 0.5).tolist()


def test_layers_and_families_equal_a_hand_computation(found) -> None:
    _, _, result = found
    table = result.table
    layers = result.layers()
    for row in layers.itertuples():
        part = table[table["layer"] == row.layer]
        assert row.neurons == len(part) and row.universal == part["universal"].sum()
        assert row.share == pytest.approx(part["universal"].mean())
        assert row.excess == pytest.approx(part["excess"].mean())
    families = result.families().set_index("group")
    assert families.loc["all", "neurons"] == len(table)
    assert families.loc["universal", "neurons"] + families.loc["other", "neurons"] == len(table)
    universal = table[table["universal"]]
    for column, how in FAMILY_STATS.items():
        values = universal[column].astype(float)
        expected = values.median() if how == "median" else values.mean()
        assert families.loc["universal", column] == pytest.approx(expected, nan_ok=True), column


@pytest.mark.slow
def test_the_report_and_the_page_show_universal_neurons(found, tmp_path) -> None:
    model, tokens, result = found
    profile = nk.record(model, tokens, progress=False, bos_token_id=BOS)
    text = nk.report(profile, model, tmp_path / "r.html", tokens, universal=result).read_text()
    for part in ('id="universal"', 'aria-label="universal-share"', "universal-corr", "Families"):
        assert part in text, part
    assert text.index('id="universal"') < text.index('id="neurons"')
    from tl_neuronkinds.present.universal_page import universal_page

    page = universal_page(result, tmp_path / "u.html", "tiny").read_text()
    assert 'aria-label="universal-corr"' in page and "data-nk-bundle" not in page


@pytest.mark.slow
def test_universal_command_writes_tables_and_page(tmp_path, capsys) -> None:
    from tl_neuronkinds import cli

    out = tmp_path / "universal"
    models = [str(embedded_model_dir()), str(embedded_model_dir("nopos"))]
    args = ["universal", "--models", *models, "--tokens", "1024", "--layers", "3"]
    assert cli.main([*args, "--seq-len", "128", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text tokens" in printed and "share" in printed
    for name in ("universal", "universal_layers", "universal_families"):
        assert (out / f"{name}.parquet").exists() and (out / f"{name}.csv").exists()
    table = pd.read_parquet(out / "universal.parquet")
    assert len(table) == 2048 and set(table["layer"]) == {3}
    assert (out / "universal.html").exists()
    assert cli.main(["universal", "--models", models[0], "--out", str(tmp_path / "x")]) == 2
    assert "two or more models" in capsys.readouterr().err
    assert cli.main([*args, "--threshold", "-1", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
    assert cli.main([*args, "--cache", "-1", "--out", str(tmp_path / "z")]) == 2
    assert "--cache: expected an integer >= 0" in capsys.readouterr().err


def test_the_default_models_are_the_shipped_seeds() -> None:
    from tl_neuronkinds.cli.common import embedded_seeds

    dirs = embedded_seeds()
    assert len(dirs) == len(SEEDS) == 3
    tokenizers = [nk.load_opt(directory, device="cpu").tokenizer for directory in dirs]
    assert all(shared_tokenizer_dir(directory) == embedded_tokenizer_dir() for directory in dirs)
    assert all(t.get_vocab() == tokenizers[0].get_vocab() for t in tokenizers[1:])
    with pytest.raises(nk.NeuronKindsError, match="no embedded nopos model of seed 1"):
        embedded_model_dir("nopos", seed=1)


@pytest.mark.slow
def test_report_compare_adds_the_section(tmp_path, capsys) -> None:
    from tl_neuronkinds import cli

    run = tmp_path / "run"
    args = ["profile", "--tokens", "1024", "--layers", "2,3", "--out", str(run), "--no-report"]
    assert cli.main(args) == 0
    out = tmp_path / "r.html"
    assert cli.main(["report", str(run), "--out", str(out), "--compare", "seeds"]) == 0
    text = out.read_text()
    assert 'id="universal"' in text and "embedded_model_seed2" in text
    assert cli.main(["report", str(run), "--compare", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
