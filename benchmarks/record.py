"""Benchmark: nk.record against the bare forward (and the naive TransformerLens route).

Each method runs in its own subprocess, so its peak resident memory is its own:

- ``bare``: ``model(batch, stop_at_layer=L)`` over all batches (the floor).
- ``record``: ``nk.record`` with its defaults (n-gram cap 50: unigram sample -> plan, record
  pass with reviews, repair where needed). Also timed: each pass, the profile's size on disk,
  ``nk.classify`` on it.
- design variants of ``record`` (``--variants``), to compare plans side by side:
  ``two-pass`` (the plan from a unigram pass over every row, then the record pass),
  ``no-reviews`` (the sampled plan, kept whole to the end), ``exhaustive`` (``ngram_cap=None``).
- ``naive``: what a researcher writes by hand — ``run_with_cache`` on every ``hook_post``,
  activations kept, then unigram/bigram/trigram x neuron counts with pandas ``groupby``.

Usage::

    python benchmarks/record.py --tokens 1000000 250000
    python benchmarks/record.py --size opt-125m --tokens 262144 --seq-len 512
    python benchmarks/record.py --tokens 262144 --variants two-pass no-reviews

The model is the embedded one (``tl_neuronkinds/data/embedded_model``) or, with ``--size``, a
random checkpoint of that OPT shape (from a JSON of OPT configs, ``CONFIGS``) with OPT's
tokenizer (``OPT_TOKENIZER``); tokens are the embedded corpus's train split, packed at
``--seq-len`` (default: the model's context).
"""

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
from streaming import write_checkpoint  # noqa: E402

import tl_neuronkinds as nk  # noqa: E402

OPT_TOKENIZER = ROOT.parent / "shared/data/opt-tokenizer"
CONFIGS = ROOT.parent / "shared/data/opt-configs.json"
VARIANTS = ("two-pass", "no-reviews", "exhaustive")


def _checkpoint(size: str | None, n_layers: int | None, directory: Path) -> Path:
    """The embedded model, or a random checkpoint of an OPT shape with OPT's tokenizer."""
    if size is None:
        return nk.embedded_model_dir()
    from transformers import AutoTokenizer

    write_checkpoint(directory, size, n_layers, torch.float32, CONFIGS)
    AutoTokenizer.from_pretrained(str(OPT_TOKENIZER)).save_pretrained(directory)
    return directory


def _load(checkpoint: Path, tokens: int, seq_len: int | None, device: str):
    model = nk.load_opt(checkpoint, device=device)
    corpus = nk.Corpus.embedded(split="train")
    ids = corpus.tokenize(
        model.tokenizer, seq_len=seq_len or model.cfg.n_ctx, n_tokens=tokens, progress=False
    )
    return model, ids


