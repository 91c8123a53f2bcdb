"""Exact streaming statistics of hidden-state magnitudes, without keeping the hidden states.

- ``TopMagnitudes``: the k largest ``|h|`` of everything seen, with where they are. Entries are
  ordered by magnitude, descending, ties by their place (sequence, position, dimension),
  ascending: the first k of a stable sort of every magnitude, whatever the batching.
- ``MedianCounter``: the exact median of every ``|h|`` seen, in two passes over the same data.
  A magnitude is a non-negative float32, and for those the order of the values is the order of
  their bit patterns. Pass 1 counts the high 16 bits (32,768 bins up to infinity); that finds
  the bin holding each middle value and its rank there. Pass 2 counts the low 16 bits of the
  values in those bins only, which gives each middle value's exact bit pattern. Memory: two
  small histograms per layer, whatever the number of tokens.
- ``SequenceMeans``: Sun et al.'s per-sequence statistics (their Figure 2 and code): each
  sequence's top-k magnitudes and its median over its positions x d_model, summed over the
  sequences in float64 so that their means come out; a sequence's magnitudes are all in one
  forward, so its median is taken directly (``row_median``).

The median of an even count is the mean of the two middle values (as ``numpy.median``; not
``torch.median``, which returns the lower one), for the pooled and the per-sequence median alike.
"""

import torch
from jaxtyping import Float, Float64, Int

from tl_neuronkinds.errors import NeuronKindsError

_HIGH_BINS = 1 << 15  # the high 16 bits of a non-negative float32 (sign bit 0)
_LOW_BINS = 1 << 16


def magnitudes(
    hidden: Float[torch.Tensor, "batch pos d_model"], where: str
) -> Float[torch.Tensor, " n"]:
    """``|hidden|`` flattened in (sequence, position, dimension) order, as float32.

    Raises:
        NeuronKindsError: A NaN or infinite value (named by ``where``).
    """
    mag = hidden.detach().abs().float().flatten()
    if not bool(torch.isfinite(mag.sum())) and not bool(torch.isfinite(mag).all()):
        raise NeuronKindsError(f"{where} holds NaN or infinite values")
    return mag


