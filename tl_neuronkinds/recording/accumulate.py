"""Streaming accumulation: batches of (tokens, activations) in, a NeuronProfile of counts out.

This is the model-free core of recording: ``NeuronRecorder`` (recorder.py) feeds it from hooks,
and ``profile_from_activations`` from tensors a user already has. Accumulators live on the
device of the activations and hold counts, never activations, so memory does not grow with the
tokens. One ``ProfileBuilder`` holds, per recorded layer, a ``LayerAccumulator``
(``layer_accumulator.py``: activity, per-position, unigram and n-gram counts, power sums, top-k
activations), and, once per batch, what the layers share (``batch_context.py``): the sequences,
text positions and n-gram occurrences ``o_g`` (Voita et al. 2024 §4.2).

Glossary: ``batch pos`` a batch of token rows, ``rows`` its flattened positions, ``d_mlp``
neurons.
"""

from dataclasses import replace

import torch
from jaxtyping import Float, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.batch_context import BatchContext
from tl_neuronkinds.recording.keys import SparseCounter, check_key_space
from tl_neuronkinds.recording.layer_accumulator import LayerAccumulator
from tl_neuronkinds.recording.plan import Plan, check_plan, finalize
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.settings import (
    MODEL_FREE_SETTINGS,
    OPT_BOS_TOKEN_ID,
    RecordingSettings,
)
from tl_neuronkinds.recording.top_k import TopActivations

# Activations turned into 0/1 at once. On a CPU small enough to stay in cache while the
# per-position, unigram and n-gram sums read them (measured: 16 MiB chunks take 49 ms per layer
# and batch of the embedded model where one 128 MiB chunk takes 68 ms); on a GPU, large.
_CHUNK_ELEMENTS = {"cpu": 1 << 22}
_CHUNK_ELEMENTS_GPU = 1 << 27
# Activations raised to powers at once, in two reused float64 buffers: on a CPU few enough to
# stay in cache (measured on the embedded model, 1 thread: the sums take 47 ms of CPU time per
# layer and batch of 16k tokens in 4 MiB blocks, 130 ms in 32 MiB ones), on a GPU many.
_POWER_ELEMENTS = {"cpu": 1 << 19}
_POWER_ELEMENTS_GPU = 1 << 24


