"""NeuronRecorder: counts FFN neuron activity from ``blocks.{l}.mlp.hook_post`` during any forward.

It runs inside a user's own hook-based experiment, next to their hooks, on HookedTransformer
and TransformerBridge alike, with two kinds of hook, all removed when ``recording()`` exits:

- a hook on each recorded ``blocks.{l}.mlp.hook_post`` HookPoint (its name from
  ``loading.hook_names``, i.e. TransformerLens's ``get_act_name("post", l)``), added through
  TransformerLens's own ``HookPoint.add_hook(..., level=, prepend=)``: it counts the value.
  TransformerLens hands hooks added so the value in its documented layout ``[batch, pos, d_mlp]``
  on both model classes (measured on a tiny post-LayerNorm OPT bridge, TransformerLens 3.9: a
  plain PyTorch forward hook on the same HookPoint sees ``[batch * pos, d_mlp]``, ``(10, 64)``
  for 2 rows of 5 tokens, where ``add_hook``'s sees ``(2, 5, 64)``), so no layout is guessed.
  Each recording's hooks carry a context level of their own (``_LEVELS``: negative, so never
  one of ``model.hooks()``'s), so ``remove_hooks(level=...)`` removes exactly them, and a
  user's ``model.hooks()`` or ``run_with_hooks`` leaves them alone. By default
  (``see="after_user_hooks"``) the recorder's hook runs after every other hook on that point,
  so the profile counts the activation the model goes on with: a user's ablation shows in it.
  With ``see="before_user_hooks"`` (``prepend=True``) it runs before them and counts the
  activation as computed. Hooks run in the order they were added and ``run_with_hooks`` adds
  the user's as its forward starts, so the recorder re-adds its own at the start of every
  forward, after the user's (measured: about 60 us per recorded layer and forward on a CPU,
  nothing beside a forward);
- a PyTorch forward pre-hook on ``model.embed`` takes each forward's tokens from the forward
  itself (both model classes call ``embed(tokens)`` first), so any loop of batches inside one
  ``recording()`` counts each batch against its own tokens. TransformerLens has no HookPoint
  on a forward's input tokens (``hook_embed`` holds their embeddings), hence a module hook.

A forward counts once it has reached every recorded layer; one that stops part-way (an error,
or ``stop_at_layer`` below the last recorded layer) makes the recorder refuse to give a profile.
"""

import hashlib
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from jaxtyping import Float

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.hook_names import mlp_post
from tl_neuronkinds.loading.identity import model_identity
from tl_neuronkinds.loading.tokens import check_tokens, token_strings
from tl_neuronkinds.recording.accumulate import ProfileBuilder
from tl_neuronkinds.recording.batch_context import BatchContext
from tl_neuronkinds.recording.plan import Plan, choose_plan
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.settings import DEFAULT_TOP_K, DEFAULT_WINDOW, RecordingSettings
from tl_neuronkinds.version import __version__

#: TransformerLens context levels of the recordings' hooks: one each, below model.hooks()' (>= 0).
_LEVELS = itertools.count(-1, -1)
SEE = ("after_user_hooks", "before_user_hooks")
#: A recorder given a cap but no plan counts every neuron's n-grams until it has seen this many
#: positions, then fixes the plan from their unigram counts (``plan.choose_plan``).
PLAN_SAMPLE_POSITIONS = 1 << 14


