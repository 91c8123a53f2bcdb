"""Train the tiny OPT, measure its held-out loss, and write the checkpoint atomically.

The output directory is what ``save_pretrained`` writes for a real OPT checkpoint (``config.json``
with ``dtype`` float16, ``model.safetensors``) plus the tokenizer files (or, for models that
share one tokenizer, such as the shipped ones, nothing: it goes to their shared folder) and
``training_record.json`` (settings, seed, tokens seen, steps, wall time, device, threads, the loss
curve and the final held-out loss). With ``keep_steps``, ``checkpoints/step-000500/`` and the
like hold the model after those steps, each a checkpoint directory of the same files (paper
§5.4, Figure 11). Everything is written to a temporary sibling directory and renamed into place
at the end, so an interrupted run never leaves a half-written model.
"""

import copy
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from jaxtyping import Int
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from tl_neuronkinds.atomic import atomic_dir, follow_umask
from tl_neuronkinds.corpus import Corpus
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.config import TrainConfig, check_keep_steps
from tl_neuronkinds.training.model import VARIANTS, build_model, positional_table
from tl_neuronkinds.training.tokenizer import save_shared_tokenizer, train_tokenizer

RECORD_NAME = "training_record.json"
#: The folder of ``out`` that holds the checkpoints a run keeps (:func:`kept_checkpoint`).
CHECKPOINTS_DIR = "checkpoints"


def lr_at(step: int, n_steps: int, cfg: TrainConfig) -> float:
    """OPT's schedule: linear warm-up from 0, then linear decay to ``final_lr_ratio * peak``."""
    warmup = max(1, round(cfg.warmup_frac * n_steps))
    if step < warmup:
        return cfg.peak_lr * (step + 1) / warmup
    done = (step - warmup) / max(1, n_steps - warmup)
    return cfg.peak_lr * (1.0 - (1.0 - cfg.final_lr_ratio) * done)


def batches(
    tokens: Int[torch.Tensor, "n_seq pos"], batch_size: int, n_steps: int, seed: int
) -> Iterator[Int[torch.Tensor, "batch pos"]]:
    """Yield ``n_steps`` batches of rows in a seeded order, reshuffling at each pass over the data."""
    if tokens.shape[0] < batch_size:
        raise NeuronKindsError(
            f"the training corpus packed into {tokens.shape[0]} rows, fewer than batch_size={batch_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    per_epoch = tokens.shape[0] // batch_size
    for epoch in itertools.count():
        order = torch.randperm(tokens.shape[0], generator=generator)
        for i in range(per_epoch):
            step = epoch * per_epoch + i
            if step == n_steps:
                return
            yield tokens[order[i * batch_size : (i + 1) * batch_size]]


def _optimizer(model: OPTForCausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and LayerNorm parameters are not decayed)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=cfg.betas, eps=1e-8)


@torch.no_grad()
def mean_loss(
    model: OPTForCausalLM, tokens: Int[torch.Tensor, "n_seq pos"], batch_size: int
) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of ``tokens``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start : start + batch_size]
        n_pred = chunk.shape[0] * (chunk.shape[1] - 1)
        total += model(input_ids=chunk, labels=chunk).loss.item() * n_pred
        count += n_pred
    return total / count


@dataclass(frozen=True)
class _Keep:
    """Where and when a run keeps intermediate checkpoints (:func:`kept_checkpoint`)."""

    out: Path
    steps: frozenset[int]
    with_tokenizer: bool


def kept_checkpoint(out: str | os.PathLike, step: int) -> Path:
    """The directory of the checkpoint that ``train(..., keep_steps=...)`` keeps after ``step``
    optimiser steps: ``out/checkpoints/step-000500`` (zero-padded, so they sort by step)."""
    return Path(out) / CHECKPOINTS_DIR / f"step-{step:06d}"


