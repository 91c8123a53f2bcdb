"""Data shipped with the package: the embedded models (tiny OPTs trained by ``tl_neuronkinds.training``).

The four embedded models (the standard one, its seeds 1 and 2, and nopos) were trained on one
tokenizer, shipped once in ``tokenizer/`` beside them: a model's folder holds its config,
weights and training record, and ``load_opt`` attaches the shared tokenizer
(``shared_tokenizer_dir``). ``transformers.AutoTokenizer.from_pretrained`` opens
``embedded_tokenizer_dir()``.
"""

import os
from pathlib import Path

from tl_neuronkinds.errors import NeuronKindsError

_HERE = Path(__file__).resolve().parent
_DIRS = {"standard": "embedded_model", "nopos": "embedded_model_nopos"}
#: Seeds of the standard model shipped (same data, tokenizer and settings; another
#: initialisation and data order), for universal neurons (Gurnee et al. 2024).
SEEDS = (0, 1, 2)
#: The folder names of the shipped models, each a key of ``_DIRS`` with its seeds.
_MODEL_NAMES = frozenset(
    [_DIRS["standard"] + (f"_seed{seed}" if seed else "") for seed in SEEDS] + [_DIRS["nopos"]]
)


def embedded_model_dir(variant: str = "standard", seed: int = 0) -> Path:
    """Directory of a shipped embedded model, loadable like any OPT checkpoint.

    It holds ``config.json``, ``model.safetensors`` and ``training_record.json``; the tokenizer
    the embedded models share is ``embedded_tokenizer_dir()``, which ``load_opt`` attaches.

    Args:
        variant: ``"standard"`` (learned absolute positions) or ``"nopos"`` (no positional
            encoding, the paper's §5.4).
        seed: The training seed: 0 for either variant; 1 or 2 for other seeds of the
            standard model (``SEEDS``).

    Raises:
        NeuronKindsError: For an unknown variant or seed.
    """
    if variant not in _DIRS:
        raise NeuronKindsError(
            f"unknown embedded model variant {variant!r}; expected one of {sorted(_DIRS)}"
        )
    if seed not in (SEEDS if variant == "standard" else (0,)):
        raise NeuronKindsError(
            f"no embedded {variant} model of seed {seed!r}; shipped seeds: "
            f"{list(SEEDS) if variant == 'standard' else [0]}"
        )
    return _HERE / (_DIRS[variant] + (f"_seed{seed}" if seed else ""))


def embedded_tokenizer_dir() -> Path:
    """Directory of the tokenizer the embedded models share (``AutoTokenizer`` opens it).

    A byte-level BPE with OPT's special tokens at OPT's ids (``</s>`` = 2 is BOS and EOS),
    trained with the standard model (``tl_neuronkinds.training.tokenizer``).
    """
    return _HERE / "tokenizer"


def shared_tokenizer_dir(model_dir: str | os.PathLike) -> Path | None:
    """The shared tokenizer of a shipped embedded model's directory; None for any other.

    A user's checkpoint directory, even a copy of an embedded model, is never given it: it
    loads its own tokenizer files.
    """
    path = Path(model_dir).resolve()
    if path.parent == _HERE and path.name in _MODEL_NAMES:
        return embedded_tokenizer_dir()
    return None
