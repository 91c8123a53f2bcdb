"""Shared test set-up: no network, ever; fixtures shared by several test files."""

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

#: OPT's real tokenizer, shared by the sessions (../shared/data/opt-tokenizer from the repo).
OPT_TOKENIZER_PATH = Path(__file__).resolve().parents[2] / "shared/data/opt-tokenizer"


@pytest.fixture(scope="session")
def opt_tokenizer():
    """OPT's real tokenizer; the test is skipped when ../shared/data/opt-tokenizer is absent."""
    if not (OPT_TOKENIZER_PATH / "vocab.json").is_file():
        pytest.skip(
            f"OPT's tokenizer is not at {OPT_TOKENIZER_PATH} (../shared/data/opt-tokenizer)"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(OPT_TOKENIZER_PATH))