class ProfileBuilder:
    """Accumulates batches into the counts of a NeuronProfile.

    Args:
        layers: Layer indices to record.
        d_mlp, d_vocab: Sizes of the model.
        settings: What to count (``settings.py``: threshold, n-gram order and cap, top-k,
            histogram, context window, BOS id; default ``MODEL_FREE_SETTINGS``: no cap, no top
            activations, OPT's BOS); its ``bos_token_id`` must be known.
        plan: Layer -> the neurons whose n >= 2 counts to keep (``plan.py``); None: every
            neuron's until ``restrict`` is called.
        first_row, row_stride: The sequence index, in the tokens the profile refers to, of the
            first row this builder sees, and the step between its rows (``nk.record``'s ranks
            record every ``world_size``-th row).
        token_strings: The tokenizer's string for every id (stored for triggers).
        meta: Provenance stored with the profile (``meta["recording"]`` gets the settings).
    """

    def __init__(
        self,
        layers: list[int],
        *,
        d_mlp: int,
        d_vocab: int,
        settings: RecordingSettings = MODEL_FREE_SETTINGS,
        plan: Plan | None = None,
        first_row: int = 0,
        row_stride: int = 1,
        token_strings: list[str] | None = None,
        meta: dict | None = None,
    ) -> None:
        if settings.bos_token_id is None:
            raise NeuronKindsError("ProfileBuilder needs the BOS id: settings.resolve_bos(model)")
        check_key_space(settings.ngram_max, d_vocab, d_mlp)
        self.layers = sorted(layers)
        self.d_mlp, self.d_vocab = d_mlp, d_vocab
        self.settings = settings
        if plan is not None:
            check_plan(plan, self.layers, d_mlp)
        self.plan = plan
        self.first_row, self.row_stride = first_row, row_stride
        self.token_strings = token_strings or [f"<{i}>" for i in range(d_vocab)]
        self.meta = {**(meta or {}), "recording": settings.to_dict()}
        self.seq_len: int | None = None
        self.n_seqs = self.n_text_positions = 0
        self._layers: dict[int, LayerAccumulator] = {}
        self._occ: dict[int, SparseCounter] = {}
        self._pos_text_seqs: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None
        self._powers: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the unigram and n-gram tables."""
        return sum(acc.nbytes for acc in self._layers.values())

    def context(self, tokens: Int[torch.Tensor, "batch pos"]) -> BatchContext:
        """Check a batch of tokens and prepare what its layers share."""
        if self.seq_len is None:
            self._start(tokens.shape[1], tokens.device)
        elif tokens.shape[1] != self.seq_len:
            raise NeuronKindsError(
                f"all sequences of a profile must have one length: got {tokens.shape[1]}, "
                f"earlier {self.seq_len}"
            )
        first = self.first_row + self.n_seqs * self.row_stride
        seqs = first + self.row_stride * torch.arange(tokens.shape[0], device=tokens.device)
        return BatchContext(
            tokens,
            bos_token_id=self.settings.bos,
            ngram_max=self.settings.ngram_max,
            d_vocab=self.d_vocab,
            seqs=seqs,
        )

    def _start(self, seq_len: int, device: torch.device) -> None:
        self.seq_len = seq_len
        for layer in self.layers:
            cols = None if self.plan is None else self.plan[layer].to(device).nonzero().squeeze(1)
            examples = (
                TopActivations(
                    self.d_mlp,
                    self.settings.top_k,
                    self.settings.histogram,
                    self.settings.threshold,
                    device,
                    self.settings.window,
                )
                if self.settings.top_k or self.settings.histogram
                else None
            )
            self._layers[layer] = LayerAccumulator(
                self.d_mlp,
                self.d_vocab,
                seq_len,
                self.settings.ngram_max,
                self.settings.bos,
                device,
                cols,
                examples,
            )
        self._occ = {n: SparseCounter(device) for n in range(1, self.settings.ngram_max + 1)}
        self._pos_text_seqs = torch.zeros(seq_len, dtype=torch.int64, device=device)

    def add_layer(
        self, ctx: BatchContext, layer: int, acts: Float[torch.Tensor, "batch pos d_mlp"]
    ) -> None:
        """Count one layer's activations for the batch of ``ctx``."""
        flat = acts.reshape(-1, self.d_mlp)
        chunk = _CHUNK_ELEMENTS.get(flat.device.type, _CHUNK_ELEMENTS_GPU)
        step = min(flat.shape[0], max(1, chunk // self.d_mlp))
        buffer = self._buffer
        if buffer is None or buffer.shape[0] < step or buffer.device != flat.device:
            buffer = self._buffer = torch.empty(step, self.d_mlp, device=flat.device)
        powers = self._powers
        if powers is None or powers.device != flat.device:
            block = _POWER_ELEMENTS.get(flat.device.type, _POWER_ELEMENTS_GPU) // self.d_mlp
            powers = self._powers = flat.new_empty(
                2, max(1, block), self.d_mlp, dtype=torch.float64
            )
        self._layers[layer].add(ctx, flat, self.settings.threshold, buffer[:step], powers)

    def add_tokens(self, ctx: BatchContext) -> None:
        """Count the batch's sequences, text positions and n-gram occurrences (once per batch)."""
        assert self._pos_text_seqs is not None
        if self.n_seqs + ctx.text.shape[0] >= 2**31:
            raise NeuronKindsError(
                "a recording holds at most 2**31 - 1 sequences; record in parts and merge them"
            )
        self.n_seqs += ctx.text.shape[0]
        self.n_text_positions += int(ctx.text.sum())
        self._pos_text_seqs += ctx.text.sum(0)
        for n, groups in ctx.groups.items():
            self._occ[n].add(groups.ids, groups.occurrences)

    def add_batch(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        acts: dict[int, Float[torch.Tensor, "batch pos d_mlp"]],
    ) -> None:
        """Count a batch given every recorded layer's activations."""
        missing = set(self.layers) - set(acts)
        if missing:
            raise NeuronKindsError(f"activations missing for layers {sorted(missing)}")
        ctx = self.context(tokens)
        for layer in self.layers:
            self.add_layer(ctx, layer, acts[layer])
        self.add_tokens(ctx)

    def restrict(self, plan: Plan) -> None:
        """Fix the plan: from now on keep n >= 2 counts only for the neurons it names."""
        check_plan(plan, self.layers, self.d_mlp)
        self.plan = {layer: plan[layer].cpu() for layer in self.layers}
        for layer, acc in self._layers.items():
            acc.restrict(self.plan[layer])

    def review(
        self,
        fraction_done: float,
        carried: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
        expected: dict[int, dict[int, torch.Tensor]] | None = None,
    ) -> None:
        """Drop planned neurons whose tails prove them spread out (``plan.review_drop``).

        ``fraction_done`` is how far into its pass the recording is; ``carried`` (layer -> n ->
        (tail bounds, activations)) what earlier checkpoint intervals of the pass counted;
        ``expected`` (layer -> n -> activations) the projected activations of the whole pass.
        """
        if self.settings.ngram_cap is None:
            return
        for layer, acc in self._layers.items():
            acc.review(
                self.settings.ngram_cap,
                fraction_done,
                None if carried is None else carried[layer],
                None if expected is None else expected[layer],
            )

    def profile(self) -> NeuronProfile:
        """The counts so far, as a NeuronProfile (CPU tensors)."""
        if self.seq_len is None or self._pos_text_seqs is None:
            raise NeuronKindsError("nothing was recorded: run at least one batch first")
        return NeuronProfile(
            layers=list(self.layers),
            d_mlp=self.d_mlp,
            d_vocab=self.d_vocab,
            seq_len=self.seq_len,
            ngram_max=self.settings.ngram_max,
            ngram_cap=self.settings.ngram_cap,
            top_k=self.settings.top_k,
            window=self.settings.window,
            threshold=self.settings.threshold,
            bos_token_id=self.settings.bos,
            n_seqs=self.n_seqs,
            n_positions=self.n_seqs * self.seq_len,
            n_text_positions=self.n_text_positions,
            occurrences={n: c.table() for n, c in self._occ.items()},
            pos_text_seqs=self._pos_text_seqs.cpu(),
            counts={layer: acc.counts() for layer, acc in self._layers.items()},
            token_strings=list(self.token_strings),
            meta=dict(self.meta),
        )


def profile_from_activations(
    tokens: Int[torch.Tensor, "batch pos"],
    acts: dict[int, Float[torch.Tensor, "batch pos d_mlp"]],
    *,
    d_vocab: int,
    threshold: float = 0.0,
    ngram_max: int = 3,
    ngram_cap: int | None = None,
    plan: Plan | None = None,
    bos_token_id: int = OPT_BOS_TOKEN_ID,
    top_k: int = 0,
    histogram: bool = False,
    window: tuple[int, int] | None = None,
    token_strings: list[str] | None = None,
    meta: dict | None = None,
    settings: RecordingSettings | None = None,
) -> NeuronProfile:
    """A NeuronProfile straight from activations a user already holds (no model needed).

    With ``ngram_cap`` and no ``plan``, every neuron is counted and then those whose exact
    ``k95_n`` exceeds the cap are dropped with their tails (``plan.finalize``): the result is
    what an exact capped recording keeps.

    Args:
        tokens: The rows the activations were computed on, BOS at position 0.
        acts: Layer -> its ``hook_post`` activations on ``tokens``.
        d_vocab: The vocabulary size.
        threshold, ngram_max, ngram_cap, top_k, histogram, window: As for ``nk.record``
            (``settings.py``), with no cap, top-k or window by default.
        plan: Layer -> the neurons whose n >= 2 counts to keep.
        bos_token_id: The BOS id (default: OPT's, ``settings.OPT_BOS_TOKEN_ID``).
        token_strings, meta: Stored with the profile.
        settings: All of the above settings at once, instead of their keywords (a
            ``settings.bos_token_id`` of None then means OPT's).
    """
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
    elif settings.bos_token_id is None:
        settings = replace(settings, bos_token_id=OPT_BOS_TOKEN_ID)
    layers = sorted(acts)
    if not layers:
        raise NeuronKindsError("no activations given")
    builder = ProfileBuilder(
        layers,
        d_mlp=acts[layers[0]].shape[-1],
        d_vocab=d_vocab,
        settings=settings,
        plan=plan,
        token_strings=token_strings,
        meta=meta,
    )
    builder.add_batch(tokens, acts)
    profile = builder.profile()
    if settings.ngram_cap is not None and plan is None:
        finalize(profile)
    return profile
