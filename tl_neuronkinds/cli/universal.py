"""``tl-neuronkinds universal``: universal neurons of a model against others of its tokenizer
(default: the embedded model against its two other seeds) over a corpus (default: the embedded
held-out split), written as tables (CSV and parquet) and a self-contained HTML page."""

import argparse
from pathlib import Path
from typing import Any

from tl_neuronkinds.cli import common
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.universal.settings import CACHE, EXCESS, MEMORY, MIN_ACTIVE

PAGE = "universal.html"
#: Tokens where ``--tokens`` is not given: the embedded models' correlations of 8,192 x 8,192
#: neuron pairs cost about 0.2 GFLOP a token in float64 per other model (BENCHMARKS.md).
DEFAULT_TOKENS = 16_384


def add_parsers(sub: Any) -> None:
    """The ``universal`` subcommand."""
    cmd = sub.add_parser("universal", help="universal neurons (Gurnee et al. 2024) across models")
    cmd.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="two or more checkpoint directories or hub ids of one tokenizer, the first "
        "described (default: the embedded model, then its seeds 1 and 2)",
    )
    common.add_corpus_options(cmd, tokens=DEFAULT_TOKENS, tokens_help=f"tokens ({DEFAULT_TOKENS})")
    cmd.add_argument(
        "--layers",
        type=common.layer_list,
        default=None,
        help="layers of the first model (default: all)",
    )
    cmd.add_argument(
        "--k", type=common.integer(), default=5, help="best matches kept per neuron (5)"
    )
    cmd.add_argument(
        "--threshold",
        type=common.positive,
        default=EXCESS,
        help=f"universal: mean excess correlation above this (default: {EXCESS})",
    )
    cmd.add_argument(
        "--min-active",
        type=common.integer(low=0),
        default=MIN_ACTIVE,
        metavar="N",
        help="universal only where a neuron fires at N or more text positions "
        f"(default: {MIN_ACTIVE})",
    )
    cmd.add_argument(
        "--memory",
        type=common.integer(),
        default=MEMORY,
        help=f"accumulator bytes at once (default: {MEMORY / 2**30:g} GiB)",
    )
    cmd.add_argument(
        "--cache",
        type=common.integer(low=0),
        default=CACHE,
        help=f"bytes of activations kept between passes (0: none; default: {CACHE / 2**30:g} GiB)",
    )
    cmd.add_argument(
        "--seed", type=common.integer(low=0), default=0, help="seed of the rotated baseline (0)"
    )
    cmd.add_argument(
        "--batch-size", type=common.integer(), default=None, help="sequences per forward"
    )
    common.add_device_options(cmd)
    cmd.add_argument(
        "--out", type=common.out_dir, default=Path("neuronkinds-universal"), help="output directory"
    )
    cmd.add_argument("--no-page", action="store_true", help=f"write no {PAGE}")
    cmd.set_defaults(func=universal_command)


def universal_command(args: argparse.Namespace) -> None:
    """Correlate, describe and write (see the module)."""
    names = args.models or common.embedded_seeds()
    if len(names) < 2:
        raise NeuronKindsError("--models: give two or more models (the first is described)")
    options: dict[str, Any] = {
        "k": args.k,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "memory": args.memory,
        "cache": args.cache,
    }
    if not args.no_page:
        common.require_report("--no-page")
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.present.universal_page import universal_page
    from tl_neuronkinds.recording.recorder import check_layers
    from tl_neuronkinds.universal.families import find_universal

    out = args.out
    models = [load_opt(name, device=args.device, offload=args.offload) for name in names]
    if args.layers is not None:
        check_layers(args.layers, models[0].cfg.n_layers)
        options["layers_a"] = args.layers
    n_ctx = min(model.cfg.n_ctx for model in models)
    tokens = common.tokenize(args, common.corpus(args), models[0].tokenizer, n_ctx)
    found = find_universal(
        models, tokens, threshold=args.threshold, min_active=args.min_active, **options
    )
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "universal": found.table,
        "universal_layers": found.layers(),
        "universal_families": found.families(),
    }
    for name, table in tables.items():
        common.write_table(out, name, table)
    print(f"{found.tokens:,} text tokens; {found.models[0]} against {', '.join(found.models[1:])}")
    warning = found.support_warning()
    if warning is not None:
        common.note(warning)
    print(found.layers().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(found.families().to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    written = ", ".join(f"{name}.csv/.parquet" for name in tables)
    if not args.no_page:
        path = universal_page(found, out / PAGE, f"Universal neurons: {found.models[0]}")
        written += f" and {PAGE} ({path.stat().st_size / 2**20:.1f} MiB)"
    print(f"\nwrote {out}: {written}")
