"""Train the embedded models: ``python -m tl_neuronkinds.training --variant standard|nopos``.

The defaults reproduce the shipped checkpoints in ``tl_neuronkinds/data/``: first the standard
model (which also trains the tokenizer), then the nopos model (paper §5.4), which reuses the
standard model's tokenizer::

    python -m tl_neuronkinds.training --variant standard --threads 1
    python -m tl_neuronkinds.training --variant nopos --threads 1

and the other seeds of the standard model (universal neurons), on its tokenizer::

    python -m tl_neuronkinds.training --variant standard --seed 1 --threads 1
    python -m tl_neuronkinds.training --variant standard --seed 2 --threads 1
"""

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from tl_neuronkinds.data import embedded_model_dir
from tl_neuronkinds.training.config import TrainConfig
from tl_neuronkinds.training.loop import train
from tl_neuronkinds.training.model import VARIANTS
from tl_neuronkinds.training.tokenizer import load_tokenizer

_DEFAULTS = TrainConfig()


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
        "--seed 0, else reuse the shipped standard model's)",
    )
    parser.add_argument("--lr", type=float, default=_DEFAULTS.peak_lr, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    parser.add_argument(
        "--d-mlp", type=int, default=_DEFAULTS.shape.d_mlp, help="FFN neurons per layer"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, train, and print where the model went and its held-out loss."""
    from tl_neuronkinds.corpus import Corpus

    args = _parser().parse_args(argv)
    cfg = dataclasses.replace(
        _DEFAULTS,
        variant=args.variant,
        n_tokens=args.tokens,
        seed=args.seed,
        peak_lr=args.lr,
        batch_size=args.batch_size,
        shape=dataclasses.replace(_DEFAULTS.shape, d_mlp=args.d_mlp),
    )
    out = args.out or embedded_model_dir(args.variant, args.seed)
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None and (args.variant == "nopos" or args.seed != 0):
        tokenizer_dir = embedded_model_dir("standard")
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    record = train(
        cfg,
        out,
        Corpus.embedded(split="train", seed=0),
        Corpus.embedded(split="heldout", seed=0),
        tokenizer=tokenizer,
        threads=args.threads,
    )
    print(
        f"wrote {out}: {record['tokens_seen']} tokens, held-out loss {record['heldout_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
