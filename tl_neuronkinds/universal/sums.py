"""The arithmetic of streamed Pearson correlations (Gurnee et al. 2024, §2; docs/kinds.md,
"Universal neurons"): float64 sums of each neuron's activations around a shift, correlations
from the sums of products, and the best matches of each row.

Sums are taken around a shift (each neuron's mean on the first chunk of positions), so that
``E[ab] - E[a]E[b]`` does not cancel; a neuron whose variance is rounding noise (at most
``kinds.moments.FLAT`` times its mean square) is constant, its correlations undefined (NaN).
"""

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int

from tl_neuronkinds.kinds.moments import FLAT


@dataclass
class ShiftedSums:
    """Shifted first and second sums of some columns: ``n``, ``sum(x - c)``, ``sum((x - c)^2)``."""

    shift: Float[torch.Tensor, " cols"]
    n: int = 0
    s1: Float[torch.Tensor, " cols"] = field(init=False)
    s2: Float[torch.Tensor, " cols"] = field(init=False)

    def __post_init__(self) -> None:
        self.s1 = torch.zeros_like(self.shift)
        self.s2 = torch.zeros_like(self.shift)

    def add(self, centred: Float[torch.Tensor, "positions cols"]) -> None:
        self.n += centred.shape[0]
        self.s1 += centred.sum(dim=0)
        self.s2 += (centred * centred).sum(dim=0)

    def mean(self) -> Float[torch.Tensor, " cols"]:
        """Mean of ``x - c``."""
        return self.s1 / self.n

    def std(self) -> Float[torch.Tensor, " cols"]:
        """Population standard deviation, NaN for a constant column: a variance at most
        ``FLAT`` (``kinds.moments``) times the mean square is rounding noise, so its
        correlations are undefined rather than noise."""
        mean = self.mean()
        var = self.s2 / self.n - mean * mean
        return var.clamp(min=0).sqrt().where(var > FLAT * (mean + self.shift) ** 2, torch.nan)


def correlations_in_place(
    products: Float[torch.Tensor, "tile n_b"], a: ShiftedSums, b: ShiftedSums
) -> Float[torch.Tensor, "tile n_b"]:
    """Pearson correlations from the shifted sums of products and of each side, computed in
    place of ``products`` (no temporary of its size)."""
    corr = products.div_(a.n)
    corr.addr_(a.mean(), b.mean(), alpha=-1)
    return corr.div_(a.std()[:, None]).div_(b.std()[None, :])


@dataclass
class TopMatches:
    """Per A neuron of one tile, the top-k correlations and the B columns they are at."""

    values: Float[torch.Tensor, "tile k"]
    columns: Int[torch.Tensor, "tile k"]

    @classmethod
    def of(cls, corr: Float[torch.Tensor, "tile n_b"], k: int) -> "TopMatches":
        """Top-k of each row, NaN (undefined) below every number (``corr``'s NaNs are
        overwritten: it is not needed afterwards)."""
        ranked = corr.nan_to_num_(nan=-torch.inf)
        values, columns = torch.topk(ranked, min(k, corr.shape[1]), dim=1, sorted=True)
        return cls(values.where(values > -torch.inf, torch.nan), columns)


#: Rows of a tile summarised at once (``row_moments``): a few temporaries of this many rows.
SUMMARY_ROWS = 256


def row_moments(
    corr: Float[torch.Tensor, "tile n_b"],
) -> tuple[Float[torch.Tensor, " tile"], Float[torch.Tensor, " tile"]]:
    """Each row's mean and population standard deviation over its defined (non-NaN)
    correlations, as Gurnee et al.'s code summarises a neuron's correlations with the other
    model's neurons; NaN for a row with none. Float64, a few hundred rows at a time so that no
    temporary of the tile's size is made."""
    mean = torch.empty(corr.shape[0], dtype=torch.float64, device=corr.device)
    std = torch.empty_like(mean)
    for start in range(0, corr.shape[0], SUMMARY_ROWS):
        rows = corr[start : start + SUMMARY_ROWS].double()
        defined = ~rows.isnan()
        n = defined.sum(dim=1)
        centre = rows.nansum(dim=1) / n
        spread = torch.where(defined, rows - centre[:, None], 0.0)
        mean[start : start + rows.shape[0]] = centre
        std[start : start + rows.shape[0]] = ((spread * spread).sum(dim=1) / n).sqrt()
    return mean, std
