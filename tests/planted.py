"""A tiny OPT-like TransformerLens model with hand-set weights whose every neuron's kind is known
(``tl_models.tl_model``: a HookedTransformer on 3.9, a native TransformerBridge on 4.x).

ReLU MLPs, no LayerNorm, learned absolute positions, two layers. The residual stream is split
into named blocks of one-hot features:

- ``TOK``: the current token (the embedding is one-hot in d_model);
- ``PREV`` / ``PREV2``: the token one and two positions back, copied there by layer 0's two
  attention heads (head h's query at p is the one-hot of position p-1-h, its key at j the one-hot
  of j, scaled so the softmax is exactly one-hot; its OV circuit copies TOK into PREV / PREV2);
- ``POS``: the position (the positional embedding is one-hot).

Every MLP reads these features through ``W_in`` and a bias; every ``W_out`` and layer 1's
attention are zero, so layer 1 reads the same features. ``EXPECTED`` gives every neuron's kind
and, where it has them, its triggers, positional type and strength.
"""

from typing import Any

import torch
from tl_models import tl_model

VOCAB = [
    "<s>", "<pad>", "</s>", "<unk>", " the", " The", " cat", " Cat",
    " big", " dog", " red", " sun", " sat", " mat", " ran", " on",
]  # fmt: skip
BOS = 2
TEXT = list(range(4, 16))  # the tokens text positions hold
T = 65  # positions 1..64 hold text: eight runs of eight
D_VOCAB, D_MLP = len(VOCAB), 16
TOK, PREV, PREV2, POS = 0, D_VOCAB, 2 * D_VOCAB, 3 * D_VOCAB
D_MODEL = POS + T
_SHARP = 1000.0  # attention score gap before the 1/sqrt(d_head) scale: a one-hot softmax


def _id(word: str) -> int:
    return VOCAB.index(word)


def _positions(condition) -> list[int]:
    return [p for p in range(1, T) if condition(p)]


