"""Massive activations: streaming top-k and exact median against brute force over cached hidden
states, however batched; a planted massive activation found where it was put."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opt_fixtures import make_tiny_opt
from recording_reference import random_tokens, tiny_model
from tl_models import is_bridge, position_rows, untie_unembedding

import tl_neuronkinds as nk
from tl_neuronkinds.massive.activations import TOP_COLUMNS
from tl_neuronkinds.massive.streaming import MedianCounter, TopMagnitudes, row_median


def brute_top(hidden: np.ndarray, k: int) -> list[tuple[float, int]]:
    """The k largest |h| with their flat places: a stable sort of every magnitude."""
    mag = np.abs(hidden.astype(np.float32)).reshape(-1)
    order = np.lexsort((np.arange(mag.size), -mag))[:k]
    return [(float(mag[i]), int(i)) for i in order]


@st.composite
def batches(draw):
    """Magnitudes from few levels (ties, zeros, a denormal) cut into random batches."""
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    levels = np.float32([0.0, 1e-40, 0.5, 0.5, 1.0, -1.0, 3.0, -250.0, 7e4])
    n = draw(st.integers(1, 60))
    values = levels[rng.integers(0, len(levels), size=n)]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return values, [0, *cuts, n], draw(st.integers(1, 8))


@pytest.mark.slow
@given(batches())
@settings(max_examples=80, deadline=None)
def test_top_and_median_equal_brute_force_however_batched(case) -> None:
    values, cuts, k = case
    top, median = TopMagnitudes(k), MedianCounter()
    parts = [torch.tensor(values[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    for part, first in zip(parts, cuts, strict=False):
        top.add(part.abs(), part, first)
        median.count(part.abs())
    median.plan()
    for part in reversed(parts):  # the second pass may see the batches in any order
        median.refine(part.abs())
    expect = brute_top(values, k)
    assert [(float(m), int(p)) for m, p in zip(top.magnitude, top.place, strict=True)] == expect
    assert top.value.tolist() == [float(values[p]) for _, p in expect]
    assert median.median() == float(np.median(np.abs(values).astype(np.float64)))


def test_median_of_even_and_odd_counts_and_of_large_tensors() -> None:
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 10_000, 10_001):
        values = torch.randn(n, generator=gen) * 10 ** torch.randint(-3, 4, (n,), generator=gen)
        counter = MedianCounter()
        counter.count(values.abs())
        counter.plan()
        counter.refine(values.abs())
        assert counter.median() == float(np.median(values.abs().double().numpy())), n


def test_massive_activations_equal_brute_force_over_the_cache() -> None:
    model, tokens = tiny_model(seed=4), random_tokens(5, n_seq=7, seq_len=11)
    _, cache = model.run_with_cache(tokens)
    whole = nk.massive_activations(model, tokens, k=5, batch_size=7, magnitude=1.0, ratio=2.0)
    assert list(whole.top.columns) == TOP_COLUMNS
    for batch in (1, 3):
        again = nk.massive_activations(
            model, tokens, k=5, batch_size=batch, magnitude=1.0, ratio=2.0
        )
        # Other batch sizes may round the hidden states in the last bit (CPU matmul blocking).
        pd.testing.assert_frame_equal(again.top, whole.top, rtol=1e-6)
        pd.testing.assert_frame_equal(again.median, whole.median, rtol=1e-6)
    d_model, seq_len = model.cfg.d_model, tokens.shape[1]
    for layer in range(model.cfg.n_layers):
        hidden = cache[f"blocks.{layer}.hook_resid_post"].numpy()
        rows = whole.top[whole.top["layer"] == layer]
        expect = brute_top(hidden, 5)
        assert rows["rank"].tolist() == list(range(5))
        assert rows["magnitude"].tolist() == [m for m, _ in expect]
        places = [
            (p // (seq_len * d_model), p // d_model % seq_len, p % d_model) for _, p in expect
        ]
        assert list(zip(rows["seq"], rows["pos"], rows["dim"], strict=True)) == places
        assert rows["value"].tolist() == [float(hidden[s, p, d]) for s, p, d in places]
        assert rows["token_id"].tolist() == [int(tokens[s, p]) for s, p, _ in places]
        median = float(np.median(np.abs(hidden).astype(np.float64)))
        assert whole.median.loc[whole.median["layer"] == layer, "median"].item() == median
        mags = rows["magnitude"].to_numpy()
        assert rows["massive"].tolist() == ((mags > 1.0) & (mags > 2.0 * median)).tolist()
        assert rows["first_token"].tolist() == [p == 0 for _, p, _ in places]


def test_row_median_is_the_mean_of_the_two_middles_where_the_count_is_even() -> None:
    gen = torch.Generator().manual_seed(5)
    for n in (1, 2, 7, 10, 1001):
        mag = torch.randn(4, n, generator=gen).abs()
        expect = np.median(mag.double().numpy(), axis=1)
        np.testing.assert_array_equal(row_median(mag).numpy(), expect)
    assert row_median(torch.tensor([[1.0, 4.0, 2.0, 3.0]])).tolist() == [2.5]  # not 2 (torch)


def test_by_sequence_equals_brute_force_over_the_cache() -> None:
    """Sun et al.'s statistics: per row, torch.topk of its |h| and its median (the mean of the
    two middle values: each row holds 11 x 16 magnitudes, an even count, where torch.median
    would give the lower middle), then the mean over the rows."""
    model, tokens = tiny_model(seed=4), random_tokens(5, n_seq=7, seq_len=11)
    _, cache = model.run_with_cache(tokens)
    found = nk.massive_activations(model, tokens, k=4, batch_size=3, by="sequence")
    pooled = nk.massive_activations(model, tokens, k=4, batch_size=3, magnitude=1.0, ratio=2.0)
    assert found.by == "sequence" and pooled.by == "pooled"
    pd.testing.assert_frame_equal(pooled.by_sequence, found.by_sequence)
    assert list(found.top.columns) == TOP_COLUMNS
    assert list(found.by_sequence.columns) == ["layer", "n_seq", "top_1", "top_2", "top_3",
                                               "top_4", "median"]  # fmt: skip
    lower_middle_differs = False
    for layer in range(model.cfg.n_layers):
        mag = cache[f"blocks.{layer}.hook_resid_post"].abs().flatten(1)  # [n_seq pos*d_model]
        assert mag.shape[1] % 2 == 0
        top = torch.topk(mag, 4, dim=1).values.double().mean(0).numpy()
        medians = [float(np.median(row.double().numpy())) for row in mag]
        lower_middle_differs |= any(
            float(torch.median(row)) != m for row, m in zip(mag, medians, strict=True)
        )
        row = found.by_sequence[found.by_sequence["layer"] == layer].iloc[0]
        assert row["n_seq"] == 7
        np.testing.assert_allclose(row[["top_1", "top_2", "top_3", "top_4"]].astype(float), top,
                                   rtol=1e-6)  # fmt: skip
        assert row["median"] == pytest.approx(np.mean(medians), rel=1e-6)
        rows = found.top[found.top["layer"] == layer]
        assert rows["rank"].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(rows["magnitude"], top, rtol=1e-6)
        assert found.median.loc[layer, "median"] == row["median"]
        assert not rows["massive"].any()  # the tiny model's magnitudes are all below 100
        for column in ("value", "seq", "pos", "token_id", "token", "dim", "first_token"):
            assert rows[column].isna().all(), column
    assert lower_middle_differs
    # At thresholds this low the means are massive, compared with the mean median.
    low = nk.massive_activations(model, tokens, k=4, by="sequence", magnitude=0.1, ratio=1.5)
    merged = low.top.merge(low.median, on="layer")
    expect = (merged["magnitude"] > 0.1) & (merged["magnitude"] > 1.5 * merged["median"])
    assert low.top["massive"].tolist() == expect.tolist() and low.top["massive"].any()
    for needs_places in (low.dims, low.tokens):
        with pytest.raises(nk.NeuronKindsError, match='use massive_activations.*by="pooled"'):
            needs_places()
    with pytest.raises(nk.NeuronKindsError, match="effects of massive activations needs"):
        nk.massive_intervention(model, low, tokens)
    with pytest.raises(nk.NeuronKindsError, match="by must be one of 'pooled', 'sequence'"):
        nk.massive_activations(model, tokens, by="row")


def test_a_planted_massive_activation_is_found_at_its_place(tmp_path) -> None:
    """One huge value on one dimension of the first position's embedding rides the residual
    stream through every layer: each layer's top-1, massive, at position 0 and that dimension;
    nothing else is massive."""
    path = make_tiny_opt(tmp_path / "ckpt", n_layers=3, vocab=61)
    model = nk.load_opt(path, device="cpu")
    with torch.no_grad():
        position_rows(model)[0, 7] = 5000.0
    tokens = random_tokens(9, n_seq=4, seq_len=10, vocab=61)
    found = nk.massive_activations(model, tokens, k=5)
    first = found.top[found.top["rank"] == 0]
    assert first["dim"].tolist() == [7] * 3 and first["pos"].tolist() == [0] * 3
    assert first["magnitude"].min() > 4000 and first["massive"].all()
    assert first["first_token"].all()
    # Position 0 of each of the 4 sequences, in each of the 3 layers; the fifth is not massive.
    assert found.top["massive"].tolist() == [True] * 4 + [False] + [True] * 4 + [False] + [
        True
    ] * 4 + [False]
    assert found.median["median"].max() < 5
    assert found.dims()["dim"].tolist() == [7] and found.dims()["count"].tolist() == [12]
    by_token = found.tokens()
    assert by_token["first_token"].sum() == 12 and set(by_token["token_id"]) == {2}
    assert found.summary() == (
        "12 of the 15 top entries are massive (above 100 and 1000x their layer's median), in "
        "layers 0, 1, 2"
    )
    # Without them, one line says how far the largest magnitude is from the bar.
    quiet = nk.massive_activations(model, tokens, k=5, magnitude=1e6)
    top1 = quiet.top[quiet.top["rank"] == 0].merge(quiet.median, on="layer")
    ratios = top1["magnitude"] / top1["median"]
    layer = int(top1["layer"][ratios.idxmax()])
    assert quiet.summary() == (
        f"none: the largest magnitude is {top1['magnitude'].max():.4g}, {ratios.max():.3g}x its "
        f"layer's median (layer {layer}); the bar is above 1e+06 and 1000x the median"
    )


def test_layers_stop_the_forward_and_streamed_models_agree(tmp_path) -> None:
    path = make_tiny_opt(tmp_path / "ckpt", n_layers=3, vocab=61)
    tokens = random_tokens(2, n_seq=3, seq_len=9, vocab=61)
    resident = nk.massive_activations(nk.load_opt(path, device="cpu"), tokens, layers=[1, 0])
    streamed_model = nk.load_opt(path, device="cpu", offload="disk")
    streamed = nk.massive_activations(streamed_model, tokens, layers=[0, 1])
    assert streamed.top.equals(resident.top) and resident.median["layer"].tolist() == [0, 1]
    # Blocks 0 and 1 run; a bridge also calls block 2, where it stops, and so loads it.
    loaded = set(nk.loading.streamer_of(streamed_model).loads)
    assert loaded == ({0, 1, 2} if is_bridge(streamed_model) else {0, 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"layers": [3]}, "layers must be a non-empty subset of 0..2"),
        ({"layers": []}, "layers must be a non-empty subset"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    model, tokens = tiny_model(), random_tokens(1)
    with pytest.raises(nk.NeuronKindsError, match=match):
        nk.massive_activations(model, tokens, **kwargs)


def test_bad_tokens_and_non_finite_hidden_states_raise() -> None:
    model = tiny_model()
    with pytest.raises(nk.NeuronKindsError, match="integer tensor"):
        nk.massive_activations(model, torch.zeros(2, 3))
    with pytest.raises(nk.NeuronKindsError, match="token ids must lie in 0..39"):
        nk.massive_activations(model, torch.full((2, 3), 40))
    with torch.no_grad():
        model.blocks[1].mlp.W_out[0, 0] = float("nan")
    with pytest.raises(nk.NeuronKindsError, match=r"blocks\.1\.hook_resid_post holds NaN"):
        nk.massive_activations(model, random_tokens(1))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny OPT whose first position carries 5000 on dimension 7, and what was found in it."""
    path = make_tiny_opt(tmp_path_factory.mktemp("planted") / "ckpt", n_layers=3, vocab=61)
    model = nk.load_opt(path, device="cpu")
    with torch.no_grad():
        position_rows(model)[0, 7] = 5000.0
    tokens = random_tokens(9, n_seq=6, seq_len=10, vocab=61)
    return model, tokens, nk.massive_activations(model, tokens, k=6)


