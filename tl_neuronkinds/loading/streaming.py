"""Per-block weight streaming: the paper's single-GPU method of running models larger than memory.

Blocks' weights live off the device — pinned CPU memory (``offload="cpu"``) or the
checkpoint's safetensors files, memory-mapped and read on demand (``offload="disk"``) — and are
brought to the device one block at a time. Between uses a block's parameters are empty
placeholders (``torch.empty(0)`` on the device), so they hold no memory.

The mechanism is PyTorch module hooks only (no patched ``forward``):

* a forward pre-hook on block ``l`` waits for its weights (copied earlier on a side CUDA
  stream, an event marking the copy done), points its parameters at them, and starts copying
  block ``l + 1`` while block ``l`` computes;
* a forward hook (``always_call``) on block ``l`` drops its weights again; when an error
  (or TransformerBridge's stop exception) leaves the block, it drops the prefetched block too.

The streamer prefetches no block ``>= k`` for a forward it knows stops before block ``k``. A
call ``model(tokens, stop_at_layer=k)`` (and ``run_with_cache``, which makes one) tells it: a
forward pre-hook on the model reads the keyword. ``run_with_hooks`` calls ``forward`` directly,
past every hook of the model itself, so whoever runs it says where it stops:
``with stop_at(model, k): model.run_with_hooks(...)`` (``nk.record`` and the views do). A
forward it was not told of still runs correctly: a block is always loaded when it is called, so
not telling costs loads, never a skipped block. A HookedTransformer then prefetches block ``k``,
which waits on the device until the next forward; a TransformerBridge (whose own
``run_with_cache`` and ``run_with_hooks`` call ``forward`` directly) calls block ``k`` before it
stops, so it loads ``k`` and prefetches ``k + 1``.

So at most two blocks' weights are on the device at once (the one running and the one being
prefetched), and a told forward with ``stop_at_layer=k`` on a HookedTransformer loads no block
``>= k``. Embeddings, final LayerNorm and unembedding stay on the device. Without CUDA the same
code runs: the "copy" is the CPU tensor itself (``"cpu"``) or the freshly read block
(``"disk"``). The streamer of a model is kept here, not on the model (``streamer_of``).

TransformerLens hooks (``run_with_hooks``, ``model.hooks()``, ``run_with_cache``) work as
usual: they fire inside the block's forward, while its weights are present. Backward works
(gradients with respect to activations), but with autograd on, the tensors it saves keep every
block's weights alive until backward: run offloaded models under ``torch.no_grad()`` /
``torch.inference_mode()`` unless gradients are wanted. Offloaded block parameters do not
require grad and keep no ``.grad``; an in-place edit of one lasts only for that forward.
"""

import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tl_neuronkinds.checks import is_int
from tl_neuronkinds.errors import NeuronKindsError

OFFLOAD_MODES = ("cpu", "disk")
HostFn = Callable[[int], dict[str, torch.Tensor]]
_Loaded = tuple[dict[str, torch.Tensor], Any]  # device tensors, CUDA event or None


