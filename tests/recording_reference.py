"""A tiny model, random tokens and a brute-force count of raw activations, shared by the
recording tests. The reference shares no code with tl_neuronkinds.recording: plain loops."""

from collections import Counter
from typing import Any

import torch
from tl_models import tl_model

import tl_neuronkinds as nk

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


def decode_gram(gram_id: int, n: int, d_vocab: int) -> tuple[int, ...]:
    """The tokens of an n-gram id, decoded here from the documented key layout (the n-gram read
    as a number in base d_vocab, first token the most significant digit), not by the package."""
    assert 0 <= gram_id < d_vocab**n, (gram_id, n, d_vocab)
    return tuple(gram_id // d_vocab ** (n - 1 - j) % d_vocab for j in range(n))


def table(profile: nk.NeuronProfile, layer: int, n: int) -> Counter:
    """The (n-gram, neuron) counts of a layer, decoded from keys ``gram_id * d_mlp + neuron``."""
    c = profile.counts[layer]
    out: Counter = Counter()
    for key, v in zip(c.ngrams[n].keys.tolist(), c.ngrams[n].counts.tolist()):
        gram_id, neuron = divmod(key, profile.d_mlp)
        out[(decode_gram(gram_id, n, profile.d_vocab), neuron)] = v
    return out


def assert_matches(profile: nk.NeuronProfile, layer: int, ref: dict) -> None:
    c = profile.counts[layer]
    assert c.active.tolist() == ref["active"]
    assert c.active_text.tolist() == ref["active_text"]
    assert c.pos_active.tolist() == ref["pos"]
    assert profile.pos_text_seqs.tolist() == ref["pos_seqs"]
    for n in (1, 2, 3):
        assert table(profile, layer, n) == ref["ngrams"][n]
        occurrences = profile.occurrences[n]
        assert (
            Counter(
                {
                    decode_gram(g, n, profile.d_vocab): o
                    for g, o in zip(occurrences.keys.tolist(), occurrences.counts.tolist())
                }
            )
            == ref["occ"][n]
        )
