"""The passes over the tokens behind the correlations of ``correlations.py`` (Gurnee et al.
2024, §2-3): each model's neurons as columns, the batches, the activations kept between passes,
chunks of positions, and one pass's sums for a tile of A's neurons.

Memory is bounded by ``memory`` bytes: the sums of products of A's neurons with all of B's are
kept for a tile of A's neurons at a time (``[tile, N_B]`` float64), one pass over the tokens per
tile. Passes after the first need fewer forwards: the first keeps both models' activations at
the text positions (in the models' dtype) for as many batches as fit in ``cache`` bytes, and the
later passes read those and run the forwards of the other batches only (where everything fits,
the forwards run once, not once per tile). Within a batch the float64 work is done on chunks of
positions, so a long row never needs float64 copies of all its activations.

Rotation: the baseline needs B's rotated activations ``b R`` (``R`` orthogonal per layer). Their
products with A are ``S_ab R`` (linear, so no second accumulator), and their own sums are taken
on the first pass. The rotations (``layers x d_mlp^2`` float64: 12 GiB at OPT-1.3b) are held in
memory where they take at most ``memory`` bytes, else read from a temporary file one layer at a
time (``rotations.py``).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.hook_names import mlp_post
from tl_neuronkinds.loading.streaming import stop_at
from tl_neuronkinds.loading.tokens import bos_of, check_tokens
from tl_neuronkinds.progress import Progress
from tl_neuronkinds.recording.recorder import check_layers
from tl_neuronkinds.universal.rotations import Rotations
from tl_neuronkinds.universal.sums import ShiftedSums, correlations_in_place
from tl_neuronkinds.vocab.readout import d_mlp_of

#: What fixes a model B's rotations: its layers, d_mlp, the seed, the device and the memory.
RotationKey = tuple[int, int, int, torch.device, int]

#: Where ``batch_size`` is not given, each forward takes rows for at least this many positions
#: (the sums' products run near the matrix-multiply rate only with many positions at once) ...
BATCH_POSITIONS = 2048
#: ... unless their activations (both models', in their dtype) would pass this many bytes.
BATCH_BYTES = 1 << 30
#: Most float64 bytes per chunk of positions within a batch (A's tile, B's neurons and B
#: rotated). Large on purpose: the sums' products run near the matrix-multiply rate only with
#: many positions each (measured on this project's CPU, tile 2427 x 36,864 neurons of B: 106
#: GFLOP/s at 440 positions, 129 at 1,024, 146 at 2,048).
CHUNK_BYTES = 2 << 30


@dataclass
class NeuronColumns:
    """One model's neurons: the chosen layers' ``hook_post`` columns, concatenated by layer."""

    model: Any
    layers: list[int]
    d_mlp: int = field(init=False)

    def __post_init__(self) -> None:
        self.d_mlp = d_mlp_of(self.model)

    @property
    def size(self) -> int:
        return len(self.layers) * self.d_mlp

    def labels(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(layer, neuron) of columns of the concatenation."""
        return np.asarray(self.layers)[columns // self.d_mlp], columns % self.d_mlp

    def activations(
        self, rows: torch.Tensor, text: torch.Tensor, upto: int | None = None
    ) -> Float[torch.Tensor, "positions neurons"]:
        """``hook_post`` of the chosen layers (only those holding columns ``< upto``) at the
        text positions of ``rows``, in the model's dtype, the columns in the concatenation's
        order."""
        layers = self.layers if upto is None else self.layers[: -(-upto // self.d_mlp)]
        seen: dict[int, torch.Tensor] = {}

        def hook(value: torch.Tensor, hook: Any) -> None:
            seen[int(hook.name.split(".")[1])] = value[text]

        stop = layers[-1] + 1
        device = next(self.model.parameters()).device
        hooks = [(mlp_post(layer), hook) for layer in layers]
        with torch.inference_mode(), stop_at(self.model, stop):
            self.model.run_with_hooks(rows.to(device), fwd_hooks=hooks, stop_at_layer=stop)
        return torch.cat([seen[layer] for layer in layers], dim=1)


def check_same_tokenizer(model_a: Any, model_b: Any) -> None:
    """NeuronKindsError unless the token ids mean the same text to both models."""
    if model_a.cfg.d_vocab != model_b.cfg.d_vocab:
        raise NeuronKindsError(
            f"the models have different vocabularies ({model_a.cfg.d_vocab} and "
            f"{model_b.cfg.d_vocab} tokens): correlations need one tokenizer"
        )
    tok_a, tok_b = getattr(model_a, "tokenizer", None), getattr(model_b, "tokenizer", None)
    if tok_a is not None and tok_b is not None and tok_a.get_vocab() != tok_b.get_vocab():
        raise NeuronKindsError(
            "the models have different tokenizers: correlations need the same tokens to mean "
            "the same text in both"
        )


@dataclass
class CorrelationPasses:
    """Everything fixed for one ``neuron_correlations`` call, and the activations it keeps
    between passes: those of the first batches, while they fit in ``cache`` bytes (0: none).

    ``bar`` shows each pass (``tiles``) as ``{label} pass i/n``, counting text positions;
    ``active`` counts, per column of A, the text positions where its activation is above 0
    (filled tile by tile)."""

    a: NeuronColumns
    b: NeuronColumns
    tokens: torch.Tensor
    bos: int
    batch: int
    device: torch.device
    rotations: Rotations | None
    cache: int = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    filled: bool = False
    bar: Progress = field(default_factory=lambda: Progress(0, enabled=False))
    label: str = "correlations"
    active: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.active = torch.zeros(self.a.size, dtype=torch.int64)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch of rows holding a text position: the rows and where their text is."""
        for first in range(0, self.tokens.shape[0], self.batch):
            rows = self.tokens[first : first + self.batch]
            text = rows != self.bos
            if text.any():
                yield rows, text.to(self.device)

    def activations(self, upto: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch, A's activations at its text positions (at least the layers holding
        columns ``< upto``) and B's: kept by the first pass, or from the forwards."""
        room = self.cache - sum(a.nbytes + b.nbytes for a, b in self.kept)
        for index, (rows, text) in enumerate(self.batches()):
            if index < len(self.kept):
                yield self.kept[index]
                continue
            keep = not self.filled and index == len(self.kept) and self._bytes(text) <= room
            a = self.a.activations(rows, text, upto=None if keep else upto)
            b = self.b.activations(rows, text)
            if keep:
                self.kept.append((a, b))
                room -= a.nbytes + b.nbytes
            yield a, b
        self.filled = True

    def _bytes(self, text: torch.Tensor) -> int:
        """Bytes of both models' activations at ``text``'s positions, in their dtypes."""
        sides = (self.a, self.b)
        return int(text.sum()) * sum(itemsize(side.model) * side.size for side in sides)

    def chunks(self, positions: int, tile: int) -> list[slice]:
        """A batch's ``positions`` in near-equal chunks of at most ``CHUNK_BYTES`` of float64
        work each for a tile of ``tile`` of A's columns (no small remainder chunk)."""
        most = max(1, CHUNK_BYTES // (8 * (tile + 2 * self.b.size)))
        count = -(-positions // most)
        bounds = [positions * i // count for i in range(count + 1)]
        return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]

    def rotate(
        self, b: Float[torch.Tensor, "rows n_b"], counted: bool = False
    ) -> Float[torch.Tensor, "rows n_b"]:
        """Each layer's block of B's columns times its rotation: B's (centred) activations
        rotated, or, being linear, sums of A's products with them from those with B's own
        (``counted``: a step of ``bar`` per layer)."""
        d = self.b.d_mlp
        out = torch.empty_like(b)
        assert self.rotations is not None
        for i, rotation in enumerate(self.rotations):
            out[:, i * d : (i + 1) * d] = b[:, i * d : (i + 1) * d] @ rotation
            if counted:
                self.bar.update(1)
        return out

    def draw_rotations(
        self, seed: int, memory: int, drawn: "dict[RotationKey, Rotations] | None" = None
    ) -> None:
        """B's rotations for the baseline, drawn from ``seed`` (held in memory where they take
        at most ``memory`` bytes, else read from a temporary file per use), shown as a step of
        ``bar``. ``drawn`` keeps them for the next model B of the same shape (one draw per run
        of ``universal_neurons``: the same seed and shape give the same rotations)."""
        key = (len(self.b.layers), self.b.d_mlp, seed, self.device, memory)
        if drawn is not None and key in drawn:
            self.rotations = drawn[key]
            return
        self.bar.set_phase(f"{self.label}: the baseline's rotations", 1, unit="step")
        self.rotations = Rotations(*key)
        self.bar.update(1)
        if drawn is not None:
            drawn[key] = self.rotations

    def tiles(
        self, tile: int
    ) -> Iterator[tuple[slice, Float[torch.Tensor, "tile n_b"], torch.Tensor | None]]:
        """Per tile of A's columns (one pass over the tokens each): the columns, their
        correlations with B's neurons, and (where the run has rotations) with B's rotated ones."""
        b_moments = r_moments = None
        n_passes = -(-self.a.size // tile)
        text = int((self.tokens != self.bos).sum())
        for index, start in enumerate(range(0, self.a.size, tile)):
            cols = slice(start, min(start + tile, self.a.size))
            where = f"{self.label} pass {index + 1}/{n_passes}"
            self.bar.set_phase(where, text, unit="tok")
            products, a_moments, b_moments, r_moments = one_pass(self, cols, b_moments, r_moments)
            rotated = None
            if r_moments is not None:
                steps = len(self.b.layers) + 1  # the rotation's layers, then the caller's step
                self.bar.set_phase(f"{where}: baseline and matches", steps, unit="step")
                rotated = self.rotate(products, counted=True)
                correlations_in_place(rotated, a_moments, r_moments)
            yield cols, correlations_in_place(products, a_moments, b_moments), rotated
            del products, rotated


def itemsize(model: Any) -> int:
    """Bytes per element of the model's parameters (and so of its activations)."""
    return next(model.parameters()).element_size()


def prepare_passes(
    model_a: Any,
    model_b: Any,
    tokens: Any,
    layers_a: Sequence[int] | None,
    layers_b: Sequence[int] | None,
    k: object,
    batch_size: object,
    bos_token_id: int | None,
) -> tuple[CorrelationPasses, int]:
    """The checked inputs as a ``CorrelationPasses`` without rotations (no baseline until
    ``draw_rotations``), and ``k``."""
    check_same_tokenizer(model_a, model_b)
    bos = bos_of(model_a, bos_token_id)
    check_tokens(tokens, model_a, bos)
    check_tokens(tokens, model_b, bos)
    k = check_int("k", k, low=1)
    a = NeuronColumns(model_a, check_layers(layers_a, model_a.cfg.n_layers))
    b = NeuronColumns(model_b, check_layers(layers_b, model_b.cfg.n_layers))
    if batch_size is None:
        seq_len = tokens.shape[1]
        row_bytes = seq_len * (a.size * itemsize(model_a) + b.size * itemsize(model_b))
        batch_size = max(1, min(-(-BATCH_POSITIONS // seq_len), BATCH_BYTES // row_bytes))
    batch = check_int("batch_size", batch_size, low=1)
    device = next(model_a.parameters()).device
    return CorrelationPasses(a, b, tokens, bos, batch, device, None), k


def one_pass(
    passes: CorrelationPasses,
    cols: slice,
    b_moments: ShiftedSums | None,
    r_moments: ShiftedSums | None,
) -> tuple[torch.Tensor, ShiftedSums, ShiftedSums, ShiftedSums | None]:
    """One pass over the tokens: sums of products of A's columns ``cols`` with all of B's, and
    each side's sums (B's, and where the passes have rotations its rotation's, on the first pass
    only)."""
    first_pass = b_moments is None
    tile = cols.stop - cols.start
    products = torch.zeros(tile, passes.b.size, dtype=torch.float64, device=passes.device)
    a_moments: ShiftedSums | None = None
    for a_batch, b_batch in passes.activations(cols.stop):
        passes.active[cols] += (a_batch[:, cols] > 0).sum(dim=0).cpu()
        for chunk in passes.chunks(a_batch.shape[0], tile):
            # copies (copy=True: a float64 model's kept activations must not be shifted)
            a = a_batch[chunk, cols].to(passes.device, torch.float64, copy=True)
            b = b_batch[chunk].to(passes.device, torch.float64, copy=True)
            if a_moments is None:
                a_moments = ShiftedSums(a.mean(dim=0))
            if b_moments is None:
                b_moments = ShiftedSums(b.mean(dim=0))
            a -= a_moments.shift
            b -= b_moments.shift
            a_moments.add(a)
            if first_pass:
                b_moments.add(b)
            if first_pass and passes.rotations is not None:
                if r_moments is None:
                    r_moments = ShiftedSums(
                        torch.zeros(passes.b.size, dtype=torch.float64, device=passes.device)
                    )
                r_moments.add(passes.rotate(b))
            products.addmm_(a.T, b)
        passes.bar.update(a_batch.shape[0])
    if a_moments is None or b_moments is None:
        raise NeuronKindsError("tokens hold no text position (every token is BOS)")
    return products, a_moments, b_moments, r_moments
