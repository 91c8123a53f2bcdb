"""Adapters for TransformerLens behaviour that no public API covers yet.

Each adapter names the TransformerLens line it was written and tested for. On another version
it still runs, and says once that it has not been checked there (``AdapterVersionWarning``);
the tests that prove it (``tests/test_loading.py``, post-LayerNorm OPT) then say whether it
still holds.
"""

import importlib.metadata
import warnings
from typing import Any

#: The TransformerLens lines the adapters below were written and tested for.
WRITTEN_FOR = ("3.9", "4.3")


class AdapterVersionWarning(UserWarning):
    """An adapter runs on a TransformerLens version it was not written for."""


def installed_version() -> str:
    """The installed ``transformer-lens`` version string."""
    return importlib.metadata.version("transformer-lens")


def major_version() -> int:
    """The installed TransformerLens major version (3 or 4)."""
    return int(installed_version().split(".")[0])


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens has ``HookedTransformer`` (3.x; 4.0 removed it)."""
    return major_version() < 4


def _check_version(adapter: str) -> None:
    version = installed_version()
    if ".".join(version.split(".")[:2]) not in WRITTEN_FOR:
        lines = " and ".join(f"{line}.x" for line in WRITTEN_FOR)
        warnings.warn(
            f"{adapter} was written for transformer-lens {lines}; {version} is "
            "installed. Run the test suite (tests/test_loading.py) to check it still holds.",
            AdapterVersionWarning,
            stacklevel=3,
        )


def keep_post_ln_hook_shapes(bridge: Any) -> int:
    """Stop TransformerLens (3.9 and 4.3) from flattening post-LayerNorm ``ln2`` hook values.

    The OPT bridge reshapes hook values at ``ln2`` and ``hook_mlp_in`` back to
    ``[batch*pos, d_model]`` because in pre-LN OPT they sit inside the layer's flattened region
    (its private ``_UnflattenTokens`` conversion, recognised by name: nothing public names it).
    In post-LN OPT (350m) ``ln2`` runs on ``[batch, pos, d_model]``, so a hook there that
    returns its value (``run_with_cache`` does) hands the next layer a 2-D tensor and the
    forward fails. These hooks see 3-D values already; the reshape is dropped for them only
    (the FFN's own hooks, ``hook_post`` among them, run in the flattened region and keep it).

    Returns:
        How many hook points were changed (0 where this version needs no change).
    """
    _check_version("keep_post_ln_hook_shapes")
    changed = 0
    for block in bridge.blocks:
        points = [block.hook_mlp_in]
        ln2 = block.ln2
        for member in [ln2, *getattr(ln2, "submodules", {}).values()]:
            points += [getattr(member, "hook_in", None), getattr(member, "hook_out", None)]
        for point in points:
            conversion = getattr(point, "hook_conversion", None)
            if type(conversion).__name__ == "_UnflattenTokens":
                point.hook_conversion = None
                changed += 1
    return changed
