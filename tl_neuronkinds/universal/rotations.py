"""The rotated baseline's rotations: one exactly orthogonal random matrix per layer of B
(Gurnee et al. 2024 §3: the baseline is the correlation with a randomly rotated neuron basis of
the same layer).

B's rotations take ``layers x d_mlp^2`` float64: 0.8 GiB at the OPT-125m shape, 12 GiB at
OPT-1.3b, 64 GiB at OPT-6.7b. They are held in memory where they fit in a given number of
bytes; otherwise they are written once to a temporary file and read back one layer at a time
(one layer's matrix in memory: 0.5 GiB at OPT-1.3b), so that memory stays bounded at any size.
Either way the matrices are the same, drawn in order from one seeded generator.
"""

import tempfile
from collections.abc import Iterator

import torch
from jaxtyping import Float

from tl_neuronkinds.atomic import disk_full_code
from tl_neuronkinds.errors import NeuronKindsError


def orthogonal(n: int, generator: torch.Generator) -> Float[torch.Tensor, "n n"]:
    """A random orthogonal matrix (Haar, float64): Q of the QR of a Gaussian matrix, its columns'
    signs fixed by R's diagonal. Orthogonal to float64 rounding (``Q^T Q = I`` to ~1e-15), not
    an approximate rotation."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)


class Rotations:
    """``count`` rotations of ``d x d``, drawn from ``seed``, iterated in layer order on
    ``device``: kept there where their ``count * d * d * 8`` bytes are at most ``room``, else
    in a temporary file (deleted when this is) and read one at a time, each matrix valid until
    the next is read."""

    def __init__(self, count: int, d: int, seed: int, device: torch.device, room: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.count, self.d, self.device = count, d, device
        self.on_disk = count * d * d * 8 > room
        self._held: list[torch.Tensor] = []
        if self.on_disk:
            self._file = tempfile.TemporaryFile(prefix="tl_neuronkinds-rotations-")
            try:
                for _ in range(count):
                    self._file.write(orthogonal(d, generator).numpy().tobytes())
                self._file.flush()
            except OSError as err:
                self._file.close()
                if disk_full_code(err) is None:
                    raise
                raise NeuronKindsError(
                    f"the rotated baseline's {count} rotations need "
                    f"{count * d * d * 8 / 2**30:.1f} GiB in a temporary file in "
                    f"{tempfile.gettempdir()}: no space left on device; set TMPDIR to a "
                    "roomier folder, or give more memory (--memory)"
                ) from None
        else:
            self._held = [orthogonal(d, generator).to(device) for _ in range(count)]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Float[torch.Tensor, "d d"]]:
        if not self.on_disk:
            yield from self._held
            return
        buffer = bytearray(self.d * self.d * 8)  # one layer's matrix, reused
        matrix = torch.frombuffer(buffer, dtype=torch.float64).view(self.d, self.d)
        self._file.seek(0)
        for _ in range(self.count):
            if self._file.readinto(buffer) != len(buffer):
                raise OSError("the rotations' temporary file was cut short")
            yield matrix.to(self.device)
