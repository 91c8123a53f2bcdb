"""``record()``: a whole recording run — the n-gram plan, batches, checkpoints, ranks.

With the n-gram cap (SPEC.md; the default, 50) a run has up to three passes, all exact
(``plan.py`` has the certificates they rest on):

1. **plan**: a unigram-only pass over an evenly spread sample of the rows (``SAMPLE_FRACTION``
   of them, at least ``SAMPLE_MIN_POSITIONS`` positions) chooses the plan, the neurons whose
   n >= 2 counts to keep (``plan.choose_plan``, generous by ``PLAN_MARGIN``);
2. **record**: every row; unigram and position counts for every neuron, n >= 2 counts for the
   planned ones. At ``REVIEWS`` of the way through, planned neurons whose tails already prove
   them spread out are dropped (``NeuronRecorder.review``), so memory stays flat. Checkpointed in
   intervals (``checkpoint.py``);
3. **repair**, only where the final counts leave a neuron without counts and without a proof
   (``plan.unknown``): every row again, but only up to the highest such layer and counting only
   those neurons' n-grams. Complete neurons whose exact ``k95_n`` exceeds the cap are then
   dropped with their tails as proof (``plan.finalize``).

Under an initialised ``torch.distributed`` process group every rank calls ``record`` with the
same full ``tokens``; rank r records rows ``r::world_size`` of each pass, the sample's unigram
counts are merged on every rank before the plan is chosen (so all ranks hold one plan), and
every rank gets the one merged profile back.
"""

import math
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.identity import model_identity
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.recording.checkpoint import RunCheckpoint
from tl_neuronkinds.recording.plan import (
    Expected,
    Plan,
    add_repair,
    check_cap,
    choose_plan,
    finalize,
    ngram_active,
    unknown_plan,
)
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.progress import Progress
from tl_neuronkinds.recording.recorder import (
    NeuronRecorder,
    check_layers,
    check_tokens,
    tokens_digest,
)
from tl_neuronkinds.recording.settings import (
    DEFAULT_CAP,
    DEFAULT_TOP_K,
    DEFAULT_WINDOW,
    check_top_k,
    check_window,
)

#: Tokens per forward when batch_size is None: the paper's 64k-token chunks on a GPU; less on a CPU.
_AUTO_TOKENS = {"cuda": 65536, "cpu": 16384}
#: The plan's sample: this share of the rows, evenly spread, and at least this many positions.
SAMPLE_FRACTION = 0.05
SAMPLE_MIN_POSITIONS = 1 << 14
#: Tokens between checkpoints when a checkpoint_dir is given without checkpoint_every.
DEFAULT_CHECKPOINT_TOKENS = 1 << 20
#: When the record pass reviews its tables (``NeuronRecorder.review``): as it passes these
#: fractions of its rows, and every ``REVIEW_EVERY`` tokens, so the planned neurons' tables never
#: hold more than that many tokens' worth of spread-out neurons (memory flat in run length).
REVIEWS = (1 / 8, 1 / 4, 1 / 2)
REVIEW_EVERY = 1 << 16
Carried = dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]


