"""The ``tl-neuronkinds`` command line (``main.py``: the parser and ``main``; one module per
group of subcommands: ``run.py`` (profile, demo, tables), ``report.py``, ``massive.py``,
``universal.py``; ``common.py``: what they share)."""

from tl_neuronkinds.cli.main import main

__all__ = ["main"]