def _neurons() -> list[list[tuple[dict[int, float], float, dict]]]:
    """Per layer, per neuron: (W_in entries by residual dimension, b_in, expectation)."""
    tok = {w: TOK + _id(w) for w in VOCAB}
    prev = {w: PREV + _id(w) for w in VOCAB}
    dead = ({}, -100.0, {"kind": "dead"})
    other = {"kind": "other"}

    def detector(*words: str) -> tuple[dict[int, float], float, dict]:
        return (
            {tok[w]: 1.0 for w in words},
            -0.5,
            {"kind": "token_detector", "triggers": set(words)},
        )

    def bigram(trigger: str) -> dict:
        return {"kind": "ngram_detector", "ngram": 2, "triggers": {trigger}}

    def positions(chosen: list[int], kind: str) -> tuple[dict[int, float], float, dict]:
        expect = {"kind": "positional", "pos_type": kind, "pos_strength": "strong"}
        return {POS + p: 1.0 for p in chosen}, -0.5, expect

    def block(k: int, period: int) -> list[int]:
        return _positions(lambda p: (p - 1) // 8 % period == k)

    # "other" positional curves: a ramp (a thin line: strong) and a zigzag (weak).
    ramp = {TOK + t: (rank + 1) / len(TEXT) for rank, t in enumerate(TEXT)}
    ramp |= {POS + p: 0.104 + 0.75 * (p - 1) / (T - 2) for p in range(1, T)}
    zigzag = {TOK + t: 1.0 for t in TEXT[:2]} | {TOK + t: 0.5 for t in TEXT[2:10]}
    zigzag |= {POS + p: 0.5 for p in _positions(lambda p: p % 2 == 0)}
    early = {POS + p: 1.0 for p in range(1, 17)} | {
        tok[w]: 1.0 for w in (" sat", " mat", " ran", " on")
    }
    layer0 = [
        dead,
        dead,
        detector(" cat", " Cat"),
        detector(" the"),
        ({prev[" big"]: 1.0, tok[" dog"]: 1.0}, -1.5, bigram(" big dog")),
        (
            {PREV2 + _id(" the"): 1.0, prev[" red"]: 1.0, tok[" sun"]: 1.0},
            -2.5,
            {"kind": "ngram_detector", "ngram": 3, "triggers": {" the red sun"}},
        ),
        positions(_positions(lambda p: 20 <= p <= 40), "both_extremes"),
        positions(block(0, 2), "oscillatory"),
        positions(block(1, 2), "oscillatory"),
        (early, -0.5, {"kind": "positional", "pos_type": "one_extreme", "pos_strength": "strong"}),
        (ramp, -1.0, {"kind": "positional", "pos_type": "other", "pos_strength": "strong"}),
        (zigzag, -0.75, {"kind": "positional", "pos_type": "other", "pos_strength": "weak"}),
        ({tok["</s>"]: 1.0}, -0.5, {"kind": "other", "bos_only": True}),
        ({}, 1.0, other),  # always active
        ({TOK + t: 1.0 for t in TEXT[:8]}, -0.5, other),  # eight tokens: k95 > 5
        # " sat" after one of six tokens: neither a token nor a bigram detector.
        ({tok[" sat"]: 1.0} | {PREV + t: 1.0 for t in TEXT[:6]}, -1.5, other),
    ]
    layer1 = [
        dead,
        detector(" cat"),
        detector(" mat"),
        detector(" dog", " ran"),
        positions(block(0, 4), "oscillatory"),
        positions(block(1, 4), "oscillatory"),
        positions(block(2, 4), "oscillatory"),
        ({prev[" the"]: 1.0, tok[" cat"]: 1.0}, -1.5, bigram(" the cat")),
        ({}, 1.0, other),
        ({TOK + t: 1.0 for t in TEXT[6:]}, -0.5, other),
        *[dead] * 6,
    ]
    return [layer0, layer1]


EXPECTED: dict[tuple[int, int], dict] = {
    (layer, i): spec[2]
    for layer, neurons in enumerate(_neurons())
    for i, spec in enumerate(neurons)
}


def planted_model() -> Any:
    """The planted model (see the module docstring)."""
    cfg = dict(
        n_layers=2, d_model=D_MODEL, d_mlp=D_MLP, d_head=T, n_heads=2, n_ctx=T, d_vocab=D_VOCAB,
        act_fn="relu", normalization_type=None, positional_embedding_type="standard", seed=0,
    )  # fmt: skip
    model = tl_model(**cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E[:, TOK : TOK + D_VOCAB] = torch.eye(D_VOCAB)
        model.pos_embed.W_pos[:, POS : POS + T] = torch.eye(T)
        attn = model.blocks[0].attn
        for head, out in enumerate((PREV, PREV2)):
            for p in range(head + 1, T):
                attn.W_Q[head, POS + p, p - 1 - head] = _SHARP
            for j in range(T):
                attn.W_K[head, POS + j, j] = 1.0
            for t in range(D_VOCAB):
                attn.W_V[head, TOK + t, t] = 1.0
                attn.W_O[head, t, out + t] = 1.0
        for layer, neurons in enumerate(_neurons()):
            mlp = model.blocks[layer].mlp
            for i, (weights, bias, _) in enumerate(neurons):
                for dim, value in weights.items():
                    mlp.W_in[dim, i] = value
                mlp.b_in[i] = bias
    return model


def planted_tokens(n_seq: int = 256, seed: int = 0) -> torch.Tensor:
    """Uniform text tokens, BOS first and as a rare separator, " the red sun" planted in a quarter."""
    g = torch.Generator().manual_seed(seed)
    text = torch.tensor(TEXT)
    tokens = text[torch.randint(0, len(TEXT), (n_seq, T), generator=g)]
    tokens[torch.rand(n_seq, T, generator=g) < 0.03] = BOS
    tokens[:, 0] = BOS
    trigram = torch.tensor([_id(" the"), _id(" red"), _id(" sun")])
    for s in range(0, n_seq, 4):
        p = int(torch.randint(1, T - 2, (1,), generator=g))
        tokens[s, p : p + 3] = trigram
    return tokens
