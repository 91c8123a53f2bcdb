"""The checks every step shares (``loading/tokens.py``, ``loading/identity.py``): the tokens a
model can run, each token's text, and whether a profile counts a model's neurons."""

import dataclasses

import numpy as np
import pytest
import torch
from recording_reference import BOS, D_VOCAB, random_tokens, tiny_model

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.identity import IDENTITY_KEYS, check_same_model, model_identity
from tl_neuronkinds.loading.tokens import check_tokens, strings_of, token_strings


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def test_check_tokens_returns_good_tokens_and_names_each_problem(model) -> None:
    tokens = random_tokens(1, n_seq=3, seq_len=10, vocab=D_VOCAB)
    assert check_tokens(tokens, model, BOS) is tokens
    assert check_tokens(tokens.to(torch.int32), model) is not None  # int32 ids run too
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    cases = [
        (tokens.tolist(), None, "2-D integer tensor"),
        (tokens[0], None, "2-D integer tensor"),
        (tokens.float(), None, "2-D integer tensor"),
        (tokens.bool(), None, "2-D integer tensor"),
        (tokens[:0], None, "non-empty"),
        (random_tokens(1, seq_len=n_ctx + 1, vocab=D_VOCAB), None, f"context of {n_ctx}"),
        (torch.where(tokens == tokens[1, 3], d_vocab, tokens), None, f"found {d_vocab}"),
        (torch.where(tokens == tokens[1, 3], -1, tokens), None, "found -1"),
        (tokens[:, 1:], BOS, "must start with BOS"),
    ]
    for bad, bos, message in cases:
        with pytest.raises(NeuronKindsError, match=message):
            check_tokens(bad, model, bos)
    check_tokens(tokens[:, 1:], model)  # without a BOS id, the first column is not checked


class _Tokenizer:
    """Decodes id i as ``t{i}``; knows ``size`` ids."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def batch_decode(self, batch: list[list[int]]) -> list[str]:
        return [f"t{ids[0]}" for ids in batch]


def test_token_strings_decode_known_ids_and_name_the_others() -> None:
    assert token_strings(_Tokenizer(3), 5) == ["t0", "t1", "t2", "<3>", "<4>"]
    assert token_strings(None, 2) == ["<0>", "<1>"]
    assert strings_of(_Tokenizer(3), np.array([4, 1, 1, 0])) == {0: "t0", 1: "t1", 4: "<4>"}
    assert strings_of(None, np.array([7])) == {7: "<7>"}


@dataclasses.dataclass
class _Profile:
    d_mlp: int
    d_vocab: int
    layers: list[int]
    meta: dict


def test_check_same_model_compares_shapes_then_identity(model) -> None:
    cfg = model.cfg
    mine = model_identity(model)
    profile = _Profile(cfg.d_mlp, cfg.d_vocab, [0, 2], dict(mine))
    check_same_model(model, profile)
    check_same_model(model, profile, strict=True)
    shapes = [
        dataclasses.replace(profile, d_mlp=cfg.d_mlp + 1),
        dataclasses.replace(profile, d_vocab=cfg.d_vocab - 1),
        dataclasses.replace(profile, layers=[cfg.n_layers]),
    ]
    for other in shapes:
        with pytest.raises(NeuronKindsError, match="does not fit the model"):
            check_same_model(model, other)
    for key in IDENTITY_KEYS:
        other = dataclasses.replace(profile, meta={**mine, key: "0" * 16})
        with pytest.raises(NeuronKindsError, match=f"another model: its {key}"):
            check_same_model(model, other)
        anonymous = dataclasses.replace(profile, meta={k: v for k, v in mine.items() if k != key})
        check_same_model(model, anonymous)  # nothing to compare: a view may go on
        with pytest.raises(NeuronKindsError, match=f"no {key}"):
            check_same_model(model, anonymous, strict=True)
