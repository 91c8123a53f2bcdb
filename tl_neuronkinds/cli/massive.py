"""``tl-neuronkinds massive``: massive activations of a model (default: the embedded one) over a
corpus (default: the embedded held-out split), written as tables (CSV and parquet) and a
self-contained HTML page of their figures.

Per layer it writes both summaries: the top entries and median of every token pooled
(``massive_top``, ``massive_median``) and Sun et al.'s means over sequences of each sequence's
top-k and median (``massive_by_sequence``). Where massive activations are found, their effects
are measured too: perplexity with them set to zero and to their mean (the mean taken over the
first half of the rows, perplexity over the second half; ``--scheme`` picks which entries are
set), and the attention on them over every row.
"""

import argparse
from pathlib import Path
from typing import Any

from tl_neuronkinds.cli import common

PAGE = "massive.html"


def add_parsers(sub: Any) -> None:
    """The ``massive`` subcommand."""
    cmd = sub.add_parser("massive", help="massive activations (Sun et al. 2024) and their effects")
    cmd.add_argument("--model", default=None, help="checkpoint directory or hub id")
    common.add_corpus_options(cmd, tokens=65_536, tokens_help="tokens to look at (65536)")
    cmd.add_argument(
        "--k", type=common.integer(), default=3, help="top magnitudes kept per layer (3)"
    )
    cmd.add_argument(
        "--magnitude",
        type=common.positive,
        default=100.0,
        help="a massive |h| is above this (100) ...",
    )
    cmd.add_argument(
        "--ratio", type=common.positive, default=1000.0, help="... and this times the median (1000)"
    )
    cmd.add_argument(
        "--scheme",
        choices=("threshold", "positions"),
        default="threshold",
        help="entries the intervention sets: every one above the cut-off (threshold), or the "
        "first token's and the top-1 position's, as Sun et al.'s code (positions)",
    )
    cmd.add_argument(
        "--batch-size", type=common.integer(), default=None, help="sequences per forward (8)"
    )
    common.add_device_options(cmd)
    cmd.add_argument(
        "--out", type=common.out_dir, default=Path("neuronkinds-massive"), help="output directory"
    )
    cmd.add_argument("--no-page", action="store_true", help=f"write no {PAGE}")
    cmd.set_defaults(func=massive_command)


def massive_command(args: argparse.Namespace) -> None:
    """Look, measure and write (see the module)."""
    if not args.no_page:
        common.require_report("--no-page")
    import pandas as pd

    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.massive.measure import measure_massive
    from tl_neuronkinds.present.massive_page import massive_page

    out = args.out
    model = load_opt(
        args.model or common.embedded_model(), device=args.device, offload=args.offload
    )
    tokens = common.tokenize(args, common.corpus(args), model.tokenizer, model.cfg.n_ctx)
    found = measure_massive(
        model,
        tokens,
        args.k,
        args.batch_size,
        magnitude=args.magnitude,
        ratio=args.ratio,
        scheme=args.scheme,
    )
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {
        "massive_top": found.top,
        "massive_median": found.median,
        "massive_by_sequence": found.by_sequence,
    }
    if found.intervention is not None:
        tables |= {
            "massive_dims": found.dims(),
            "massive_tokens": found.tokens(),
            "massive_intervention": found.intervention,
            "massive_attention": found.attention,
        }
    for name, table in tables.items():
        common.write_table(out, name, table)
    _print_summary(found, tokens)
    written = ", ".join(f"{name}.csv/.parquet" for name in tables)
    if not args.no_page:
        title = f"Massive activations: {model.cfg.model_name}"
        path = massive_page(found, out / PAGE, title)
        written += f" and {PAGE} ({path.stat().st_size / 2**20:.1f} MiB)"
    print(f"\nwrote {out}: {written}")


def _print_summary(found: Any, tokens: Any) -> None:
    import pandas as pd

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
    print(f"massive activations: {found.summary()}")
    if found.intervention is None:
        print("no massive activations, so their effects are not measured")
    else:
        print(found.intervention[["intervention", "layer", "dims", "perplexity", "vs_none"]])
