"""Top-k activations and histograms kept while recording: exact against a brute-force reference,
the same however the tokens are batched, chunked, split, merged or resumed, and right on a
hand-built model whose activations are known (ties included)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from planted import BOS as PLANTED_BOS
from planted import VOCAB, planted_model, planted_tokens
from profile_checks import assert_same
from recording_reference import BOS, random_tokens, tiny_model

import tl_neuronkinds as nk
from tl_neuronkinds.recording import accumulate
from tl_neuronkinds.recording import contexts as contexts_module
from tl_neuronkinds.recording import settings as recording_settings
from tl_neuronkinds.recording import top_k as top_k_module
from tl_neuronkinds.recording.accumulate import ProfileBuilder
from tl_neuronkinds.recording.contexts import contexts_of, max_activating_contexts
from tl_neuronkinds.recording.queries import activation_histogram, top_activations
from tl_neuronkinds.recording.settings import MODEL_FREE_SETTINGS
from tl_neuronkinds.recording.top_k import HIST_BINS, HIST_EDGES

pytestmark = pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning")


def reference_top(acts: np.ndarray, k: int, threshold: float = 0.0) -> list[list[tuple]]:
    """Per neuron, its k largest active values as (value, seq, pos), ties by (seq, pos)."""
    n_seq, seq_len, d_mlp = acts.shape
    out = []
    for i in range(d_mlp):
        entries = [
            (float(acts[s, p, i]), s, p)
            for s in range(n_seq)
            for p in range(seq_len)
            if acts[s, p, i] > threshold
        ]
        entries.sort(key=lambda e: (-e[0], e[1], e[2]))
        out.append(entries[:k])
    return out


def reference_hist(acts: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Per neuron, active values counted in the fixed bins (numpy's own search)."""
    edges = HIST_EDGES.float().numpy()
    d_mlp = acts.shape[-1]
    hist = np.zeros((d_mlp, HIST_BINS), dtype=np.int64)
    for i in range(d_mlp):
        values = acts[..., i][acts[..., i] > threshold].astype(np.float32)
        np.add.at(hist[i], np.searchsorted(edges, values, side="right"), 1)
    return hist


def reference_window(
    tokens: np.ndarray, acts: np.ndarray, seq: int, pos: int, window: tuple[int, int]
) -> tuple[list[int], list[float]]:
    """The tokens and activations of one neuron (acts: [n_seq, seq_len]) around (seq, pos),
    -1 / NaN outside the row."""
    ids, values = [], []
    for p in range(pos - window[0], pos + window[1] + 1):
        inside = 0 <= p < tokens.shape[1]
        ids.append(int(tokens[seq, p]) if inside else -1)
        values.append(float(acts[seq, p]) if inside else float("nan"))
    return ids, values


def assert_matches(
    profile: nk.NeuronProfile, acts: dict[int, np.ndarray], k: int, tokens=None
) -> None:
    """Top-k tables, windows (where the profile kept them) and histograms against plain loops."""
    for layer, layer_acts in acts.items():
        if profile.window is not None:
            counts = profile.counts[layer]
            for i, entries in enumerate(reference_top(layer_acts, k, profile.threshold)):
                for rank, (_, seq, pos) in enumerate(entries):
                    ids, values = reference_window(
                        np.asarray(tokens), layer_acts[..., i], seq, pos, profile.window
                    )
                    assert counts.top_window_ids[i, rank].tolist() == ids, (layer, i, rank)
                    np.testing.assert_allclose(counts.top_window_acts[i, rank], values, rtol=1e-6)
                assert (counts.top_window_ids[i, len(entries) :] == -1).all()
        expected = reference_top(layer_acts, k, profile.threshold)
        table = top_activations(profile, layer)
        for i, entries in enumerate(expected):
            got = table[table["neuron"] == i].sort_values("rank")
            assert [(s, p) for _, s, p in entries] == list(
                zip(got["seq"], got["pos"], strict=True)
            ), (layer, i)
            np.testing.assert_allclose(got["value"], [v for v, _, _ in entries], rtol=1e-6)
        hist = profile.counts[layer].hist
        assert hist is not None
        np.testing.assert_array_equal(hist.numpy(), reference_hist(layer_acts, profile.threshold))
        assert torch.equal(hist.sum(1), profile.counts[layer].active)


@st.composite
def activations(draw):
    """Random tokens and activations drawn from few distinct values, so ties are common."""
    seed = draw(st.integers(0, 2**16))
    n_seq, seq_len, d_mlp = (
        draw(st.integers(1, 6)),
        draw(st.integers(2, 9)),
        draw(st.integers(1, 5)),
    )
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 9, size=(n_seq, seq_len))
    tokens[:, 0] = BOS
    levels = np.array([-1.0, 0.0, 0.001, 0.5, 0.5, 1.0, 2.0, 300.0], dtype=np.float32)
    acts = {layer: levels[rng.integers(0, 8, size=(n_seq, seq_len, d_mlp))] for layer in (0, 2)}
    k = draw(st.integers(1, 6))
    window = draw(st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3)))
    return torch.tensor(tokens), acts, k, draw(st.integers(1, n_seq)), window


