"""The kinds computed from a profile agree exactly with plain loops over raw activations.

The reference below shares no code with tl_neuronkinds.kinds: it walks every (sequence,
position, neuron) of the raw activations with Python loops, dict counters and Fractions.
"""

import math
import warnings
from collections import Counter
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import case_sizes, reproducible
from tl_models import tl_model

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds import (
    UndecidableWarning,
    classify,
    coverage_by_layer,
    dead_by_layer,
    dead_neurons,
    frequency_by_layer,
    layer_summary,
    new_triggers_by_layer,
    ngram_coverage,
    position_frequencies,
    position_teams,
    positional_by_layer,
    positional_neurons,
    token_detectors,
    triggers_by_layer,
)
from tl_neuronkinds.recording import record
from tl_neuronkinds.recording.accumulate import profile_from_activations
from tl_neuronkinds.recording.profile import NeuronProfile

# Every profile here is tiny: the warning that kinds rest on little data is expected.
pytestmark = pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning")

BOS = 2
TYPE_RANK = {"other": 0, "one_extreme": 1, "both_extremes": 2, "oscillatory": 3}
BUCKETS = [(1, 5), (6, 10), (11, 20), (21, 50), (51, 200), (201, 1000), (1001, 2000), (2001, 50000)]


# ----------------------------------------------------------------------------- the reference
def _k95(values: list[int], coverage: int) -> int | None:
    total = sum(values)
    if total == 0:
        return None
    running = 0
    for k, v in enumerate(sorted(values, reverse=True), start=1):
        running += v
        if 100 * running >= coverage * total:
            return k
    raise AssertionError("unreachable")


def _runs(flags: list[bool | None], min_run: int) -> list[tuple[int, int]]:
    """Maximal runs of True (None breaks a run) of length >= min_run, as 1-based (first, last)."""
    runs, start = [], None
    for p, flag in enumerate([*flags, False], start=1):
        if flag and start is None:
            start = p
        elif not flag and start is not None:
            if p - start >= min_run:
                runs.append((start, p - 1))
            start = None
    return runs


def _rank(fs: list[Fraction | None], delta: Fraction, min_run: int) -> tuple[int, list]:
    high = _runs([None if f is None else f >= 1 - delta for f in fs], min_run)
    low = _runs([None if f is None else f <= delta for f in fs], min_run)
    if len(high) >= 2 and len(low) >= 2:
        return 3, high
    if high and low:
        return 2, high
    if high or low:
        return 1, high
    return 0, high


def _smooth_r2(fs: list[float | None]) -> float:
    pairs = [
        (fs[j], (fs[j - 1] + fs[j + 1]) / 2)
        for j in range(1, len(fs) - 1)
        if fs[j - 1] is not None and fs[j] is not None and fs[j + 1] is not None
    ]
    if not pairs:
        return math.nan
    mean = sum(y for y, _ in pairs) / len(pairs)
    ss_tot = sum((y - mean) ** 2 for y, _ in pairs)
    if ss_tot == 0:
        return math.nan
    return 1 - sum((y - q) ** 2 for y, q in pairs) / ss_tot


