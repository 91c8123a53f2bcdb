"""Data shipped with the package: the embedded models (tiny OPTs trained by ``tl_neuronkinds.training``)."""

from pathlib import Path

from tl_neuronkinds.errors import NeuronKindsError

_DIRS = {"standard": "embedded_model", "nopos": "embedded_model_nopos"}


def embedded_model_dir(variant: str = "standard") -> Path:
    """Directory of a shipped embedded model, loadable like any OPT checkpoint.

    Args:
        variant: ``"standard"`` (learned absolute positions) or ``"nopos"`` (no positional
            encoding, the paper's §5.4).

    Raises:
        NeuronKindsError: For an unknown variant.
    """
    if variant not in _DIRS:
        raise NeuronKindsError(
            f"unknown embedded model variant {variant!r}; expected one of {sorted(_DIRS)}"
        )
    return Path(__file__).resolve().parent / _DIRS[variant]
