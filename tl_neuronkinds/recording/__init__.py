"""Recording: from a model's hooks to a NeuronProfile of counts.

One idea per module, in the order the data flows:

- ``settings.py``: ``RecordingSettings``, what a recording counts (threshold, n-gram order and
  cap, top-k, histogram, context window, BOS id), stated and checked once;
- ``recorder.py``: ``NeuronRecorder``, hooks on ``blocks.{l}.mlp.hook_post`` through
  TransformerLens's own hook API, inside any forward;
- ``accumulate.py``: ``ProfileBuilder``, batches of activations into the counts of a profile,
  per layer (``layer_accumulator.py``: activity, per-position, n-gram counts and float64 power
  sums, on the activations' device), with what a batch's layers share (``batch_context.py``),
  the unigram table (``unigrams.py``) and n-gram keys (``keys.py``);
- ``top_k.py``: each neuron's streaming top-k activations and histogram; read back by
  ``queries.py`` (tables) and ``contexts.py`` (max-activating contexts);
- ``plan.py``: the n-gram plan and its certificates (the cap stays exact);
- ``record_run.py``: ``record()``, whole runs (the plan, record and repair passes, checkpoints
  with ``checkpoint.py``, ``torch.distributed``), with ``batching.py`` (and the package's ``progress.py``);
- ``profile.py``: ``NeuronProfile``, the result; ``profile_format.py`` its files (save, load,
  the format versions), ``merge.py`` its exact merge;
- ``run_dir.py``: what a run directory of the command line holds.
"""

from typing import TYPE_CHECKING

from tl_neuronkinds import lazy

if TYPE_CHECKING:
    from tl_neuronkinds.recording.accumulate import profile_from_activations
    from tl_neuronkinds.recording.contexts import max_activating_contexts
    from tl_neuronkinds.recording.profile import LayerCounts, NeuronProfile
    from tl_neuronkinds.recording.queries import activation_histogram, top_activations
    from tl_neuronkinds.recording.record_run import record
    from tl_neuronkinds.recording.recorder import NeuronRecorder
    from tl_neuronkinds.recording.settings import RecordingSettings

# Imported when first used (``lazy.py``): the command line reads run_dir and settings without
# loading torch.
_NAMES = {
    "profile_from_activations": ".accumulate",
    "max_activating_contexts": ".contexts",
    "LayerCounts": ".profile",
    "NeuronProfile": ".profile",
    "activation_histogram": ".queries",
    "top_activations": ".queries",
    "record": ".record_run",
    "NeuronRecorder": ".recorder",
    "RecordingSettings": ".settings",
}
__getattr__, __dir__ = lazy.attach(__name__, _NAMES)

__all__ = [
    "LayerCounts",
    "NeuronProfile",
    "NeuronRecorder",
    "RecordingSettings",
    "activation_histogram",
    "max_activating_contexts",
    "profile_from_activations",
    "record",
    "top_activations",
]