def reference(
    tokens, acts, *, threshold, ngram_max, k_max, coverage, mi, min_run, delta, smooth, min_count=0
):
    """Every kind, per (layer, neuron), from raw activations with plain loops."""
    toks = tokens.tolist()
    n_seq, seq_len = len(toks), len(toks[0])
    delta = Fraction(delta).limit_denominator(1000)
    out = {}
    for layer, layer_acts in acts.items():
        a = layer_acts.tolist()
        d_mlp = len(a[0][0])
        for i in range(d_mlp):
            active = [[a[s][p][i] > threshold for p in range(seq_len)] for s in range(n_seq)]
            row = {"count": sum(map(sum, active))}
            text_count = sum(
                active[s][p] for s in range(n_seq) for p in range(seq_len) if toks[s][p] != BOS
            )
            row["dead"] = row["count"] == 0
            row["bos_only"] = row["count"] > 0 and text_count == 0
            for n in range(1, ngram_max + 1):
                c, o = Counter(), Counter()
                for s in range(n_seq):
                    for p in range(n - 1, seq_len):
                        if toks[s][p] != BOS:
                            g = tuple(toks[s][p - n + 1 : p + 1])
                            o[g] += 1
                            if active[s][p]:
                                c[g] += 1
                total = sum(c.values())
                k95 = _k95(list(c.values()), coverage)
                covered = [g for g in c if c[g] > 0 and 100 * c[g] >= coverage * o[g]]
                detector = (
                    k95 is not None
                    and total >= min_count
                    and k95 <= k_max
                    and 100 * sum(c[g] for g in covered) >= coverage * total
                )
                row[f"A_{n}"], row[f"k95_{n}"], row[f"det_{n}"] = total, k95, detector
                row[f"trig_{n}"] = sorted(covered, key=lambda g: (-c[g], g)) if detector else []
            fracs: list[Fraction | None] = []
            for p in range(1, seq_len):
                seqs = [s for s in range(n_seq) if toks[s][p] != BOS]
                on = sum(active[s][p] for s in seqs)
                fracs.append(Fraction(on, len(seqs)) if seqs else None)
            floats = [None if f is None else f.numerator / f.denominator for f in fracs]
            kept = [x for x in floats if x is not None]
            info = math.nan
            if kept:
                f, info = sum(kept) / len(kept), 0.0
                for x in kept:
                    info += x * math.log(x / f) if x > 0 else 0.0
                    info += (1 - x) * math.log((1 - x) / (1 - f)) if x < 1 else 0.0
                info /= len(kept)
            row["f_p"], row["mi"] = floats, info
            row["positional"] = bool(kept) and info > mi
            rank0, high0 = _rank(fracs, Fraction(0), min_run)
            rank_d, _ = _rank(fracs, delta, min_run)
            rank = max(rank0, rank_d)
            strong = rank0 >= rank_d if rank > 0 else _smooth_r2(floats) >= smooth
            row["type"] = [k for k, v in TYPE_RANK.items() if v == rank][0]
            row["strength"] = "strong" if strong else "weak"
            row["ranges"] = high0 if rank == 3 and strong and row["positional"] else []
            row["kind"] = (
                "dead" if row["dead"] else "token_detector" if row["det_1"]
                else "ngram_detector" if row.get("det_2") or row.get("det_3")
                else "positional" if row["positional"] else "other"
            )  # fmt: skip
            out[layer, i] = row
    return out