def _peak_rss_mb() -> float:
    """Peak resident memory since the process started, or since ``_reset_peak``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start the peak over from the current resident memory (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _bare(model, tokens, batch_size: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(tokens), batch_size):
            model(tokens[i : i + batch_size].to(model.cfg.device), stop_at_layer=model.cfg.n_layers)


def _record(model, tokens, batch_size: int, variant: str) -> nk.NeuronProfile:
    module = importlib.import_module("tl_neuronkinds.recording.record_run")
    if variant == "two-pass":
        module.SAMPLE_FRACTION = 1.0
    elif variant == "no-reviews":
        module.REVIEWS, module.REVIEW_EVERY = (), 1 << 62
    cap = None if variant == "exhaustive" else 50
    return nk.record(model, tokens, ngram_cap=cap, batch_size=batch_size, progress=False)


def _naive(model, tokens, batch_size: int) -> dict:
    """The hand-written route: cache every hook_post, then count with numpy and pandas."""
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]
    cached = {name: [] for name in names}
    with torch.inference_mode():
        for i in range(0, len(tokens), batch_size):
            _, cache = model.run_with_cache(
                tokens[i : i + batch_size].to(model.cfg.device), names_filter=names.__contains__
            )
            for name in names:
                cached[name].append(cache[name].cpu().numpy())
    toks = tokens.numpy()
    text = toks != 2
    results = {}
    for name in names:
        acts = np.concatenate(cached[name])  # [n_seq, pos, d_mlp]
        active = acts > 0
        per_position = (active & text[..., None]).sum(0)
        seq, pos, neuron = np.nonzero(active & text[..., None])
        frame = pd.DataFrame({"t0": toks[seq, pos], "neuron": neuron})
        frame["t1"] = np.where(pos >= 1, toks[seq, np.maximum(pos - 1, 0)], -1)
        frame["t2"] = np.where(pos >= 2, toks[seq, np.maximum(pos - 2, 0)], -1)
        uni = frame.groupby(["t0", "neuron"]).size()
        bi = frame[frame.t1 >= 0].groupby(["t1", "t0", "neuron"]).size()
        tri = frame[frame.t2 >= 0].groupby(["t2", "t1", "t0", "neuron"]).size()
        results[name] = (len(uni), len(bi), len(tri), int(per_position.sum()))
    return results


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_one(method: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, ids = _load(args.checkpoint, args.tokens[0], args.seq_len, args.device)
    result: dict = {"loaded_rss_mb": _peak_rss_mb()}
    _reset_peak()  # the peaks below are of the method itself (model and tokens resident)
    start = time.perf_counter()
    if method == "bare":
        _bare(model, ids, args.batch_size)
    elif method == "naive":
        _naive(model, ids, args.batch_size)
    else:
        profile = _record(model, ids, args.batch_size, method.removeprefix("record:"))
        seconds = time.perf_counter() - start
        result["record_peak_rss_mb"] = _peak_rss_mb()  # before the profile is saved, classified
        with tempfile.TemporaryDirectory() as tmp:
            profile.save(Path(tmp) / "p")
            result["profile_mb"] = _dir_bytes(Path(tmp) / "p") / 2**20
        t0 = time.perf_counter()
        nk.classify(profile)
        result["classify_s"] = time.perf_counter() - t0
        result["passes"] = profile.meta["passes"]
        result["ngram_pairs"] = {
            str(layer): {n: int(c.ngrams[n].keys.numel()) for n in c.ngrams}
            for layer, c in profile.counts.items()
        }
        result.update(seconds=seconds)
    result.setdefault("seconds", time.perf_counter() - start)
    result.update(
        method=method,
        tokens=int(ids.numel()),
        tokens_per_s=ids.numel() / result["seconds"],
        peak_rss_mb=_peak_rss_mb(),
        peak_device_mb=torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
    )
    return result


def _spawn(method: str, args: argparse.Namespace, checkpoint: Path, tokens: int) -> dict:
    """Run one method in a fresh process (so its peak RSS is its own) and return its figures."""
    cmd = [sys.executable, __file__, "--one", method, "--checkpoint", str(checkpoint)]
    cmd += ["--tokens", str(tokens), "--batch-size", str(args.batch_size)]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    if args.seq_len:
        cmd += ["--seq-len", str(args.seq_len)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(bare: dict, rec: dict) -> dict:
    passes = rec.get("passes", {})
    record_pass = passes.get("record", {}).get("seconds")
    return {
        "tokens": rec["tokens"],
        "method": rec["method"],
        "whole_vs_bare": bare["seconds"] / rec["seconds"],
        "record_pass_vs_bare": bare["seconds"] / record_pass if record_pass else None,
        "plan_s": passes.get("plan", {}).get("seconds"),
        "record_s": record_pass,
        "repair_s": passes.get("repair", {}).get("seconds"),
        "record_peak_rss_mb": rec.get("record_peak_rss_mb"),
        "peak_rss_mb": rec["peak_rss_mb"],
        "loaded_rss_mb": rec["loaded_rss_mb"],
        "profile_mb": rec.get("profile_mb"),
        "classify_s": rec.get("classify_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="an OPT shape (default: the embedded model)")
    parser.add_argument("--n-layers", type=int, default=None, help="fewer blocks than the size has")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1 << 20])
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=[], choices=VARIANTS)
    parser.add_argument(
        "--naive-tokens", type=int, nargs="*", default=[], help="token counts for the naive route"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    rows, summaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(args.size, args.n_layers, Path(tmp))
        for tokens in args.tokens:
            bare = _spawn("bare", args, checkpoint, tokens)
            rows.append(bare)
            for method in ["record", *(f"record:{v}" for v in args.variants)]:
                rec = _spawn(method, args, checkpoint, tokens)
                rows.append(rec)
                summaries.append(_summary(bare, rec))
                print(json.dumps(summaries[-1]), flush=True)
        for tokens in args.naive_tokens:
            rows += [_spawn(m, args, checkpoint, tokens) for m in ("bare", "record", "naive")]
    table = pd.DataFrame(summaries)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if args.naive_tokens:
        naive = pd.DataFrame(rows)[["method", "tokens", "seconds", "tokens_per_s", "peak_rss_mb"]]
        print(naive.tail(3 * len(args.naive_tokens)).to_string(index=False))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summaries": summaries}, indent=1))


if __name__ == "__main__":
    main()
