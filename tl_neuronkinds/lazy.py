"""Public names imported when first used, so that ``import tl_neuronkinds`` (and the command
line's ``--help``) costs almost nothing: torch, pandas and TransformerLens load only when a name
that needs them is touched (PEP 562, as ``scipy`` and ``lazy_loader`` do).

A package lists ``{name: module}`` and binds ``__getattr__, __dir__ = lazy.attach(__name__,
names)``; static checkers read the same names from an ``if TYPE_CHECKING:`` block beside it.
"""

import importlib
import sys
from collections.abc import Callable
from typing import Any


def attach(
    package: str, names: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names[name]`` is the module that
    defines ``name`` (absolute, or relative to ``package`` where it starts with a dot); the value
    is cached in the package once imported."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