# ----------------------------------------------------------------------------- random inputs
def random_case(
    seed: int, n_seq: int, seq_len: int, d_vocab: int, d_mlp: int, n_layers: int, threshold: float
):
    """Tokens with BOS first and separators inside; sparse ReLU-like activations of mixed kinds."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, d_vocab, size=(n_seq, seq_len))
    tokens[:, 0] = BOS
    tokens[rng.random(tokens.shape) < 0.05] = BOS
    acts = {}
    for layer in range(n_layers):
        active = np.zeros((n_seq, seq_len, d_mlp), dtype=bool)
        for i in range(d_mlp):
            mode = rng.integers(0, 7)
            if mode == 1:  # token-driven, with optional noise
                chosen = rng.random(d_vocab) < 0.3
                noise = rng.choice([0.0, 0.02, 0.3])
                active[..., i] = chosen[tokens] ^ (rng.random(tokens.shape) < noise)
            elif mode == 2:  # positional blocks at 0, near 0, 1/2, near 1, 1
                block = rng.integers(1, 6)
                levels = rng.choice([0.0, 0.15, 0.5, 0.85, 1.0], size=seq_len // block + 1)
                probs = np.repeat(levels, block)[:seq_len]
                active[..., i] = rng.random(tokens.shape) < probs
            elif mode == 3:
                active[..., i] = rng.random(tokens.shape) < 0.2
            elif mode == 4:
                active[..., i] = tokens == BOS
            elif mode == 5:  # bigram-driven
                prev = np.concatenate([np.full((n_seq, 1), BOS), tokens[:, :-1]], axis=1)
                active[..., i] = (tokens == rng.integers(0, d_vocab)) & (
                    prev == rng.integers(0, d_vocab)
                )
            elif mode == 6:  # a smooth ramp over positions
                ramp = 0.3 + 0.4 * np.arange(seq_len) / seq_len
                active[..., i] = (np.arange(n_seq)[:, None] + 0.5) / n_seq < ramp
        # Inactive: exact zeros, negatives and the threshold itself; active: above it.
        inactive = rng.choice([0.0, -1.0, threshold], size=active.shape)
        values = threshold + rng.choice([0.5, 1.0, 2.0], size=active.shape)
        acts[layer] = torch.tensor(
            np.where(active, values, np.minimum(inactive, threshold)), dtype=torch.float32
        )
    return torch.tensor(tokens, dtype=torch.int64), acts


def check_against_reference(profile, ref, *, ngram_max, **cuts) -> None:
    """Every per-neuron result and per-layer table of the kinds equals the reference."""
    det_cuts = dict(k_max=cuts["k_max"], coverage=cuts["coverage"])
    pos_cuts = {k: cuts[k] for k in ("mi_threshold", "min_run", "delta", "smooth_r2")}
    table = classify(profile, **cuts)
    dead = dead_neurons(profile)
    positional = positional_neurons(profile, **pos_cuts)
    coverage = {
        n: ngram_coverage(profile, n, coverage=cuts["coverage"]) for n in range(1, ngram_max + 1)
    }
    detectors = {n: token_detectors(profile, n, **det_cuts) for n in range(1, ngram_max + 1)}
    freqs = {layer: position_frequencies(profile, layer) for layer in profile.layers}
    strings = profile.token_strings
    for idx, row in table.iterrows():
        r = ref[row["layer"], row["neuron"]]
        assert (row["count"], row["dead"], row["bos_only"]) == (
            r["count"],
            r["dead"],
            r["bos_only"],
        )
        assert (dead.loc[idx, "dead"], dead.loc[idx, "bos_only"]) == (r["dead"], r["bos_only"])
        for n in (1, 2, 3):
            k95 = row[f"k95_{n}"]
            if n > ngram_max:
                assert pd.isna(k95)
                continue
            assert (None if pd.isna(k95) else int(k95)) == r[f"k95_{n}"]
            assert coverage[n].loc[idx, "A"] == r[f"A_{n}"]
            assert detectors[n].loc[idx, "detector"] == r[f"det_{n}"]
            ids = detectors[n].loc[idx, "trigger_ids"]
            assert [tuple(g) if n > 1 else (g,) for g in ids] == r[f"trig_{n}"]
        assert row["token_detector"] == r["det_1"]
        assert row["ngram_detector_2"] == r.get("det_2", False)
        assert row["ngram_detector_3"] == r.get("det_3", False)
        assert row["evidence"] == r["A_1"]
        expect_n = next((n for n in range(1, ngram_max + 1) if r[f"det_{n}"]), None)
        assert (None if pd.isna(row["trigger_n"]) else row["trigger_n"]) == expect_n
        expect = [] if expect_n is None else r[f"trig_{expect_n}"]
        assert row["triggers"] == ["".join(strings[t] for t in g) for g in expect]
        for n in (2, 3):
            status = row[f"k95_{n}_status"]
            if n > ngram_max:
                assert pd.isna(status)
            else:
                assert status == ("undefined" if r[f"k95_{n}"] is None else "exact")
        curve = freqs[row["layer"]][row["neuron"]]
        assert curve.tolist() == [x for x in r["f_p"] if x is not None]
        assert curve.index.tolist() == [p for p, x in enumerate(r["f_p"], 1) if x is not None]
        assert row["pos_mi"] == pytest.approx(r["mi"], abs=1e-12, nan_ok=True)
        assert row["positional"] == r["positional"]
        if r["positional"]:
            assert (row["pos_type"], row["pos_strength"]) == (r["type"], r["strength"])
        else:
            assert pd.isna(row["pos_type"]) and pd.isna(row["pos_strength"])
        assert positional.loc[idx, "pos_ranges"] == r["ranges"]
        assert row["kind"] == r["kind"]
    _check_tables(profile, ref, ngram_max, cuts, pos_cuts)


def _check_tables(profile, ref, ngram_max, cuts, pos_cuts) -> None:
    table1a, table1b = dead_by_layer(profile), frequency_by_layer(profile)
    table8 = positional_by_layer(profile, **pos_cuts)
    tables2 = {
        n: coverage_by_layer(profile, n, coverage=cuts["coverage"]) for n in range(1, ngram_max + 1)
    }
    teams = position_teams(profile, **pos_cuts)
    for layer in profile.layers:
        rows = [r for (ly, _), r in ref.items() if ly == layer]
        alive = [r for r in rows if not r["dead"]]
        assert table1a.loc[layer, "n_dead"] == len(rows) - len(alive)
        mean = table1b.loc[layer, "mean_freq"]
        if alive:
            expect = sum(r["count"] for r in alive) / len(alive) / profile.n_positions
            assert mean == pytest.approx(expect, abs=1e-12)
        else:
            assert np.isnan(mean)
        for n, table2 in tables2.items():
            got = table2.loc[layer]
            for j, (lo, hi) in enumerate(BUCKETS):
                assert got.iloc[j] == sum(
                    1 for r in alive if r[f"k95_{n}"] is not None and lo <= r[f"k95_{n}"] <= hi
                )
            assert got["undefined"] == sum(1 for r in alive if r[f"k95_{n}"] is None)
        by_type = Counter(f"{r['type']}_{r['strength']}" for r in rows if r["positional"])
        got8 = table8.loc[layer]
        assert {k: v for k, v in got8.items() if v and k != "n_positional"} == dict(by_type)
        team = teams.loc[layer]
        assert team["ranges"] == [r["ranges"] for r in rows if r["ranges"]]
        covered = {p for r in rows for first, last in r["ranges"] for p in range(first, last + 1)}
        kept = {p for p, x in enumerate(rows[0]["f_p"], 1) if x is not None}
        assert team["n_uncovered"] == len(kept - covered)
    seen: set = set()
    previous: set = set()
    table3b = triggers_by_layer(profile, 1, **cuts_of(cuts))
    table4 = new_triggers_by_layer(profile, 1, **cuts_of(cuts))
    for layer in profile.layers:
        mine = {g for (ly, _), r in ref.items() if ly == layer for g in r["trig_1"]}
        assert table4.loc[layer, "new_overall"] == len(mine - seen)
        assert table4.loc[layer, "new_vs_previous"] == len(mine - previous)
        seen, previous = seen | mine, mine
        assert table3b.loc[layer].tolist() == [len(mine), len(seen)]
    summary = layer_summary(profile, **cuts)
    assert summary[[c for c in summary if c.startswith("kind_")]].sum(axis=1).tolist() == [
        profile.d_mlp
    ] * len(profile.layers)


def cuts_of(cuts: dict) -> dict:
    return dict(k_max=cuts["k_max"], coverage=cuts["coverage"])


# ----------------------------------------------------------------------------- the tests
@pytest.mark.slow
@reproducible(100)
@given(
    **case_sizes(),
    n_layers=st.integers(1, 2),
    threshold=st.sampled_from([0.0, 0.25, -0.5]),
    ngram_max=st.integers(1, 3),
    k_max=st.sampled_from([1, 2, 5]),
    coverage=st.sampled_from([50, 95, 100]),
    mi_threshold=st.sampled_from([0.0, 0.05]),
    min_run=st.integers(1, 4),
    delta=st.sampled_from([0.0, 0.05, 0.2, 0.34]),
    smooth_r2=st.sampled_from([0.5, 0.9]),
)
def test_kinds_match_brute_force(
    seed,
    n_seq,
    seq_len,
    d_vocab,
    d_mlp,
    n_layers,
    threshold,
    ngram_max,
    k_max,
    coverage,
    mi_threshold,
    min_run,
    delta,
    smooth_r2,
):
    tokens, acts = random_case(seed, n_seq, seq_len, d_vocab, d_mlp, n_layers, threshold)
    names = [f"tok{t}" for t in range(d_vocab)]
    profile = profile_from_activations(
        tokens, acts, d_vocab=d_vocab, threshold=threshold, ngram_max=ngram_max, token_strings=names
    )
    cuts = dict(
        k_max=k_max,
        coverage=coverage,
        mi_threshold=mi_threshold,
        min_run=min_run,
        delta=delta,
        smooth_r2=smooth_r2,
    )
    ref = reference(
        tokens, acts, threshold=threshold, ngram_max=ngram_max, k_max=k_max, coverage=coverage,
        mi=mi_threshold, min_run=min_run, delta=delta, smooth=smooth_r2,
    )  # fmt: skip
    check_against_reference(profile, ref, ngram_max=ngram_max, **cuts)


@pytest.mark.parametrize("seed", [0, 1])
def test_record_on_hooked_transformer_matches_brute_force(seed):
    cfg = dict(
        n_layers=2, d_model=32, d_mlp=64, d_head=8, n_heads=4, n_ctx=32, d_vocab=50,
        act_fn="relu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    model = tl_model(**cfg)
    rng = np.random.default_rng(seed)
    tokens = torch.tensor(rng.integers(0, 6, size=(6, 32)), dtype=torch.int64)
    tokens[:, 0] = BOS
    tokens[rng.random(tokens.shape) < 0.05] = BOS
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name.endswith("mlp.hook_post")
    )
    acts = {layer: cache[f"blocks.{layer}.mlp.hook_post"] for layer in range(2)}
    profile = record(model, tokens, ngram_cap=None, bos_token_id=BOS, progress=False)
    cuts = dict(k_max=5, coverage=95, mi_threshold=0.05, min_run=8, delta=0.05, smooth_r2=0.9)
    ref = reference(
        tokens, acts, threshold=0.0, ngram_max=3, k_max=5, coverage=95, mi=0.05, min_run=8, delta=0.05,
        smooth=0.9,
    )  # fmt: skip
    check_against_reference(profile, ref, ngram_max=3, **cuts)


def test_triggers_of_ngram_detectors_are_ngram_strings():
    """A neuron that is only a bigram detector lists its bigrams as strings, trigger_n = 2."""
    tokens = torch.tensor([[BOS, 3, 4, 5, 3, 4, 3, 5, 4, 4, 3, 4]])
    prev = torch.roll(tokens, 1, dims=1)
    acts = {0: torch.stack([(prev == 3) & (tokens == 4), tokens == 5], -1).float()}
    names = ["<s>", "<pad>", "</s>", " the", " cat", " sat"]
    profile = profile_from_activations(tokens, acts, d_vocab=6, token_strings=names)
    table = classify(profile)
    assert table["triggers"].tolist() == [[" the cat"], [" sat"]]
    assert table["trigger_n"].tolist() == [2, 1]
    assert str(table["trigger_n"].dtype) == "Int64"
    assert token_detectors(profile, 2)["triggers"][0] == [(" the", " cat")]


def _small_profile(ngram_max: int = 3):
    tokens, acts = random_case(7, 4, 12, 5, 4, 1, 0.0)
    return profile_from_activations(tokens, acts, d_vocab=5, ngram_max=ngram_max)


def test_orders_not_recorded_are_na_and_false():
    table = classify(_small_profile(ngram_max=1))
    assert (
        list(table.columns)
        == (
            "layer neuron count freq dead bos_only evidence k95_1 k95_2 k95_3 k95_2_status "
            "k95_3_status token_detector triggers trigger_n ngram_detector_2 ngram_detector_3 "
            "pos_mi positional pos_type pos_strength kind"
        ).split()
    )
    assert table["k95_2"].isna().all() and table["k95_3"].isna().all()
    assert not table["ngram_detector_2"].any() and not table["ngram_detector_3"].any()
    assert str(table["k95_2"].dtype) == "Int64"
    assert table["k95_2_status"].isna().all() and table["k95_3_status"].isna().all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: ngram_coverage(p, 4), "n must be"),
        (lambda p: token_detectors(p, 1, k_max=0), "k_max"),
        (lambda p: classify(p, coverage=101), "coverage"),
        (lambda p: positional_neurons(p, delta=0.5), "delta"),
        (lambda p: positional_neurons(p, min_run=0), "min_run"),
        (lambda p: position_frequencies(p, 3), "layer 3"),
    ],
)
def test_bad_cutoffs_raise(call, message):
    with pytest.raises(NeuronKindsError, match=message):
        call(_small_profile())


def test_every_positional_type_and_strength():
    """Designed curves hit each of the eight (type, strength) pairs; all agree with the reference."""
    n_seq, seq_len = 20, 41
    p = np.arange(seq_len)
    curves = {
        ("oscillatory", "strong"): np.where((p - 1) // 5 % 2 == 0, 1.0, 0.0),
        ("oscillatory", "weak"): np.where((p - 1) // 5 % 2 == 0, 0.95, 0.05),
        ("both_extremes", "strong"): np.where(p <= 15, 1.0, 0.0),
        ("both_extremes", "weak"): np.where(p <= 15, 0.95, 0.05),
        ("one_extreme", "strong"): np.where(p <= 15, 1.0, 0.5),
        ("one_extreme", "weak"): np.where(p <= 15, 0.95, 0.5),
        ("other", "strong"): 0.3 + 0.4 * p / seq_len,
        ("other", "weak"): np.where(p % 2 == 1, 0.3, 0.7),
    }
    levels = np.stack(list(curves.values()), axis=-1)  # [pos, neuron]
    active = (np.arange(n_seq)[:, None, None] + 0.5) / n_seq < levels[None]
    rng = np.random.default_rng(0)
    tokens = torch.tensor(rng.integers(3, 6, size=(n_seq, seq_len)), dtype=torch.int64)
    tokens[:, 0] = BOS
    acts = {0: torch.tensor(active, dtype=torch.float32)}
    profile = profile_from_activations(tokens, acts, d_vocab=6)
    cuts = dict(k_max=5, coverage=95, mi_threshold=0.0, min_run=4, delta=0.1, smooth_r2=0.9)
    ref = reference(
        tokens,
        acts,
        threshold=0.0,
        ngram_max=3,
        k_max=5,
        coverage=95,
        mi=0.0,
        min_run=4,
        delta=0.1,
        smooth=0.9,
    )
    assert [(ref[0, i]["type"], ref[0, i]["strength"]) for i in range(len(curves))] == list(curves)
    check_against_reference(profile, ref, ngram_max=3, **cuts)


# ----------------------------------------------------------------------------- capped profiles
def check_capped(profile, ref, *, cap, ngram_max, merged=False, **cuts) -> None:
    """A capped profile's kinds: every exact value is the exhaustive one, every censored k95 is
    really above the cap, every decided detector and trigger is the exhaustive one; NA only
    where nothing can decide it (k_max above the cap, or counts without a certificate)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = classify(profile, **cuts)
    undecidable = [w for w in caught if issubclass(w.category, UndecidableWarning)]
    coverage = {n: ngram_coverage(profile, n, coverage=cuts["coverage"]) for n in (2, 3)[: ngram_max - 1]}  # fmt: skip
    strings = profile.token_strings
    any_na = False
    for idx, row in table.iterrows():
        r = ref[row["layer"], row["neuron"]]
        assert row["evidence"] == r["A_1"] and row["token_detector"] == r["det_1"]
        assert row["k95_1"] == r["k95_1"] if r["k95_1"] is not None else pd.isna(row["k95_1"])
        for n in range(2, ngram_max + 1):
            exhaustive, status = r[f"k95_{n}"], row[f"k95_{n}_status"]
            assert coverage[n].loc[idx, "status"] == status
            assert coverage[n].loc[idx, "A"] == r[f"A_{n}"]
            if status == "exact":
                assert row[f"k95_{n}"] == exhaustive
            else:
                assert pd.isna(row[f"k95_{n}"])
            assert (status == "undefined") == (exhaustive is None)
            if status == "censored":
                assert exhaustive > cap
            if not merged and cuts["coverage"] >= 95:
                assert status != "unknown"  # what a finished recording guarantees
            det = row[f"ngram_detector_{n}"]
            if pd.isna(det):
                any_na = True
                assert cuts["k_max"] > cap or status == "unknown"
                assert not (r["dead"] or r["det_1"]) or row["kind"] != "unknown"
            else:
                assert det == r[f"det_{n}"]
            if cuts["k_max"] <= cap and cuts["coverage"] >= 95 and not merged:
                assert not pd.isna(det)
        decided = [n for n in range(2, ngram_max + 1) if not pd.isna(row[f"ngram_detector_{n}"])]
        if len(decided) == ngram_max - 1 or r["det_1"]:
            expect_n = next((n for n in range(1, ngram_max + 1) if r[f"det_{n}"]), None)
            expect = [] if expect_n is None else r[f"trig_{expect_n}"]
            assert row["triggers"] == ["".join(strings[t] for t in g) for g in expect]
            assert row["kind"] == r["kind"]
        else:
            assert row["kind"] in (r["kind"], "unknown")
    assert len(undecidable) == int(any_na)
    for n in range(2, ngram_max + 1):
        column = table[f"ngram_detector_{n}"]
        assert str(column.dtype) == ("boolean" if column.isna().any() else "bool")
        _check_capped_fig2(profile, ref, n, cap, cuts["coverage"])