def record(
    model: Any,
    tokens: torch.Tensor,
    layers: list[int] | None = None,
    threshold: float = 0.0,
    ngram_max: int = 3,
    ngram_cap: int | None = DEFAULT_CAP,
    batch_size: int | None = None,
    *,
    corpus: str | None = None,
    progress: bool | None = None,
    bos_token_id: int | None = None,
    plan: Plan | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    histogram: bool = False,
    window: tuple[int, int] | None = DEFAULT_WINDOW,
) -> NeuronProfile:
    """Run ``tokens`` through ``model`` in batches and return the NeuronProfile of its neurons.

    Each forward stops after the last layer it needs (``stop_at_layer``), so no logits are
    computed; streamed (offloaded) models load only the blocks that run.

    Args:
        model: A HookedTransformer or TransformerBridge (e.g. from ``load_opt``).
        tokens: ``Int[n_seq pos]`` with BOS at position 0 of every row (checked, with a
            NeuronKindsError where it is not).
        layers, threshold, ngram_max: As for ``NeuronRecorder``.
        ngram_cap: The n-gram cap (SPEC.md; an integer >= 5): n >= 2 counts are kept only for
            the neurons that can have ``k95_n <= ngram_cap``; detectors stay exact for any cap.
            None keeps every neuron's (memory grows with tokens: small runs only).
        batch_size: Sequences per forward (default: about 64k tokens on a GPU, 16k on a CPU).
        corpus: A description of the corpus, stored with the profile.
        progress: Show progress (default: a bar in a terminal or notebook, a line every 30 s
            in a log); False for none.
        bos_token_id: BOS id; default: the model's tokenizer's.
        plan: Use this plan (layer -> bool mask, e.g. ``other_profile.plan``) instead of
            choosing one; neurons it misses are still recounted.
        checkpoint_dir: Save progress here every ``checkpoint_every`` tokens; a later call with
            the same model, tokens and settings resumes from it, and once finished returns the
            saved profile (``checkpoint.py``).
        checkpoint_every: Tokens between checkpoints (default 1,048,576).
        top_k: Keep each neuron's ``top_k`` largest activations with their row of ``tokens``
            and position, for max-activating contexts (``nk.max_activating_contexts``); 0
            keeps none.
        histogram: Keep each neuron's activation histogram (``nk.activation_histogram``;
            on a CPU it costs about as much as the rest of the counting).
        window: ``(before, after)``: with each top activation keep its context, the tokens and
            the neuron's activations from ``before`` positions before it to ``after`` after, so
            that contexts need neither a forward nor the tokens (memory: layers x d_mlp x
            top_k x (before + 1 + after) x 12 bytes); None keeps none.

    Returns:
        The NeuronProfile; ``meta["passes"]`` has each pass's tokens and seconds and
        ``meta["record_seconds"]`` the run's (every session of a resumed run included).
    """
    start = time.perf_counter()
    cap = check_cap(ngram_cap)
    layers = check_layers(layers, model.cfg.n_layers)
    make = _RecorderFactory(
        model,
        layers,
        threshold,
        ngram_max,
        cap,
        bos_token_id,
        check_top_k(top_k),
        histogram,
        check_window(window),
    )
    check_tokens(tokens, model, make.bos_token_id)
    rank, world_size = _world()
    seq_len = tokens.shape[1]
    ckpt = None
    if checkpoint_dir is not None:
        settings = {
            **model_identity(model),
            "tokens": tokens_digest(tokens),
            "layers": layers,
            "threshold": float(threshold),
            "ngram_max": ngram_max,
            "ngram_cap": cap,
            "top_k": top_k,
            "histogram": bool(histogram),
            "window": make.window,
            "plan": None if plan is None else _plan_digest(plan),
            "world_size": world_size,
        }
        ckpt = RunCheckpoint(checkpoint_dir, settings, rank, world_size)
        if ckpt.finished:
            return ckpt.final()
    run = _Run(
        model,
        tokens,
        make,
        ckpt,
        batch=_batch_size(batch_size, model, seq_len),
        every=_checkpoint_rows(checkpoint_dir, checkpoint_every, seq_len),
        corpus=corpus,
        start=start,
    )
    capped = cap is not None and ngram_max >= 2
    expected = None
    if capped and plan is None and ckpt is not None:
        plan, expected = ckpt.plan()
    need_sample = capped and plan is None
    sample = _sample_rows(tokens.shape[0], seq_len)
    run.open_progress(sample[rank::world_size].numel() * seq_len if need_sample else 0, progress)
    try:
        if need_sample:
            plan, expected = run.plan_pass(sample, ngram_max)
        profile = run.record_pass(plan if capped else None, expected)
        lacking = unknown_plan(profile)
        if lacking:
            run.repair_pass(profile, lacking)
    finally:
        run.bar.close()
    finalize(profile)
    seconds = run.seconds()
    profile.meta.update(
        corpus=corpus,
        record_seconds=round(seconds, 3),
        passes=run.passes,
        tokens_digest=tokens_digest(tokens),
    )
    if world_size > 1:
        profile.meta["world_size"] = world_size
    if ckpt is not None:
        ckpt.finish(profile, seconds)
    return profile