class BlockStreamer:
    """Streams the weights of ``blocks`` to the device around each block's forward.

    Args:
        mode: ``"cpu"`` or ``"disk"`` (recorded for ``offload_mode``).
        blocks: The modules that run one block each (hooks go here).
        slots: For each block, where each of its parameters lives: name -> (owning module,
            attribute name). The parameter there now must be an empty placeholder on the
            device; during the block's forward a parameter holding the real tensor takes its
            place, and the placeholder comes back afterwards.
        host: ``host(l)`` returns block ``l``'s tensors on the CPU, keyed as ``slots[l]``, of the
            parameters' dtype and shape (pinned when CUDA is used and they stay in memory).
        root: The model: a call ``root(..., stop_at_layer=k)`` tells the streamer its stop
            (a forward pre-hook reads the keyword), and a block prefetched for a forward that
            stopped before it is dropped when the call returns.

    Attributes:
        loads: How many times each block was brought to the device.
        max_resident: The most blocks whose weights were on the device at one time.
    """

    def __init__(
        self,
        mode: str,
        blocks: Sequence[nn.Module],
        slots: Sequence[dict[str, tuple[nn.Module, str]]],
        host: HostFn,
        root: nn.Module,
    ) -> None:
        if mode not in OFFLOAD_MODES:
            raise NeuronKindsError(f"offload must be None, 'cpu' or 'disk', got {mode!r}")
        self.mode = mode
        self.blocks = list(blocks)
        self.slots = [dict(s) for s in slots]
        self._empty: list[dict[str, nn.Parameter]] = []
        for slot in self.slots:
            empty = {name: getattr(owner, leaf) for name, (owner, leaf) in slot.items()}
            if any(not isinstance(p, nn.Parameter) or p.numel() for p in empty.values()):
                raise NeuronKindsError("internal: streamed parameters must start as placeholders")
            self._empty.append(empty)  # type: ignore[arg-type]
        self._host = host
        self.loads: Counter[int] = Counter()
        self.max_resident = 0
        self._active: dict[int, _Loaded] = {}
        self._ready: dict[int, tuple[torch.device, Future]] = {}
        self._side: dict[torch.device, Any] = {}
        self._reader: ThreadPoolExecutor | None = None
        self._stop: int | None = None  # told by ``stop_at``
        self._call: tuple[int | None] | None = None  # told by the running ``root(...)`` call
        self._handles = [
            root.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True),
            root.register_forward_hook(self._root_post_hook, always_call=True),
        ]
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(index)))
            self._handles.append(
                block.register_forward_hook(self._post_hook(index), always_call=True)
            )

    @property
    def resident(self) -> set[int]:
        """Blocks whose weights are on the device now (running or prefetched)."""
        return set(self._active) | set(self._ready)

    def device(self, index: int) -> torch.device:
        """Where block ``index`` runs: the device of its placeholders (moves with ``model.to``)."""
        return next(iter(self._empty[index].values())).device

    def _layer(self, layer: object) -> int | None:
        """A ``stop_at_layer`` value as a block index (negative counts from the end); None for
        None or anything that is not an integer (then every block may run)."""
        if not is_int(layer):
            return None
        index = int(layer)
        return index + len(self.blocks) if index < 0 else index

    @contextmanager
    def stop_at(self, layer: int | None) -> Iterator[None]:
        """Forwards inside stop before block ``layer`` (``stop_at_layer=layer``; negative counts
        from the end, None runs every block): no block ``>= layer`` is prefetched."""
        previous, self._stop = self._stop, self._layer(layer)
        try:
            yield
        finally:
            self._stop = previous

    def _root_pre_hook(self, _module: nn.Module, _args: tuple, kwargs: dict) -> None:
        self._call = (self._layer(kwargs.get("stop_at_layer")),)

    def _root_post_hook(self, _module: nn.Module, _args: tuple, _output: Any) -> None:
        self._call = None
        self._ready.clear()  # prefetched for a block this forward stopped before

    def _will_run(self, index: int) -> bool:
        """Whether block ``index`` runs in this forward, as far as the streamer was told: by
        the running ``root(...)`` call's ``stop_at_layer``, else by ``stop_at``."""
        stop = self._stop if self._call is None else self._call[0]
        return index < len(self.blocks) and (stop is None or index < stop)

    def _pre_hook(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple) -> None:
            # Called, so needed (a told stop only spares prefetches): never skip a load here.
            for other in [k for k in self._ready if k not in (index, index + 1)]:
                del self._ready[other]
            for other in [k for k in self._active if k != index]:
                self._deactivate(other)
            self._activate(index)
            if self._will_run(index + 1):
                self._prefetch(index + 1)
            self.max_resident = max(self.max_resident, len(self.resident))

        return hook

    def _post_hook(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            if index in self._active:
                self._deactivate(index)
            if output is None:  # an exception is leaving the block: the forward is over
                self._drop_all()

        return hook

    def _prefetch(self, index: int) -> None:
        device = self.device(index)
        pending = self._ready.get(index)
        if pending is not None and pending[0] == device:
            return
        self.loads[index] += 1
        if device.type == "cuda" and self.mode == "disk":
            if self._reader is None:
                self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nk-disk")
            future = self._reader.submit(self._transfer, index, device)
        else:
            future = Future()
            try:
                future.set_result(self._transfer(index, device))
            except Exception as err:
                future.set_exception(err)
        self._ready[index] = (device, future)

    def _transfer(self, index: int, device: torch.device) -> _Loaded:
        with torch.inference_mode(False), torch.no_grad():
            host = self._host(index)
            if device.type != "cuda":
                return {k: t.to(device) for k, t in host.items()}, None
            side = self._side.get(device)
            if side is None:
                side = self._side[device] = torch.cuda.Stream(device)
            with torch.cuda.stream(side):
                moved = {k: t.to(device, non_blocking=True) for k, t in host.items()}
                event = torch.cuda.Event()
                event.record(side)
            return moved, event

    def _activate(self, index: int) -> None:
        if index in self._active:
            return
        if index not in self._ready or self._ready[index][0] != self.device(index):
            self._prefetch(index)
        _, future = self._ready.pop(index)
        tensors, event = future.result()
        if event is not None:
            stream = torch.cuda.current_stream(self.device(index))
            stream.wait_event(event)
            for tensor in tensors.values():
                tensor.record_stream(stream)
        # A new Parameter per forward (not ``.data`` swapped into the old one), so tensors that
        # autograd saved keep their values after the block is released.
        with torch.inference_mode(False):
            for name, (owner, leaf) in self.slots[index].items():
                grad = self._empty[index][name].requires_grad
                setattr(owner, leaf, nn.Parameter(tensors[name], requires_grad=grad))
        self._active[index] = (tensors, event)

    def _deactivate(self, index: int) -> None:
        for name, (owner, leaf) in self.slots[index].items():
            setattr(owner, leaf, self._empty[index][name])
        del self._active[index]

    def _drop_all(self) -> None:
        for index in list(self._active):
            self._deactivate(index)
        self._ready.clear()

    @contextmanager
    def loaded(self, index: int) -> Iterator[None]:
        """Block ``index``'s weights on the device for the duration (outside a forward)."""
        was_active = index in self._active
        self._activate(index)
        try:
            yield
        finally:
            if not was_active and index in self._active:
                self._deactivate(index)


#: Each streamed model's streamer, kept on our side (weakly: it goes with the model).
_STREAMERS: "weakref.WeakKeyDictionary[nn.Module, BlockStreamer]" = weakref.WeakKeyDictionary()


def attach_streamer(model: nn.Module, streamer: BlockStreamer) -> None:
    """Remember ``streamer`` as ``model``'s (read back by ``streamer_of``)."""
    _STREAMERS[model] = streamer


def offload_mode(model: nn.Module) -> str | None:
    """``"cpu"`` or ``"disk"`` when ``model`` streams its blocks (``load_opt(offload=…)``), else None.

    For a streamed model the blocks' parameters are empty outside a forward: read a block's
    weights inside ``loaded_block(model, layer)``.
    """
    streamer = streamer_of(model)
    return None if streamer is None else streamer.mode


def streamer_of(model: nn.Module) -> BlockStreamer | None:
    """The ``BlockStreamer`` of a streamed model (its ``loads`` and ``max_resident``), else None."""
    return _STREAMERS.get(model)


@contextmanager
def stop_at(model: nn.Module, layer: int | None) -> Iterator[None]:
    """Tell a streamed ``model`` that the forwards inside stop before block ``layer`` (pass
    the ``stop_at_layer`` given to them), so that it prefetches no block it will not run; a
    no-op for resident models.

    Example: ``with stop_at(model, 2): model(tokens, stop_at_layer=2)``.
    """
    streamer = streamer_of(model)
    if streamer is None:
        yield
        return
    with streamer.stop_at(layer):
        yield


@contextmanager
def loaded_block(model: nn.Module, layer: int) -> Iterator[None]:
    """Make block ``layer``'s weights present for the duration; a no-op for resident models.

    Example: ``with loaded_block(model, 3): w_out = model.blocks[3].mlp.W_out.clone()``.

    Raises:
        NeuronKindsError: ``layer`` out of range.
    """
    streamer = streamer_of(model)
    if streamer is None:
        yield
        return
    if not 0 <= layer < len(streamer.blocks):
        raise NeuronKindsError(f"layer {layer} out of range 0..{len(streamer.blocks) - 1}")
    with streamer.loaded(layer):
        yield