def _check_capped_fig2(profile, ref, n, cap, coverage) -> None:
    """fig2 on a capped profile: buckets up to the cap, '>cap', 'undefined', 'unknown'."""
    table = coverage_by_layer(profile, n, coverage=coverage)
    statuses = ngram_coverage(profile, n, coverage=coverage)
    cut = [(lo, min(hi, cap)) for lo, hi in BUCKETS if lo <= cap]
    assert list(table.columns)[len(cut) :] == [f">{cap}", "undefined", "unknown"]
    for layer in profile.layers:
        rows = statuses[statuses["layer"] == layer]
        known, unknown = [], 0
        for (_, i), status in zip(rows[["layer", "neuron"]].values, rows["status"], strict=True):
            r = ref[layer, i]
            if r["dead"]:
                continue
            if status == "unknown":
                unknown += 1
            else:
                known.append(r[f"k95_{n}"])
        got = table.loc[layer].tolist()
        expect = [sum(1 for k in known if k is not None and lo <= k <= hi) for lo, hi in cut]
        expect += [sum(1 for k in known if k is not None and k > cap)]
        assert got == [*expect, sum(1 for k in known if k is None), unknown]


@pytest.mark.slow
@reproducible(150)
@given(
    **case_sizes(seq_len=(2, 24), d_vocab=(3, 9)),
    ngram_max=st.integers(2, 3),
    cap=st.sampled_from([5, 6, 10]),
    k_max=st.sampled_from([1, 5, 6, 12]),
    coverage=st.sampled_from([50, 95, 100]),
    min_count=st.sampled_from([0, 0, 3]),
)
def test_capped_kinds_match_brute_force(
    seed, n_seq, seq_len, d_vocab, d_mlp, ngram_max, cap, k_max, coverage, min_count
):
    tokens, acts = random_case(seed, n_seq, seq_len, d_vocab, d_mlp, 1, 0.0)
    names = [f"t{t}" for t in range(d_vocab)]
    capped = profile_from_activations(
        tokens, acts, d_vocab=d_vocab, ngram_max=ngram_max, ngram_cap=cap, token_strings=names
    )
    ref = reference(
        tokens, acts, threshold=0.0, ngram_max=ngram_max, k_max=k_max, coverage=coverage,
        mi=0.05, min_run=8, delta=0.05, smooth=0.9, min_count=min_count,
    )  # fmt: skip
    cuts = dict(k_max=k_max, coverage=coverage, min_count=min_count)
    check_capped(capped, ref, cap=cap, ngram_max=ngram_max, **cuts)


