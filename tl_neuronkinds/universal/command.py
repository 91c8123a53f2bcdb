"""``tl-neuronkinds universal``: universal neurons of a model against others of its tokenizer
(default: the embedded model against its two other seeds) over a corpus (default: the embedded
held-out split), written as tables (CSV and parquet) and a self-contained HTML page."""

import argparse
from typing import Any

from tl_neuronkinds.massive.command import write_table

PAGE = "universal.html"
#: Tokens where ``--tokens`` is not given: the embedded models' correlations of 8,192 x 8,192
#: neuron pairs cost about 0.2 GFLOP a token in float64 per other model (BENCHMARKS.md).
DEFAULT_TOKENS = "16384"


def add_parser(sub: Any) -> None:
    """The ``universal`` subcommand's arguments."""
    cmd = sub.add_parser("universal", help="universal neurons (Gurnee et al. 2024) across models")
    cmd.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="two or more checkpoint directories or hub ids of one tokenizer, the first "
        "described (default: the embedded model, then its seeds 1 and 2)",
    )
    cmd.add_argument(
        "--corpus", nargs="+", default=["embedded"], help="as for profile (default: embedded)"
    )
    cmd.add_argument("--tokens", default=DEFAULT_TOKENS, help=f"tokens ({DEFAULT_TOKENS})")
    cmd.add_argument("--seq-len", default=None, help="sequence length (default: the context)")
    cmd.add_argument("--layers", default=None, help="layers of the first model (default: all)")
    cmd.add_argument("--k", default="5", help="best matches kept per neuron (5)")
    cmd.add_argument("--threshold", default="0.5", help="universal: mean excess above this")
    cmd.add_argument("--memory", default=None, help="accumulator bytes at once (2 GiB)")
    cmd.add_argument(
        "--cache", default=None, help="bytes of activations kept between passes (4 GiB; 0: none)"
    )
    cmd.add_argument("--seed", default="0", help="seed of the rotated baseline (0)")
    cmd.add_argument("--batch-size", default=None, help="sequences per forward")
    cmd.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if any)")
    cmd.add_argument("--offload", choices=["cpu", "disk"], default=None)
    cmd.add_argument("--out", default="neuronkinds-universal", help="output directory")
    cmd.add_argument("--no-page", action="store_true", help=f"write no {PAGE}")


def _default_models() -> list[str]:
    from tl_neuronkinds.data import SEEDS, embedded_model_dir

    return [str(embedded_model_dir("standard", seed)) for seed in SEEDS]


#: Tokens of the run that ``report --compare`` correlates over (its first rows).
REPORT_TOKENS = 16_384


def compare_for_report(
    model: Any, others: list[str], tokens: Any, profile: Any, args: argparse.Namespace
) -> Any:
    """``find_universal`` of a run's model against ``others`` (``["seeds"]``: the embedded
    model's other seeds) over the run's first ``REPORT_TOKENS`` tokens, its activation moments
    from the run's profile, for ``tl-neuronkinds report --compare``."""
    from tl_neuronkinds.errors import NeuronKindsError
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.universal.findings import find_universal

    if tokens is None:
        raise NeuronKindsError("--compare needs the run's tokens (tokens.safetensors)")
    names = _default_models()[1:] if others == ["seeds"] else others
    models = [load_opt(name, device=args.device, offload=args.offload) for name in names]
    rows = max(1, REPORT_TOKENS // tokens.shape[1])
    layers = list(profile.layers)
    return find_universal([model, *models], tokens[:rows], profile=profile, layers_a=layers)


def universal_command(args: argparse.Namespace) -> None:
    """Validate everything, then correlate, describe and write (see the module)."""
    from tl_neuronkinds import cli
    from tl_neuronkinds.errors import NeuronKindsError
    from tl_neuronkinds.massive.command import positive

    out = cli._out_dir(args.out)
    names = args.models or _default_models()
    if len(names) < 2:
        raise NeuronKindsError("--models: give two or more models (the first is described)")
    n_tokens = cli._int("--tokens", args.tokens)
    seq_len = cli._int("--seq-len", args.seq_len, low=2)
    layers = cli._layers(args.layers)
    options: dict[str, Any] = {
        "k": cli._int("--k", args.k),
        "seed": cli._int("--seed", args.seed, low=0),
        "batch_size": cli._int("--batch-size", args.batch_size),
    }
    if args.memory is not None:
        options["memory"] = cli._int("--memory", args.memory)
    if args.cache is not None:
        options["cache"] = cli._int("--cache", args.cache, low=0)
    threshold = positive("--threshold", args.threshold)
    if not args.no_page:
        cli._require_report()
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.recording.recorder import check_layers
    from tl_neuronkinds.universal.findings import find_universal
    from tl_neuronkinds.universal.page import universal_page

    models = [load_opt(name, device=args.device, offload=args.offload) for name in names]
    if layers is not None:
        check_layers(layers, models[0].cfg.n_layers)
        options["layers_a"] = layers
    first = models[0]
    tokens = cli._corpus(args.corpus).tokenize(
        first.tokenizer,
        seq_len=seq_len or min(model.cfg.n_ctx for model in models),
        n_tokens=n_tokens,
        max_len=min(model.cfg.n_ctx for model in models),
    )
    found = find_universal(models, tokens, threshold=threshold, **options)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "universal": found.table,
        "universal_layers": found.layers(),
        "universal_families": found.families(),
    }
    for name, table in tables.items():
        write_table(out, name, table)
    print(f"{found.tokens:,} text tokens; {found.models[0]} against {', '.join(found.models[1:])}")
    print(found.layers().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(found.families().to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    written = ", ".join(f"{name}.csv/.parquet" for name in tables)
    if not args.no_page:
        path = universal_page(found, out / PAGE, f"Universal neurons: {found.models[0]}")
        written += f" and {PAGE} ({path.stat().st_size / 2**20:.1f} MiB)"
    print(f"\nwrote {out}: {written}")