@pytest.mark.slow
@given(activations())
@settings(max_examples=60, deadline=None)
def test_top_k_and_histogram_equal_brute_force_however_batched(case) -> None:
    tokens, acts, k, batch, window = case
    whole = nk.profile_from_activations(
        tokens,
        {layer: torch.tensor(a) for layer, a in acts.items()},
        d_vocab=9,
        top_k=k,
        histogram=True,
        window=window,
    )
    assert whole.window == window
    assert_matches(whole, acts, k, tokens)
    kept = replace(MODEL_FREE_SETTINGS, top_k=k, histogram=True, window=window)
    builder = ProfileBuilder([0, 2], d_mlp=acts[0].shape[-1], d_vocab=9, settings=kept)
    for first in range(0, tokens.shape[0], batch):
        part = slice(first, first + batch)
        builder.add_batch(tokens[part], {layer: torch.tensor(a[part]) for layer, a in acts.items()})
    assert_same(builder.profile(), whole)


@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_small_chunks_and_blocks_give_the_same_tables(monkeypatch, top_k) -> None:
    """Many chunks and top-k updates per batch: the running floor must never let a later tie
    win. k = 1 and 5 take the within-block top-k filter (many entrants), k = 40 does not."""
    rng = np.random.default_rng(5)
    tokens = torch.tensor(rng.integers(3, 9, size=(7, 11)))
    tokens[:, 0] = BOS
    acts = {0: rng.choice(np.float32([0.0, 0.25, 0.5, 4.0]), size=(7, 11, 6))}
    monkeypatch.setitem(accumulate._CHUNK_ELEMENTS, "cpu", 6 * 3)  # three rows per chunk
    monkeypatch.setattr(top_k_module, "TOP_BLOCK_ELEMENTS", 6 * 11)  # one sequence per update
    chunked = nk.profile_from_activations(
        tokens, {0: torch.tensor(acts[0])}, d_vocab=9, top_k=top_k, histogram=True, window=(4, 5)
    )
    assert_matches(chunked, acts, top_k, tokens)  # windows reach across chunks and blocks


def test_public_merge_shifts_rows_as_one_recording_over_the_concatenation() -> None:
    rng = np.random.default_rng(7)
    tokens = torch.tensor(rng.integers(3, 9, size=(9, 6)))
    tokens[:, 0] = BOS
    acts = torch.tensor(rng.choice(np.float32([0.0, 1.0, 2.0]), size=(9, 6, 4)))
    kept = {"d_vocab": 9, "top_k": 3, "histogram": True, "window": (1, 2)}
    parts = [
        nk.profile_from_activations(tokens[s], {0: acts[s]}, **kept)
        for s in (slice(0, 2), slice(2, 7), slice(7, 9))
    ]
    whole = nk.profile_from_activations(tokens, {0: acts}, **kept)
    assert_same(nk.NeuronProfile.merge(parts), whole)
    fewer = nk.profile_from_activations(tokens[:2], {0: acts[:2]}, d_vocab=9, top_k=2)
    merged = nk.NeuronProfile.merge([fewer, parts[1]])
    assert merged.top_k == 2 and merged.counts[0].hist is None  # smallest k; a part lacks hist
    assert merged.window is None and merged.counts[0].top_window_acts is None  # a part lacks them
    other = nk.profile_from_activations(tokens[:2], {0: acts[:2]}, **{**kept, "window": (2, 2)})
    merged = nk.NeuronProfile.merge([other, parts[1]])
    assert merged.window is None and merged.counts[0].top_values is not None  # windows differ


def test_strided_rows_merge_with_same_tokens() -> None:
    """Rows r::world of one tensor (as nk.record's ranks) keep their global indices."""
    rng = np.random.default_rng(8)
    tokens = torch.tensor(rng.integers(3, 9, size=(8, 5)))
    tokens[:, 0] = BOS
    acts = torch.tensor(rng.choice(np.float32([0.0, 1.0, 3.0]), size=(8, 5, 3)))
    ranks = []
    for rank in range(3):
        builder = ProfileBuilder(
            [0],
            d_mlp=3,
            d_vocab=9,
            settings=replace(MODEL_FREE_SETTINGS, top_k=4, histogram=True, window=(2, 1)),
            first_row=rank,
            row_stride=3,
        )
        builder.add_batch(tokens[rank::3], {0: acts[rank::3]})
        ranks.append(builder.profile())
    whole = nk.profile_from_activations(
        tokens, {0: acts}, d_vocab=9, top_k=4, histogram=True, window=(2, 1)
    )
    assert_same(nk.NeuronProfile.merge(ranks, same_tokens=True), whole)


