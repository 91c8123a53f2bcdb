"""The GPU check: one script a person with a CUDA machine runs as it is.

Two parts, each on random OPT checkpoints written to a temporary directory (nothing is
downloaded; the shapes are OPT's published ones, below):

1. **Equal to the CPU.** A small checkpoint (``--check-size``, a few blocks of OPT-125m's
   shape by default) is loaded on the CPU and on ``--device`` in every offload mode (resident,
   ``"cpu"``, ``"disk"``), in float64 so that no activation sits on the other side of the
   threshold by rounding alone. ``record``, ``vocab_scores``, ``massive_activations`` and
   ``neuron_correlations`` run on each; the counts (every layer's active counts, per-position
   counts and the whole classification) must be identical, the scores, magnitudes and
   correlations equal to a tolerance (``--rtol``). A mismatch is printed and the exit status
   is 1.
2. **Throughput.** A checkpoint of a real shape (``--size``, OPT-1.3b by default) in float16
   and float32, in each offload mode: tokens per second of the bare forward (stopped after the
   last block, as ``record`` stops), of ``record`` over the same tokens, and of
   ``neuron_correlations`` of the model against a second random one of its shape (the first
   ``--corr-layers`` layers of A against all of B), each also as a ratio to the bare forward.

On a CPU it runs in CI on a tiny model so that it cannot rot::

    python benchmarks/gpu_check.py --device cpu --size tiny --check-size tiny --tokens 512

On a GPU machine::

    python benchmarks/gpu_check.py                       # OPT-1.3b shape, float16 and float32
    python benchmarks/gpu_check.py --size opt-6.7b --dtypes float16 --modes cpu,disk
"""

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
sys.path.insert(0, str(ROOT / "benchmarks"))

from streaming import machine, write_checkpoint  # noqa: E402

import tl_neuronkinds as nk  # noqa: E402

