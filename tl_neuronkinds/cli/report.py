"""``tl-neuronkinds report``: the HTML report of a run directory, written again (or elsewhere),
optionally with a universal-neurons section against other models."""

import argparse
from pathlib import Path
from typing import Any

from tl_neuronkinds.cli import common
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.run_dir import (
    HOLDS,
    PROFILE_DIR,
    REPORT_FILE,
    RUN_FILE,
    TOKENS_FILE,
    is_run_dir,
    load_tokens,
    read_run,
)

#: Tokens of the run that ``report --compare`` correlates over (its first rows).
COMPARE_TOKENS = 16_384


def add_parsers(sub: Any) -> None:
    """The ``report`` subcommand."""
    rep = sub.add_parser("report", help="write an HTML report of a run directory")
    rep.add_argument("dir", type=Path, help="a run directory written by `profile`")
    rep.add_argument(
        "--out", type=common.out_file, default=None, help="HTML file (default: DIR/report.html)"
    )
    common.add_device_options(rep)
    rep.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="add a universal-neurons section: the run's model against these models of its "
        "tokenizer ('seeds': the embedded model's other seeds), over the run's first "
        f"{COMPARE_TOKENS:,} tokens",
    )
    rep.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> None:
    """Write the HTML report of a run directory: its profile, the model named in ``run.json``
    and the tokens it was recorded on (``tokens.safetensors``; without it, no contexts)."""
    directory: Path = args.dir
    if not is_run_dir(directory):
        raise NeuronKindsError(f"{directory.resolve()} is not a run directory: {HOLDS}")
    out = args.out if args.out is not None else directory / REPORT_FILE
    common.require_report()
    name = read_run(directory).get("settings", {}).get("model")
    if not isinstance(name, str):
        raise NeuronKindsError(f"{directory / RUN_FILE} names no model")
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.massive.measure import massive_for_report
    from tl_neuronkinds.present.report import report
    from tl_neuronkinds.recording.profile import NeuronProfile

    profile = NeuronProfile.load(directory / PROFILE_DIR)
    tokens = load_tokens(directory / TOKENS_FILE)
    if tokens is None:
        common.note(f"no {TOKENS_FILE} in {directory}: the report shows no contexts")
    model = load_opt(
        common.embedded_model() if name == "embedded" else name,
        device=args.device,
        offload=args.offload,
    )
    universal = None
    if args.compare is not None:
        universal = _universal_section(model, args.compare, tokens, profile, args)
    path = report(
        profile, model, out, tokens, massive=massive_for_report(model, tokens), universal=universal
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def _universal_section(
    model: Any, others: list[str], tokens: Any, profile: Any, args: argparse.Namespace
) -> Any:
    """``find_universal`` of a run's model against ``others`` (``["seeds"]``: the embedded
    model's other seeds) over the run's first ``COMPARE_TOKENS`` tokens, its activation moments
    from the run's profile."""
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.universal.families import find_universal

    if tokens is None:
        raise NeuronKindsError(f"--compare needs the run's tokens ({TOKENS_FILE})")
    names = common.embedded_seeds()[1:] if others == ["seeds"] else others
    models = [load_opt(name, device=args.device, offload=args.offload) for name in names]
    rows = max(1, COMPARE_TOKENS // tokens.shape[1])
    layers = list(profile.layers)
    return find_universal([model, *models], tokens[:rows], profile=profile, layers_a=layers)
