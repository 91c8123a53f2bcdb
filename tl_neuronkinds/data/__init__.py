"""Data shipped with the package: the embedded models (tiny OPTs trained by ``tl_neuronkinds.training``)."""

from pathlib import Path

from tl_neuronkinds.errors import NeuronKindsError

_DIRS = {"standard": "embedded_model", "nopos": "embedded_model_nopos"}
#: Seeds of the standard model shipped (same data, tokenizer and settings; another
#: initialisation and data order), for universal neurons (Gurnee et al. 2024).
SEEDS = (0, 1, 2)


def embedded_model_dir(variant: str = "standard", seed: int = 0) -> Path:
    """Directory of a shipped embedded model, loadable like any OPT checkpoint.

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
    name = _DIRS[variant] + (f"_seed{seed}" if seed else "")
    return Path(__file__).resolve().parent / name