@pytest.mark.slow
@reproducible(100)
@given(
    **case_sizes(n_seq=(2, 8), seq_len=(2, 24), d_vocab=(3, 9)),
    cap=st.sampled_from([5, 6]),
    coverage=st.sampled_from([90, 95]),
)
def test_merged_capped_profiles_never_give_a_wrong_number(
    seed, n_seq, seq_len, d_vocab, d_mlp, cap, coverage
):
    """Halves capped on their own keep different neurons: the merge is exact or says so."""
    tokens, acts = random_case(seed, n_seq, seq_len, d_vocab, d_mlp, 1, 0.0)
    names = [f"t{t}" for t in range(d_vocab)]
    half = n_seq // 2
    parts = [
        profile_from_activations(
            tokens[rows], {0: acts[0][rows]}, d_vocab=d_vocab, ngram_cap=cap, token_strings=names
        )
        for rows in (slice(0, half), slice(half, n_seq))
    ]
    merged = NeuronProfile.merge(parts)
    ref = reference(
        tokens, acts, threshold=0.0, ngram_max=3, k_max=5, coverage=coverage, mi=0.05,
        min_run=8, delta=0.05, smooth=0.9,
    )  # fmt: skip
    check_capped(merged, ref, cap=cap, ngram_max=3, merged=True, k_max=5, coverage=coverage)


