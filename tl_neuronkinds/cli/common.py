"""What every subcommand of ``tl-neuronkinds`` shares: argparse ``type=`` functions that parse
and check a value (an error names the option and what it expected), the embedded defaults, the
corpus named on the command line, tables written as CSV and parquet, and the check that the
report can be drawn.

Only light modules are imported here: torch, TransformerLens and the rest load once the
arguments are parsed.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tl_neuronkinds.atomic import atomic_write, atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError

#: How many skipped files a note names.
SKIPPED_NAMED = 5


# ------------------------------------------------------------------------------ argument types
def integer(low: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {number}")
        return number

    return parse


def positive(value: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def layer_list(value: str) -> list[int]:
    """An argparse type: comma-separated layer numbers (checked against the model once loaded)."""
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer numbers such as 0,1,2, got {value!r}"
        ) from None


def name_list(value: str) -> list[str]:
    """An argparse type: comma-separated names (labels), none empty."""
    names = [part.strip() for part in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {value!r}")
    return names


def out_dir(value: str) -> Path:
    """An argparse type: a directory to write to (it may not exist yet; a file there is refused)."""
    out = Path(value)
    if out.exists() and not out.is_dir():
        raise argparse.ArgumentTypeError(f"{out}: a file is there, not a directory")
    return out


def out_file(value: str) -> Path:
    """An argparse type: a file to write (a directory there is refused)."""
    out = Path(value)
    if out.is_dir():
        raise argparse.ArgumentTypeError(f"{out}: a directory is there, not a file")
    return out


def add_device_options(cmd: argparse.ArgumentParser) -> None:
    """``--device`` and ``--offload``, as every subcommand that loads a model takes them."""
    cmd.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if any)")
    cmd.add_argument(
        "--offload", choices=["cpu", "disk"], default=None, help="stream block weights"
    )


# ------------------------------------------------------------------------------ defaults
def embedded_model() -> Path:
    """The embedded model's checkpoint directory (the default ``--model``)."""
    from tl_neuronkinds.data import embedded_model_dir

    return embedded_model_dir()


def embedded_seeds() -> list[str]:
    """The embedded model's checkpoint directories, one per seed (seed 0 first)."""
    from tl_neuronkinds.data import SEEDS, embedded_model_dir

    return [str(embedded_model_dir("standard", seed)) for seed in SEEDS]


def add_corpus_options(
    cmd: argparse.ArgumentParser, *, tokens: int | None, tokens_help: str
) -> None:
    """``--corpus``, ``--suffix``, ``--glob``, ``--tokens`` and ``--seq-len``, the same for every
    subcommand that reads a corpus (``tokens``: the default of ``--tokens``, None for all)."""
    cmd.add_argument(
        "--corpus",
        nargs="+",
        default=["embedded"],
        help="'embedded' (default), or text files / folders and .jsonl files (field 'text')",
    )
    cmd.add_argument(
        "--suffix",
        nargs="+",
        default=None,
        metavar="SUFFIX",
        help="in folders, read only files ending so (e.g. .txt .md)",
    )
    cmd.add_argument(
        "--glob",
        default=None,
        help="in folders, read only the paths matching this pattern (e.g. '**/*.md')",
    )
    cmd.add_argument("--tokens", type=integer(), default=tokens, help=tokens_help)
    cmd.add_argument(
        "--seq-len",
        type=integer(low=2),
        default=None,
        help="sequence length (default: the context)",
    )


def corpus(args: argparse.Namespace) -> Any:
    """The corpus named on the command line (``add_corpus_options``): ``embedded`` (the
    held-out split), else every ``.jsonl`` read as JSON Lines (field ``text``) and every other
    path as text files, in the order given. Files found in folders that are not text (binary,
    not UTF-8; ``Corpus.skipped``) are counted in a note, the first few named."""
    from tl_neuronkinds.corpus import Corpus

    spec: list[str] = args.corpus
    if spec == ["embedded"]:
        if args.suffix or args.glob:
            raise NeuronKindsError("--suffix and --glob choose files in folders: give --corpus")
        return Corpus.embedded(split="heldout")
    parts = []
    plain: list[str] = []

    def files() -> None:
        if plain:
            parts.append(Corpus.from_files(plain, suffixes=args.suffix, glob=args.glob))
            plain.clear()

    for item in spec:
        if item.endswith(".jsonl"):
            files()
            parts.append(Corpus.from_jsonl(item, field="text"))
        else:
            plain.append(item)
    files()
    skipped = [path for part in parts for path in part.skipped]
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:SKIPPED_NAMED])
        more = (
            f", and {len(skipped) - SKIPPED_NAMED:,} more" if len(skipped) > SKIPPED_NAMED else ""
        )
        note(f"skipped {len(skipped):,} file(s) that are not UTF-8 text: {shown}{more}")
    if len(parts) == 1:
        return parts[0]
    docs = [doc for part in parts for doc in part]
    return Corpus(docs, " + ".join(part.description for part in parts))


def tokenize(args: argparse.Namespace, corpus: Any, tokenizer: Any, n_ctx: int) -> Any:
    """``corpus`` as rows of ``--seq-len`` (default ``n_ctx``) tokens, ``--tokens`` of them;
    says so where ``--tokens`` was rounded to whole rows."""
    seq_len = args.seq_len or n_ctx
    tokens = corpus.tokenize(tokenizer, seq_len=seq_len, n_tokens=args.tokens, max_len=n_ctx)
    if args.tokens is not None and tokens.numel() != args.tokens:
        rows = tokens.shape[0]
        note(
            f"--tokens {args.tokens:,}: using {tokens.numel():,} tokens, whole rows of "
            f"--seq-len {seq_len} ({rows} row{'s' if rows > 1 else ''})"
        )
    return tokens


# ------------------------------------------------------------------------------ outputs
def require_report(flag: str | None = None) -> None:
    """Fail before any work where a page cannot be drawn (matplotlib missing); ``flag`` is the
    option that asks for no page, where the command has one."""
    from tl_neuronkinds.present.plots import require_matplotlib

    try:
        require_matplotlib()
    except NeuronKindsError as err:
        raise NeuronKindsError(f"{err} (or pass {flag})" if flag else str(err)) from None


def write_table(out: Path, name: str, table: Any) -> None:
    """``table`` (a DataFrame) as ``out/name.parquet`` and ``out/name.csv``, each atomically."""
    atomic_write(out / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))


def note(text: str) -> None:
    """A note for the user on stderr, in the command line's voice."""
    print(f"tl-neuronkinds: note: {text}", file=sys.stderr)