@pytest.mark.slow
def test_record_keeps_the_model_top_activations(tmp_path) -> None:
    model, tokens = tiny_model(), random_tokens(11, n_seq=14)
    profile = nk.record(
        model, tokens, bos_token_id=BOS, progress=False, batch_size=4, top_k=5, histogram=True
    )
    _, cache = model.run_with_cache(tokens)
    acts = {layer: cache[f"blocks.{layer}.mlp.hook_post"].numpy() for layer in profile.layers}
    assert profile.window == (12, 4)  # the default
    assert_matches(profile, acts, 5, tokens)
    profile.save(tmp_path / "p")
    assert_same(nk.NeuronProfile.load(tmp_path / "p"), profile)


@pytest.mark.slow
def test_contexts_of_many_neurons_match_full_rows(monkeypatch) -> None:
    """One pass for several neurons of several layers (rows cut at the furthest context, in
    small batches) gives each the contexts a full forward of every row gives."""
    monkeypatch.setattr(contexts_module, "CONTEXT_BATCH", 3)
    model, tokens = tiny_model(), random_tokens(13, n_seq=11, seq_len=16)
    profile = nk.record(model, tokens, bos_token_id=BOS, progress=False, top_k=4)
    _, cache = model.run_with_cache(tokens)
    wanted = [(0, 1), (2, 5), (0, 7), (1, 3), (2, 0)]
    profile.window = None  # contexts from the forward, not from the windows
    got = contexts_of(model, profile, tokens, wanted, k=3, before=3, after=2)
    assert sorted(got) == sorted(wanted)
    for layer, neuron in wanted:
        acts = cache[f"blocks.{layer}.mlp.hook_post"][..., neuron].numpy()
        expected = reference_top(acts[..., None], 3, profile.threshold)[0]
        contexts = got[(layer, neuron)]
        assert [(r.seq, r.pos) for r in contexts.itertuples()] == [(s, q) for _, s, q in expected]
        for row in contexts.itertuples():
            lo, hi = max(0, row.pos - 3), min(16, row.pos + 3)
            assert row.token_ids == tokens[row.seq, lo:hi].tolist()
            np.testing.assert_allclose(row.activations, acts[row.seq, lo:hi], rtol=1e-5, atol=1e-6)
            assert row.center == row.pos - lo
        single = max_activating_contexts(model, profile, tokens, layer, neuron, 3, 3, 2)
        assert single.drop(columns="activations").equals(contexts.drop(columns="activations"))