def _designed_case(cap: int):
    """Neurons at the cap's edges: k95_2 == cap (kept), cap + 1 with distinct last tokens
    (censored by the unigram bound too), cap + 1 bigrams with one last token (censored by the
    tail only), activity only at position 1 (trigrams undefined), and separators inside rows."""
    rng = np.random.default_rng(cap)
    d_vocab, n_seq, seq_len = 4 + 2 * cap, 6, 40
    tokens = rng.integers(3, d_vocab, size=(n_seq, seq_len))
    tokens[:, 0] = BOS
    tokens[:, 20] = BOS  # a document separator inside every row
    prev = np.roll(tokens, 1, axis=1)
    positions = [(s, p) for s in range(n_seq) for p in range(2, seq_len) if tokens[s, p] != BOS]
    bigram = {sp: (prev[sp], tokens[sp]) for sp in positions}

    def pick(k: int, same_last: bool) -> list:
        """One position each of k distinct bigrams: all ending in one token, or in k tokens."""
        for last in range(3, d_vocab) if same_last else [None]:
            chosen: dict = {}
            for sp in positions:
                g = bigram[sp]
                if g not in chosen and (
                    g[1] == last if same_last else g[1] not in {h[1] for h in chosen}
                ):
                    chosen[g] = sp
                if len(chosen) == k:
                    return list(chosen.values())
        raise AssertionError("no such positions")

    active = np.zeros((n_seq, seq_len, 5), dtype=bool)
    for i, (k, same) in enumerate([(cap, False), (cap + 1, False), (cap + 1, True)]):
        for sp in pick(k, same):
            active[sp[0], sp[1], i] = True
    active[:3, 1, 3] = True  # only at position 1: A_3 = 0
    active[..., 4] = tokens == 3  # a token detector
    return torch.tensor(tokens), {0: torch.tensor(active, dtype=torch.float32)}, d_vocab