#: OPT's shapes (Zhang et al. 2022, Table 1); ``tiny`` is for CI. Every size: vocabulary
#: 50,272 (tiny: 512), 2,048 positions (tiny: 128), ReLU, ffn_dim = 4 x hidden_size.
COMMON = {
    "vocab_size": 50272,
    "max_position_embeddings": 2048,
    "activation_function": "relu",
    "bos_token_id": 2,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "enable_bias": True,
    "layer_norm_elementwise_affine": True,
    "do_layer_norm_before": True,
}
SIZES = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "ffn_dim": 256,
             "vocab_size": 512, "max_position_embeddings": 128},
    "opt-125m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072},
    "opt-1.3b": {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "ffn_dim": 8192},
    "opt-2.7b": {"hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32, "ffn_dim": 10240},
    "opt-6.7b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "ffn_dim": 16384},
    "opt-13b": {"hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40, "ffn_dim": 20480},
}  # fmt: skip
MODES = {"resident": None, "cpu": "cpu", "disk": "disk"}


def checkpoint(root: Path, size: str, n_layers: int | None, dtype: torch.dtype, seed: int) -> Path:
    """A random checkpoint of ``size``'s shape in ``root`` (one shard per block)."""
    directory = root / f"{size}-{n_layers}-{dtype}-{seed}".replace("torch.", "")
    if directory.exists():
        return directory
    directory.mkdir(parents=True)
    sizes = {
        name: {**shape, "word_embed_proj_dim": shape["hidden_size"]}
        for name, shape in SIZES.items()
    }
    table = root / "shapes.json"
    table.write_text(json.dumps({"common": COMMON, "sizes": sizes}))
    write_checkpoint(directory, size, n_layers, dtype, table)
    if seed:  # write_checkpoint always draws from seed 0: a second model of this shape
        _reseed(directory, seed)
    return directory


def _reseed(directory: Path, seed: int) -> None:
    """Redraw the weights of a written checkpoint from ``seed`` (a second model of one shape)."""
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(seed)
    for shard in sorted(directory.glob("*.safetensors")):
        tensors = load_file(str(shard))
        for key, value in tensors.items():
            if not ("layer_norm.weight" in key and value.ndim == 1):
                noise = 0.02 * torch.randn(value.shape, generator=gen)
                tensors[key] = noise.to(value.dtype)
        save_file(tensors, str(shard), metadata={"format": "pt"})


def random_tokens(n_tokens: int, seq_len: int, d_vocab: int, device: str) -> torch.Tensor:
    """``[n_tokens // seq_len, seq_len]`` random ids, BOS (2) at position 0 of every row."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, d_vocab, (max(1, n_tokens // seq_len), seq_len), generator=gen)
    tokens[:, 0] = 2
    return tokens.to(device)


def load(directory: Path, device: str, dtype: torch.dtype, mode: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no tokenizer files: ids only, as intended here
        return nk.load_opt(directory, device=device, dtype=dtype, offload=MODES[mode])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one run of ``work`` (synchronised on CUDA), and its result."""
    _sync(device)
    tick = time.perf_counter()
    out = work()
    _sync(device)
    return time.perf_counter() - tick, out


# ------------------------------------------------------------------------------ part 1
def results(model_dir: Path, other_dir: Path, device: str, mode: str, tokens: torch.Tensor) -> dict:
    """What part 1 compares, computed on ``device`` in offload ``mode`` (float64)."""
    model = load(model_dir, device, torch.float64, mode)
    other = load(other_dir, device, torch.float64, mode)
    on = tokens.to(device)
    profile = nk.record(model, on, ngram_cap=None, progress=False, bos_token_id=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few tokens: the kinds' evidence warning
        kinds = nk.classify(profile).drop(columns=["triggers"])
    layers = profile.layers
    return {
        "active": [profile.counts[layer].active.cpu().numpy() for layer in layers],
        "pos_active": [profile.counts[layer].pos_active.cpu().numpy() for layer in layers],
        "kinds": kinds,
        "scores": np.stack([nk.vocab_scores(model, layer).numpy() for layer in layers]),
        "magnitudes": nk.massive_activations(model, on, 3).top["magnitude"].to_numpy(),
        "corr": nk.neuron_correlations(model, other, on, memory=1 << 28, bos_token_id=2)[
            "max_corr"
        ].to_numpy(),
    }


def compare(reference: dict, got: dict, rtol: float) -> list[str]:
    """The differences between two ``results`` (empty where they agree)."""
    wrong = []
    for key in ("active", "pos_active"):
        for layer, (a, b) in enumerate(zip(reference[key], got[key], strict=True)):
            if not np.array_equal(a, b):
                wrong.append(f"{key} of layer {layer}: {int((a != b).sum())} counts differ")
    if not reference["kinds"].equals(got["kinds"]):
        wrong.append("classify() differs")
    for key in ("scores", "magnitudes", "corr"):
        a, b = reference[key], got[key]  # NaN where a correlation is undefined (a dead neuron)
        atol = rtol * float(np.nanmax(np.abs(a), initial=1.0))
        if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
            wrong.append(f"{key}: largest difference {float(np.nanmax(np.abs(a - b))):.3g}")
    return wrong


def check_equal(args: argparse.Namespace, root: Path) -> bool:
    """Part 1: every offload mode on ``args.device`` against the resident CPU model."""
    model_dir = checkpoint(root, args.check_size, args.check_layers, torch.float32, 0)
    other_dir = checkpoint(root, args.check_size, args.check_layers, torch.float32, 1)
    seq_len = min(
        256,
        COMMON["max_position_embeddings"],
        SIZES[args.check_size].get("max_position_embeddings", 2048),
    )
    d_vocab = SIZES[args.check_size].get("vocab_size", COMMON["vocab_size"])
    tokens = random_tokens(args.check_tokens, seq_len, d_vocab, "cpu")
    reference = results(model_dir, other_dir, "cpu", "resident", tokens)
    ok = True
    for mode in args.modes:
        wrong = compare(
            reference, results(model_dir, other_dir, args.device, mode, tokens), args.rtol
        )
        print(
            f"equal to the CPU: {args.device}, {mode:>8}: "
            + ("yes" if not wrong else "NO: " + "; ".join(wrong))
        )
        ok = ok and not wrong
    return ok


# ------------------------------------------------------------------------------ part 2
def throughput(args: argparse.Namespace, root: Path, dtype: torch.dtype, mode: str) -> dict:
    """Part 2 for one dtype and offload mode: tokens per second of each workload."""
    model_dir = checkpoint(root, args.size, args.n_layers, dtype, 0)
    model = load(model_dir, args.device, dtype, mode)
    n_ctx = model.cfg.n_ctx
    tokens = random_tokens(args.tokens, min(args.seq_len, n_ctx), model.cfg.d_vocab, args.device)
    n = tokens.numel()
    batch = max(1, args.batch_tokens // tokens.shape[1])
    stop = model.cfg.n_layers

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, tokens.shape[0], batch):
                model(tokens[start : start + batch], stop_at_layer=stop)

    bare()  # warm-up: kernels, the page cache of a disk offload
    bare_s, _ = timed(args.device, bare)
    record_s, _ = timed(
        args.device,
        lambda: nk.record(model, tokens, batch_size=batch, progress=False, bos_token_id=2),
    )
    row = {"dtype": str(dtype).replace("torch.", ""), "mode": mode, "tokens": n,
           "bare_tok_s": n / bare_s, "record_tok_s": n / record_s, "record_vs_bare": bare_s / record_s}  # fmt: skip
    if args.corr_layers:
        other = load(checkpoint(root, args.size, args.n_layers, dtype, 1), args.device, dtype, mode)
        layers_a = list(range(min(args.corr_layers, model.cfg.n_layers)))
        corr_tokens = tokens[: max(1, args.corr_tokens // tokens.shape[1])]
        corr_s, _ = timed(
            args.device,
            lambda: nk.neuron_correlations(
                model, other, corr_tokens, layers_a=layers_a, batch_size=batch, bos_token_id=2
            ),
        )
        row["corr_tok_s"] = corr_tokens.numel() / corr_s
        row["corr_layers_a"] = len(layers_a)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", default="opt-1.3b", choices=sorted(SIZES))
    parser.add_argument("--n-layers", type=int, default=None, help="fewer blocks than the size")
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--modes", default="resident,cpu,disk")
    parser.add_argument("--tokens", type=int, default=65536, help="tokens of the throughput runs")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tokens per forward")
    parser.add_argument(
        "--corr-layers", type=int, default=1, help="layers of A correlated (0: none)"
    )
    parser.add_argument("--corr-tokens", type=int, default=8192)
    parser.add_argument("--check-size", default="opt-125m", choices=sorted(SIZES))
    parser.add_argument("--check-layers", type=int, default=2)
    parser.add_argument("--check-tokens", type=int, default=2048)
    parser.add_argument(
        "--rtol", type=float, default=1e-6, help="of float64 scores and correlations"
    )
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {list(MODES)}")
    if args.device.startswith("cuda") and not cuda:
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    print(f"# gpu_check on {machine(args.device)}")
    with tempfile.TemporaryDirectory(prefix="nk-gpu-check-") as tmp:
        root = Path(tmp)
        ok = args.skip_check or check_equal(args, root)
        rows = []
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            for mode in args.modes:
                rows.append(throughput(args, root, dtype, mode))
                print(
                    json.dumps(
                        {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}
                    )
                )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"machine": machine(args.device), "equal": ok, "rows": rows}, indent=1)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
