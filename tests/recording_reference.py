"""A tiny model, random tokens and a brute-force count of raw activations, shared by the
recording tests. The reference shares no code with tl_neuronkinds.recording: plain loops."""

from collections import Counter
from typing import Any

import torch
from tl_models import tl_model

import tl_neuronkinds as nk
from tl_neuronkinds.recording.keys import split_ngram_ids

BOS = 2
D_VOCAB = 40


def tiny_model(seed: int = 0, act_fn: str = "relu") -> Any:
    cfg = dict(
        n_layers=3, d_model=16, d_mlp=24, d_head=4, n_heads=4, n_ctx=24, d_vocab=D_VOCAB,
        act_fn=act_fn, normalization_type="LN", seed=seed,
    )  # fmt: skip
    return tl_model(**cfg)


def random_tokens(seed: int, n_seq: int = 5, seq_len: int = 12, vocab: int = 8) -> torch.Tensor:
    """Few distinct tokens so n-grams repeat; BOS at column 0 and some separators inside."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n_seq, seq_len), generator=g)
    tokens[:, 0] = BOS
    return tokens


def brute_force(tokens: torch.Tensor, acts: torch.Tensor, threshold: float = 0.0) -> dict:
    """Plain loops over one layer's raw activations: every count the profile holds."""
    n_seq, seq_len, d_mlp = acts.shape
    out = {
        "active": [0] * d_mlp,
        "active_text": [0] * d_mlp,
        "ngrams": {1: Counter(), 2: Counter(), 3: Counter()},
    }
    out["occ"] = {1: Counter(), 2: Counter(), 3: Counter()}
    out["pos"] = [[0] * d_mlp for _ in range(seq_len)]
    out["pos_seqs"] = [0] * seq_len
    for s in range(n_seq):
        for p in range(seq_len):
            text = int(tokens[s, p]) != BOS
            out["pos_seqs"][p] += text
            grams = {
                n: tuple(int(t) for t in tokens[s, p - n + 1 : p + 1])
                for n in (1, 2, 3)
                if p - n + 1 >= 0
            }
            if text:
                for n, g in grams.items():
                    out["occ"][n][g] += 1
            for i in range(d_mlp):
                if float(acts[s, p, i]) > threshold:
                    out["active"][i] += 1
                    if text:
                        out["active_text"][i] += 1
                        out["pos"][p][i] += 1
                        for n, g in grams.items():
                            out["ngrams"][n][(g, i)] += 1
    return out


def table(profile: nk.NeuronProfile, layer: int, n: int) -> Counter:
    c = profile.counts[layer]
    grams = split_ngram_ids(c.ngrams[n].keys // profile.d_mlp, n, profile.d_vocab).tolist()
    neurons = (c.ngrams[n].keys % profile.d_mlp).tolist()
    return Counter(
        {(tuple(g), i): v for g, i, v in zip(grams, neurons, c.ngrams[n].counts.tolist())}
    )


def assert_matches(profile: nk.NeuronProfile, layer: int, ref: dict) -> None:
    c = profile.counts[layer]
    assert c.active.tolist() == ref["active"]
    assert c.active_text.tolist() == ref["active_text"]
    assert c.pos_active.tolist() == ref["pos"]
    assert profile.pos_text_seqs.tolist() == ref["pos_seqs"]
    for n in (1, 2, 3):
        assert table(profile, layer, n) == ref["ngrams"][n]
        ids = split_ngram_ids(profile.occurrences[n].keys, n, profile.d_vocab).tolist()
        assert (
            Counter({tuple(g): o for g, o in zip(ids, profile.occurrences[n].counts.tolist())})
            == ref["occ"][n]
        )
