"""The ``tl-neuronkinds`` command line: the parser and ``main``.

Each group of subcommands lives in its own module and adds its parsers with
``add_parsers(sub)``, naming the function that runs it (``set_defaults(func=...)``); values are
parsed and checked by argparse ``type=`` functions (``common.py``). Every error is one line on
stderr and exit status 2 (130 after Ctrl-C), never a traceback.
"""

import argparse
import sys
from typing import NoReturn

from tl_neuronkinds.atomic import DiskFull
from tl_neuronkinds.cli import compare, massive, report, run, universal
from tl_neuronkinds.errors import NeuronKindsError

DESCRIPTION = (
    "What the FFN neurons of OPT models are: dead, token and n-gram detectors, positional."
)


class _UsageError(Exception):
    """A bad command line, raised by the parser instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tl-neuronkinds").strip()
        raise _UsageError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _Parser(prog="tl-neuronkinds", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (run, report, compare, massive, universal):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tl-neuronkinds``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as err:
        print(f"tl-neuronkinds: error: {err}", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except DiskFull as err:
        # Every file is written under a temporary name and renamed: nothing is half-written.
        print(f"tl-neuronkinds: error: {err}. {run.saved_note(args)}".rstrip(), file=sys.stderr)
        return 2
    except NeuronKindsError as err:
        print(f"tl-neuronkinds: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(f"tl-neuronkinds: error:{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tl-neuronkinds: interrupted. {run.saved_note(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
