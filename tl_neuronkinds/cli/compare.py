"""``tl-neuronkinds compare``: runs side by side on relative depth, as one self-contained page
(the paper's multi-model figures; ``nk.compare``, docs/compare.md) with its tables beside it.
"""

import argparse
from pathlib import Path
from typing import Any

from tl_neuronkinds.cli import common


def add_parsers(sub: Any) -> None:
    """The ``compare`` subcommand."""
    cmd = sub.add_parser(
        "compare", help="compare runs on relative depth (the paper's multi-model figures)"
    )
    cmd.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="run directories written by `profile` (or profile directories), two or more",
    )
    cmd.add_argument("--out", type=common.out_file, required=True, help="HTML page to write")
    cmd.add_argument(
        "--labels",
        type=common.name_list,
        default=None,
        help="comma-separated names, one per run (default: the model names)",
    )
    cmd.add_argument(
        "--suppression",
        action="store_true",
        help="add Figure 6 (token detectors suppressing their triggers): loads each run's model",
    )
    cmd.add_argument(
        "--massive",
        action="store_true",
        help="add massive activations by relative depth: loads each run's model and tokens",
    )
    cmd.add_argument("--device", default=None, help="where models loaded for these run")
    cmd.set_defaults(func=compare_command)


def compare_command(args: argparse.Namespace) -> None:
    """Compare the runs, write the page and its tables, print what differs."""
    from tl_neuronkinds import compare
    from tl_neuronkinds.present.plots import require_matplotlib

    require_matplotlib()
    comparison = compare(
        list(args.runs),
        labels=args.labels,
        with_suppression=args.suppression,
        with_massive=args.massive,
        device=args.device,
    )
    runs = comparison.runs[["model", "n_layers", "layers_recorded", "tokens", "corpus"]]
    print(runs.to_string(index=False))
    for row in comparison.differences.itertuples():
        common.note(f"the runs differ in {row.setting} ({row.why}): {row.values}")
    for text in comparison.notes:
        common.note(text)
    path = comparison.to_html(args.out)
    print(
        f"\nwrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and its tables beside it "
        f"({path.stem}_<table>.csv/.parquet)"
    )