class NeuronRecorder:
    """Counts FFN neuron activity from ``blocks.{l}.mlp.hook_post`` during any forward.

    Use it around your own forwards, alone or beside your own hooks::

        recorder = NeuronRecorder(model)
        with recorder.recording():
            for batch in batches:
                model.run_with_hooks(batch, fwd_hooks=my_hooks)
        profile = recorder.profile()

    Args:
        model: A HookedTransformer or TransformerBridge.
        layers: Layers to record (default: all).
        threshold: Active means activation > threshold (docs/kinds.md, "Terms"; 0.0 for OPT's ReLU).
        ngram_max: Largest n-gram order counted (1–3; §4 and Appendix A use 1, 2, 3).
        ngram_cap: The n-gram cap (docs/kinds.md). None (default here) keeps every neuron's n >= 2
            counts. With a cap and no ``plan`` the recorder counts every neuron's n-grams for
            its first ``PLAN_SAMPLE_POSITIONS`` positions, then only the planned neurons'; a
            neuron the plan missed is reported as unknown (``nk.record`` recounts it instead).
        plan: Layer -> bool mask of the neurons whose n >= 2 counts to keep (e.g. another
            profile's ``.plan``, so that the two merge without unknowns).
        see: ``"after_user_hooks"`` (count what the model goes on with) or
            ``"before_user_hooks"`` (count the activation as computed).
        bos_token_id: BOS id; default: the model's tokenizer's.
        top_k: Keep each neuron's ``top_k`` largest activations with the sequence (the rows of
            the forwards, counted in the order they ran) and position (``top_k.py``).
        histogram: Keep each neuron's activation histogram (``top_k.py``).
        window: ``(before, after)`` of the context kept with each top activation (its tokens
            and the neuron's activations there, ``top_k.py``); None keeps none.
        first_row, row_stride: The index of the first sequence this recorder sees, and the step
            between sequences, where its forwards are part of a larger token tensor
            (``nk.record`` uses them for its ranks and checkpoint intervals).
        settings: threshold, ngram_max, ngram_cap, top_k, histogram, window and bos_token_id
            at once (``settings.RecordingSettings``), instead of those keywords.
    """

    def __init__(
        self,
        model: Any,
        layers: list[int] | None = None,
        threshold: float = 0.0,
        ngram_max: int = 3,
        *,
        ngram_cap: int | None = None,
        plan: Plan | None = None,
        see: str = "after_user_hooks",
        bos_token_id: int | None = None,
        top_k: int = DEFAULT_TOP_K,
        histogram: bool = False,
        window: tuple[int, int] | None = DEFAULT_WINDOW,
        first_row: int = 0,
        row_stride: int = 1,
        settings: RecordingSettings | None = None,
    ) -> None:
        cfg = model.cfg
        self.model = model
        self.layers = check_layers(layers, cfg.n_layers)
        if see not in SEE:
            raise NeuronKindsError(f"see must be one of {SEE}, got {see!r}")
        self.see = see
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
        tokenizer = getattr(model, "tokenizer", None)
        act_fn = str(getattr(cfg, "act_fn", "relu")).lower()
        if act_fn != "relu" and settings.threshold == 0.0:
            warnings.warn(
                f"the model's activation is {act_fn}, not ReLU: 'active' means > threshold "
                f"({settings.threshold}); choose a threshold that suits it",
                stacklevel=2,
            )
        self.settings = settings
        self._builder = ProfileBuilder(
            self.layers,
            d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab,
            settings=settings,
            plan=plan,
            first_row=first_row,
            row_stride=row_stride,
            token_strings=token_strings(tokenizer, cfg.d_vocab),
            meta={
                **model_identity(model),
                "n_layers": int(cfg.n_layers),  # the model's, for relative depth
                "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
                "package_version": __version__,
            },
        )
        self._plan_pending = settings.capped and plan is None
        self._broken: str | None = None
        self._forward: _Forward | None = None

    @property
    def threshold(self) -> float:
        return self.settings.threshold

    @property
    def ngram_max(self) -> int:
        return self.settings.ngram_max

    @property
    def ngram_cap(self) -> int | None:
        return self.settings.ngram_cap

    @property
    def bos_token_id(self) -> int:
        return self.settings.bos

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorder's count tables."""
        return self._builder.nbytes

    @contextmanager
    def recording(self, tokens: torch.Tensor | None = None) -> Iterator["NeuronRecorder"]:
        """Hook the model while the block runs; every forward inside it is counted once.

        Each forward's tokens are taken from the forward itself. ``tokens``, where given
        (``Int[batch pos]``), is a promise that every forward runs on exactly these tokens:
        a forward on others raises a NeuronKindsError.
        """
        if tokens is not None:
            check_tokens(tokens, self.model, self.bos_token_id)
        embed = getattr(self.model, "embed", None)
        if not isinstance(embed, torch.nn.Module):
            raise NeuronKindsError(
                f"{type(self.model).__name__} has no `embed` module to take each forward's "
                "tokens from"
            )
        points = {layer: self.model.hook_dict[mlp_post(layer)] for layer in self.layers}
        level = next(_LEVELS)

        def remove_hooks() -> None:
            for point in points.values():
                point.remove_hooks("fwd", level=level)

        def order_hooks() -> None:
            remove_hooks()
            for layer, point in points.items():
                point.add_hook(
                    partial(self._hook, layer),
                    dir="fwd",
                    level=level,
                    prepend=self.see == "before_user_hooks",
                )

        def start_forward(_module: Any, args: tuple) -> None:
            self._end_forward()
            batch = args[0] if args else None
            if not isinstance(batch, torch.Tensor):
                raise NeuronKindsError("embed() was called without a token tensor")
            if tokens is not None and not torch.equal(batch, tokens.to(batch.device)):
                raise NeuronKindsError(
                    "a forward inside recording(tokens) ran on other tokens than those given; "
                    "use recording() with no argument to count whatever each forward runs on"
                )
            check_tokens(batch, self.model, self.bos_token_id)
            order_hooks()
            self._forward = _Forward(self._builder.context(batch))

        pre = embed.register_forward_pre_hook(start_forward)
        try:
            order_hooks()
            yield self
            self._end_forward()
        except BaseException:
            if self._forward is not None and self._forward.reached:
                self._broken = "a forward inside recording() failed part-way"
            self._forward = None
            raise
        finally:
            pre.remove()
            remove_hooks()

    def _hook(self, layer: int, acts: Float[torch.Tensor, "batch pos d_mlp"], hook: Any) -> None:
        forward = self._forward
        if forward is None:
            raise NeuronKindsError(
                f"{mlp_post(layer)} ran in a forward that did not start from "
                "tokens (e.g. start_at_layer): the recorder cannot know its tokens"
            )
        if layer in forward.reached:
            raise NeuronKindsError(f"layer {layer} was reached twice in one forward")
        if acts.shape[-1] != self.model.cfg.d_mlp:
            raise NeuronKindsError(
                f"{mlp_post(layer)}: {acts.shape[-1]} neurons, but the model's "
                f"cfg.d_mlp is {self.model.cfg.d_mlp} (a bridge built outside load_opt may "
                "assume 4 * d_model: set cfg.d_mlp to the FFN's width)"
            )
        if acts.shape[:2] != forward.ctx.text.shape:
            raise NeuronKindsError(
                f"{mlp_post(layer)}: activations of shape {tuple(acts.shape)} do "
                f"not match the forward's tokens {tuple(forward.ctx.text.shape)}"
            )
        self._builder.add_layer(forward.ctx, layer, acts.detach())
        forward.reached.add(layer)

    def _end_forward(self) -> None:
        """Count the forward that just ran (its tokens) once it reached every recorded layer."""
        forward, self._forward = self._forward, None
        if forward is None or not forward.reached:
            return
        if forward.reached != set(self.layers):
            self._broken = (
                f"a forward reached layers {sorted(forward.reached)} of {self.layers} "
                "(did it stop before the last recorded layer?)"
            )
            raise NeuronKindsError(f"recording(): {self._broken}")
        self._builder.add_tokens(forward.ctx)
        if self._plan_pending and self._builder.n_seqs * (self._builder.seq_len or 0) >= (
            PLAN_SAMPLE_POSITIONS
        ):
            sample = self._builder.profile()
            cap = self.settings.ngram_cap
            assert cap is not None  # only a capped recorder plans
            self.fix_plan(choose_plan(sample, cap, sample.ngram_max))

    def fix_plan(self, plan: Plan) -> None:
        """Keep n >= 2 counts only for the neurons ``plan`` names from now on."""
        self._builder.restrict(plan)
        self._plan_pending = False

    def review(
        self,
        fraction_done: float,
        carried: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
        expected: dict[int, dict[int, torch.Tensor]] | None = None,
    ) -> None:
        """Drop planned neurons whose n-gram tails already prove ``k95_n > cap``, keeping the
        tails as proof (``plan.review_drop``). Keeps memory flat over long runs; ``nk.record``
        calls it for you.

        Args:
            fraction_done: How far into the run you are, in (0, 1].
            carried: Layer -> n -> (tail bounds, activations) of earlier parts of the run.
            expected: Layer -> n -> projected activations of the whole run, per neuron.
        """
        if not 0 < fraction_done <= 1:
            raise NeuronKindsError(f"fraction_done must be in (0, 1], got {fraction_done!r}")
        self._builder.review(fraction_done, carried, expected)

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


class _Forward:
    """One forward in progress: its batch context and the layers it has reached."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self.reached: set[int] = set()


def check_layers(layers: Any, n_layers: int) -> list[int]:
    """Sorted distinct layer indices, or a NeuronKindsError naming what is wrong."""
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int | str) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in layers
    ):
        raise NeuronKindsError(f"layers must be a list of layer indices, got {layers!r}")
    chosen = sorted(set(layers))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers:
        raise NeuronKindsError(
            f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}"
        )
    return chosen


def tokens_digest(tokens: torch.Tensor) -> str:
    """A short hash of a token tensor's shape and ids (what a resumed run must see again)."""
    data = tokens.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    shape = "x".join(map(str, tokens.shape)).encode()
    return hashlib.sha256(shape + b":" + data).hexdigest()[:16]