def _perplexity_by_hand(model, tokens, hook=None) -> float:
    hooks = [] if hook is None else [("blocks.0.hook_resid_post", hook)]
    with torch.no_grad():
        loss = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="loss")
    return float(torch.exp(loss))


def test_zeroing_the_planted_activation_changes_perplexity_its_mean_does_not(planted) -> None:
    model, tokens, found = planted
    held_out = random_tokens(10, n_seq=5, seq_len=10, vocab=61)
    table = nk.massive_intervention(model, found, held_out, mean_tokens=tokens, batch_size=2)
    assert table["intervention"].tolist() == ["none", "zero", "mean"]
    assert table["scheme"].tolist() == ["threshold"] * 3
    assert table["layer"].tolist() == [0, 0, 0] and table["dims"].tolist() == [[7]] * 3
    none, zero, mean = table["perplexity"].tolist()
    mean_value = table["value"].iloc[2][0]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    assert mean_value == pytest.approx(float(cache["blocks.0.hook_resid_post"][:, 0, 7].mean()))

    def set_first(to):
        def hook(value, hook):
            value[:, 0, 7] = to
            return value

        return hook

    assert none == pytest.approx(_perplexity_by_hand(model, held_out), rel=1e-6)
    assert zero == pytest.approx(_perplexity_by_hand(model, held_out, set_first(0.0)), rel=1e-6)
    assert mean == pytest.approx(
        _perplexity_by_hand(model, held_out, set_first(mean_value)), rel=1e-6
    )
    assert abs(zero - none) > 20 * abs(mean - none)
    assert table["vs_none"].iloc[0] == 1.0


