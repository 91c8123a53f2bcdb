"""Universal neurons: streamed float64 correlations against numpy's corrcoef over the stacked
activations, however tiled and batched; the rotated baseline against an explicit rotation; a
model whose neurons are a permutation of another's matched exactly; bad input refused."""

import warnings
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from opt_fixtures import make_tiny_opt
from recording_reference import BOS, D_VOCAB, random_tokens, tiny_model
from tl_models import tl_model

import tl_neuronkinds as nk
from tl_neuronkinds.universal import passes
from tl_neuronkinds.universal.correlations import COLUMNS
from tl_neuronkinds.universal.rotations import Rotations, orthogonal


def permuted(model: Any, seed: int) -> tuple[Any, list[torch.Tensor]]:
    """A copy of ``model`` whose neurons of each layer are permuted (W_in columns, b_in,
    W_out rows): the same function, another basis order. Returns it and the permutations."""
    copy = tiny_model(0)
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    perms = []
    with torch.no_grad():
        for block in copy.blocks:
            perm = torch.randperm(block.mlp.W_in.shape[1], generator=generator)
            block.mlp.W_in.copy_(block.mlp.W_in[:, perm])
            block.mlp.b_in.copy_(block.mlp.b_in[perm])
            block.mlp.W_out.copy_(block.mlp.W_out[perm])
            perms.append(perm)
    return copy, perms


def stacked(model: Any, tokens: torch.Tensor, layers: list[int]) -> np.ndarray:
    """``[text positions, neurons]`` float64 activations of ``layers``, concatenated."""
    _, cache = model.run_with_cache(tokens)
    text = tokens != BOS
    return np.concatenate(
        [cache[f"blocks.{layer}.mlp.hook_post"][text].double().numpy() for layer in layers], 1
    )


def rotated(acts: np.ndarray, n_layers: int, d_mlp: int, seed: int) -> np.ndarray:
    """Each layer's block of columns times the rotation the baseline draws for it."""
    generator = torch.Generator().manual_seed(seed)
    rotations = [orthogonal(d_mlp, generator).numpy() for _ in range(n_layers)]
    return np.concatenate(
        [acts[:, i * d_mlp : (i + 1) * d_mlp] @ r for i, r in enumerate(rotations)], 1
    )


def brute_table(a: np.ndarray, b: np.ndarray, b_rot: np.ndarray) -> tuple[np.ndarray, ...]:
    """max_corr, argmax and baseline max_corr from full corrcoef matrices (NaN rows left NaN)."""
    n = a.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(a.T, b.T)[:n, n:]
        base = np.corrcoef(a.T, b_rot.T)[:n, n:]
    ranked = np.where(np.isnan(corr), -np.inf, corr)
    best = np.where(np.isinf(ranked.max(1)), np.nan, ranked.max(1))
    base_best = np.where(np.isnan(base), -np.inf, base).max(1)
    return best, ranked.argmax(1), np.where(np.isinf(base_best), np.nan, base_best)


@pytest.fixture(scope="module")
def models():
    a = tiny_model(0)
    with torch.no_grad():
        a.blocks[1].mlp.b_in[5] = -1e4  # a dead neuron: constant, its correlations undefined
    b = tiny_model(7)
    return a, b


