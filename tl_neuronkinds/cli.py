"""The ``tl-neuronkinds`` command line: ``profile``, ``tables``, ``report`` and ``demo``.

``profile`` is the main job: load a model (default: the embedded one), tokenize a corpus
(default: the embedded corpus's held-out split), record a NeuronProfile (``nk.record``, with
checkpoints that a rerun of the same command resumes), then write the classification and the
per-layer summaries of the paper's figures next to it. Everything is validated before anything
is written; every error is one line on stderr and exit status 2 (130 after Ctrl-C), never a
traceback. A run is marked finished in ``run.json`` only once every output exists.

Under ``torchrun`` every rank runs the command; ``record`` gives each rank its share of the rows
and every rank the merged profile; rank 0 writes the outputs.
"""

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from tl_neuronkinds.atomic import atomic_write, atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError

_RUN_FILE = "run.json"
_PROFILE_DIR = "profile"
_CHECKPOINT_DIR = "checkpoint"
# The columns of the per-layer summary printed at the end (all are in summary_layers.csv).
_SUMMARY_COLUMNS = [
    "n_neurons",
    "pct_dead",
    "mean_freq_alive",
    "n_token_detectors",
    "n_ngram_detectors_2",
    "n_ngram_detectors_3",
    "n_detectors_under_10",
    "n_positional",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-neuronkinds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prof = sub.add_parser("profile", help="record a NeuronProfile and classify its neurons")
    prof.add_argument(
        "--model", default=None, help="checkpoint directory or hub id (default: embedded model)"
    )
    prof.add_argument(
        "--corpus",
        nargs="+",
        default=["embedded"],
        help="'embedded', or text files / folders / globs and .jsonl files (field 'text')",
    )
    prof.add_argument("--tokens", default=None, help="tokens to record (default: all)")
    prof.add_argument("--seq-len", default=None, help="sequence length (default: the context)")
    prof.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    prof.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if any)")
    prof.add_argument(
        "--offload", choices=["cpu", "disk"], default=None, help="stream block weights"
    )
    prof.add_argument(
        "--ngram-cap",
        default="50",
        help="keep n>=2 counts of the neurons that can have k95_n <= this (>= 5), or 'none'",
    )
    prof.add_argument(
        "--checkpoint-every", default=None, metavar="N", help="save progress every N tokens"
    )
    prof.add_argument("--batch-size", default=None, help="sequences per forward")
    prof.add_argument(
        "--overwrite", action="store_true", help="replace a finished run or one with other settings"
    )
    prof.add_argument("--out", required=True, help="output directory")
    tables = sub.add_parser("tables", help="write the tables of a run's saved profile again")
    tables.add_argument("dir")
    rep = sub.add_parser("report", help="write an HTML report of a run directory")
    rep.add_argument("dir")
    rep.add_argument("--out", default="report.html")
    demo = sub.add_parser("demo", help="the main job on the embedded model and corpus")
    demo.add_argument("--out", default="neuronkinds-demo", help="output directory")
    demo.add_argument("--tokens", default=None, help="held-out tokens (default: all, ~284k)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tl-neuronkinds``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "profile":
            profile_command(args)
        elif args.command == "demo":
            demo_args = ["profile", "--out", args.out, "--overwrite"]
            if args.tokens is not None:
                demo_args += ["--tokens", args.tokens]
            profile_command(_parser().parse_args(demo_args))
        elif args.command == "tables":
            tables_command(Path(args.dir))
        else:
            raise NeuronKindsError("`report` arrives with the report issue; use `tables` for now")
    except NeuronKindsError as err:
        print(f"tl-neuronkinds: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(f"tl-neuronkinds: error:{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tl-neuronkinds: interrupted. {_saved_note(args)}", file=sys.stderr)
        return 130
    return 0


# ------------------------------------------------------------------------------ arguments
def _int(name: str, value: str | None, low: int = 1) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise NeuronKindsError(f"{name}: expected an integer, got {value!r}") from None
    if number < low:
        raise NeuronKindsError(f"{name}: expected an integer >= {low}, got {number}")
    return number


def _layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise NeuronKindsError(
            f"--layers: expected comma-separated layer numbers such as 0,1,2, got {value!r}"
        ) from None


def _cap(value: str) -> int | None:
    if value.lower() == "none":
        return None
    return _int("--ngram-cap", value, low=5)


def _out_dir(value: str) -> Path:
    out = Path(value)
    if out.exists() and not out.is_dir():
        raise NeuronKindsError(f"--out {out}: a file is there, not a directory")
    return out


# ------------------------------------------------------------------------------ profile
def profile_command(args: argparse.Namespace) -> None:
    """Validate, record (or resume), then write the profile and tables to ``--out``."""
    out = _out_dir(args.out)
    tokens_wanted = _int("--tokens", args.tokens)
    seq_len = _int("--seq-len", args.seq_len, low=2)
    layers = _layers(args.layers)
    cap = _cap(args.ngram_cap)
    every = _int("--checkpoint-every", args.checkpoint_every)
    batch_size = _int("--batch-size", args.batch_size)
    rank, world_size = _init_distributed()

    from tl_neuronkinds import recording
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.recording.identity import model_identity

    device = args.device or _rank_device(world_size)
    model = load_opt(args.model or _embedded_model(), device=device, offload=args.offload)
    seq_len = seq_len or model.cfg.n_ctx
    recording.recorder.check_layers(layers, model.cfg.n_layers)
    corpus = _corpus(args.corpus)
    tokens = corpus.tokenize(
        model.tokenizer, seq_len=seq_len, n_tokens=tokens_wanted, max_len=model.cfg.n_ctx
    )
    settings = {
        "model": args.model or "embedded",
        **model_identity(model),
        "corpus": list(args.corpus),
        "tokens": tokens_wanted,
        "seq_len": seq_len,
        "layers": layers,
        "ngram_cap": cap,
        "world_size": world_size,
    }
    if rank == 0:
        _prepare(out, settings, args.overwrite)
    _barrier(world_size)
    print(
        f"recording {tokens.numel():,} tokens ({tokens.shape[0]} x {tokens.shape[1]}) from "
        f"{corpus.description}",
        file=sys.stderr,
    )
    profile = recording.record(
        model,
        tokens,
        layers=layers,
        ngram_cap=cap,
        batch_size=batch_size,
        corpus=corpus.description,
        checkpoint_dir=out / _CHECKPOINT_DIR,
        checkpoint_every=every,
    )
    if rank == 0:
        profile.save(out / _PROFILE_DIR)
        write_outputs(profile, out)
        _write_run(out, settings, finished=True)
        print(f"\nwrote {out}: profile/, classification.csv/.parquet and summary_*.csv")


def tables_command(directory: Path) -> None:
    """Write the tables of ``directory/profile`` again (after an interruption, or new code)."""
    from tl_neuronkinds.recording.profile import NeuronProfile

    profile = NeuronProfile.load(directory / _PROFILE_DIR)
    write_outputs(profile, directory)
    run = directory / _RUN_FILE
    if run.exists():
        state = _read_run(directory)
        _write_run(directory, state.get("settings", {}), finished=True)
    print(f"\nwrote {directory}: classification.csv/.parquet and summary_*.csv")


def _prepare(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse a directory holding something else; start or resume the run in it."""
    if (out / _RUN_FILE).exists():
        state = _read_run(out)
        same = state.get("settings") == json.loads(json.dumps(settings))
        if not overwrite:
            if not same:
                raise NeuronKindsError(
                    f"{out} holds a run with other settings ({state.get('settings')}); "
                    "pass --overwrite to replace it"
                )
            if state.get("finished"):
                raise NeuronKindsError(
                    f"{out} holds a finished run; pass --overwrite to record again, or run "
                    f"`tl-neuronkinds tables {out}` to write its tables again"
                )
            return
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise NeuronKindsError(f"{out} is not empty and holds no run; pass --overwrite to use it")
    if overwrite:
        for name in (_CHECKPOINT_DIR, _PROFILE_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    _write_run(out, settings, finished=False)


def _read_run(out: Path) -> dict[str, Any]:
    try:
        state = json.loads((out / _RUN_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NeuronKindsError(f"corrupt {out / _RUN_FILE}: {err}") from err
    if not isinstance(state, dict):
        raise NeuronKindsError(f"corrupt {out / _RUN_FILE}: not a JSON object")
    return state


def _write_run(out: Path, settings: dict[str, Any], *, finished: bool) -> None:
    atomic_write_text(
        out / _RUN_FILE, json.dumps({"settings": settings, "finished": finished}, indent=1)
    )


def _saved_note(args: argparse.Namespace) -> str:
    out = getattr(args, "out", None)
    if args.command not in ("profile", "demo") or out is None:
        return ""
    state = Path(out) / _CHECKPOINT_DIR / "state.json"
    try:
        done = json.loads(state.read_text())["rows_done"] if state.exists() else 0
    except (OSError, ValueError, KeyError):
        done = 0
    if not done:
        return "Nothing was saved yet; run the same command again to start over."
    return (
        f"{done:,} sequences are saved in {Path(out) / _CHECKPOINT_DIR}; run the same "
        "command again to resume."
    )


# ------------------------------------------------------------------------------ outputs
def write_outputs(profile: Any, out: Path) -> None:
    """Write classification.csv/.parquet and the per-figure summaries; print the summary."""
    from tl_neuronkinds.kinds import (
        Analysis,
        EvidenceWarning,
        UndecidableWarning,
        classify,
        figure_tables,
    )

    analysis = Analysis(profile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvidenceWarning)
        warnings.simplefilter("always", UndecidableWarning)
        table = classify(profile, analysis=analysis)
    for warning in caught:  # the kinds' cautions, as notes rather than source locations
        if issubclass(warning.category, EvidenceWarning | UndecidableWarning):
            print(f"tl-neuronkinds: note: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    atomic_write(out / "classification.parquet", lambda p: table.to_parquet(p, index=False))
    csv = table.assign(triggers=table["triggers"].map(lambda t: " | ".join(map(str, t))))
    atomic_write(out / "classification.csv", lambda p: csv.to_csv(p, index=False))
    tables = figure_tables(profile, analysis=analysis)
    for name, frame in tables.items():
        atomic_write(out / f"summary_{name}.csv", frame.to_csv)
    layers = tables["layers"]
    shown = [c for c in _SUMMARY_COLUMNS if c in layers.columns]
    print(layers[shown].to_string(float_format=lambda x: f"{x:.3g}"))


# ------------------------------------------------------------------------------ helpers
def _embedded_model() -> Path:
    from tl_neuronkinds.data import embedded_model_dir

    return embedded_model_dir()


def _corpus(spec: list[str]) -> Any:
    """The corpus named on the command line: every ``.jsonl`` read as JSON Lines (field
    ``text``), every other path as text files, in the order given."""
    from tl_neuronkinds.corpus import Corpus

    if spec == ["embedded"]:
        return Corpus.embedded(split="heldout")
    parts = []
    plain: list[str] = []
    for item in spec:
        if item.endswith(".jsonl"):
            if plain:
                parts.append(Corpus.from_files(plain))
                plain = []
            parts.append(Corpus.from_jsonl(item, field="text"))
        else:
            plain.append(item)
    if plain:
        parts.append(Corpus.from_files(plain))
    if len(parts) == 1:
        return parts[0]
    docs = [doc for part in parts for doc in part]
    return Corpus(docs, " + ".join(part.description for part in parts))


def _init_distributed() -> tuple[int, int]:
    """(rank, world_size); under torchrun, the process group is initialised here."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _rank_device(world_size: int) -> str | None:
    if world_size <= 1:
        return None
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


if __name__ == "__main__":
    raise SystemExit(main())
