"""Settings of a training run, with defaults that reproduce the shipped embedded models."""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.model import ModelShape


@dataclass(frozen=True)
class TrainConfig:
    """OPT's recipe (Zhang et al., 2022, §2.2) scaled down to a tiny model.

    OPT trains with AdamW (β = 0.9, 0.95), weight decay 0.1, a linear warm-up then linear decay
    to 10% of the peak learning rate, and gradient clipping at 1.0. The peak rate here, 4e-3, is
    about 7x OPT-125m's 6e-4: ReLU neurons die under large Adam steps, and the paper's dead
    neurons (§3) appeared in numbers in our 1.4M-token runs only at such rates. Measured on the held-out
    split with d_mlp 512 (dead neurons in layers 0-3): 2e-3 gave 0/3/3/0, 5e-3 gave 0/29/10/7
    and no token detectors; d_mlp 2048 at 4e-3 (the default) gives dead neurons, token and
    n-gram detectors and positional neurons (README).

    Attributes:
        variant: ``"standard"`` or ``"nopos"`` (no positional encoding, paper §5.4).
        shape: Model sizes.
        n_tokens: Training tokens (counted as ``n_seq * seq_len``; a whole number of batches).
        batch_size: Sequences per optimiser step.
        peak_lr: Learning rate after warm-up.
        final_lr_ratio: The rate decays linearly to ``peak_lr * final_lr_ratio``.
        warmup_frac: Fraction of the steps spent warming up linearly from 0.
        weight_decay: AdamW weight decay on matrices (not on biases, LayerNorm or embeddings'
            positional table in the nopos variant, which is frozen).
        betas: AdamW betas.
        grad_clip: Maximum global gradient norm.
        dropout: Residual dropout.
        seed: Seeds initialisation, data order and dropout.
        tokenizer_docs: Train the tokenizer on the first this many training documents (None:
            all of them).
        heldout_tokens: Held-out tokens on which the final loss is measured.
        log_every: Steps between loss-curve points.
    """

    variant: str = "standard"
    shape: ModelShape = field(default_factory=ModelShape)
    n_tokens: int = 1_433_600
    batch_size: int = 8
    peak_lr: float = 4e-3
    final_lr_ratio: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    dropout: float = 0.0
    seed: int = 0
    tokenizer_docs: int | None = None
    heldout_tokens: int = 262_144
    log_every: int = 10

    @property
    def seq_len(self) -> int:
        """Training sequence length: the model's full context, like OPT's 2048-token rows."""
        return self.shape.n_ctx

    @property
    def n_steps(self) -> int:
        """Optimiser steps of the run: ``n_tokens // (batch_size * seq_len)``."""
        return self.n_tokens // (self.batch_size * self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (``shape`` nested, ``betas`` as a list)."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["seq_len"] = self.seq_len
        return out


def check_keep_steps(steps: object, n_steps: int | None = None) -> tuple[int, ...]:
    """The steps after which a run keeps a checkpoint, checked (paper §5.4, Figure 11).

    Figure 11 compares one model at several points of its training (50k, 150k and 300k
    batches); a step here is one optimiser step, one batch, as in the loss curve's ``step``.

    Args:
        steps: Positive integers in increasing order, without repeats.
        n_steps: The run's steps (``TrainConfig.n_steps``); when given, no step may exceed
            it. The last step itself may be kept: its checkpoint equals the final model.

    Returns:
        The steps as a tuple of ints.

    Raises:
        NeuronKindsError: A step that is not an integer, below 1, out of order, repeated or
            beyond ``n_steps``.
    """
    if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
        raise NeuronKindsError(f"keep_steps must be a sequence of step numbers, got {steps!r}")
    kept = [check_int("keep_steps: each step", step, low=1) for step in steps]
    if any(b <= a for a, b in zip(kept, kept[1:], strict=False)):
        raise NeuronKindsError(
            f"keep_steps must be in increasing order without repeats, got {kept}"
        )
    if n_steps is not None and kept and kept[-1] > n_steps:
        raise NeuronKindsError(f"keep_steps: step {kept[-1]} is beyond the run's {n_steps} steps")
    return tuple(kept)
