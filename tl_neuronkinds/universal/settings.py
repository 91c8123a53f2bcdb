"""The defaults of a universal-neurons run, stated once: the library's keywords and the command
line's options both read them (this module imports nothing heavy, so ``--help`` stays quick)."""

#: Gurnee et al. §3: universal neurons have an excess correlation above 0.5.
EXCESS = 0.5
#: Active positions (activation above 0) a neuron needs to be called universal (the module
#: docstring of ``correlations.py``, "Support"): with fewer, its correlations rest on a handful
#: of coincidences.
MIN_ACTIVE = 10
#: Bytes of accumulators held at once where ``memory`` is not given (the sums of one tile of
#: A's neurons with all of B's, and the correlations computed from them).
MEMORY = 2 << 30
#: Bytes of both models' activations kept between a run's passes where ``cache`` is not given.
CACHE = 4 << 30
