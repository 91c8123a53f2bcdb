"""The ``tl-neuronkinds`` command line: ``profile``, ``tables``, ``report``, ``demo``,
``massive`` (``massive/command.py``) and ``universal`` (``universal/command.py``).

``profile`` is the main job: load a model (default: the embedded one), tokenize a corpus
(default: the embedded corpus's held-out split), record a NeuronProfile (``nk.record``, with
checkpoints that a rerun of the same command resumes), then write next to it the tokens it was
recorded on, the classification, the per-layer summaries of the paper's figures and the HTML
report (``nk.report``; ``report DIR`` writes it again from a run directory). Everything is
validated before anything is written; every error is one line on stderr and exit status 2 (130
after Ctrl-C), never a traceback. A run is marked finished in ``run.json`` only once every output exists.

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
_TOKENS_FILE = "tokens.safetensors"  # int32 [n_seq, seq_len]: the recorded tokens
_REPORT_FILE = "report.html"
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
        "--top-k", default="16", help="top activations kept per neuron, for contexts (0: none)"
    )
    prof.add_argument(
        "--window",
        default="12,4",
        help="context kept with each top activation: BEFORE,AFTER tokens, or 'none'",
    )
    prof.add_argument(
        "--histogram", action="store_true", help="keep each neuron's activation histogram"
    )
    prof.add_argument(
        "--overwrite", action="store_true", help="replace a finished run or one with other settings"
    )
    prof.add_argument("--out", required=True, help="output directory")
    prof.add_argument("--no-report", action="store_true", help="write no report.html")
    tables = sub.add_parser("tables", help="write the tables of a run's saved profile again")
    tables.add_argument("dir")
    rep = sub.add_parser("report", help="write an HTML report of a run directory")
    rep.add_argument("dir")
    rep.add_argument("--out", default=None, help="HTML file (default: DIR/report.html)")
    rep.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if any)")
    rep.add_argument(
        "--offload", choices=["cpu", "disk"], default=None, help="stream block weights"
    )
    rep.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="add a universal-neurons section: the run's model against these models of its "
        "tokenizer ('seeds': the embedded model's other seeds), over the run's first "
        "16,384 tokens",
    )
    from tl_neuronkinds.massive.command import add_parser as add_massive

    add_massive(sub)
    from tl_neuronkinds.universal.command import add_parser as add_universal

    add_universal(sub)
    demo = sub.add_parser("demo", help="the main job on the embedded model and corpus")
    demo.add_argument("--out", default="neuronkinds-demo", help="output directory")
    demo.add_argument("--tokens", default=None, help="held-out tokens (default: all, ~284k)")
    demo.add_argument("--no-report", action="store_true", help="write no report.html")
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
            if args.no_report:
                demo_args.append("--no-report")
            profile_command(_parser().parse_args(demo_args))
        elif args.command == "tables":
            tables_command(Path(args.dir))
        elif args.command == "massive":
            from tl_neuronkinds.massive.command import massive_command

            massive_command(args)
        elif args.command == "universal":
            from tl_neuronkinds.universal.command import universal_command

            universal_command(args)
        else:
            report_command(args)
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


def _window(value: str) -> tuple[int, int] | None:
    if value.lower() == "none":
        return None
    parts = value.split(",")
    numbers = [_int("--window", part.strip(), low=0) for part in parts]
    if len(numbers) != 2 or numbers[0] is None or numbers[1] is None:
        raise NeuronKindsError(f"--window: expected BEFORE,AFTER or 'none', got {value!r}")
    from tl_neuronkinds.recording.accumulate import check_window

    try:
        return check_window((numbers[0], numbers[1]))
    except NeuronKindsError as err:
        raise NeuronKindsError(f"--window: {err}") from None


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
    top_k = _int("--top-k", args.top_k, low=0) or 0
    window = _window(args.window)
    if not args.no_report:
        _require_report()
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
        "top_k": top_k,
        "histogram": args.histogram,
        "window": window,
        "world_size": world_size,
    }
    if rank == 0:
        _prepare(out, settings, args.overwrite, report=not args.no_report)
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
        top_k=top_k,
        histogram=args.histogram,
        window=window,
    )
    if rank == 0:
        _save_tokens(out / _TOKENS_FILE, tokens)
        profile.save(out / _PROFILE_DIR)
        analysis = write_outputs(profile, out)
        wrote = f"profile/, {_TOKENS_FILE}, classification.csv/.parquet, summary_*.csv"
        if not args.no_report:
            from tl_neuronkinds.massive.command import for_report
            from tl_neuronkinds.report import report

            massive = for_report(model, tokens)
            path = report(
                profile, model, out / _REPORT_FILE, tokens, analysis=analysis, massive=massive
            )
            wrote += f" and {_REPORT_FILE} ({path.stat().st_size / 2**20:.1f} MiB)"
        _write_run(out, settings, finished=True, report=not args.no_report)
        # The checkpoint only served a resume; finished, it would double the run's size on disk.
        shutil.rmtree(out / _CHECKPOINT_DIR, ignore_errors=True)
        print(f"\nwrote {out}: {wrote}")


def tables_command(directory: Path) -> None:
    """Write the tables of ``directory/profile`` again (after an interruption, or new code)."""
    from tl_neuronkinds.recording.profile import NeuronProfile

    profile = NeuronProfile.load(directory / _PROFILE_DIR)
    write_outputs(profile, directory)
    run = directory / _RUN_FILE
    if run.exists():
        state = _read_run(directory)
        wants_report = bool(state.get("report", False))
        complete = not wants_report or (directory / _REPORT_FILE).exists()
        _write_run(directory, state.get("settings", {}), finished=complete, report=wants_report)
    print(f"\nwrote {directory}: classification.csv/.parquet and summary_*.csv")


def report_command(args: argparse.Namespace) -> None:
    """Write the HTML report of a run directory: its profile, the model named in ``run.json``
    and the tokens it was recorded on (``tokens.safetensors``; without it, no contexts)."""
    directory = Path(args.dir)
    if not (directory / _RUN_FILE).is_file() or not (directory / _PROFILE_DIR).is_dir():
        raise NeuronKindsError(
            f"{directory} is not a run directory (it needs {_RUN_FILE} and {_PROFILE_DIR}/)"
        )
    out = Path(args.out) if args.out is not None else directory / _REPORT_FILE
    if out.is_dir():
        raise NeuronKindsError(f"--out {out}: a directory is there, not a file")
    _require_report()
    name = _read_run(directory).get("settings", {}).get("model")
    if not isinstance(name, str):
        raise NeuronKindsError(f"{directory / _RUN_FILE} names no model")
    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.recording.profile import NeuronProfile
    from tl_neuronkinds.report import report

    profile = NeuronProfile.load(directory / _PROFILE_DIR)
    tokens = _load_tokens(directory / _TOKENS_FILE)
    if tokens is None:
        note = f"no {_TOKENS_FILE} in {directory}: the report shows no contexts"
        print(f"tl-neuronkinds: note: {note}", file=sys.stderr)
    model = load_opt(
        _embedded_model() if name == "embedded" else name,
        device=args.device,
        offload=args.offload,
    )
    from tl_neuronkinds.massive.command import for_report

    universal = None
    if args.compare is not None:
        from tl_neuronkinds.universal.command import compare_for_report

        universal = compare_for_report(model, args.compare, tokens, profile, args)
    path = report(
        profile, model, out, tokens, massive=for_report(model, tokens), universal=universal
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def _prepare(out: Path, settings: dict[str, Any], overwrite: bool, *, report: bool) -> None:
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
    _write_run(out, settings, finished=False, report=report)


def _read_run(out: Path) -> dict[str, Any]:
    try:
        state = json.loads((out / _RUN_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NeuronKindsError(f"corrupt {out / _RUN_FILE}: {err}") from err
    if not isinstance(state, dict):
        raise NeuronKindsError(f"corrupt {out / _RUN_FILE}: not a JSON object")
    return state


def _write_run(
    out: Path, settings: dict[str, Any], *, finished: bool, report: bool = False
) -> None:
    """``run.json``: the settings, whether every output is written, whether they include
    ``report.html`` (a run is finished only once it exists)."""
    state = {"settings": settings, "finished": finished, "report": report}
    atomic_write_text(out / _RUN_FILE, json.dumps(state, indent=1))


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
def write_outputs(profile: Any, out: Path) -> Any:
    """Write classification.csv/.parquet and the per-figure summaries; print the summary.

    Returns the ``Analysis`` the tables came from (for the report)."""
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
    return analysis


def _require_report() -> None:
    """Fail before any work where the report cannot be drawn (matplotlib missing)."""
    from tl_neuronkinds.figures import require_matplotlib

    try:
        require_matplotlib()
    except NeuronKindsError as err:
        raise NeuronKindsError(f"{err} (or pass --no-report)") from None


def _save_tokens(path: Path, tokens: Any) -> None:
    """The recorded tokens as int32 ``tokens`` in a safetensors file, written atomically."""
    import torch
    from safetensors.torch import save_file

    from tl_neuronkinds.atomic import follow_umask

    def write(tmp: Path) -> None:
        save_file({"tokens": tokens.to("cpu", torch.int32).contiguous()}, str(tmp))
        follow_umask(tmp)

    atomic_write(path, write)


def _load_tokens(path: Path) -> Any:
    """The tokens ``_save_tokens`` wrote (int64), or None where the file is absent."""
    if not path.exists():
        return None
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["tokens"].to(torch.int64)
    except (SafetensorError, KeyError, OSError) as err:
        raise NeuronKindsError(f"corrupt {path}: {err}") from err


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