@pytest.mark.parametrize("cap", [5, 6])
def test_neurons_at_the_cap(cap):
    tokens, acts, d_vocab = _designed_case(cap)
    names = [f"t{t}" for t in range(d_vocab)]
    ref = reference(
        tokens, acts, threshold=0.0, ngram_max=3, k_max=5, coverage=95, mi=0.05, min_run=8,
        delta=0.05, smooth=0.9,
    )  # fmt: skip
    # Neurons 0-2 are active once on each of k distinct bigrams: k95_2 = ceil(95% of k) = k.
    k95 = [ref[0, i]["k95_2"] for i in range(4)]
    assert k95[1] == k95[2] == cap + 1 and ref[0, 2]["k95_1"] == 1
    assert ref[0, 3]["k95_3"] is None and ref[0, 3]["k95_2"] is not None
    capped = profile_from_activations(
        tokens, acts, d_vocab=d_vocab, ngram_cap=cap, token_strings=names
    )
    exhaustive = profile_from_activations(tokens, acts, d_vocab=d_vocab, token_strings=names)
    table = classify(capped)
    statuses = table["k95_2_status"].tolist()
    assert statuses[1:3] == ["censored", "censored"] and statuses[0] == "exact"
    assert table["k95_2"][0] == k95[0] <= cap
    assert table["k95_3_status"][3] == "undefined"
    check_capped(capped, ref, cap=cap, ngram_max=3, k_max=5, coverage=95)
    same = ["token_detector", "ngram_detector_2", "ngram_detector_3", "triggers", "kind"]
    pd.testing.assert_frame_equal(table[same], classify(exhaustive)[same])
    # k_max above the cap: censored neurons 1 and 2 cannot be decided.
    with pytest.warns(UndecidableWarning, match=r"above the profile's ngram_cap"):
        wide = classify(capped, k_max=cap + 1)
    assert wide["ngram_detector_2"].isna().tolist()[:4] == [False, True, True, False]
    assert wide["kind"][1] == wide["kind"][2] == "unknown"
    assert str(wide["ngram_detector_2"].dtype) == "boolean"


