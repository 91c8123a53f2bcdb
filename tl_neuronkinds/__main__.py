"""``python -m tl_neuronkinds``: the command line (also what ``torchrun -m tl_neuronkinds`` runs)."""

from tl_neuronkinds.cli import main

raise SystemExit(main())
