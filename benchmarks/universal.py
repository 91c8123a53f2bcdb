"""Benchmark: ``nk.neuron_correlations`` throughput against the device's matrix-multiply rate,
and its memory against a full cross-correlation accumulator.

Two models of one shape and tokenizer: the embedded model and its seed 1 (default), or a random
checkpoint of a real OPT shape (``--size``, from a JSON of OPT configs, ``CONFIGS``) with OPT's
tokenizer, loaded twice (the work does not depend on the weights' values). In one process,
side by side:

- the float64 matrix-multiply rate on the device, on the products the correlations do
  (``[positions, tile]^T @ [positions, N_B]``), before and after the run (the best counts);
- ``neuron_correlations(a, b, tokens)`` over ``--tokens`` tokens of the embedded train split:
  wall time, the useful rate ``2 x text positions x N_A x N_B`` FLOP (the sums of products;
  the forwards, the rotated baseline and the passes' other work count as time, not as FLOP),
  its share of the matrix-multiply rate, and the peak RSS (or CUDA memory);
- memory: the accumulator a full-matrix implementation holds, ``(layers x d_mlp)^2`` float64,
  at this shape and at OPT-125m and OPT-1.3b, against ``memory`` (the tile budget) here.

Usage::

    python benchmarks/universal.py --tokens 8192                 # embedded model, CPU
    python benchmarks/universal.py --size opt-125m --tokens 1024
    python benchmarks/universal.py --size opt-125m --device cuda --tokens 65536
    python benchmarks/universal.py --size opt-1.3b --layers-a 0 --tokens 512   # memory at 1.3b

``--layers-a`` correlates only those layers of A (against all of B): the passes, and so the
time, shrink with them, while the memory (both models, the tile against all of B's neurons, B's
kept activations) stays what the whole run needs.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from record import _checkpoint, _peak_rss_mb, _reset_peak  # noqa: E402

import tl_neuronkinds as nk  # noqa: E402
from tl_neuronkinds.universal.correlations import _TILE_BYTES  # noqa: E402
from tl_neuronkinds.universal.settings import CACHE, MEMORY  # noqa: E402

CONFIGS = ROOT.parent / "shared/data/opt-configs.json"


def _matmul_rate(positions: int, tile: int, n_b: int, device: str, repeats: int = 3) -> float:
    """Best float64 GFLOP/s of ``a.T @ b`` at the correlations' shapes (after a warm-up)."""
    a = torch.randn(positions, tile, dtype=torch.float64, device=device)
    b = torch.randn(positions, n_b, dtype=torch.float64, device=device)
    out = torch.zeros(tile, n_b, dtype=torch.float64, device=device)
    out.addmm_(a.T, b)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out.addmm_(a.T, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * positions * tile * n_b / best / 1e9


def _models(size: str | None, device: str, directory: Path) -> tuple:
    if size is None:
        paths = [nk.embedded_model_dir(), nk.embedded_model_dir(seed=1)]
    else:
        paths = [_checkpoint(size, None, directory)] * 2
    return tuple(nk.load_opt(path, device=device) for path in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="an OPT shape (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--memory", type=int, default=MEMORY)
    parser.add_argument("--cache", type=int, default=CACHE, help="bytes of kept activations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers-a", type=int, nargs="+", default=None, help="A's layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = json.loads(CONFIGS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        model_a, model_b = _models(args.size, args.device, Path(tmp))
        tokens = nk.Corpus.embedded(split="train").tokenize(
            model_a.tokenizer,
            seq_len=args.seq_len or model_a.cfg.n_ctx,
            n_tokens=args.tokens,
            progress=False,
        )
        d_mlp, n_layers = model_a.cfg.d_mlp, model_a.cfg.n_layers
        n = d_mlp * n_layers
        n_a = d_mlp * len(args.layers_a) if args.layers_a else n
        tile = min(n_a, args.memory // (_TILE_BYTES * n))
        positions = int((tokens != model_a.tokenizer.bos_token_id).sum())
        batch_positions = min(positions, 2048)
        before = _matmul_rate(batch_positions, tile, n, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _reset_peak()
        start = time.perf_counter()
        table = nk.neuron_correlations(
            model_a, model_b, tokens, layers_a=args.layers_a, memory=args.memory, cache=args.cache
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        # Measured again after the run and the best taken: the share is then the most
        # conservative, whatever the machine's other load did to one measurement.
        after = _matmul_rate(batch_positions, tile, n, args.device)
        rate = max(before, after)
        useful = 2 * positions * n_a * n / seconds / 1e9
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if args.device.startswith("cuda")
            else _peak_rss_mb()
        )
    full = {
        name: (cfg["num_hidden_layers"] * cfg["ffn_dim"]) ** 2 * 8 / 2**30
        for name, cfg in configs["sizes"].items()
        if name in ("opt-125m", "opt-1.3b")
    }
    print(
        json.dumps(
            {
                "model": args.size or "embedded (seed 0 vs seed 1)",
                "device": args.device,
                "threads": args.threads,
                "tokens": int(tokens.numel()),
                "text_positions": positions,
                "neurons_per_model": n,
                "layers_a": args.layers_a or "all",
                "tile": tile,
                "passes": -(-n_a // tile),
                "matmul_gflops_float64": round(rate, 1),
                "matmul_gflops_before_after": [round(before, 1), round(after, 1)],
                "correlations_seconds": round(seconds, 2),
                "useful_gflops": round(useful, 1),
                "share_of_matmul": round(useful / rate, 3),
                "peak_mb": round(peak),
                "memory_budget_mb": args.memory / 2**20,
                "cache_budget_mb": args.cache / 2**20,
                "activations_mb": round(positions * (n_a + n) * 4 / 2**20),  # float32, A and B
                "full_accumulator_gib_here": round(n * n * 8 / 2**30, 2),
                "full_accumulator_gib": {k: round(v, 1) for k, v in full.items()},
                "universal": int(table["universal"].sum()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
