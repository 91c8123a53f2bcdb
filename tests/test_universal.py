"""Universal neurons with what they are: the joined table, per-layer shares and families against
hand computations, the report's section and page, and ``tl-neuronkinds universal``."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
from recording_reference import BOS, D_VOCAB, random_tokens, tiny_model
from test_correlations import permuted, stacked

import tl_neuronkinds as nk
from tl_neuronkinds.data import (
    SEEDS,
    embedded_model_dir,
    embedded_tokenizer_dir,
    shared_tokenizer_dir,
)
from tl_neuronkinds.universal.families import FAMILY_STATS, UniversalNeurons, find_universal
from tl_neuronkinds.universal.settings import MIN_ACTIVE

#: The neuron ``planted`` makes fire at one text position only.
RARE = (1, 7)


@pytest.fixture(scope="module")
def found():
    a = tiny_model(0)
    b, _ = permuted(a, seed=3)
    c = tiny_model(5)
    tokens = random_tokens(8, n_seq=16, seq_len=24, vocab=D_VOCAB)
    return a, tokens, find_universal([a, b, c], tokens, bos_token_id=BOS, k=2, progress=False)


@pytest.fixture(scope="module")
def planted():
    """Model A with neuron ``RARE`` active at one text position (its bias lowered to between
    its two largest pre-activations), against two permuted copies: it correlates 1.0 with its
    images, a coincidence of one position."""
    a = tiny_model(0)
    tokens = random_tokens(8, n_seq=16, seq_len=24, vocab=D_VOCAB)
    _, cache = a.run_with_cache(tokens)
    layer, neuron = RARE
    top = cache[f"blocks.{layer}.mlp.hook_pre"][tokens != BOS][:, neuron].topk(2).values
    with torch.no_grad():
        a.blocks[layer].mlp.b_in[neuron] -= (top[0] + top[1]) / 2
    models = [a, permuted(a, seed=3)[0], permuted(a, seed=5)[0]]
    return models, tokens, find_universal(models, tokens, bos_token_id=BOS, k=1, progress=False)


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
    assert result.support_warning() is None and "nk-warning" not in page


@pytest.mark.slow
def test_the_page_warns_and_leaves_out_what_too_few_positions_support(planted, tmp_path) -> None:
    from tl_neuronkinds.present.universal_page import universal_page

    result = _median_bar(planted)
    page = universal_page(result, tmp_path / "u.html", "tiny").read_text()
    warning = result.support_warning()
    assert warning and f'<p class="nk-note nk-warning">{warning}</p>' in page
    most = page.split("<h3>Most universal</h3>")[1].split("</table>")[0]
    header = re.findall(r"<th>(.*?)</th>", most)
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", most, re.S)]
    rows = [dict(zip(header, row)) for row in rows if row]
    assert len(rows) == 30 and min(int(row["active"]) for row in rows) >= result.min_active
    assert [RARE[0], RARE[1]] not in [[int(row["layer"]), int(row["neuron"])] for row in rows]
    assert f"{result.n_unsupported:,} neurons fire at fewer positions" in page


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


def _median_bar(planted) -> UniversalNeurons:
    """``planted``'s models and tokens, ``min_active`` the median of A's active positions."""
    models, tokens, result = planted
    bar = int(np.median(result.table["active"]))
    return find_universal(models, tokens, bos_token_id=BOS, min_active=bar, progress=False)


def test_neurons_active_at_too_few_positions_are_left_out_and_counted(planted) -> None:
    models, tokens, result = planted
    table = result.table
    active = (stacked(models[0], tokens, [0, 1, 2]) > 0).sum(axis=0)  # brute force
    assert table["active"].tolist() == active.tolist()
    rare = table[(table["layer"] == RARE[0]) & (table["neuron"] == RARE[1])].iloc[0]
    assert rare["active"] == 1 and rare["max_corr"] == pytest.approx(1.0)
    assert rare["excess"] > 0.5 and not rare["universal"]
    assert result.min_active == MIN_ACTIVE == 10
    excess = table["excess"].to_numpy()
    assert table["universal"].tolist() == ((excess > 0.5) & (active >= 10)).tolist()
    firing, above = int((active > 0).sum()), int((excess > 0.5).sum())
    rare_ones = int(((active > 0) & (active < 10)).sum())
    left_out = int(((excess > 0.5) & (active < 10)).sum())
    assert result.n_unsupported == rare_ones >= 1 and result.n_left_out == left_out >= 1
    assert result.layers()["universal"].sum() == table["universal"].sum()
    # A warning where more than 5% of those that fire, or of those above 0.5, are too rare (on
    # TransformerLens 3.9's test model: 1 of 72, but 1 of the 14 above 0.5).
    warning = result.support_warning()
    assert bool(warning) == (rare_ones > 0.05 * firing or left_out > 0.05 * above)
    assert (
        warning
        and (
            f"{rare_ones} of the {firing} neurons that fire do so at fewer than 10 of the "
            f"{len(stacked(models[0], tokens, [0]))} text"
        )
        in warning
    )
    verb = "has" if left_out == 1 else "have"
    assert f"{left_out} of them {verb} an excess correlation above 0.5 and" in warning
    # Another bar: every neuron active at fewer positions than the median is left out.
    higher = _median_bar(planted)
    bar = higher.min_active
    assert higher.table["universal"].tolist() == ((excess > 0.5) & (active >= bar)).tolist()
    assert higher.n_unsupported == int(((active > 0) & (active < bar)).sum())
    warning = higher.support_warning()
    assert warning and f"fewer than {bar} of the 352 text positions" in warning
    assert f"{higher.n_left_out} of them have an excess correlation above 0.5" in warning
    # No bar: the coincidence counts as universal.
    bare = find_universal(models, tokens, bos_token_id=BOS, min_active=0, progress=False)
    assert bare.table["universal"].tolist() == (excess > 0.5).tolist()
    assert bare.n_unsupported == bare.n_left_out == 0 and bare.support_warning() is None
    with pytest.raises(nk.NeuronKindsError, match="min_active"):
        find_universal(models, tokens, bos_token_id=BOS, min_active=-1, progress=False)


def test_the_support_warning_shows_on_a_tiny_budget_only(found) -> None:
    model, tokens, ample = found
    assert ample.support_warning() is None
    models = [model, permuted(model, seed=3)[0]]
    tiny = find_universal(models, tokens[:1, :8], bos_token_id=BOS, progress=False)
    warning = tiny.support_warning()
    assert warning and "of the 7 text positions" in warning and "use more tokens" in warning
    assert not tiny.table["universal"].any()