class _Run:
    """One recording run's passes over this rank's rows (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokens: torch.Tensor,
        make: "_RecorderFactory",
        ckpt: RunCheckpoint | None,
        *,
        batch: int,
        every: int,
        corpus: str | None,
        start: float,
    ) -> None:
        self.model, self.tokens, self.make, self.ckpt = model, tokens, make, ckpt
        self.rank, self.world_size = _world()
        self.local = tokens[self.rank :: self.world_size]
        self.batch, self.every, self.corpus, self.start = batch, every, corpus, start
        self.earlier = ckpt.seconds if ckpt else 0.0
        self.done_rows = ckpt.rows_done if ckpt else 0
        self.passes: dict[str, dict[str, Any]] = {}
        self.bar = Progress(0, enabled=False)

    def seconds(self) -> float:
        """Seconds this run has taken, every session of a resumed run included."""
        return self.earlier + time.perf_counter() - self.start

    def open_progress(self, sample_tokens: int, progress: bool | None) -> None:
        seq_len = self.tokens.shape[1]
        self.bar = Progress(
            sample_tokens + self.local.numel(),
            initial=self.done_rows * seq_len,
            enabled=(progress is not False) and self.rank == 0,
        )
        if self.done_rows:
            remain = (self.local.shape[0] - self.done_rows) * seq_len * self.world_size
            self.bar.note(
                f"resuming: {self.done_rows * seq_len * self.world_size:,} tokens already "
                f"recorded, {remain:,} remain"
            )

    def plan_pass(self, sample: torch.Tensor, ngram_max: int) -> tuple[Plan, Expected]:
        """The unigram sample: the plan and each neuron's projected activations."""
        self.bar.set_phase("plan")
        t0 = time.perf_counter()
        rows = self.tokens[sample[self.rank :: self.world_size]]
        recorder = self.make(ngram_max=1, cap=None, examples=False)
        _record_rows(recorder, self.model, rows, self.batch, self.bar)
        sampled = _gather(recorder.profile() if rows.shape[0] else None, self.world_size)
        plan = choose_plan(sampled, self.make.cap or 0, ngram_max)
        scale = self.tokens.shape[0] / sample.numel() / self.world_size
        expected = _expected(sampled, scale, ngram_max)
        self.passes["plan"] = _timing(sampled.n_positions, t0)
        if self.ckpt is not None:
            self.ckpt.save_plan(plan, expected, self.seconds())
        return plan, expected

    def record_pass(self, plan: Plan | None, expected: Expected | None) -> NeuronProfile:
        """Every row: unigram and position counts for all, n >= 2 for the plan; reviews."""
        self.bar.set_phase("record")
        t0 = time.perf_counter()
        ckpt, local = self.ckpt, self.local
        segments = ckpt.segments() if ckpt else []
        capped = plan is not None
        carried = _carried(segments) if capped and segments else None
        if segments and capped:
            plan = _still_counted(segments[-1])
        recorder = self.make(plan=plan, first_row=self._global_row(self.done_rows))
        for first in range(self.done_rows, local.shape[0], self.every):
            rows = local[first : first + self.every]
            reviews = _Reviews(recorder, local.shape, carried, expected)
            _record_rows(
                recorder, self.model, rows, self.batch, self.bar, partial(reviews.after, first)
            )
            if ckpt is None:
                segments.append(recorder.profile(corpus=self.corpus))
                continue
            segment = recorder.profile(corpus=self.corpus)
            ckpt.add_segment(segment, first + rows.shape[0], self.seconds())
            segments.append(segment)
            if capped:
                carried = _carried([segment], carried)
                plan = _still_counted(segment)
            recorder = self.make(plan=plan, first_row=self._global_row(first + rows.shape[0]))
        del recorder  # its tables are in the segments now
        merged = NeuronProfile.merge(segments, same_tokens=True) if segments else None
        profile = _gather(merged, self.world_size)
        self.passes["record"] = _timing(profile.n_positions, t0)
        return profile

    def _global_row(self, local_row: int) -> int:
        """The row of ``tokens`` that this rank's ``local_row`` is."""
        return self.rank + local_row * self.world_size

    def repair_pass(
        self, profile: NeuronProfile, lacking: dict[int, dict[int, torch.Tensor]]
    ) -> None:
        """Every row again, up to the highest layer concerned: count the unknown neurons."""
        self.bar.set_phase("repair")
        self.bar.extend(self.local.numel())
        t0 = time.perf_counter()
        union = {layer: torch.stack(list(by_n.values())).any(0) for layer, by_n in lacking.items()}
        fixer = self.make(layers=sorted(lacking), plan=union, examples=False)
        _record_rows(fixer, self.model, self.local, self.batch, self.bar)
        repair = _gather(fixer.profile() if self.local.shape[0] else None, self.world_size)
        add_repair(profile, repair, lacking)
        self.passes["repair"] = _timing(repair.n_positions, t0)
        self.passes["repair"]["neurons"] = sum(int(m.sum()) for m in union.values())


