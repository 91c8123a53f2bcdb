"""The ``tl-neuronkinds`` command line: ``profile``, ``report`` and ``demo``.

``profile`` is the main job: load a model (default: the embedded one), tokenize a corpus
(default: the embedded corpus's held-out split), record a NeuronProfile with checkpoints that a
later run with the same settings resumes, and write the classification and the per-layer
summaries of the paper's figures next to it.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tl_neuronkinds import recording
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.identity import model_config_hash
from tl_neuronkinds.recording.profile import NeuronProfile

_RUN_FILE = "run.json"
# The demo records the first 64k held-out tokens (a few minutes on two CPU cores); the whole
# held-out split is `tl-neuronkinds profile --out DIR`.
_DEMO_TOKENS = 65536
# The columns of the per-layer summary printed at the end (all are in summary_layers.csv).
_SUMMARY_COLUMNS = [
    "n_neurons",
    "pct_dead",
    "mean_freq_alive",
    "n_token_detectors",
    "n_ngram_detectors_2",
    "n_ngram_detectors_3",
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
        help="'embedded', text files/folders/globs, or a .jsonl file (field 'text')",
    )
    prof.add_argument(
        "--tokens", type=int, default=None, help="tokens to record (default: the whole corpus)"
    )
    prof.add_argument(
        "--seq-len", type=int, default=None, help="sequence length (default: the model's context)"
    )
    prof.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    prof.add_argument(
        "--device", default=None, help="cuda, cpu, ... (default: cuda when available)"
    )
    prof.add_argument(
        "--offload", choices=["cpu", "disk"], default=None, help="stream block weights"
    )
    prof.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="save progress every N tokens",
    )
    prof.add_argument("--batch-size", type=int, default=None, help="sequences per forward")
    prof.add_argument(
        "--overwrite", action="store_true", help="replace a finished run or one with other settings"
    )
    prof.add_argument("--out", required=True, help="output directory")
    rep = sub.add_parser("report", help="write an HTML report of a profile directory")
    rep.add_argument("dir")
    rep.add_argument("--out", default="report.html")
    demo = sub.add_parser("demo", help="the main job on the embedded model and corpus")
    demo.add_argument("--out", default="neuronkinds-demo", help="output directory")
    demo.add_argument("--tokens", type=int, default=_DEMO_TOKENS, help="held-out tokens to record")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tl-neuronkinds``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "profile":
            profile_command(args)
        elif args.command == "demo":
            demo_args = ["profile", "--out", args.out, "--tokens", str(args.tokens), "--overwrite"]
            profile_command(_parser().parse_args(demo_args))
        else:
            raise NeuronKindsError("`report` arrives with the report issue; use `profile` for now")
    except NeuronKindsError as err:
        print(f"tl-neuronkinds: error: {err}", file=sys.stderr)
        return 2
    return 0


def _settings(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    return {
        "model": args.model or "embedded",
        "config_hash": model_config_hash(model),
        "corpus": list(args.corpus),
        "tokens": args.tokens,
        "seq_len": args.seq_len or model.cfg.n_ctx,
        "layers": layers,
    }


def profile_command(args: argparse.Namespace) -> None:
    """Record (or resume), then write the profile, classification and summaries to ``--out``."""
    from tl_neuronkinds.loading import load_opt

    out = Path(args.out)
    model = load_opt(args.model or _embedded_model(), device=args.device, offload=args.offload)
    settings = _settings(args, model)
    done_rows, partial = _resume_state(out, settings, args.overwrite)
    corpus = _corpus(args.corpus)
    tokens = corpus.tokenize(
        model.tokenizer, seq_len=settings["seq_len"], n_tokens=args.tokens, max_len=model.cfg.n_ctx
    )
    every = max(1, (args.checkpoint_every or tokens.numel()) // tokens.shape[1])
    _write_json(out / _RUN_FILE, {"settings": settings, "finished": False})
    print(
        f"recording {tokens.numel():,} tokens ({tokens.shape[0]} x {tokens.shape[1]}) from {corpus.description}",
        file=sys.stderr,
    )
    profile = partial
    for first in range(done_rows, tokens.shape[0], every):
        chunk = tokens[first : first + every]
        part = recording.record(
            model,
            chunk,
            layers=settings["layers"],
            batch_size=args.batch_size,
            corpus=corpus.description,
        )
        profile = part if profile is None else NeuronProfile.merge([profile, part])
        # The rows done travel inside the profile, so a crash between two writes cannot
        # make a resumed run count a chunk twice.
        profile.meta.update(corpus=corpus.description, rows_done=first + len(chunk))
        profile.save(out / "profile")
    if profile is None:
        raise NeuronKindsError("no tokens to record")
    _write_json(out / _RUN_FILE, {"settings": settings, "finished": True})
    write_outputs(profile, out)


def _embedded_model() -> Path:
    from tl_neuronkinds.data import embedded_model_dir

    return embedded_model_dir()


def _corpus(spec: list[str]) -> Any:
    from tl_neuronkinds.corpus import Corpus

    if spec == ["embedded"]:
        return Corpus.embedded(split="heldout")
    if len(spec) == 1 and spec[0].endswith(".jsonl"):
        return Corpus.from_jsonl(spec[0], field="text")
    return Corpus.from_files(spec)


def _resume_state(
    out: Path, settings: dict[str, Any], overwrite: bool
) -> tuple[int, NeuronProfile | None]:
    """Rows already recorded in ``out`` and their profile, or (0, None) for a fresh run."""
    run_file = out / _RUN_FILE
    if not run_file.exists():
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise NeuronKindsError(
                f"{out} is not empty and holds no run; pass --overwrite to use it"
            )
        return 0, None
    try:
        state = json.loads(run_file.read_text())
    except json.JSONDecodeError as err:
        raise NeuronKindsError(f"corrupt {run_file}: {err}") from err
    if overwrite:
        return 0, None
    if state.get("settings") != settings:
        raise NeuronKindsError(
            f"{out} holds a run with other settings ({state.get('settings')}); pass --overwrite to replace it"
        )
    if state.get("finished"):
        raise NeuronKindsError(f"{out} holds a finished run; pass --overwrite to record again")
    if not (out / "profile").exists():
        return 0, None
    partial = NeuronProfile.load(out / "profile")
    rows_done = int(partial.meta["rows_done"])
    print(f"resuming after {rows_done} sequences", file=sys.stderr)
    return rows_done, partial


def write_outputs(profile: NeuronProfile, out: Path) -> None:
    """Write classification.csv/.parquet and the per-layer summaries; print the summary table."""
    from tl_neuronkinds.kinds import classify, summaries

    table = classify(profile)
    _atomic(out / "classification.parquet", lambda p: table.to_parquet(p, index=False))
    csv = table.assign(triggers=table["triggers"].map(lambda t: " | ".join(t)))
    _atomic(out / "classification.csv", lambda p: csv.to_csv(p, index=False))
    for name, frame in figure_tables(profile).items():
        _atomic(out / f"summary_{name}.csv", lambda p, f=frame: f.to_csv(p))
    layer_table = summaries.layer_summary(profile)
    _atomic(out / "summary_layers.csv", lambda p: layer_table.to_csv(p))
    shown = [c for c in _SUMMARY_COLUMNS if c in layer_table.columns]
    print(layer_table[shown].to_string(float_format=lambda x: f"{x:.3g}"))
    print(f"\nwrote {out}/profile, classification.csv/.parquet and summary_*.csv")


def figure_tables(profile: NeuronProfile) -> dict[str, Any]:
    """The per-layer tables of Figures 1a, 1b, 8 and, for each n (Appendix A), 2, 3a, 3b, 4."""
    from tl_neuronkinds.kinds import summaries

    tables = {"fig1a": summaries.fig1a(profile), "fig1b": summaries.fig1b(profile)}
    for n in range(1, profile.ngram_max + 1):
        for name in ("fig2", "fig3a", "fig3b", "fig4"):
            tables[f"{name}_n{n}"] = getattr(summaries, name)(profile, n)
    tables["fig8"] = summaries.fig8(profile)
    return tables


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(path, lambda p: Path(p).write_text(json.dumps(data, indent=1)))


if __name__ == "__main__":
    raise SystemExit(main())
