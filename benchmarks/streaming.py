"""Benchmark: throughput and peak memory of per-block streaming (``load_opt(offload=...)``).

Runs the same batch through the same random checkpoint of a real OPT shape with the model
resident, streamed from pinned CPU memory (``offload="cpu"``), streamed from the safetensors
files (``offload="disk"``) and, on a GPU, through ``accelerate.cpu_offload`` for comparison.
Each forward goes through every block and stops before the unembedding
(``stop_at_layer=n_layers``, what ``nk.record`` does); ``--logits`` includes it.

Each mode runs in its own process so that peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated`` during the timed forwards; on CPU the process's peak RSS
(``ru_maxrss``, loading included) minus its RSS just before loading (interpreter and imports).
The checkpoint is written fresh to a temporary directory, one shard per
block, so "disk" reads come from the page cache unless the machine has evicted them.

Examples::

    # the GPU figure: OPT-1.3b shape, 64k tokens per forward, fp16
    python benchmarks/streaming.py --size opt-1.3b --tokens 65536 --seq-len 2048 --device cuda
    # a CPU run that finishes in minutes on 1-2 threads
    python benchmarks/streaming.py --size opt-125m --tokens 2048 --seq-len 256 --threads 1
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
CONFIGS = ROOT.parent / "shared/data/opt-configs.json"
MODES = ("resident", "cpu", "disk", "accelerate")


def write_checkpoint(
    directory: Path, size: str, n_layers: int | None, dtype: torch.dtype, configs: Path
) -> dict:
    """A random checkpoint of ``size``'s shape (``n_layers`` blocks if given), one shard per block."""
    from safetensors.torch import save_file
    from transformers import OPTConfig

    from tl_neuronkinds.loading.convert import expected_shapes

    table = json.loads(configs.read_text())
    fields = {**table["common"], **table["sizes"][size]}
    if n_layers is not None:
        fields["num_hidden_layers"] = n_layers
    cfg = OPTConfig(**fields)
    cfg.save_pretrained(directory)
    shapes, optional = expected_shapes(cfg)
    gen = torch.Generator().manual_seed(0)
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        if key in optional:
            continue
        parts = key.split(".")
        group = parts[2] if key.startswith("decoder.layers.") else "rest"
        groups.setdefault(group, {})[key] = shape
    weight_map = {}
    for i, (_, members) in enumerate(sorted(groups.items())):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for key, shape in members.items():
            if len(shape) == 1 and "layer_norm.weight" in key:
                value = torch.ones(shape)
            else:
                value = 0.02 * torch.randn(shape, generator=gen)
            tensors["model." + key] = value.to(dtype)
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return fields


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(args: argparse.Namespace) -> dict:
    """Load the checkpoint in ``args.worker`` mode and time ``args.repeats`` forwards."""
    from tl_neuronkinds.loading import load_opt

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    baseline = 0 if device.type == "cuda" else psutil.Process().memory_info().rss  # imports
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.worker == "accelerate":
            from accelerate import cpu_offload

            model = load_opt(args.checkpoint, device="cpu", dtype=dtype)
            cpu_offload(model, execution_device=device)
        else:
            offload = None if args.worker == "resident" else args.worker
            model = load_opt(args.checkpoint, device=device, dtype=dtype, offload=offload)
    load_seconds = time.perf_counter() - start
    held = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    held = psutil.Process().memory_info().rss - baseline if held is None else held
    n_layers = model.cfg.n_layers
    batch = args.tokens // args.seq_len
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, model.cfg.d_vocab, (batch, args.seq_len), generator=gen)
    tokens[:, 0] = 2
    tokens = tokens.to(device)
    stop = None if args.logits else n_layers
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    with torch.inference_mode():
        for _ in range(args.warmup + args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tick = time.perf_counter()
            model(tokens, stop_at_layer=stop)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - tick)
    timed = seconds[args.warmup :]
    return {
        "mode": args.worker,
        "tokens_per_forward": batch * args.seq_len,
        "seconds": [round(s, 4) for s in timed],
        "tokens_per_s": batch * args.seq_len / min(timed),
        "peak_memory_bytes": _peak_memory(device),
        "baseline_bytes": baseline,
        "held_after_load_bytes": held,
        "load_seconds": round(load_seconds, 2),
    }


def machine(device: str) -> str:
    """One line describing where the benchmark ran."""
    import platform

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="opt-1.3b", help="an entry of opt-configs.json")
    parser.add_argument("--n-layers", type=int, default=None, help="fewer blocks than the size")
    parser.add_argument("--tokens", type=int, default=65536, help="tokens per forward")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--modes", default=None, help="comma list of " + ",".join(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--logits", action="store_true", help="include ln_final + unembedding")
    parser.add_argument("--configs", type=Path, default=CONFIGS)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "float16" if args.device.startswith("cuda") else "float32"
    if args.tokens % args.seq_len:
        parser.error("--tokens must be a multiple of --seq-len")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    cuda = args.device.startswith("cuda")
    modes = args.modes.split(",") if args.modes else [m for m in MODES if cuda or m != "accelerate"]
    with tempfile.TemporaryDirectory(prefix="nk-bench-") as tmp:
        checkpoint = Path(tmp)
        fields = write_checkpoint(
            checkpoint, args.size, args.n_layers, getattr(torch, args.dtype), args.configs
        )
        results = []
        for mode in modes:
            command = [sys.executable, __file__, *sys.argv[1:], "--worker", mode]
            command += ["--checkpoint", str(checkpoint)]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode:
                print(f"mode {mode} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                results.append({"mode": mode, "failed": done.stderr.strip().splitlines()[-1:]})
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    resident = next((r.get("tokens_per_s") for r in results if r["mode"] == "resident"), None)
    print(f"machine: {machine(args.device)}; threads {args.threads}")
    print(
        f"model: {args.size} shape, {fields['num_hidden_layers']} blocks, {args.dtype}; "
        f"{args.tokens} tokens per forward ({args.tokens // args.seq_len} x {args.seq_len}); "
        f"{'with' if args.logits else 'without'} unembedding; best of {args.repeats}"
    )
    what = "peak device memory" if cuda else "peak RSS above imports"
    print(f"| mode | tokens/s | vs resident | {what} (MiB) | held after load (MiB) | load (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        if "failed" in r:
            print(f"| {r['mode']} | failed: {' '.join(r['failed'])} | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / resident:.2f}" if resident else "-"
        peak = (r["peak_memory_bytes"] - r["baseline_bytes"]) / 2**20
        held = r["held_after_load_bytes"] / 2**20
        print(
            f"| {r['mode']} | {r['tokens_per_s']:,.0f} | {ratio} | {peak:,.0f} | {held:,.0f} | {r['load_seconds']} |"
        )
    if args.out:
        payload = {"machine": machine(args.device), "args": vars(args), "results": results}
        args.out.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