class _RecorderFactory:
    """Fresh NeuronRecorders with the run's settings (one per pass or checkpoint interval)."""

    def __init__(
        self,
        model: Any,
        layers: list[int],
        threshold: float,
        ngram_max: int,
        cap: int | None,
        bos_token_id: int | None,
        top_k: int,
        histogram: bool,
        window: tuple[int, int] | None,
    ) -> None:
        self.model, self.layers, self.threshold = model, layers, threshold
        self.ngram_max, self.cap = ngram_max, cap
        self.top_k, self.histogram = top_k, histogram
        self.window = window if top_k else None
        self.world_size = _world()[1]
        first = NeuronRecorder(model, layers, threshold, ngram_max, bos_token_id=bos_token_id)
        self.bos_token_id = first.bos_token_id

    def __call__(
        self,
        *,
        layers: list[int] | None = None,
        ngram_max: int | None = None,
        cap: int | None = -1,
        plan: Plan | None = None,
        examples: bool = True,
        first_row: int = 0,
    ) -> NeuronRecorder:
        """A recorder; ``examples`` (top-k, histogram) only for the record pass, whose rows
        start at ``first_row`` of the tokens and step by the number of ranks."""
        return NeuronRecorder(
            self.model,
            layers or self.layers,
            self.threshold,
            self.ngram_max if ngram_max is None else ngram_max,
            ngram_cap=self.cap if cap == -1 else cap,
            plan=plan,
            bos_token_id=self.bos_token_id,
            top_k=self.top_k if examples else 0,
            histogram=self.histogram and examples,
            window=self.window,
            first_row=first_row,
            row_stride=self.world_size,
        )


def _record_rows(
    recorder: NeuronRecorder,
    model: Any,
    rows: torch.Tensor,
    batch: int,
    bar: Progress,
    after: Callable[[int, int], None] | None = None,
) -> None:
    """Forward ``rows`` in batches under ``recorder``, stopping after its last layer;
    ``after(rows_before, rows_after)`` runs after each batch."""
    device = _model_device(model)
    stop = recorder.layers[-1] + 1
    with torch.inference_mode(), recorder.recording(), stop_at(model, stop):
        for first in range(0, rows.shape[0], batch):
            part = rows[first : first + batch].to(device)
            model(part, stop_at_layer=stop)
            bar.update(part.numel())
            if after is not None:
                after(first, first + part.shape[0])


