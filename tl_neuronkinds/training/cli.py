"""Train the embedded models: ``python -m tl_neuronkinds.training --variant standard|nopos``.

The defaults reproduce the shipped checkpoints in ``tl_neuronkinds/data/``: first the standard
model (which also trains the tokenizer, saved once in ``tl_neuronkinds/data/tokenizer/`` for
the four shipped models to share), then the nopos model (paper §5.4), which reuses it::

    python -m tl_neuronkinds.training --variant standard --threads 1
    python -m tl_neuronkinds.training --variant nopos --threads 1

and the other seeds of the standard model (universal neurons), on its tokenizer::

    python -m tl_neuronkinds.training --variant standard --seed 1 --threads 1
    python -m tl_neuronkinds.training --variant standard --seed 2 --threads 1

``--keep-steps 100,300`` also keeps the model after those optimiser steps, each in
``OUT/checkpoints/step-000100/`` and the like, a checkpoint directory like ``OUT`` (the paper's
Figure 11: one model at several points of its training; ``tutorials/over_training.py``)::

    python -m tl_neuronkinds.training --out my-model --keep-steps 100,300 --threads 2
"""

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from tl_neuronkinds.data import embedded_model_dir, embedded_tokenizer_dir, shared_tokenizer_dir
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.config import TrainConfig, check_keep_steps
from tl_neuronkinds.training.loop import train
from tl_neuronkinds.training.model import VARIANTS
from tl_neuronkinds.training.tokenizer import load_tokenizer

_DEFAULTS = TrainConfig()


def _keep_steps(value: str) -> tuple[int, ...]:
    """``--keep-steps``: comma-separated steps, increasing, without repeats (``100,300``)."""
    parts = [part.strip() for part in value.split(",")]
    for part in parts:
        if not part.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(
                f"expected comma-separated step numbers such as 100,300; {part!r} is not an integer"
            )
    try:
        return check_keep_steps(int(part) for part in parts)
    except NeuronKindsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tl_neuronkinds.training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variant", choices=VARIANTS, default="standard")
    parser.add_argument("--out", type=Path, help="output directory (default: the shipped one)")
    parser.add_argument("--tokens", type=int, default=_DEFAULTS.n_tokens, help="training tokens")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="reuse the tokenizer in this directory (default: train one for --variant standard "
        "--seed 0, else reuse the shipped models' shared one)",
    )
    parser.add_argument("--lr", type=float, default=_DEFAULTS.peak_lr, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    parser.add_argument(
        "--d-mlp", type=int, default=_DEFAULTS.shape.d_mlp, help="FFN neurons per layer"
    )
    parser.add_argument(
        "--keep-steps",
        type=_keep_steps,
        default=(),
        metavar="STEPS",
        help="also keep the model after these optimiser steps (comma-separated, increasing), "
        "each in OUT/checkpoints/step-NNNNNN/",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, train, and print where the model went and its held-out loss."""
    from tl_neuronkinds.corpus import Corpus

    parser = _parser()
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(
        _DEFAULTS,
        variant=args.variant,
        n_tokens=args.tokens,
        seed=args.seed,
        peak_lr=args.lr,
        batch_size=args.batch_size,
        shape=dataclasses.replace(_DEFAULTS.shape, d_mlp=args.d_mlp),
    )
    if args.keep_steps and args.out is None:
        parser.error("--keep-steps needs --out: the shipped models keep no checkpoints")
    try:  # before the corpus is read: a step beyond the run fails at once
        check_keep_steps(args.keep_steps, cfg.n_steps)
    except NeuronKindsError as err:
        per_step = f"--batch-size {args.batch_size} x {cfg.seq_len} tokens"
        parser.error(f"argument --keep-steps: {err} (--tokens {args.tokens} / ({per_step}))")
    out = args.out or embedded_model_dir(args.variant, args.seed)
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None and (args.variant == "nopos" or args.seed != 0):
        tokenizer_dir = embedded_tokenizer_dir()
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    record = train(
        cfg,
        out,
        Corpus.embedded(split="train", seed=0),
        Corpus.embedded(split="heldout", seed=0),
        tokenizer=tokenizer,
        tokenizer_dir=shared_tokenizer_dir(out),
        threads=args.threads,
        keep_steps=args.keep_steps,
    )
    print(
        f"wrote {out}: {record['tokens_seen']} tokens, held-out loss {record['heldout_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