class TopMagnitudes:
    """The ``k`` largest magnitudes seen, with their flat place ``(seq * pos_len + pos) *
    d_model + dim`` (see the module docstring for the order).

    Attributes:
        magnitude: ``[<= k]`` float32, descending.
        place: ``[<= k]`` int64, the flat place of each.
        value: ``[<= k]`` the signed values.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.magnitude = torch.empty(0)
        self.place = torch.empty(0, dtype=torch.int64)
        self.value = torch.empty(0)

    def add(
        self,
        mag: Float[torch.Tensor, " n"],
        values: Float[torch.Tensor, " n"],
        first_place: int,
    ) -> None:
        """Take a batch's magnitudes (flat, in order), whose first lies at ``first_place``; it
        must lie after every place seen before."""
        kk = min(self.k, mag.numel())
        if kk == 0:
            return
        kth = torch.topk(mag, kk, sorted=True).values[-1]
        above = (mag > kth).nonzero().squeeze(1)
        tied = (mag == kth).nonzero().squeeze(1)[: kk - above.numel()]  # the first places
        at = torch.cat([above, tied])
        magnitude = torch.cat([self.magnitude, mag[at].cpu()])
        place = torch.cat([self.place, at.cpu() + first_place])
        value = torch.cat([self.value, values[at].float().cpu()])
        by_place = place.argsort(stable=True)
        by_mag = magnitude[by_place].argsort(descending=True, stable=True)
        keep = by_place[by_mag][: self.k]
        self.magnitude, self.place, self.value = magnitude[keep], place[keep], value[keep]


class MedianCounter:
    """The exact median of every magnitude seen (the mean of the two middle ones where their
    number is even), from two passes over the same magnitudes in any batching."""

    def __init__(self) -> None:
        self.high = torch.zeros(_HIGH_BINS, dtype=torch.int64)
        self._targets: list[tuple[int, int]] | None = None  # (bin, rank within it) per middle
        self._low: dict[int, torch.Tensor] = {}

    @staticmethod
    def _bits(mag: Float[torch.Tensor, " n"]) -> Int[torch.Tensor, " n"]:
        return mag.contiguous().view(torch.int32)

    def count(self, mag: Float[torch.Tensor, " n"]) -> None:
        """Pass 1: count a batch's magnitudes by their high 16 bits."""
        high = self._bits(mag) >> 16
        self.high += torch.bincount(high, minlength=_HIGH_BINS).cpu()

    @property
    def n(self) -> int:
        return int(self.high.sum())

    def plan(self) -> None:
        """Between the passes: find the bin of each middle value and its rank there."""
        n = self.n
        if n == 0:
            raise NeuronKindsError("no magnitudes were counted")
        ends = self.high.cumsum(0)
        self._targets = []
        for rank in sorted({(n - 1) // 2, n // 2}):
            b = int(torch.searchsorted(ends, rank, right=True))
            below = int(ends[b - 1]) if b > 0 else 0
            self._targets.append((b, rank - below))
        self._low = {b: torch.zeros(_LOW_BINS, dtype=torch.int64) for b, _ in self._targets}

    def refine(self, mag: Float[torch.Tensor, " n"]) -> None:
        """Pass 2: count the low 16 bits of a batch's magnitudes in the middle bins."""
        if self._targets is None:
            raise NeuronKindsError("internal: MedianCounter.plan() must come between the passes")
        bits = self._bits(mag)
        high = bits >> 16
        for b, low in self._low.items():
            inside = bits[high == b] & 0xFFFF
            low += torch.bincount(inside, minlength=_LOW_BINS).cpu()

    def median(self) -> float:
        """The median, after both passes."""
        if self._targets is None:
            raise NeuronKindsError("internal: MedianCounter.plan() must come between the passes")
        middles = []
        for b, rank in self._targets:
            ends = self._low[b].cumsum(0)
            if int(ends[-1]) != int(self.high[b]):
                raise NeuronKindsError(
                    "the second pass saw other magnitudes than the first (a forward that is not "
                    "deterministic?)"
                )
            low = int(torch.searchsorted(ends, rank, right=True))
            bits = torch.tensor([(b << 16) | low], dtype=torch.int32)
            middles.append(float(bits.view(torch.float32)))
        return sum(middles) / len(middles) if self.n % 2 == 0 else middles[-1]


def row_median(mag: Float[torch.Tensor, "batch n"]) -> Float64[torch.Tensor, " batch"]:
    """Each row's median: its middle value, or the mean of its two middle values where ``n`` is
    even (as ``MedianCounter``), in float64."""
    n = mag.shape[1]
    lower = torch.kthvalue(mag, (n - 1) // 2 + 1, dim=1).values.double()
    upper = torch.kthvalue(mag, n // 2 + 1, dim=1).values.double()
    return (lower + upper) / 2


class SequenceMeans:
    """Sums over sequences of each sequence's ``k`` largest magnitudes and of its median.

    Attributes:
        top_sum: ``[k]`` float64, rank r = the sum over sequences of their (r+1)-th largest.
        median_sum: The sum over sequences of their medians (float64).
        n: Sequences seen.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.top_sum = torch.zeros(0, dtype=torch.float64)
        self.median_sum = 0.0
        self.n = 0

    def add(self, mag: Float[torch.Tensor, "batch n"]) -> None:
        """Take a batch of sequences, one row of magnitudes (positions x d_model) each."""
        top = torch.topk(mag, min(self.k, mag.shape[1]), dim=1, sorted=True).values
        sums = top.double().sum(0).cpu()
        self.top_sum = sums if self.n == 0 else self.top_sum + sums
        self.median_sum += float(row_median(mag).sum())
        self.n += mag.shape[0]

    def means(self) -> tuple[list[float], float]:
        """``(top, median)``: the mean over sequences of each rank's magnitude and of the
        median."""
        if self.n == 0:
            raise NeuronKindsError("no sequences were seen")
        return (self.top_sum / self.n).tolist(), self.median_sum / self.n
