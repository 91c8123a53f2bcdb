"""``tl-neuronkinds profile``, ``demo`` and ``tables``: record a run and write its outputs.

``profile`` is the main job: load a model (default: the embedded one), tokenize a corpus
(default: the embedded corpus's held-out split), record a NeuronProfile (``nk.record``, with
checkpoints that a rerun of the same command resumes), then write next to it the tokens it was
recorded on, the classification, the per-layer summaries of the paper's figures and the HTML
report. Everything is validated before anything is written. A run is marked finished in
``run.json`` only once every output exists (the layout: ``recording/run_dir.py``).

Under ``torchrun`` every rank runs the command; ``record`` gives each rank its share of the rows
and every rank the merged profile; rank 0 writes the outputs.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tl_neuronkinds.atomic import atomic_write
from tl_neuronkinds.cli import common
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.run_dir import (
    CHECKPOINT_DIR,
    PROFILE_DIR,
    REPORT_FILE,
    RUN_FILE,
    TOKENS_FILE,
    read_run,
    save_tokens,
    write_run,
)
from tl_neuronkinds.recording.settings import DEFAULT_CAP, DEFAULT_TOP_K, DEFAULT_WINDOW

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


def _cap(value: str) -> int | None:
    """``--ngram-cap``: an integer >= 5 (so that every detector stays exact), or ``none``."""
    return None if value.lower() == "none" else common.integer(low=5)(value)


def _window(value: str) -> tuple[int, int] | None:
    """``--window``: ``BEFORE,AFTER`` token counts, or ``none``."""
    if value.lower() == "none":
        return None
    parts = value.split(",")
    try:
        numbers = [common.integer(low=0)(part.strip()) for part in parts]
    except argparse.ArgumentTypeError:
        numbers = []
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"expected BEFORE,AFTER or 'none', got {value!r}")
    from tl_neuronkinds.recording.settings import check_window

    try:
        return check_window((numbers[0], numbers[1]))
    except NeuronKindsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _profile_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--model", default=None, help="checkpoint directory or hub id (default: embedded model)"
    )
    common.add_corpus_options(cmd, tokens=None, tokens_help="tokens to record (default: all)")
    cmd.add_argument(
        "--layers",
        type=common.layer_list,
        default=None,
        help="comma-separated layers (default: all)",
    )
    common.add_device_options(cmd)
    cmd.add_argument(
        "--ngram-cap",
        type=_cap,
        default=DEFAULT_CAP,
        help="keep n>=2 counts of the neurons that can have k95_n <= this (>= 5), or 'none' "
        f"(default: {DEFAULT_CAP})",
    )
    cmd.add_argument(
        "--checkpoint-every",
        type=common.integer(),
        default=None,
        metavar="N",
        help="save progress every N tokens",
    )
    cmd.add_argument(
        "--batch-size", type=common.integer(), default=None, help="sequences per forward"
    )
    cmd.add_argument(
        "--top-k",
        type=common.integer(low=0),
        default=DEFAULT_TOP_K,
        help=f"top activations kept per neuron, for contexts (0: none; default: {DEFAULT_TOP_K})",
    )
    before, after = DEFAULT_WINDOW
    cmd.add_argument(
        "--window",
        type=_window,
        default=DEFAULT_WINDOW,
        help="context kept with each top activation: BEFORE,AFTER tokens, or 'none' "
        f"(default: {before},{after})",
    )
    cmd.add_argument(
        "--histogram", action="store_true", help="keep each neuron's activation histogram"
    )
    cmd.add_argument(
        "--overwrite", action="store_true", help="replace a finished run or one with other settings"
    )
    cmd.add_argument("--out", type=common.out_dir, required=True, help="output directory")
    cmd.add_argument("--no-report", action="store_true", help="write no report.html")


def add_parsers(sub: Any) -> None:
    """The ``profile``, ``demo`` and ``tables`` subcommands."""
    prof = sub.add_parser("profile", help="record a NeuronProfile and classify its neurons")
    _profile_arguments(prof)
    prof.set_defaults(func=profile_command)
    demo = sub.add_parser("demo", help="the main job on the embedded model and corpus")
    demo.add_argument(
        "--out", type=common.out_dir, default=Path("neuronkinds-demo"), help="output directory"
    )
    demo.add_argument(
        "--tokens",
        type=common.integer(),
        default=None,
        help="held-out tokens (default: all, ~284k)",
    )
    demo.add_argument("--no-report", action="store_true", help="write no report.html")
    demo.set_defaults(func=demo_command)
    tables = sub.add_parser("tables", help="write the tables of a run's saved profile again")
    tables.add_argument("dir", type=Path, help="a run directory written by `profile`")
    tables.set_defaults(func=tables_command)


#: Where the demo records the embedded model's NoPos twin, and its comparison page.
DEMO_NOPOS, DEMO_COMPARE = "nopos", "compare.html"


def demo_command(args: argparse.Namespace) -> None:
    """``profile`` on the embedded model and held-out corpus, into ``--out`` (replaced); the
    same for its NoPos twin (§5.4) over the same tokens into ``--out/nopos`` (no report of its
    own); then ``--out/compare.html``, the two compared (Figure 10, and Figures 1a-4; unless
    ``--no-report``)."""
    parser = argparse.ArgumentParser(prog="tl-neuronkinds demo")
    _profile_arguments(parser)
    argv = ["--overwrite"] + ([] if args.tokens is None else ["--tokens", str(args.tokens)])
    twin = args.out / DEMO_NOPOS
    profile_command(
        parser.parse_args(["--out", str(args.out), *argv, *(["--no-report"] * args.no_report)])
    )
    from tl_neuronkinds.data import embedded_model_dir

    nopos = str(embedded_model_dir("nopos"))
    print(f"\nthe NoPos twin over the same tokens, into {twin}", file=sys.stderr)
    profile_command(parser.parse_args(["--model", nopos, "--out", str(twin), "--no-report", *argv]))
    if args.no_report:
        return
    from tl_neuronkinds import compare

    labels = ["embedded model", "NoPos twin"]
    comparison = compare([args.out, twin], labels, with_suppression=True)
    title = "The embedded model and its NoPos twin (Figure 10; Figures 1a-4)"
    path = comparison.to_html(args.out / DEMO_COMPARE, title)
    print(f"wrote {path}: the embedded model against its NoPos twin")


def profile_command(args: argparse.Namespace) -> None:
    """Validate, record (or resume), then write the profile and tables to ``--out``."""
    out = args.out
    if not args.no_report:
        common.require_report("--no-report")
    rank, world_size = _init_distributed()

    from tl_neuronkinds.loading import load_opt
    from tl_neuronkinds.loading.identity import model_identity
    from tl_neuronkinds.recording.record_run import record
    from tl_neuronkinds.recording.recorder import check_layers

    device = args.device or _rank_device(world_size)
    model = load_opt(args.model or common.embedded_model(), device=device, offload=args.offload)
    seq_len = args.seq_len or model.cfg.n_ctx
    check_layers(args.layers, model.cfg.n_layers)
    corpus = common.corpus(args)
    tokens = common.tokenize(args, corpus, model.tokenizer, model.cfg.n_ctx)
    settings = {
        "model": args.model or "embedded",
        **model_identity(model),
        "corpus": list(args.corpus),
        "tokens": args.tokens,
        "seq_len": seq_len,
        "layers": args.layers,
        "ngram_cap": args.ngram_cap,
        "top_k": args.top_k,
        "histogram": args.histogram,
        "window": args.window,
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
    profile = record(
        model,
        tokens,
        layers=args.layers,
        ngram_cap=args.ngram_cap,
        batch_size=args.batch_size,
        corpus=corpus.description,
        checkpoint_dir=out / CHECKPOINT_DIR,
        checkpoint_every=args.checkpoint_every,
        top_k=args.top_k,
        histogram=args.histogram,
        window=args.window,
    )
    if rank == 0:
        save_tokens(out / TOKENS_FILE, tokens)
        profile.save(out / PROFILE_DIR)
        analysis = write_outputs(profile, out)
        wrote = f"profile/, {TOKENS_FILE}, classification.csv/.parquet, summary_*.csv"
        if not args.no_report:
            from tl_neuronkinds.massive.measure import massive_for_report
            from tl_neuronkinds.present.report import report

            massive = massive_for_report(model, tokens)
            path = report(
                profile, model, out / REPORT_FILE, tokens, analysis=analysis, massive=massive
            )
            wrote += f" and {REPORT_FILE} ({path.stat().st_size / 2**20:.1f} MiB)"
        write_run(out, settings, finished=True, report=not args.no_report)
        # The checkpoint only served a resume; finished, it would double the run's size on disk.
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        print(f"\nwrote {out}: {wrote}")


def tables_command(args: argparse.Namespace) -> None:
    """Write the tables of ``DIR/profile`` again (after an interruption, or new code)."""
    from tl_neuronkinds.recording.profile import NeuronProfile

    directory: Path = args.dir
    if not (directory / PROFILE_DIR).is_dir():
        raise NeuronKindsError(
            f"no profile at {(directory / PROFILE_DIR).resolve()}: a run directory holds "
            f"{RUN_FILE} and {PROFILE_DIR}/, as `tl-neuronkinds profile` writes"
        )
    profile = NeuronProfile.load(directory / PROFILE_DIR)
    write_outputs(profile, directory)
    if (directory / RUN_FILE).exists():
        state = read_run(directory)
        wants_report = bool(state.get("report", False))
        complete = not wants_report or (directory / REPORT_FILE).exists()
        write_run(directory, state.get("settings", {}), finished=complete, report=wants_report)
    print(f"\nwrote {directory}: classification.csv/.parquet and summary_*.csv")


def _prepare(out: Path, settings: dict[str, Any], overwrite: bool, *, report: bool) -> None:
    """Refuse a directory holding something else; start or resume the run in it."""
    if (out / RUN_FILE).exists():
        state = read_run(out)
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
        for name in (CHECKPOINT_DIR, PROFILE_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    write_run(out, settings, finished=False, report=report)


def saved_note(args: argparse.Namespace) -> str:
    """What an interrupted ``profile`` or ``demo`` saved, for the message after Ctrl-C."""
    out = getattr(args, "out", None)
    if args.func not in (profile_command, demo_command) or out is None:
        return ""
    state = Path(out) / CHECKPOINT_DIR / "state.json"
    try:
        done = json.loads(state.read_text())["rows_done"] if state.exists() else 0
    except (OSError, ValueError, KeyError):
        done = 0
    if not done:
        return "Nothing was saved yet; run the same command again to start over."
    return (
        f"{done:,} sequences are saved in {Path(out) / CHECKPOINT_DIR}; run the same "
        "command again to resume."
    )


def csv_table(table: Any) -> Any:
    """``classify``'s table as ``classification.csv`` writes it: each neuron's triggers in one
    cell, joined by `` | ``, each written as the report shows it (``present.render.visible``:
    a newline as ``↵``, a tab as ``⇥``, other invisible characters as ``⟨U+XXXX⟩``), so that
    every row of the file is one line that ``grep`` and ``head`` can read."""
    from tl_neuronkinds.present.render import visible

    def cell(triggers: Any) -> str:
        return " | ".join(visible(str(t), breaks=False) for t in triggers)

    return table.assign(triggers=table["triggers"].map(cell))


def write_outputs(profile: Any, out: Path) -> Any:
    """Write classification.csv/.parquet and the per-figure summaries; print the summary.

    Returns the ``Analysis`` the tables came from (for the report)."""
    from tl_neuronkinds.kinds import Analysis, classify_with_cautions, figure_tables

    analysis = Analysis(profile)
    table, cautions = classify_with_cautions(analysis)
    for caution in cautions:  # the kinds' cautions, as notes rather than source locations
        common.note(caution)
    atomic_write(out / "classification.parquet", lambda p: table.to_parquet(p, index=False))
    csv = csv_table(table)
    atomic_write(out / "classification.csv", lambda p: csv.to_csv(p, index=False))
    tables = figure_tables(profile, analysis=analysis)
    for name, frame in tables.items():
        atomic_write(out / f"summary_{name}.csv", frame.to_csv)
    layers = tables["layers"]
    shown = [c for c in _SUMMARY_COLUMNS if c in layers.columns]
    print(layers[shown].to_string(float_format=lambda x: f"{x:.3g}"))
    return analysis


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
