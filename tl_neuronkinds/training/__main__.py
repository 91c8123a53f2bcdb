"""``python -m tl_neuronkinds.training``: train the embedded models (see ``training/cli.py``)."""

from tl_neuronkinds.training.cli import main

main()
