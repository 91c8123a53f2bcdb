"""``tl-neuronkinds massive``: massive activations of a model (default: the embedded one) over a
corpus (default: the embedded held-out split), written as tables (CSV and parquet) and a
self-contained HTML page of their figures.

Where massive activations are found, their effects are measured too: perplexity with them set
to zero and to their mean (the mean taken over the first half of the rows, perplexity over the
second half), and the attention on them over every row.
"""

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from tl_neuronkinds.atomic import atomic_write, atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.massive.activations import MAGNITUDE, RATIO

PAGE = "massive.html"
DEFAULT_TOKENS = "65536"


def add_parser(sub: Any) -> None:
    """The ``massive`` subcommand's arguments."""
    cmd = sub.add_parser("massive", help="massive activations (Sun et al. 2024) and their effects")
    cmd.add_argument("--model", default=None, help="checkpoint directory or hub id")
    cmd.add_argument(
        "--corpus", nargs="+", default=["embedded"], help="as for profile (default: embedded)"
    )
    cmd.add_argument("--tokens", default=DEFAULT_TOKENS, help="tokens to look at (65536)")
    cmd.add_argument("--seq-len", default=None, help="sequence length (default: the context)")
    cmd.add_argument("--k", default="3", help="top magnitudes kept per layer (3)")
    cmd.add_argument("--magnitude", default="100", help="a massive |h| is above this (100) ...")
    cmd.add_argument("--ratio", default="1000", help="... and this times the median (1000)")
    cmd.add_argument("--batch-size", default=None, help="sequences per forward (8)")
    cmd.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if any)")
    cmd.add_argument("--offload", choices=["cpu", "disk"], default=None)
    cmd.add_argument("--out", default="neuronkinds-massive", help="output directory")
    cmd.add_argument("--no-page", action="store_true", help=f"write no {PAGE}")


def positive(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise NeuronKindsError(f"{name}: expected a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise NeuronKindsError(f"{name}: expected a positive number, got {value!r}")
    return number


#: Tokens the run's report looks at for massive activations (its first rows).
REPORT_TOKENS = 65_536


def measure(
    model: Any,
    tokens: Any,
    k: int = 3,
    batch: int | None = None,
    magnitude: float = MAGNITUDE,
    ratio: float = RATIO,
) -> Any:
    """``massive_activations`` over ``tokens``, with the effects where any is massive (the
    mean over the first half of the rows, perplexity over the second half)."""
    from tl_neuronkinds.massive import massive_activations, massive_attention, massive_intervention

    found = massive_activations(
        model, tokens, k, batch_size=batch, magnitude=magnitude, ratio=ratio
    )
    if not found.top["massive"].any():
        return found
    half = max(1, tokens.shape[0] // 2)
    mean_rows, held_out = (tokens[:half], tokens[half:]) if tokens.shape[0] > 1 else (tokens,) * 2
    return found.with_effects(
        massive_intervention(model, found, held_out, mean_tokens=mean_rows, batch_size=batch),
        massive_attention(model, found, tokens, batch_size=batch),
    )


def for_report(model: Any, tokens: Any) -> Any:
    """What the run's report shows of massive activations: ``measure`` over the first rows of
    ``tokens`` (up to ``REPORT_TOKENS``), at the paper's thresholds; None without tokens."""
    if tokens is None:
        return None
    rows = max(1, REPORT_TOKENS // tokens.shape[1])
    return measure(model, tokens[:rows])


def write_table(out: Path, name: str, table: pd.DataFrame) -> None:
    atomic_write(out / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))


def massive_command(args: argparse.Namespace) -> None:
    """Validate everything, then look, measure and write (see the module)."""
    from tl_neuronkinds import cli

    out = cli._out_dir(args.out)
    n_tokens = cli._int("--tokens", args.tokens)
    seq_len = cli._int("--seq-len", args.seq_len, low=2)
    k = cli._int("--k", args.k) or 3
    magnitude = positive("--magnitude", args.magnitude)
    ratio = positive("--ratio", args.ratio)
    batch = cli._int("--batch-size", args.batch_size)
    if not args.no_page:
        cli._require_report()
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.massive.page import massive_page

    model = load_opt(args.model or cli._embedded_model(), device=args.device, offload=args.offload)
    corpus = cli._corpus(args.corpus)
    tokens = corpus.tokenize(
        model.tokenizer,
        seq_len=seq_len or model.cfg.n_ctx,
        n_tokens=n_tokens,
        max_len=model.cfg.n_ctx,
    )
    found = measure(model, tokens, k, batch, magnitude=magnitude, ratio=ratio)
    out.mkdir(parents=True, exist_ok=True)
    wrote = ["massive_top", "massive_median"]
    if found.intervention is not None:
        tables = {
            "massive_dims": found.dims(),
            "massive_tokens": found.tokens(),
            "massive_intervention": found.intervention,
            "massive_attention": found.attention,
        }
        for name, table in tables.items():
            write_table(out, name, table)
        wrote += list(tables)
    write_table(out, "massive_top", found.top)
    write_table(out, "massive_median", found.median)
    _print_summary(found, tokens)
    written = ", ".join(f"{name}.csv/.parquet" for name in wrote)
    if not args.no_page:
        title = f"Massive activations: {model.cfg.model_name}"
        path = massive_page(found, out / PAGE, title)
        written += f" and {PAGE} ({path.stat().st_size / 2**20:.1f} MiB)"
    print(f"\nwrote {out}: {written}")


def _print_summary(found: Any, tokens: Any) -> None:
    top1 = found.top[found.top["rank"] == 0].set_index("layer")
    summary = pd.DataFrame(
        {
            "top_1": top1["magnitude"],
            "median": found.median.set_index("layer")["median"],
            "dim": top1["dim"],
            "token": top1["token"],
            "n_massive": found.top.groupby("layer")["massive"].sum(),
        }
    )
    summary["top_1 / median"] = summary["top_1"] / summary["median"]
    print(f"{tokens.numel():,} tokens ({tokens.shape[0]} x {tokens.shape[1]})")
    print(summary.to_string(float_format=lambda x: f"{x:.4g}"))
    if found.intervention is None:
        print(
            f"no massive activations (none above {found.magnitude:g} and {found.ratio:g} x its "
            "layer's median): the effects are not measured"
        )
    else:
        print(found.intervention[["intervention", "layer", "dims", "perplexity", "vs_none"]])
