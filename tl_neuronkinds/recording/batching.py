"""The plumbing of a recording run (``record_run.py``): forwarding rows in batches under a recorder,
batch sizes, checkpoint intervals, and the ranks of ``torch.distributed``.
"""

import time
from collections.abc import Callable
from typing import Any

import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.progress import Progress
from tl_neuronkinds.recording.plan import Plan
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.recorder import NeuronRecorder

#: Tokens per forward when batch_size is None: the paper's 64k-token chunks on a GPU; less on a CPU.
AUTO_TOKENS = {"cuda": 65536, "cpu": 16384}
#: Tokens between checkpoints when a checkpoint_dir is given without checkpoint_every.
DEFAULT_CHECKPOINT_TOKENS = 1 << 20


def record_rows(
    recorder: NeuronRecorder,
    model: Any,
    rows: torch.Tensor,
    batch: int,
    bar: Progress,
    after: Callable[[int, int], None] | None = None,
) -> None:
    """Forward ``rows`` in batches under ``recorder``, stopping after its last layer;
    ``after(rows_before, rows_after)`` runs after each batch."""
    device = model_device(model)
    stop = recorder.layers[-1] + 1
    with torch.inference_mode(), recorder.recording(), stop_at(model, stop):
        for first in range(0, rows.shape[0], batch):
            part = rows[first : first + batch].to(device)
            model(part, stop_at_layer=stop)
            bar.update(part.numel())
            if after is not None:
                after(first, first + part.shape[0])


def batch_size_for(batch_size: int | None, model: Any, seq_len: int) -> int:
    if batch_size is None:
        device = model_device(model)
        return max(1, AUTO_TOKENS.get(device.type, AUTO_TOKENS["cuda"]) // seq_len)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NeuronKindsError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def checkpoint_rows(directory: Any, every: int | None, seq_len: int) -> int:
    """Rows per checkpoint interval (all rows in one interval when not checkpointing)."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise NeuronKindsError(
            f"checkpoint_every must be a positive number of tokens, got {every!r}"
        )
    if directory is None:
        if every is not None:
            raise NeuronKindsError("checkpoint_every needs a checkpoint_dir to save to")
        return 1 << 62
    return max(1, (every or DEFAULT_CHECKPOINT_TOKENS) // seq_len)


def plan_digest(plan: Plan) -> dict[str, int]:
    return {str(layer): int(mask.sum()) for layer, mask in sorted(plan.items())}


def timing(tokens: int, since: float) -> dict[str, Any]:
    return {"tokens": tokens, "seconds": round(time.perf_counter() - since, 3)}


def world() -> tuple[int, int]:
    """(rank, world_size) under an initialised torch.distributed process group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(profile: NeuronProfile | None, world_size: int) -> NeuronProfile:
    """Every rank's profile, merged (exactly, as counts add), returned on every rank."""
    if world_size == 1:
        assert profile is not None  # check_tokens ensured at least one row
        return profile
    parts: list[NeuronProfile | None] = [None] * world_size
    torch.distributed.all_gather_object(parts, profile)
    return NeuronProfile.merge([p for p in parts if p is not None], same_tokens=True)


def model_device(model: Any) -> torch.device:
    device = getattr(model.cfg, "device", None)
    if device is None:
        return next(model.parameters()).device
    return torch.device(device)
