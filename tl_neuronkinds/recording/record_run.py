"""``record()``: a whole recording run — the n-gram plan, batches, checkpoints, ranks.

With the n-gram cap (docs/kinds.md; the default, 50) a run has up to three passes, all exact
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
from functools import partial
from typing import Any

import torch

from tl_neuronkinds.loading.identity import model_identity
from tl_neuronkinds.loading.tokens import check_tokens
from tl_neuronkinds.progress import Progress
from tl_neuronkinds.recording.batching import (
    batch_size_for,
    checkpoint_rows,
    gather,
    plan_digest,
    record_rows,
    timing,
    world,
)
from tl_neuronkinds.recording.checkpoint import RunCheckpoint
from tl_neuronkinds.recording.plan import (
    Carried,
    Expected,
    Plan,
    add_repair,
    carried_tails,
    choose_plan,
    expected_activations,
    finalize,
    still_counted,
    unknown_plan,
)
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.recorder import NeuronRecorder, check_layers, tokens_digest
from tl_neuronkinds.recording.settings import (
    DEFAULT_CAP,
    DEFAULT_TOP_K,
    DEFAULT_WINDOW,
    RecordingSettings,
)

#: The plan's sample: this share of the rows, evenly spread, and at least this many positions.
SAMPLE_FRACTION = 0.05
SAMPLE_MIN_POSITIONS = 1 << 14
#: When the record pass reviews its tables (``NeuronRecorder.review``): as it passes these
#: fractions of its rows, and every ``REVIEW_EVERY`` tokens, so the planned neurons' tables never
#: hold more than that many tokens' worth of spread-out neurons (memory flat in run length).
REVIEWS = (1 / 8, 1 / 4, 1 / 2)
REVIEW_EVERY = 1 << 16


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
    settings: RecordingSettings | None = None,
) -> NeuronProfile:
    """Run ``tokens`` through ``model`` in batches and return the NeuronProfile of its neurons.

    Each forward stops after the last layer it needs (``stop_at_layer``), so no logits are
    computed; streamed (offloaded) models load only the blocks that run.

    Args:
        model: A HookedTransformer or TransformerBridge (e.g. from ``load_opt``).
        tokens: ``Int[n_seq pos]`` with BOS at position 0 of every row (checked, with a
            NeuronKindsError where it is not).
        layers, threshold, ngram_max: As for ``NeuronRecorder``.
        ngram_cap: The n-gram cap (docs/kinds.md; an integer >= 5): n >= 2 counts are kept only for
            the neurons that can have ``k95_n <= ngram_cap``; detectors stay exact for any cap.
            None keeps every neuron's (memory grows with tokens: small runs only).
        batch_size: Sequences per forward (default: about 64k tokens on a GPU, 16k on a CPU).
        corpus: A description of the corpus, stored with the profile.
        progress: Show progress (default): each pass named with its own total of tokens
            (``record pass 1/2 (plan sample)``, ``record pass 2/2 (record)``, ``record extra
            pass (repair)``), as a bar in a terminal or notebook, or in a log as lines when
            it starts, every 30 s (``TL_NEURONKINDS_PROGRESS_SECONDS``) and when it ends
            (``tl_neuronkinds.progress``); False for none.
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
        settings: threshold, ngram_max, ngram_cap, top_k, histogram, window and bos_token_id
            at once (``settings.RecordingSettings``), instead of those keywords.

    Returns:
        The NeuronProfile; ``meta["passes"]`` has each pass's tokens and seconds and
        ``meta["record_seconds"]`` the run's (every session of a resumed run included).
    """
    start = time.perf_counter()
    if settings is None:
        settings = RecordingSettings(
            threshold=threshold,
            ngram_max=ngram_max,
            ngram_cap=ngram_cap,
            top_k=top_k,
            histogram=histogram,
            window=window,
            bos_token_id=bos_token_id,
        )
    settings = settings.resolve_bos(model)
    layers = check_layers(layers, model.cfg.n_layers)
    check_tokens(tokens, model, settings.bos)
    rank, world_size = world()
    seq_len = tokens.shape[1]
    ckpt = None
    if checkpoint_dir is not None:
        identity = {
            **model_identity(model),
            "tokens": tokens_digest(tokens),
            "layers": layers,
            **settings.to_dict(),
            "plan": None if plan is None else plan_digest(plan),
            "world_size": world_size,
        }
        ckpt = RunCheckpoint(checkpoint_dir, identity, rank, world_size)
        if ckpt.finished:
            Progress(0, enabled=progress is not False and rank == 0).note(
                f"record: already done, the profile saved in {checkpoint_dir}"
            )
            return ckpt.final()
    run = RecordingPasses(
        model,
        tokens,
        layers,
        settings,
        ckpt,
        batch=batch_size_for(batch_size, model, seq_len),
        every=checkpoint_rows(checkpoint_dir, checkpoint_every, seq_len),
        corpus=corpus,
        start=start,
    )
    expected = None
    if settings.capped and plan is None and ckpt is not None:
        plan, expected = ckpt.plan()
    need_sample = settings.capped and plan is None
    sample = _sample_rows(tokens.shape[0], seq_len)
    run.open_progress(["plan sample", "record"] if need_sample else ["record"], progress)
    try:
        if need_sample:
            plan, expected = run.plan_pass(sample)
        profile = run.record_pass(plan if settings.capped else None, expected)
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


class RecordingPasses:
    """The passes of one ``record`` run over this rank's rows (plan, record, repair: see the
    module docstring), each with fresh ``NeuronRecorder``s of the run's settings."""

    def __init__(
        self,
        model: Any,
        tokens: torch.Tensor,
        layers: list[int],
        settings: RecordingSettings,
        ckpt: RunCheckpoint | None,
        *,
        batch: int,
        every: int,
        corpus: str | None,
        start: float,
    ) -> None:
        self.model, self.tokens, self.ckpt = model, tokens, ckpt
        self.layers, self.settings = layers, settings
        self.rank, self.world_size = world()
        self.local = tokens[self.rank :: self.world_size]
        self.batch, self.every, self.corpus, self.start = batch, every, corpus, start
        self.earlier = ckpt.seconds if ckpt else 0.0
        self.done_rows = ckpt.rows_done if ckpt else 0
        self.passes: dict[str, dict[str, Any]] = {}
        self.bar = Progress(0, enabled=False)
        self.planned: list[str] = []

    def seconds(self) -> float:
        """Seconds this run has taken, every session of a resumed run included."""
        return self.earlier + time.perf_counter() - self.start

    def open_progress(self, planned: list[str], progress: bool | None) -> None:
        """One display for the run (rank 0 only), its ``planned`` passes each counted out of
        the tokens it forwards (``begin``)."""
        self.planned = planned
        self.bar = Progress(0, enabled=(progress is not False) and self.rank == 0)

    def begin(self, name: str, total: int, initial: int = 0) -> None:
        """Start the display's next pass: ``record pass i/n (name)`` (``extra pass`` for one
        beyond those planned, the repair), counting ``total`` tokens of this rank's rows."""
        if name in self.planned:
            where = f"pass {self.planned.index(name) + 1}/{len(self.planned)}"
        else:
            where = "extra pass"
        ranks = f", rank 0 of {self.world_size}" if self.world_size > 1 else ""
        self.bar.set_phase(f"record {where} ({name}{ranks})", total, initial=initial)

    def plan_pass(self, sample: torch.Tensor) -> tuple[Plan, Expected]:
        """The unigram sample: the plan and each neuron's projected activations."""
        t0 = time.perf_counter()
        rows = self.tokens[sample[self.rank :: self.world_size]]
        self.begin("plan sample", rows.numel())
        recorder = self._recorder(self.settings.unigram_sample())
        record_rows(recorder, self.model, rows, self.batch, self.bar)
        sampled = gather(recorder.profile() if rows.shape[0] else None, self.world_size)
        ngram_max, cap = self.settings.ngram_max, self.settings.ngram_cap
        assert cap is not None  # only a capped run samples
        plan = choose_plan(sampled, cap, ngram_max)
        scale = self.tokens.shape[0] / sample.numel() / self.world_size
        expected = expected_activations(sampled, scale, ngram_max)
        self.passes["plan"] = timing(sampled.n_positions, t0)
        if self.ckpt is not None:
            self.ckpt.save_plan(plan, expected, self.seconds())
        return plan, expected

    def record_pass(self, plan: Plan | None, expected: Expected | None) -> NeuronProfile:
        """Every row: unigram and position counts for all, n >= 2 for the plan; reviews."""
        t0 = time.perf_counter()
        ckpt, local = self.ckpt, self.local
        if self.done_rows:
            done, seq_len = self.done_rows * self.world_size, local.shape[1]
            self.bar.note(
                f"resuming: {done * seq_len:,} tokens already recorded, "
                f"{(self.tokens.shape[0] - done) * seq_len:,} remain"
            )
        self.begin("record", local.numel(), self.done_rows * local.shape[1])
        segments = ckpt.segments() if ckpt else []
        capped = plan is not None
        carried = carried_tails(segments) if capped and segments else None
        if segments and capped:
            plan = still_counted(segments[-1])
        recorder = self._recorder(
            self.settings, plan=plan, first_row=self._global_row(self.done_rows)
        )
        for first in range(self.done_rows, local.shape[0], self.every):
            rows = local[first : first + self.every]
            reviews = _Reviews(recorder, local.shape, carried, expected)
            record_rows(
                recorder, self.model, rows, self.batch, self.bar, partial(reviews.after, first)
            )
            if ckpt is None:
                segments.append(recorder.profile(corpus=self.corpus))
                continue
            segment = recorder.profile(corpus=self.corpus)
            ckpt.add_segment(segment, first + rows.shape[0], self.seconds())
            segments.append(segment)
            if capped:
                carried = carried_tails([segment], carried)
                plan = still_counted(segment)
            recorder = self._recorder(
                self.settings, plan=plan, first_row=self._global_row(first + rows.shape[0])
            )
        del recorder  # its tables are in the segments now
        merged = NeuronProfile.merge(segments, same_tokens=True) if segments else None
        profile = gather(merged, self.world_size)
        self.passes["record"] = timing(profile.n_positions, t0)
        return profile

    def _recorder(
        self,
        settings: RecordingSettings,
        layers: list[int] | None = None,
        *,
        plan: Plan | None = None,
        first_row: int = 0,
    ) -> NeuronRecorder:
        """A fresh recorder of ``settings`` (one per pass or checkpoint interval) on ``layers``
        (default: the run's), whose rows start at ``first_row`` of the tokens and step by the
        number of ranks."""
        return NeuronRecorder(
            self.model,
            layers or self.layers,
            plan=plan,
            first_row=first_row,
            row_stride=self.world_size,
            settings=settings,
        )

    def _global_row(self, local_row: int) -> int:
        """The row of ``tokens`` that this rank's ``local_row`` is."""
        return self.rank + local_row * self.world_size

    def repair_pass(
        self, profile: NeuronProfile, lacking: dict[int, dict[int, torch.Tensor]]
    ) -> None:
        """Every row again, up to the highest layer concerned: count the unknown neurons."""
        t0 = time.perf_counter()
        union = {layer: torch.stack(list(by_n.values())).any(0) for layer, by_n in lacking.items()}
        self.begin("repair", self.local.numel())
        fixer = self._recorder(self.settings.without_examples(), sorted(lacking), plan=union)
        record_rows(fixer, self.model, self.local, self.batch, self.bar)
        repair = gather(fixer.profile() if self.local.shape[0] else None, self.world_size)
        add_repair(profile, repair, lacking)
        self.passes["repair"] = timing(repair.n_positions, t0)
        self.passes["repair"]["neurons"] = sum(int(m.sum()) for m in union.values())


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


def _sample_rows(n_seq: int, seq_len: int) -> torch.Tensor:
    """Evenly spread row indices: ``SAMPLE_FRACTION`` of the rows, at least the minimum."""
    wanted = max(math.ceil(SAMPLE_FRACTION * n_seq), math.ceil(SAMPLE_MIN_POSITIONS / seq_len))
    k = min(n_seq, wanted)
    return torch.tensor(sorted({i * n_seq // k for i in range(k)}), dtype=torch.int64)
