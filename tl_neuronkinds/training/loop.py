"""Train the tiny OPT, measure its held-out loss, and write the checkpoint atomically.

The output directory is what ``save_pretrained`` writes for a real OPT checkpoint (``config.json``
with ``dtype`` float16, ``model.safetensors``) plus the tokenizer files and
``training_record.json`` (settings, seed, tokens seen, steps, wall time, device, threads, the loss
curve and the final held-out loss). Everything is written to a temporary sibling directory and
renamed into place at the end, so an interrupted run never leaves a half-written model.
"""

import itertools
import json
import math
import platform
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from jaxtyping import Int
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from tl_neuronkinds.atomic import atomic_dir, follow_umask
from tl_neuronkinds.corpus import Corpus
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.config import TrainConfig
from tl_neuronkinds.training.model import VARIANTS, build_model, positional_table
from tl_neuronkinds.training.tokenizer import train_tokenizer

RECORD_NAME = "training_record.json"


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


def _write_atomically(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    record: dict[str, Any],
    out: Path,
) -> None:
    """Save weights (float16), tokenizer and record to a temporary sibling, then rename to ``out``."""
    with atomic_dir(out) as tmp:
        model.config.dtype = torch.float16
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
        for path in tmp.iterdir():  # safetensors writes 0600; a shipped model is world-readable
            follow_umask(path)


def train(
    cfg: TrainConfig,
    out: Path,
    train_docs: Corpus,
    heldout_docs: Corpus,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    threads: int = 1,
    log: bool = True,
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
        threads: ``torch.set_num_threads`` for the run (recorded: float sums depend on it).
        log: Print the loss every ``cfg.log_every`` steps.

    Returns:
        The training record that was written beside the weights.
    """
    tokens_per_step = cfg.batch_size * cfg.seq_len
    n_steps = cfg.n_tokens // tokens_per_step
    if n_steps < 1:
        raise NeuronKindsError(
            f"n_tokens={cfg.n_tokens} is less than one batch ({tokens_per_step} tokens)"
        )
    if cfg.variant not in VARIANTS:
        raise NeuronKindsError(f"unknown variant {cfg.variant!r}; expected one of {VARIANTS}")
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        model, tokenizer, record = _run(cfg, train_docs, heldout_docs, tokenizer, threads, log)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)
    _write_atomically(model, tokenizer, record, out)
    return record


def _run(
    cfg: TrainConfig,
    train_docs: Corpus,
    heldout_docs: Corpus,
    tokenizer: PreTrainedTokenizerBase | None,
    threads: int,
    log: bool,
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
    n_steps = cfg.n_tokens // tokens_per_step
    data = train_docs.tokenize(tokenizer, seq_len=cfg.seq_len)
    heldout = heldout_docs.tokenize(tokenizer, seq_len=cfg.seq_len)
    heldout = heldout[: math.ceil(cfg.heldout_tokens / cfg.seq_len)]
    data_seconds = time.perf_counter() - start

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.shape, cfg.variant, cfg.dropout)
    optimizer = _optimizer(model, cfg)
    curve: list[dict[str, float]] = []
    window: list[float] = []
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
        if (step + 1) % cfg.log_every == 0 or step + 1 == n_steps:
            point = {
                "step": step + 1,
                "tokens": (step + 1) * tokens_per_step,
                "loss": sum(window) / len(window),
            }
            curve.append(point)
            window = []
            if log:
                rate = point["tokens"] / (time.perf_counter() - train_start)
                print(
                    f"step {point['step']}/{n_steps} tokens {point['tokens']} "
                    f"loss {point['loss']:.4f} lr {lr_at(step, n_steps, cfg):.2e} {rate:.0f} tok/s",
                    flush=True,
                )
    train_seconds = time.perf_counter() - train_start
    model.half().float()  # the held-out loss is that of the float16 weights we ship
    if cfg.variant == "nopos" and bool(positional_table(model).any()):
        raise NeuronKindsError("nopos training changed the positional embedding")
    heldout_loss = mean_loss(model, heldout, cfg.batch_size)
    record = {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "steps": n_steps,
        "tokens_seen": n_steps * tokens_per_step,
        "train_rows_available": int(data.shape[0]),
        "epochs": n_steps * cfg.batch_size / data.shape[0],
        "heldout_tokens": int(heldout.numel()),
        "heldout_loss": heldout_loss,
        "final_train_loss": curve[-1]["loss"],
        "loss_curve": curve,
        "wall_seconds": {
            "data_and_tokenizer": data_seconds,
            "train": train_seconds,
            "total": time.perf_counter() - start,
        },
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
    return model.half(), tokenizer, record