@pytest.fixture(scope="module")
def planted_two(tmp_path_factory):
    """The planted model with a second massive activation: token 5's embedding carries 9000 on
    dimension 3, so the rows holding token 5 have their top-1 past the first token."""
    path = make_tiny_opt(tmp_path_factory.mktemp("planted_two") / "ckpt", n_layers=3, vocab=61)
    model = nk.load_opt(path, device="cpu")
    untie_unembedding(model)
    with torch.no_grad():
        position_rows(model)[0, 7] = 5000.0
        model.embed.W_E[5, 3] = 9000.0
    tokens = random_tokens(9, n_seq=6, seq_len=10, vocab=61)
    tokens[tokens == 5] = 6
    tokens[::2, 6] = 5  # rows 0, 2, 4
    return model, tokens, nk.massive_activations(model, tokens, k=12)


def _sun_hook(dims, first, top):
    """Sun et al.'s lib/hook.py, one row at a time: sort the row's |h| over every entry, take
    the position of the largest; where it is not 0 set the massive dims there to ``top``, and
    those of position 0 to ``first``."""

    def hook(value, hook):
        for row in range(value.shape[0]):
            order = torch.sort(value[row].abs().flatten(), descending=True, stable=True)
            pos = int(order.indices[0]) // value.shape[2]
            for i, dim in enumerate(dims):
                if pos != 0:
                    value[row, pos, dim] = top[i]
                value[row, 0, dim] = first[i]
        return value

    return hook


