"""Shared test set-up: no network, ever; fixtures shared by several test files.

Helpers that test files import by name live beside this file: ``opt_fixtures`` (tiny OPT
checkpoints, their layouts, OPT's tokenizer), ``tl_models`` (tiny TransformerLens models),
``planted`` (a model with planted neuron kinds), ``recording_reference`` (a brute-force count of
raw activations) and ``strategies`` (Hypothesis settings and strategies).
"""

import os
from pathlib import Path

import pytest

for _var, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_var] = _value


@pytest.fixture(scope="session")
def opt_tokenizer():
    """OPT's real tokenizer; the test is skipped when ../shared/data/opt-tokenizer is absent."""
    from opt_fixtures import NO_OPT_TOKENIZER, OPT_TOKENIZER_DIR, has_opt_tokenizer
    from transformers import AutoTokenizer

    if not has_opt_tokenizer():
        pytest.skip(NO_OPT_TOKENIZER)
    return AutoTokenizer.from_pretrained(str(OPT_TOKENIZER_DIR))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny OPT checkpoint (300 tokens, 32 positions) with a byte-level tokenizer that
    prepends ``</s>`` once: what the command line tests run ``--model`` on."""
    from opt_fixtures import make_tiny_opt, tiny_tokenizer

    path = make_tiny_opt(
        tmp_path_factory.mktemp("ckpt") / "m", vocab=300, n_ctx=32, tokenizer=False
    )
    tiny_tokenizer().save_pretrained(path)
    return path
