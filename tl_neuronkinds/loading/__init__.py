"""Loading OPT checkpoints into TransformerLens, optionally streaming blocks from CPU or disk.

``load_opt`` (``opt.py``) builds the model; ``streaming.py`` holds the per-block offload and
the functions that tell a caller about it (``offload_mode``, ``loaded_block``).
"""

from tl_neuronkinds.loading.opt import load_opt
from tl_neuronkinds.loading.streaming import loaded_block, offload_mode, streamer_of

__all__ = ["load_opt", "loaded_block", "offload_mode", "streamer_of"]
