"""Recording neuron activity from a model's hooks: NeuronRecorder and the record() driver.

``NeuronRecorder`` adds forward hooks on ``blocks.{l}.mlp.hook_post`` through TransformerLens's
own hook API (``model.hooks``), so it runs inside any hook-based experiment, next to the user's
own hooks, on HookedTransformer and TransformerBridge alike. The hooks feed the accumulators of
``accumulate.py``; nothing is kept of the activations beyond one layer of one batch.
"""

import hashlib
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.accumulate import ProfileBuilder
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.version import __version__

HOOK_NAME = "blocks.{layer}.mlp.hook_post"
# Tokens per forward when batch_size is None: the paper's 64k-token chunks on a GPU; less on a CPU.
_AUTO_TOKENS = {"cuda": 65536, "cpu": 16384}


def model_config_hash(model: Any) -> str:
    """A short hash of what identifies a model's neurons: its name and shapes."""
    cfg = model.cfg
    fields = {
        k: str(getattr(cfg, k, None))
        for k in (
            "model_name",
            "n_layers",
            "d_model",
            "d_mlp",
            "d_vocab",
            "n_ctx",
            "n_heads",
            "act_fn",
        )
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def token_strings(tokenizer: Any, d_vocab: int) -> list[str]:
    """Each token id's text as the tokenizer decodes it; ``<id>`` for ids it does not have."""
    if tokenizer is None:
        return [f"<{i}>" for i in range(d_vocab)]
    n = min(len(tokenizer), d_vocab)
    decoded = tokenizer.batch_decode([[i] for i in range(n)])
    return list(decoded) + [f"<{i}>" for i in range(n, d_vocab)]


class NeuronRecorder:
    """Counts FFN neuron activity from ``blocks.{l}.mlp.hook_post`` during any forward.

    Use it around your own forwards, alone or beside your own hooks::

        recorder = NeuronRecorder(model)
        with recorder.recording(tokens):
            model(tokens)
        profile = recorder.profile()

    Every forward inside ``recording(tokens)`` must run on exactly ``tokens`` (the n-gram and
    position counts are taken from them); each forward counts once.

    Args:
        model: A HookedTransformer or TransformerBridge.
        layers: Layers to record (default: all).
        threshold: Active means activation > threshold (SPEC.md "Terms"; 0.0 for OPT's ReLU).
        ngram_max: Largest n-gram order counted (1–3; §4 and Appendix A use 1, 2, 3).
        bos_token_id: BOS id; default: the model's tokenizer's.
    """

    def __init__(
        self,
        model: Any,
        layers: list[int] | None = None,
        threshold: float = 0.0,
        ngram_max: int = 3,
        *,
        bos_token_id: int | None = None,
    ) -> None:
        cfg = model.cfg
        self.model = model
        self.layers = _check_layers(layers, cfg.n_layers)
        tokenizer = getattr(model, "tokenizer", None)
        if bos_token_id is None:
            bos_token_id = getattr(tokenizer, "bos_token_id", None)
            if bos_token_id is None:
                raise NeuronKindsError(
                    "the model has no tokenizer with a BOS id: pass bos_token_id"
                )
        act_fn = str(getattr(cfg, "act_fn", "relu")).lower()
        if act_fn != "relu" and threshold == 0.0:
            warnings.warn(
                f"the model's activation is {act_fn}, not ReLU: 'active' means > threshold "
                f"({threshold}); choose a threshold that suits it",
                stacklevel=2,
            )
        self._builder = ProfileBuilder(
            self.layers,
            d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab,
            threshold=threshold,
            ngram_max=ngram_max,
            bos_token_id=int(bos_token_id),
            token_strings=token_strings(tokenizer, cfg.d_vocab),
            meta={
                "model_name": str(getattr(cfg, "model_name", "")),
                "config_hash": model_config_hash(model),
                "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
                "package_version": __version__,
            },
        )
        self._broken: str | None = None

    @property
    def threshold(self) -> float:
        return self._builder.threshold

    @property
    def ngram_max(self) -> int:
        return self._builder.ngram_max

    @property
    def bos_token_id(self) -> int:
        return self._builder.bos_token_id

    @contextmanager
    def recording(self, tokens: torch.Tensor) -> Iterator["NeuronRecorder"]:
        """Hook the model while the block runs; count the forwards made on ``tokens``.

        ``tokens`` is ``Int[batch pos]`` (checked here, with a NeuronKindsError where it is not).
        """
        check_tokens(tokens, self.model, self._builder.bos_token_id)
        state: dict[str, Any] = {"ctx": None, "calls": dict.fromkeys(self.layers, 0)}
        hooks = [
            (HOOK_NAME.format(layer=layer), partial(self._hook, layer, tokens, state))
            for layer in self.layers
        ]
        try:
            with self.model.hooks(fwd_hooks=hooks):
                yield self
        except BaseException:
            if state["ctx"] is not None:
                self._broken = "a forward inside recording() failed part-way"
            raise
        calls = set(state["calls"].values())
        if calls == {0}:
            return
        if len(calls) != 1:
            self._broken = f"layers were reached unequally often: {state['calls']}"
            raise NeuronKindsError(
                f"recording(): {self._broken}; did a forward stop before the last recorded layer?"
            )
        for _ in range(calls.pop()):
            self._builder.add_tokens(state["ctx"])

    def _hook(
        self,
        layer: int,
        tokens: torch.Tensor,
        state: dict[str, Any],
        acts: Float[torch.Tensor, "batch pos d_mlp"],
        hook: Any,
    ) -> None:
        if acts.shape[:2] != tokens.shape:
            raise NeuronKindsError(
                f"{hook.name}: activations of shape {tuple(acts.shape)} do not match the tokens "
                f"given to recording() {tuple(tokens.shape)}"
            )
        if state["ctx"] is None:
            state["ctx"] = self._builder.context(tokens.to(acts.device))
        self._builder.add_layer(state["ctx"], layer, acts.detach())
        state["calls"][layer] += 1

    def profile(self, *, corpus: str | None = None) -> NeuronProfile:
        """The counts recorded so far as a NeuronProfile (CPU tensors)."""
        if self._broken:
            raise NeuronKindsError(
                f"this recorder's counts are inconsistent ({self._broken}); start a new one"
            )
        profile = self._builder.profile()
        if corpus is not None:
            profile.meta["corpus"] = corpus
        return profile


def check_tokens(tokens: Any, model: Any, bos_token_id: int) -> None:
    """NeuronKindsError unless ``tokens`` is ``[n_seq, T]`` ids in the vocabulary with BOS first."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise NeuronKindsError("tokens must be a 2-D LongTensor [n_seq, seq_len]")
    if tokens.dtype not in (torch.int64, torch.int32) or tokens.numel() == 0:
        raise NeuronKindsError(
            f"tokens must be a non-empty integer tensor, got {tokens.dtype} {tuple(tokens.shape)}"
        )
    cfg = model.cfg
    if tokens.shape[1] > cfg.n_ctx:
        raise NeuronKindsError(
            f"seq_len {tokens.shape[1]} exceeds the model's context of {cfg.n_ctx}"
        )
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= cfg.d_vocab:
        raise NeuronKindsError(
            f"token ids must lie in [0, {cfg.d_vocab}); found {low if low < 0 else high}"
        )
    bad = (tokens[:, 0] != bos_token_id).nonzero()
    if bad.numel():
        raise NeuronKindsError(
            f"every sequence must start with BOS (id {bos_token_id}); row {int(bad[0])} starts "
            f"with {int(tokens[bad[0], 0])}"
        )


def _check_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    chosen = sorted({int(layer) for layer in layers})
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers:
        raise NeuronKindsError(
            f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}"
        )
    return chosen


def record(
    model: Any,
    tokens: torch.Tensor,
    layers: list[int] | None = None,
    threshold: float = 0.0,
    ngram_max: int = 3,
    batch_size: int | None = None,
    *,
    corpus: str | None = None,
    progress: bool | None = None,
    bos_token_id: int | None = None,
) -> NeuronProfile:
    """Run ``tokens`` through ``model`` in batches and return the NeuronProfile of its neurons.

    Each forward stops after the last recorded layer (``stop_at_layer``), so no logits are
    computed; streamed (offloaded) models load only the blocks that run.

    Args:
        model: A HookedTransformer or TransformerBridge (e.g. from ``load_opt``).
        tokens: ``Int[n_seq pos]`` with BOS at position 0 of every row (checked, with a
            NeuronKindsError where it is not).
        layers, threshold, ngram_max: As for ``NeuronRecorder``.
        batch_size: Sequences per forward (default: about 64k tokens on a GPU, 16k on a CPU).
        corpus: A description of the corpus, stored with the profile.
        progress: Show a progress bar with tokens/s (default: when stderr is a terminal).

    Under an initialised ``torch.distributed`` process group every rank calls ``record`` with the
    same full ``tokens``; rank r records rows ``r::world_size`` and every rank gets the one
    merged profile back (API.md, "Distributed").
    """
    recorder = NeuronRecorder(model, layers, threshold, ngram_max, bos_token_id=bos_token_id)
    check_tokens(tokens, model, recorder.bos_token_id)
    rank, world_size = _world()
    local = tokens[rank::world_size]
    seq_len = tokens.shape[1]
    device = _model_device(model)
    if batch_size is None:
        batch_size = max(1, _AUTO_TOKENS.get(device.type, _AUTO_TOKENS["cuda"]) // seq_len)
    if batch_size < 1:
        raise NeuronKindsError(f"batch_size must be positive, got {batch_size}")
    stop = recorder.layers[-1] + 1
    disable = (None if progress is None else not progress) if rank == 0 else True
    bar = tqdm(total=local.numel(), unit="tok", unit_scale=True, desc="record", disable=disable)
    start = time.perf_counter()
    with torch.inference_mode(), bar:
        for first in range(0, local.shape[0], batch_size):
            batch = local[first : first + batch_size].to(device)
            with recorder.recording(batch):
                model(batch, stop_at_layer=stop)
            bar.update(batch.numel())
    profile = recorder.profile(corpus=corpus) if local.shape[0] else None
    if world_size > 1:
        profile = _gather(profile, world_size)
    assert profile is not None  # check_tokens ensured at least one row
    profile.meta["record_seconds"] = round(time.perf_counter() - start, 3)
    return profile


def _world() -> tuple[int, int]:
    """(rank, world_size) under an initialised torch.distributed process group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(profile: NeuronProfile | None, world_size: int) -> NeuronProfile:
    """Every rank's profile, merged (exactly, as counts add), returned on every rank."""
    parts: list[NeuronProfile | None] = [None] * world_size
    torch.distributed.all_gather_object(parts, profile)
    merged = NeuronProfile.merge([p for p in parts if p is not None])
    merged.meta["world_size"] = world_size
    return merged


def _model_device(model: Any) -> torch.device:
    device = getattr(model.cfg, "device", None)
    if device is None:
        return next(model.parameters()).device
    return torch.device(device)
