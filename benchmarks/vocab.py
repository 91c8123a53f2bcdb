"""Benchmark: ``nk.vocab_projection`` of a whole layer (every neuron's top-k and bottom-k tokens).

A random checkpoint of a real OPT shape (from a JSON of OPT configs, ``CONFIGS``; ``--layers`` blocks,
default 1) with OPT's tokenizer (``OPT_TOKENIZER``, when present) is written to a
temporary directory and loaded with ``nk.load_opt``. Timed in this process, in ``--repeats``
rounds of every case in turn after a warm-up round (best and median reported):

- ``vocab_projection(model, 0, k=10)``: the whole layer, as shipped;
- its parts: the scores alone (the chunked float32 matrix products, ``vocab.score_chunks``),
  and the ranking (``vocab._ranked``, both directions) on those chunks;
- variants: other chunk sizes (``vocab.CHUNK_ELEMENTS``), one thread instead of all, and the
  ranking of one chunk by ``topk`` against a stable sort of every row (``--no-variants``: none);
- the same call on the model streamed from disk (``offload="disk"``: the block is read).

Usage::

    python benchmarks/vocab.py                       # OPT-125m shape, 1 block, CPU
    python benchmarks/vocab.py --size opt-1.3b --device cuda --dtype float16
"""

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
from streaming import machine, write_checkpoint  # noqa: E402

import tl_neuronkinds as nk  # noqa: E402
from tl_neuronkinds.vocab import projection as vocab  # noqa: E402

CONFIGS = ROOT.parent / "shared/data/opt-configs.json"
OPT_TOKENIZER = ROOT.parent / "shared/data/opt-tokenizer"
CHUNKS = (1 << 22, 1 << 23, 1 << 24, 1 << 25, 1 << 26)


def _call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tick = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick


def _with_chunk(chunk: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        shipped, vocab.CHUNK_ELEMENTS = vocab.CHUNK_ELEMENTS, chunk
        try:
            return fn()
        finally:
            vocab.CHUNK_ELEMENTS = shipped

    return run


def _one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def _sorted_ranking(
    scores: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The alternative to ``topk``: a stable sort of every row."""
    values, ids = scores.sort(dim=1, descending=largest, stable=True)
    return values[:, :k], ids[:, :k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="opt-125m")
    parser.add_argument("--layers", type=int, default=1, help="blocks in the checkpoint")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-variants", dest="variants", action="store_false")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cases: list[tuple[str, Callable[[], object]]] = []

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        fields = write_checkpoint(directory, args.size, args.layers, dtype, CONFIGS)
        if (OPT_TOKENIZER / "vocab.json").is_file():
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(OPT_TOKENIZER)).save_pretrained(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = nk.load_opt(directory, device=device, dtype=dtype)
            streamed = nk.load_opt(directory, device=device, dtype=dtype, offload="disk")
        neurons = torch.arange(model.cfg.d_mlp)

        def scores_only() -> None:
            for _ in vocab.score_chunks(model, 0, neurons):
                pass

        chunks = [s.clone() for _, s in vocab.score_chunks(model, 0, neurons)]

        def ranking_only() -> None:
            for scores in chunks:
                vocab._ranked(scores, args.k, True)
                vocab._ranked(scores, args.k, False)

        def projection() -> object:
            return nk.vocab_projection(model, 0, k=args.k)

        first = chunks[0]
        cases += [
            ("vocab_projection (as shipped)", projection),
            ("  scores only (chunked float32 matmul)", scores_only),
            ("  ranking only (topk, both directions)", ranking_only),
            ("  offload='disk'", lambda: nk.vocab_projection(streamed, 0, k=args.k)),
        ]
        if args.variants:
            cases += [
                (f"  chunks of {c // fields['vocab_size']} neurons", _with_chunk(c, projection))
                for c in CHUNKS
                if c != vocab.CHUNK_ELEMENTS
            ]
            if device.type == "cpu" and torch.get_num_threads() > 1:
                cases.append(("  one thread", _one_thread(projection)))
            cases += [
                (
                    f"  ranking one chunk ({first.shape[0]} neurons), topk",
                    lambda: [vocab._ranked(first, args.k, d) for d in (True, False)],
                ),
                (
                    f"  ranking one chunk ({first.shape[0]} neurons), stable sort",
                    lambda: [_sorted_ranking(first, args.k, d) for d in (True, False)],
                ),
            ]
        # Rounds of every case in turn, after a warm-up round: a load that comes and goes on
        # the machine then hits every case alike.
        seconds: dict[str, list[float]] = {label: [] for label, _ in cases}
        with torch.inference_mode():
            for round_ in range(args.repeats + 1):
                for label, fn in cases:
                    took = _call(fn, device)
                    if round_:
                        seconds[label].append(took)
                print(f"  round {round_} done", file=sys.stderr)
    rows = [(label, min(t), statistics.median(t)) for label, t in seconds.items()]

    d_model, d_mlp, d_vocab = fields["hidden_size"], fields["ffn_dim"], fields["vocab_size"]
    print(f"machine: {machine(args.device)}; torch threads {torch.get_num_threads()}")
    print(
        f"layer: {args.size} shape ({d_mlp} neurons x {d_vocab} tokens, d_model {d_model}), "
        f"{args.dtype}, k={args.k}; default chunk {vocab.CHUNK_ELEMENTS // d_vocab} neurons; "
        f"best and median of {args.repeats} interleaved rounds after a warm-up round"
    )
    print("| what | best (s) | median (s) |")
    print("| --- | ---: | ---: |")
    for what, best, median in rows:
        print(
            f"| {what.strip() if not what.startswith('  ') else '… ' + what.strip()} | {best:.3f} | {median:.3f} |"
        )


if __name__ == "__main__":
    main()