class _Reviews:
    """Calls ``recorder.review`` after a batch that crosses one of ``REVIEWS`` or a multiple of
    ``REVIEW_EVERY`` tokens. Crossings depend only on where the batch lies in the pass, so a
    resumed run reviews where an uninterrupted one did."""

    def __init__(
        self,
        recorder: NeuronRecorder,
        shape: tuple[int, ...],
        carried: Carried | None,
        expected: Expected | None,
    ) -> None:
        self.recorder, (self.n_rows, self.seq_len) = recorder, shape
        self.carried, self.expected = carried, expected

    def after(self, offset: int, rows_before: int, rows_after: int) -> None:
        if self.recorder.ngram_cap is None:
            return
        before, after = offset + rows_before, offset + rows_after
        crossed = any(before < point * self.n_rows <= after for point in REVIEWS) or (
            before * self.seq_len // REVIEW_EVERY < after * self.seq_len // REVIEW_EVERY
        )
        if crossed:
            self.recorder.review(after / self.n_rows, self.carried, self.expected)


def _expected(sample: NeuronProfile, scale: float, ngram_max: int) -> Expected:
    """Layer -> n -> each neuron's activations at order n projected from the sample (this
    rank's share: ``scale`` = rows per sampled row / ranks)."""
    return {
        layer: {
            n: torch.from_numpy(ngram_active(sample, layer, n) * scale)
            for n in range(2, ngram_max + 1)
        }
        for layer in sample.layers
    }


def _still_counted(segment: NeuronProfile) -> Plan:
    """Layer -> the neurons whose n >= 2 counts ``segment`` still kept at its end."""
    return {
        layer: torch.stack(
            [segment.complete(layer, n) for n in range(2, segment.ngram_max + 1)]
        ).any(0)
        for layer in segment.layers
    }


def _carried(segments: list[NeuronProfile], carried: Carried | None = None) -> Carried:
    """Layer -> n -> (tail bounds, activations) summed over ``segments`` (and ``carried``)."""
    out: Carried = {} if carried is None else {k: dict(v) for k, v in carried.items()}
    for seg in segments:
        assert seg.ngram_cap is not None
        for layer in seg.layers:
            for n in range(2, seg.ngram_max + 1):
                exact = seg.counts[layer].ngrams[n].neuron_tails(seg.d_mlp, seg.ngram_cap)[1]
                tail = torch.where(seg.complete(layer, n), exact, seg.tail(layer, n))
                active = torch.from_numpy(ngram_active(seg, layer, n))
                old = out.setdefault(layer, {}).get(n)
                out[layer][n] = (tail, active) if old is None else (old[0] + tail, old[1] + active)
    return out


def _sample_rows(n_seq: int, seq_len: int) -> torch.Tensor:
    """Evenly spread row indices: ``SAMPLE_FRACTION`` of the rows, at least the minimum."""
    wanted = max(math.ceil(SAMPLE_FRACTION * n_seq), math.ceil(SAMPLE_MIN_POSITIONS / seq_len))
    k = min(n_seq, wanted)
    return torch.tensor(sorted({i * n_seq // k for i in range(k)}), dtype=torch.int64)


def _batch_size(batch_size: int | None, model: Any, seq_len: int) -> int:
    if batch_size is None:
        device = _model_device(model)
        return max(1, _AUTO_TOKENS.get(device.type, _AUTO_TOKENS["cuda"]) // seq_len)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NeuronKindsError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _checkpoint_rows(directory: Any, every: int | None, seq_len: int) -> int:
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


def _plan_digest(plan: Plan) -> dict[str, int]:
    return {str(layer): int(mask.sum()) for layer, mask in sorted(plan.items())}


def _timing(tokens: int, since: float) -> dict[str, Any]:
    return {"tokens": tokens, "seconds": round(time.perf_counter() - since, 3)}


def _world() -> tuple[int, int]:
    """(rank, world_size) under an initialised torch.distributed process group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(profile: NeuronProfile | None, world_size: int) -> NeuronProfile:
    """Every rank's profile, merged (exactly, as counts add), returned on every rank."""
    if world_size == 1:
        assert profile is not None  # check_tokens ensured at least one row
        return profile
    parts: list[NeuronProfile | None] = [None] * world_size
    torch.distributed.all_gather_object(parts, profile)
    return NeuronProfile.merge([p for p in parts if p is not None], same_tokens=True)


def _model_device(model: Any) -> torch.device:
    device = getattr(model.cfg, "device", None)
    if device is None:
        return next(model.parameters()).device
    return torch.device(device)