def _write(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    record: dict[str, Any],
    directory: Path,
) -> None:
    """Save weights (float16), tokenizer (unless None) and record into ``directory``."""
    model.config.dtype = torch.float16
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    (directory / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
    for path in directory.iterdir():  # safetensors writes 0600; a shipped model is world-readable
        if path.is_file():
            follow_umask(path)


def train(
    cfg: TrainConfig,
    out: Path,
    train_docs: Corpus,
    heldout_docs: Corpus,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    tokenizer_dir: Path | None = None,
    threads: int = 1,
    log: bool = True,
    keep_steps: Iterable[object] = (),
) -> dict[str, Any]:
    """Train a tiny OPT on ``train_docs`` and write it to ``out`` (see the module docstring).

    Args:
        cfg: The run's settings.
        out: Output directory (replaced if it exists, only once the new one is complete).
        train_docs: Training documents, all packed into rows; the steps draw batches of rows
            in a seeded order, reshuffled at each pass. The tokenizer, when not given, is
            trained on the first ``cfg.tokenizer_docs`` of them.
        heldout_docs: Documents for the final held-out loss (its first ``cfg.heldout_tokens``).
        tokenizer: A tokenizer to reuse (the nopos run reuses the standard run's).
        tokenizer_dir: Where the tokenizer goes when several models share it (the shipped
            ones: ``tl_neuronkinds.data.embedded_tokenizer_dir()``); ``out`` then holds none.
            Written if absent; if present it must be this tokenizer (checked before training
            when ``tokenizer`` is given). Default: ``out`` holds its own.
        threads: ``torch.set_num_threads`` for the run (recorded: float sums depend on it).
        log: Print the loss every ``cfg.log_every`` steps.
        keep_steps: Steps (increasing, at most ``cfg.n_steps``) after which to keep the model
            as it is then, for the paper's Figure 11 (one model at several points of its
            training, §5.4): each goes to ``kept_checkpoint(out, step)``, a checkpoint
            directory like ``out`` itself (weights, tokenizer unless shared, and a training
            record with its own held-out loss). Keeping changes nothing in the run: the final
            model is the same with or without.

    Returns:
        The training record that was written beside the weights.

    Raises:
        NeuronKindsError: Bad settings or ``keep_steps`` (before anything runs), a diverged
            run, or ``tokenizer_dir`` holding another tokenizer.
    """
    tokens_per_step = cfg.batch_size * cfg.seq_len
    n_steps = cfg.n_steps
    if n_steps < 1:
        raise NeuronKindsError(
            f"n_tokens={cfg.n_tokens} is less than one batch ({tokens_per_step} tokens)"
        )
    if cfg.variant not in VARIANTS:
        raise NeuronKindsError(f"unknown variant {cfg.variant!r}; expected one of {VARIANTS}")
    kept = check_keep_steps(keep_steps, n_steps)
    if tokenizer is not None and tokenizer_dir is not None:
        save_shared_tokenizer(tokenizer, tokenizer_dir)  # a mismatch fails before training
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    # The kept checkpoints go into the temporary directory that becomes ``out``: an
    # interrupted run leaves neither a half-written model nor a partial set of checkpoints.
    with atomic_dir(out) as tmp:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            keep = _Keep(tmp, frozenset(kept), with_tokenizer=tokenizer_dir is None)
            model, tokenizer, record = _run(
                cfg, train_docs, heldout_docs, tokenizer, threads, log, keep
            )
        finally:
            torch.set_num_threads(threads_before)
            torch.use_deterministic_algorithms(deterministic_before)
        if tokenizer_dir is not None:
            save_shared_tokenizer(tokenizer, tokenizer_dir)
        _write(model, tokenizer if tokenizer_dir is None else None, record, tmp)
    return record


def _run(
    cfg: TrainConfig,
    train_docs: Corpus,
    heldout_docs: Corpus,
    tokenizer: PreTrainedTokenizerBase | None,
    threads: int,
    log: bool,
    keep: _Keep,
) -> tuple[OPTForCausalLM, PreTrainedTokenizerBase, dict[str, Any]]:
    """The run of :func:`train`: the trained model (float16), its tokenizer and the record."""
    start = time.perf_counter()
    if tokenizer is None:
        docs: Iterable[str] = itertools.islice(iter(train_docs), cfg.tokenizer_docs)
        tokenizer = train_tokenizer(docs, cfg.shape.vocab_size, cfg.shape.n_ctx)
    if len(tokenizer) != cfg.shape.vocab_size:
        raise NeuronKindsError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {cfg.shape.vocab_size}"
        )
    tokens_per_step = cfg.batch_size * cfg.seq_len
    n_steps = cfg.n_steps
    data = train_docs.tokenize(tokenizer, seq_len=cfg.seq_len)
    heldout = heldout_docs.tokenize(tokenizer, seq_len=cfg.seq_len)
    heldout = heldout[: math.ceil(cfg.heldout_tokens / cfg.seq_len)]
    data_seconds = time.perf_counter() - start
    about = _about(cfg, train_docs, heldout_docs, data, heldout, threads)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.shape, cfg.variant, cfg.dropout)
    optimizer = _optimizer(model, cfg)
    curve: list[dict[str, float]] = []
    losses: list[float] = []
    window: list[float] = []
    keep_seconds = 0.0
    train_start = time.perf_counter()
    model.train()
    for step, batch in enumerate(batches(data, cfg.batch_size, n_steps, cfg.seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, n_steps, cfg)
        loss = model(input_ids=batch, labels=batch).loss
        if not math.isfinite(loss.item()):
            raise NeuronKindsError(f"training diverged at step {step} (loss {loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        window.append(loss.item())
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == n_steps:
            point = {
                "step": step + 1,
                "tokens": (step + 1) * tokens_per_step,
                "loss": sum(window) / len(window),
            }
            curve.append(point)
            window = []
            if log:
                rate = point["tokens"] / (time.perf_counter() - train_start - keep_seconds)
                print(
                    f"step {point['step']}/{n_steps} tokens {point['tokens']} "
                    f"loss {point['loss']:.4f} lr {lr_at(step, n_steps, cfg):.2e} {rate:.0f} tok/s",
                    flush=True,
                )
        if step + 1 in keep.steps:
            keep_start = time.perf_counter()
            recent = losses[-cfg.log_every :]
            so_far = {
                **about,
                "run_steps": n_steps,
                "final_train_loss": sum(recent) / len(recent),
                "loss_curve": [dict(point) for point in curve],
                "wall_seconds": {
                    "data_and_tokenizer": data_seconds,
                    "train": keep_start - train_start - keep_seconds,
                },
            }
            own = tokenizer if keep.with_tokenizer else None
            _keep_checkpoint(model, own, heldout, cfg, step + 1, keep.out, so_far, log)
            keep_seconds += time.perf_counter() - keep_start
    train_seconds = time.perf_counter() - train_start - keep_seconds
    model.half().float()  # the held-out loss is that of the float16 weights we ship
    if cfg.variant == "nopos" and bool(positional_table(model).any()):
        raise NeuronKindsError("nopos training changed the positional embedding")
    record = {
        **about,
        **_progress(cfg, n_steps, about, mean_loss(model, heldout, cfg.batch_size)),
        "final_train_loss": curve[-1]["loss"],
        "loss_curve": curve,
        "kept_steps": sorted(keep.steps),
        "wall_seconds": {
            "data_and_tokenizer": data_seconds,
            "train": train_seconds,
            "kept_checkpoints": keep_seconds,
            "total": time.perf_counter() - start,
        },
    }
    return model.half(), tokenizer, record


def _about(
    cfg: TrainConfig,
    train_docs: Corpus,
    heldout_docs: Corpus,
    data: torch.Tensor,
    heldout: torch.Tensor,
    threads: int,
) -> dict[str, Any]:
    """The parts of a training record that are the same at every step of the run."""
    return {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "train_rows_available": int(data.shape[0]),
        "heldout_tokens": int(heldout.numel()),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "corpus": {"train": train_docs.description, "heldout": heldout_docs.description},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


def _progress(
    cfg: TrainConfig, steps: int, about: dict[str, Any], heldout_loss: float
) -> dict[str, Any]:
    """How far a model is after ``steps`` steps: steps, tokens, epochs and held-out loss."""
    return {
        "steps": steps,
        "tokens_seen": steps * cfg.batch_size * cfg.seq_len,
        "epochs": steps * cfg.batch_size / about["train_rows_available"],
        "heldout_loss": heldout_loss,
    }


def _keep_checkpoint(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    heldout: Int[torch.Tensor, "n_seq pos"],
    cfg: TrainConfig,
    step: int,
    out: Path,
    so_far: dict[str, Any],
    log: bool,
) -> None:
    """Write the model after ``step`` steps to ``kept_checkpoint(out, step)`` as the final
    model is written (float16; its held-out loss measured on those weights; ``so_far`` the rest
    of its record), without touching the model being trained or any random state."""
    snapshot = copy.deepcopy(model)
    snapshot.zero_grad(set_to_none=True)
    snapshot.half().float()
    heldout_loss = mean_loss(snapshot, heldout, cfg.batch_size)
    record = {**so_far, **_progress(cfg, step, so_far, heldout_loss)}
    directory = kept_checkpoint(out, step)
    directory.mkdir(parents=True)
    _write(snapshot.half(), tokenizer, record, directory)
    if log:
        print(f"kept step {step}: held-out loss {heldout_loss:.4f}", flush=True)