@pytest.mark.slow
def test_contexts_from_windows_equal_contexts_from_a_forward() -> None:
    """A profile's windows give the contexts a forward over the rows gives, without tokens;
    wider contexts than kept fall back to the forward (and need the tokens)."""
    model, tokens = tiny_model(), random_tokens(14, n_seq=10, seq_len=16)
    windowed = nk.record(model, tokens, bos_token_id=BOS, progress=False, top_k=4, window=(5, 3))
    bare = nk.record(model, tokens, bos_token_id=BOS, progress=False, top_k=4, window=None)
    assert bare.window is None and bare.counts[0].top_window_acts is None
    wanted = [(0, 2), (1, 7), (2, 11)]
    for before, after in ((5, 3), (2, 0), (0, 3)):
        fast = contexts_of(None, windowed, None, wanted, before=before, after=after)
        slow = contexts_of(model, bare, tokens, wanted, before=before, after=after)
        for key in wanted:
            a, b = fast[key], slow[key]
            assert a.drop(columns="activations").equals(b.drop(columns="activations")), key
            for x, y in zip(a["activations"], b["activations"], strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(nk.NeuronKindsError, match="pass the tokens"):
        contexts_of(model, windowed, None, wanted, before=6)
    wider = contexts_of(model, windowed, tokens, wanted, before=6)
    assert (
        wider[(0, 2)]
        .drop(columns="activations")
        .equals(
            contexts_of(model, bare, tokens, wanted, before=6)[(0, 2)].drop(columns="activations")
        )
    )
    with pytest.raises(nk.NeuronKindsError, match="need a forward"):
        contexts_of(None, bare, tokens, wanted)
    with pytest.raises(nk.NeuronKindsError, match="not the tokens"):
        contexts_of(None, windowed, tokens.flip(0), wanted, before=5, after=3)


def test_bad_windows_are_refused() -> None:
    for bad in ((-1, 2), (200, 100)):
        with pytest.raises(nk.NeuronKindsError, match="window"):
            nk.record(tiny_model(), random_tokens(1), bos_token_id=BOS, progress=False, window=bad)
    for wrong in ((1,), (1.5, 2), (True, 1), "12,4"):  # what the type hint forbids, checked anyway
        with pytest.raises(nk.NeuronKindsError, match="window"):
            recording_settings.check_window(wrong)


def test_format_3_profiles_load_without_windows() -> None:
    """tests/data/profile_v3 was written before context windows (format 3)."""
    old = nk.NeuronProfile.load(Path(__file__).parent / "data/profile_v3")
    assert old.top_k == 3 and old.window is None and old.counts[0].hist is not None
    assert old.counts[0].top_window_acts is None and old.counts[1].top_values is not None
    with pytest.raises(nk.NeuronKindsError, match="no context windows"):
        contexts_of(None, old, None, [(0, 1)])


@pytest.mark.slow
def test_a_recorder_numbers_the_rows_of_its_forwards_in_order() -> None:
    model, tokens = tiny_model(), random_tokens(12, n_seq=9)
    recorder = nk.NeuronRecorder(model, top_k=3, histogram=True, bos_token_id=BOS)
    with recorder.recording():
        for first, end in ((0, 2), (2, 7), (7, 9)):
            model(tokens[first:end])
    whole = nk.record(
        model, tokens, bos_token_id=BOS, progress=False, ngram_cap=None, top_k=3, histogram=True
    )
    assert_same(recorder.profile(), whole, tails=False)


@pytest.fixture(scope="module")
def planted():
    model, tokens = planted_model(), planted_tokens(n_seq=64)
    profile = nk.record(model, tokens, bos_token_id=PLANTED_BOS, progress=False, top_k=6)
    profile.token_strings = list(VOCAB)
    return model, tokens, profile


def test_planted_detector_top_k_is_its_first_triggers(planted) -> None:
    """Layer 0 neuron 3 fires 0.5 on every " the" and nowhere else: its top 6 are the first six
    " the" in (sequence, position) order, each of value 0.5 (ties broken by position)."""
    model, tokens, profile = planted
    the = VOCAB.index(" the")
    first = (tokens == the).nonzero().tolist()[:6]
    top = top_activations(profile, 0, 3)
    assert [[s, p] for s, p in zip(top["seq"], top["pos"], strict=True)] == first
    np.testing.assert_allclose(top["value"], 0.5)
    contexts = max_activating_contexts(model, profile, tokens, 0, 3, before=2, after=1)
    for row in contexts.itertuples():
        assert row.tokens[row.center] == " the"
        assert row.activations[row.center] == pytest.approx(0.5)
        assert row.token_ids == tokens[row.seq, max(0, row.pos - 2) : row.pos + 2].tolist()


def test_planted_positional_neuron_tops_are_its_first_positions(planted) -> None:
    """Layer 0 neuron 6 fires 0.5 at positions 20..40 of every sequence."""
    _, _, profile = planted
    top = top_activations(profile, 0, 6)
    assert top["seq"].tolist() == [0] * 6 and top["pos"].tolist() == list(range(20, 26))
    assert top_activations(profile, 0, 0).empty  # dead


def test_contexts_refuse_other_tokens(planted) -> None:
    model, tokens, profile = planted
    with pytest.raises(nk.NeuronKindsError, match="not those the profile"):
        max_activating_contexts(model, profile, tokens[:-1], 0, 3)
    shuffled = tokens.flip(0)
    with pytest.raises(nk.NeuronKindsError, match="not the tokens"):
        max_activating_contexts(model, profile, shuffled, 0, 3)
    with pytest.raises(nk.NeuronKindsError, match="another model"):
        max_activating_contexts(tiny_model(), profile, tokens, 0, 3)


def test_profiles_without_examples_say_how_to_get_them(planted) -> None:
    _, _, profile = planted
    with pytest.raises(nk.NeuronKindsError, match="histogram=True"):
        activation_histogram(profile, 0, 3)
    old = nk.NeuronProfile.load(Path(__file__).parent / "data/profile_v2")
    assert old.top_k == 0 and old.ngram_cap == 5
    with pytest.raises(nk.NeuronKindsError, match="top_k > 0"):
        top_activations(old, 0)
    with pytest.raises(nk.NeuronKindsError, match="layer 5"):
        top_activations(profile, 5)
    with pytest.raises(nk.NeuronKindsError, match="out of range"):
        top_activations(profile, 0, 99)


def test_bad_top_k_is_refused() -> None:
    with pytest.raises(nk.NeuronKindsError, match="top_k"):
        nk.record(tiny_model(), random_tokens(1), bos_token_id=BOS, progress=False, top_k=-1)
    for bad in (1.5, True, "8"):  # what the signature's type hint forbids, checked anyway
        with pytest.raises(nk.NeuronKindsError, match="top_k"):
            recording_settings.check_top_k(bad)