def test_the_positions_scheme_equals_sun_et_al_hook(planted_two) -> None:
    model, tokens, found = planted_two
    held_out = random_tokens(10, n_seq=5, seq_len=10, vocab=61)
    held_out[held_out == 5] = 6
    held_out[1::2, 3] = 5  # rows 1, 3
    table = nk.massive_intervention(
        model, found, held_out, mean_tokens=tokens, batch_size=2, scheme="positions"
    )
    assert table["scheme"].tolist() == ["positions"] * 3
    assert table["dims"].tolist() == [[3, 7]] * 3 and table["layer"].tolist() == [0] * 3
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    hidden = cache["blocks.0.hook_resid_post"]
    tops = [int(hidden[r].abs().flatten().argmax()) // hidden.shape[2] for r in range(6)]
    assert tops == [6, 0, 6, 0, 6, 0]
    first = hidden[:, 0, [3, 7]].double().mean(0)
    top = torch.stack([hidden[r, 6, [3, 7]] for r in (0, 2, 4)]).double().mean(0)
    zero_row, mean_row = table.iloc[1], table.iloc[2]
    assert zero_row["value"] == [0.0, 0.0] and zero_row["value_top"] == [0.0, 0.0]
    np.testing.assert_allclose(mean_row["value"], first.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mean_row["value_top"], top.numpy(), rtol=1e-12)
    none, zero, mean = table["perplexity"].tolist()
    assert none == pytest.approx(_perplexity_by_hand(model, held_out), rel=1e-6)
    by_hand = _perplexity_by_hand(model, held_out, _sun_hook([3, 7], [0.0] * 2, [0.0] * 2))
    assert zero == pytest.approx(by_hand, rel=1e-6)
    by_hand = _perplexity_by_hand(model, held_out, _sun_hook([3, 7], first.tolist(), top.tolist()))
    assert mean == pytest.approx(by_hand, rel=1e-6)
    # The project's scheme sets only the entries above the cut-off: not dimension 3 at the
    # first token nor dimension 7 at token 5, which Sun et al.'s scheme sets too.
    threshold = nk.massive_intervention(model, found, held_out, mean_tokens=tokens)
    assert threshold["scheme"].tolist() == ["threshold"] * 3
    assert threshold["value_top"].tolist() == [[]] * 3

    floor = max(100.0, 1000.0 * found.median["median"].iloc[0])

    def zero_above_cutoff(value, hook):
        picked = value[..., [3, 7]]
        value[..., [3, 7]] = torch.where(picked.abs() > floor, 0.0, picked)
        return value

    by_hand = _perplexity_by_hand(model, held_out, zero_above_cutoff)
    assert threshold["perplexity"].iloc[1] == pytest.approx(by_hand, rel=1e-6)
    assert threshold["perplexity"].iloc[1] != pytest.approx(zero, rel=1e-4)


def test_the_positions_scheme_needs_a_mean_for_the_top_position(planted_two) -> None:
    model, tokens, found = planted_two
    without = tokens[1::2]  # rows whose top-1 is at the first token
    table = nk.massive_intervention(model, found, without, mean_tokens=without, scheme="positions")
    assert table["value_top"].iloc[2] == []
    with pytest.raises(nk.NeuronKindsError, match="no mean to set it to"):
        nk.massive_intervention(model, found, tokens, mean_tokens=without, scheme="positions")
    with pytest.raises(nk.NeuronKindsError, match="scheme must be one of 'threshold', 'posit"):
        nk.massive_intervention(model, found, tokens, scheme="sun")


def test_attention_share_equals_brute_force_over_the_cache(planted) -> None:
    model, tokens, found = planted
    share = nk.massive_attention(model, found, tokens, batch_size=4)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert share[["layer", "head"]].values.tolist() == [
        [lay, h] for lay in range(n_layers) for h in range(n_heads)
    ]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    mask = (cache["blocks.0.hook_resid_post"][..., 7].abs() > found.magnitude).double()
    assert mask.sum() == tokens.shape[0] and bool(mask[:, 0].all())  # position 0, each row
    for layer in range(n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # [batch head q k]
        expect = (pattern * mask[:, None, None, :]).sum(-1).mean((0, 2))
        got = share.loc[share["layer"] == layer, "share"].to_numpy()
        np.testing.assert_allclose(got, expect.numpy(), rtol=1e-9)
    assert (share["massive_positions"] == tokens.shape[0]).all()


def test_effects_need_a_massive_activation() -> None:
    model, tokens = tiny_model(), random_tokens(1)
    found = nk.massive_activations(model, tokens)
    assert not found.top["massive"].any()
    for effect in (nk.massive_intervention, nk.massive_attention):
        with pytest.raises(nk.NeuronKindsError, match="no massive activations were found"):
            effect(model, found, tokens)


@pytest.mark.slow
def test_the_report_and_the_page_show_massive_activations(planted, tmp_path) -> None:
    model, tokens, found = planted
    found = found.with_effects(
        nk.massive_intervention(model, found, tokens), nk.massive_attention(model, found, tokens)
    )
    profile = nk.record(model, tokens, progress=False)
    path = nk.report(profile, model, tmp_path / "report.html", tokens, massive=found)
    text = path.read_text()
    for part in ('id="massive"', 'aria-label="massive-magnitudes"', "massive-attention", "§3"):
        assert part in text, part
    assert text.index('id="massive"') < text.index('id="neurons"')  # after the paper's figures
    assert "as Sun et al.'s Figure 2" in text
    assert "averaged over the 6 sequences" in text
    from tl_neuronkinds.present.massive_page import magnitude_series

    series = magnitude_series(found)
    assert list(series) == [f"top-{r}" for r in range(1, 7)] + ["median"]
    assert series["top-1"].tolist() == found.by_sequence["top_1"].tolist()
    assert series["median"].tolist() == found.by_sequence["median"].tolist()
    from tl_neuronkinds.present.massive_page import massive_page

    page = massive_page(found, tmp_path / "massive.html", "planted").read_text()
    assert 'aria-label="massive-magnitudes"' in page and "data-nk-bundle" not in page


@pytest.mark.slow
def test_massive_command_writes_tables_and_page(tmp_path, capsys) -> None:
    from tl_neuronkinds import cli

    out = tmp_path / "massive"
    args = ["massive", "--tokens", "2048", "--seq-len", "64", "--out", str(out)]
    assert cli.main([*args, "--magnitude", "50", "--ratio", "10", "--scheme", "positions"]) == 0
    printed = capsys.readouterr().out
    assert "intervention" in printed and "top_1 / median" in printed
    for name in ("top", "median", "by_sequence", "dims", "tokens", "intervention", "attention"):
        assert (out / f"massive_{name}.parquet").exists() and (out / f"massive_{name}.csv").exists()
    assert list(pd.read_parquet(out / "massive_top.parquet").columns) == TOP_COLUMNS
    assert (out / "massive.html").exists()
    assert (
        pd.read_parquet(out / "massive_intervention.parquet")["scheme"].tolist()
        == ["positions"] * 3
    )
    by_sequence = pd.read_parquet(out / "massive_by_sequence.parquet")
    assert list(by_sequence.columns) == ["layer", "n_seq", "top_1", "top_2", "top_3", "median"]
    assert (by_sequence["n_seq"] == 32).all()
    # At the paper's thresholds the embedded model has none: said, and no effect tables.
    quiet = tmp_path / "quiet"
    assert cli.main(["massive", "--tokens", "2048", "--out", str(quiet), "--no-page"]) == 0
    printed = capsys.readouterr().out
    assert "no massive activations" in printed
    assert "massive activations: none: the largest magnitude is" in printed
    assert (
        not (quiet / "massive_intervention.csv").exists() and not (quiet / "massive.html").exists()
    )
    assert cli.main([*args, "--ratio", "-1"]) == 2
    assert "--ratio: expected a positive number" in capsys.readouterr().err