def test_merge_that_kept_different_neurons_reports_unknown():
    """Part A keeps the neuron (one bigram, k95 = 1), part B drops it (seven bigrams once each,
    k95 > cap = 5): merged, neither its tail nor its unigram bound (every bigram ends in one
    token) proves k95_2 > 5, so it is unknown and its detector test NA, never guessed."""
    seq_len = 16
    part_a = torch.tensor([[BOS] + [3, 4] * 7 + [3]] * 8)
    row_b = [BOS]
    for first in range(5, 12):
        row_b += [first, 4]
    part_b = torch.tensor([row_b + [3]])
    assert part_a.shape[1] == part_b.shape[1] == seq_len
    tokens = torch.cat([part_a, part_b])
    acts = {0: torch.stack([tokens == 4, tokens == 3], -1).float()}
    names = [f"t{t}" for t in range(12)]
    parts = [
        profile_from_activations(
            t, {0: a}, d_vocab=12, ngram_max=2, ngram_cap=5, token_strings=names
        )
        for t, a in ((part_a, acts[0][:8]), (part_b, acts[0][8:]))
    ]
    assert parts[0].complete(0, 2).tolist() == [True, True]
    assert parts[1].complete(0, 2).tolist() == [False, True]
    merged = NeuronProfile.merge(parts)
    with pytest.warns(UndecidableWarning, match="merge of profiles that kept different"):
        table = classify(merged)
    assert table["k95_2_status"].tolist() == ["unknown", "exact"]
    assert table["ngram_detector_2"].isna().tolist() == [True, False]
    assert table["kind"].tolist() == ["token_detector", "token_detector"]
    assert coverage_by_layer(merged, 2).loc[0, "unknown"] == 1
    ref = reference(
        tokens, acts, threshold=0.0, ngram_max=2, k_max=5, coverage=95, mi=0.05, min_run=8,
        delta=0.05, smooth=0.9,
    )  # fmt: skip
    check_capped(merged, ref, cap=5, ngram_max=2, merged=True, k_max=5, coverage=95)
