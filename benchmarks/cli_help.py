"""Benchmark: how long the command line takes to answer ``--help`` and a bad argument.

Each command runs in a fresh interpreter, ``--runs`` times in turn with the baseline (``python
-c pass``, the interpreter's own start-up), and the medians are reported side by side: what the
package adds is the difference. The command line imports torch, pandas and TransformerLens only
after parsing (tests/test_package.py checks that none is loaded); this measures the time.

Usage::

    python benchmarks/cli_help.py --runs 7
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "tl-neuronkinds --help": [sys.executable, "-m", "tl_neuronkinds", "--help"],
    "tl-neuronkinds profile --help": [sys.executable, "-m", "tl_neuronkinds", "profile", "--help"],
    "tl-neuronkinds profile --window foo": [
        sys.executable, "-m", "tl_neuronkinds", "profile", "--window", "foo", "--out", "x",
    ],
    "import tl_neuronkinds": [sys.executable, "-c", "import tl_neuronkinds"],
    "import tl_neuronkinds; nk.classify (loads torch)": [
        sys.executable, "-c", "import tl_neuronkinds as nk; nk.classify",
    ],
}  # fmt: skip


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (7)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # in turn, so that load on the machine falls on every command
        for name, argv in COMMANDS.items():
            times[name].append(_seconds(argv))
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"| command | median s | min s | max s | over the baseline s |  ({args.runs} runs)")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| `{name}` | {median:.2f} | {min(values):.2f} | {max(values):.2f} "
            f"| {median - base:+.2f} |"
        )


if __name__ == "__main__":
    main()