@pytest.mark.slow
@pytest.mark.parametrize(
    ("memory", "batch_size"), [(None, None), (32 * 72 * 5, 1), (32 * 72 * 24, 4)]
)
def test_correlations_and_baseline_equal_corrcoef_however_tiled(models, memory, batch_size) -> None:
    a, b = models
    tokens = random_tokens(3, n_seq=12, seq_len=24, vocab=D_VOCAB)
    options = {} if memory is None else {"memory": memory}
    table = nk.neuron_correlations(
        a, b, tokens, k=4, batch_size=batch_size, seed=11, bos_token_id=BOS, **options
    )
    assert list(table.columns) == COLUMNS and len(table) == 3 * 24
    acts_a, acts_b = stacked(a, tokens, [0, 1, 2]), stacked(b, tokens, [0, 1, 2])
    best, where, base = brute_table(acts_a, acts_b, rotated(acts_b, 3, 24, seed=11))
    np.testing.assert_allclose(table["max_corr"], best, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["baseline_max_corr"], base, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["excess"], best - base, rtol=0, atol=1e-12)
    alive = ~np.isnan(best)
    assert (~alive).sum() == 1 and table.loc[~alive, ["layer", "neuron"]].values.tolist() == [
        [1, 5]
    ]
    assert table["match_layer"].isna().tolist() == (~alive).tolist()
    flat = table["match_layer"][alive].astype(int) * 24 + table["match_neuron"][alive].astype(int)
    assert flat.tolist() == where[alive].tolist()
    assert [len(t) for t in table["top_corr"]] == [4 if ok else 0 for ok in alive]
    assert all(np.all(np.diff(t) <= 0) for t in table["top_corr"])
    assert not table.loc[~alive, "universal"].any()
    # Gurnee et al.'s summary of each row: its mean and standard deviation over B.
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(acts_a.T, acts_b.T)[: 3 * 24, 3 * 24 :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the dead neuron's row: all NaN
        np.testing.assert_allclose(table["corr_mean"], np.nanmean(full, 1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(table["corr_std"], np.nanstd(full, 1), rtol=0, atol=1e-12)


def run_chunks(positions: int, tile: int) -> list[slice]:
    """``CorrelationPasses.chunks`` where B has 72 neurons (tiny_model's 3 layers of 24)."""
    side = passes.NeuronColumns(tiny_model(0), [0, 1, 2])
    run = passes.CorrelationPasses(side, side, torch.zeros(1, 1), BOS, 1, torch.device("cpu"), None)
    return run.chunks(positions, tile)


@pytest.mark.slow
def test_kept_activations_and_position_chunks_change_nothing(models, monkeypatch) -> None:
    """Passes after the first read the activations the first kept (each model's forwards run
    once, not once per tile; where only some batches fit, the others run in every pass) and
    give the very same table; chunks of a few positions give the same correlations up to the
    order of the float64 sums."""
    a, b = models
    tokens = random_tokens(8, n_seq=6, seq_len=24, vocab=D_VOCAB)
    forwards = Counter()
    activations = passes.NeuronColumns.activations

    def counted(side, rows, text, upto=None):
        forwards[id(side.model)] += 1
        return activations(side, rows, text, upto)

    monkeypatch.setattr(passes.NeuronColumns, "activations", counted)
    options = {"k": 3, "seed": 5, "bos_token_id": BOS, "batch_size": 2, "memory": 24 * 72 * 9}
    kept = nk.neuron_correlations(a, b, tokens, **options)  # 8 tiles of 9 neurons
    assert forwards == {id(a): 3, id(b): 3}  # 3 batches, one pass's forwards
    forwards.clear()
    rerun = nk.neuron_correlations(a, b, tokens, cache=0, **options)
    assert forwards == {id(a): 3 * 8, id(b): 3 * 8}
    pd.testing.assert_frame_equal(kept, rerun)
    forwards.clear()
    first_batch = int((tokens[:2] != BOS).sum()) * (72 + 72) * 4  # float32, both models
    partly = nk.neuron_correlations(a, b, tokens, cache=first_batch, **options)
    assert forwards == {id(a): 3 + 2 * 7, id(b): 3 + 2 * 7}  # batches 2 and 3 in every pass
    pd.testing.assert_frame_equal(partly, kept)
    monkeypatch.setattr(passes, "CHUNK_BYTES", 8 * (9 + 2 * 72) * 5)  # <= 5 positions
    sizes = [c.stop - c.start for c in run_chunks(46, 9)]
    assert len(sizes) == 10 and sum(sizes) == 46 and set(sizes) == {4, 5}  # no small remainder
    chunked = nk.neuron_correlations(a, b, tokens, **options)
    numeric = ["max_corr", "baseline_max_corr", "excess"]
    pd.testing.assert_frame_equal(chunked[numeric], kept[numeric], rtol=0, atol=1e-12)
    with pytest.raises(nk.NeuronKindsError, match="cache must be an integer >= 0"):
        nk.neuron_correlations(a, b, tokens, cache=-1, bos_token_id=BOS)


def test_the_full_matrix_equals_corrcoef_and_refuses_what_does_not_fit(models) -> None:
    a, b = models
    tokens = random_tokens(4, n_seq=6, seq_len=24, vocab=D_VOCAB)
    matrix = nk.correlation_matrix(a, b, tokens, layers_a=[2, 0], layers_b=[1], bos_token_id=BOS)
    acts_a, acts_b = stacked(a, tokens, [0, 2]), stacked(b, tokens, [1])
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.corrcoef(acts_a.T, acts_b.T)[:48, 48:]
    np.testing.assert_allclose(matrix.to_numpy(), expected, rtol=0, atol=1e-12)
    assert matrix.index[24:26].tolist() == [(2, 0), (2, 1)]
    assert matrix.columns.names == ["layer_b", "neuron_b"]
    with pytest.raises(nk.NeuronKindsError, match="needs 4,608 bytes"):
        nk.correlation_matrix(
            a, b, tokens, layers_a=[0], layers_b=[1], memory=1000, bos_token_id=BOS
        )


def test_a_permuted_copy_matches_every_neuron_at_its_permutation(models) -> None:
    """Gurnee et al.'s premise, planted: B computes what A does in another neuron order, so
    each neuron's best match is its image (correlation 1.0) and the rotation's baseline is far
    lower; every alive neuron is universal."""
    a = tiny_model(0)
    b, perms = permuted(a, seed=3)
    tokens = random_tokens(5, n_seq=16, seq_len=24, vocab=D_VOCAB)
    table = nk.neuron_correlations(a, b, tokens, bos_token_id=BOS)
    np.testing.assert_allclose(table["max_corr"], 1.0, rtol=0, atol=1e-9)
    assert (table["match_layer"] == table["layer"]).all()
    images = [int(perms[row.layer].tolist().index(row.neuron)) for row in table.itertuples()]
    assert table["match_neuron"].tolist() == images
    assert table["baseline_max_corr"].max() < 0.95 and table["excess"].mean() > 0.3
    again = nk.neuron_correlations(a, b, tokens, bos_token_id=BOS)
    pd.testing.assert_frame_equal(again, table)  # deterministic for a seed
    other = nk.neuron_correlations(a, b, tokens, bos_token_id=BOS, seed=1)
    assert not np.allclose(other["baseline_max_corr"], table["baseline_max_corr"])


def test_rotations_are_exactly_orthogonal() -> None:
    r = orthogonal(300, torch.Generator().manual_seed(0))
    np.testing.assert_allclose((r.T @ r).numpy(), np.eye(300), rtol=0, atol=1e-13)


def test_rotations_from_a_file_are_the_ones_held_in_memory() -> None:
    held = Rotations(3, 40, seed=5, device=torch.device("cpu"), room=3 * 40 * 40 * 8)
    filed = Rotations(3, 40, seed=5, device=torch.device("cpu"), room=3 * 40 * 40 * 8 - 1)
    assert not held.on_disk and filed.on_disk and len(filed) == 3
    for _ in range(2):  # each use reads the file again, from its start
        pairs = [(h, f.clone()) for h, f in zip(held, filed, strict=True)]
        assert all(torch.equal(h, f) for h, f in pairs)


def test_rotations_on_a_full_disk_are_one_error_naming_the_folder(monkeypatch) -> None:
    import errno
    import tempfile

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: Full())
    with pytest.raises(nk.NeuronKindsError, match=r"no space left.*TMPDIR") as err:
        Rotations(3, 40, seed=5, device=torch.device("cpu"), room=0)
    assert tempfile.gettempdir() in str(err.value)


def test_a_run_whose_rotations_outgrow_memory_reads_them_from_a_file(models, monkeypatch) -> None:
    """Rotations of 3 x 24^2 float64 (13,824 bytes) against memory of 11,520: on disk, and the
    table is the very one with the same tiles and the rotations held in memory."""
    a, b = models
    tokens = random_tokens(4, n_seq=6, seq_len=24, vocab=D_VOCAB)
    made = []

    class Spy(Rotations):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    class Held(Rotations):
        def __init__(self, count, d, seed, device, room) -> None:
            super().__init__(count, d, seed, device, room=1 << 40)

    options = {"memory": 32 * 72 * 5, "bos_token_id": BOS, "seed": 3}
    monkeypatch.setattr(passes, "Rotations", Spy)
    filed = nk.neuron_correlations(a, b, tokens, **options)
    assert [r.on_disk for r in made] == [True]
    monkeypatch.setattr(passes, "Rotations", Held)
    pd.testing.assert_frame_equal(filed, nk.neuron_correlations(a, b, tokens, **options))


def test_more_models_average_the_excess(models, monkeypatch) -> None:
    a, b = models
    c, _ = permuted(a, seed=4)
    tokens = random_tokens(6, n_seq=8, seq_len=24, vocab=D_VOCAB)
    drawn = []

    class Counted(Rotations):
        def __init__(self, *args: Any) -> None:
            drawn.append(args)
            super().__init__(*args)

    monkeypatch.setattr(passes, "Rotations", Counted)
    mean = nk.universal_neurons([a, b, c], tokens, bos_token_id=BOS, seed=2)
    assert len(drawn) == 1  # b and c have one shape: their rotations are drawn once
    monkeypatch.undo()
    with_b = nk.neuron_correlations(a, b, tokens, bos_token_id=BOS, seed=2)
    with_c = nk.neuron_correlations(a, c, tokens, bos_token_id=BOS, seed=2)
    np.testing.assert_allclose(mean["excess"], (with_b["excess"] + with_c["excess"]) / 2)
    assert mean["universal"].tolist() == (mean["excess"] > 0.5).tolist()
    assert [list(x) for x in mean["excess_by_model"]][3] == [
        with_b["excess"][3],
        with_c["excess"][3],
    ]


@pytest.mark.slow
def test_streamed_models_give_the_same_table(tmp_path) -> None:
    path_a = make_tiny_opt(tmp_path / "a", n_layers=3, vocab=61, seed=0)
    path_b = make_tiny_opt(tmp_path / "b", n_layers=3, vocab=61, seed=1)
    tokens = random_tokens(2, n_seq=4, seq_len=12, vocab=61)
    resident = nk.neuron_correlations(
        nk.load_opt(path_a, device="cpu"), nk.load_opt(path_b, device="cpu"), tokens, k=2
    )
    streamed = nk.neuron_correlations(
        nk.load_opt(path_a, device="cpu", offload="disk"),
        nk.load_opt(path_b, device="cpu", offload="cpu"),
        tokens,
        k=2,
        layers_a=[0, 1, 2],
    )
    pd.testing.assert_frame_equal(streamed, resident)


def other_vocab() -> Any:
    return tl_model(
        n_layers=1, d_model=16, d_mlp=24, d_head=4, n_heads=4, n_ctx=24, d_vocab=D_VOCAB + 1,
        act_fn="relu", normalization_type="LN",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a, b, t: (a, other_vocab(), t, {}), "different vocabularies"),
        (lambda a, b, t: (a, b, t[:, 1:], {}), "must start with BOS"),
        (lambda a, b, t: (a, b, t, {"k": 0}), "k must be an integer >= 1"),
        (lambda a, b, t: (a, b, t, {"layers_b": [3]}), "layers must be a non-empty subset"),
        (lambda a, b, t: (a, b, t, {"batch_size": 0}), "batch_size must be an integer >= 1"),
        (lambda a, b, t: (a, b, t, {"memory": 100}), "holds no tile"),
        (lambda a, b, t: (a, b, t[:, :1], {}), "no text position"),
    ],
)
def test_bad_input_is_refused(models, change, match) -> None:
    a, b = models
    model_a, model_b, tokens, options = change(a, b, random_tokens(1, n_seq=2, seq_len=8))
    with pytest.raises(nk.NeuronKindsError, match=match):
        nk.neuron_correlations(model_a, model_b, tokens, bos_token_id=BOS, **options)


def test_different_tokenizers_are_refused(tmp_path) -> None:
    path = make_tiny_opt(tmp_path / "a", n_layers=1, vocab=61)
    a, b = nk.load_opt(path, device="cpu"), nk.load_opt(path, device="cpu")
    b.tokenizer.add_tokens(["<a new token>"])
    with pytest.raises(nk.NeuronKindsError, match="different tokenizers"):
        nk.neuron_correlations(a, b, random_tokens(1, n_seq=2, seq_len=8, vocab=61))
    with pytest.raises(nk.NeuronKindsError, match="at least two models"):
        nk.universal_neurons([a], random_tokens(1, n_seq=2, seq_len=8, vocab=61))
