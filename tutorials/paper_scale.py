"""The paper at its own scale: OPT models of several sizes on one GPU, then the figures that
compare them (Voita, Ferrando & Nalmpantis 2024: Figures 1, 3, 4 and 8 draw one line or row per
model against each layer's depth relative to the model's).

Usage::

    python tutorials/paper_scale.py [MODEL ...] [--out DIR] [--corpus FILE ...] [--tokens N]

Each MODEL is a hub id or a local checkpoint directory (``save_pretrained`` layout); the default
is the paper's models up to 13b: facebook/opt-125m, -1.3b, -2.7b, -6.7b and -13b (name
facebook/opt-30b and facebook/opt-66b to add them; each needs about 2 bytes of CPU memory per
parameter in float16). Hub models are downloaded once into the Hugging Face cache; with
``HF_HUB_OFFLINE=1`` only cached models or local directories can be used, and the script says so
before anything runs. The paper recorded 5M tokens of its own text (20M for dead neurons):
``--corpus`` takes text files, folders, globs or a ``.jsonl`` file (field "text"); the default
is the embedded corpus's held-out split (about 284k tokens).

Each model's blocks stay in CPU memory and go to the GPU one at a time (``offload="cpu"``, as the
paper did for OPT-66b). Every model writes into ``DIR/<model>/``: progress while it records
(``checkpoint/``), then its profile (``profile/``). Run the same command again after a stop: a
model with a profile is skipped and one that was recording resumes where it stopped. At the end
``DIR/compare.html`` shows the models side by side (``tl-neuronkinds compare`` draws the same
page from the profiles).
"""

# %% The command line: which models, where to write, which text.
import argparse
import gc
import os
import shutil
import sys
from pathlib import Path

import torch

import tl_neuronkinds as nk

PAPER_MODELS = [f"facebook/opt-{size}" for size in ("125m", "1.3b", "2.7b", "6.7b", "13b")]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("models", nargs="*", default=PAPER_MODELS, help="hub ids or directories")
parser.add_argument("--out", type=Path, default=Path("paper-scale"), help="output directory")
parser.add_argument("--corpus", nargs="+", help="text files, folders, globs or a .jsonl file")
parser.add_argument("--tokens", type=int, default=os.environ.get("NK_TUTORIAL_TOKENS"),
                    help="tokens to record per model (default: the whole corpus)")  # fmt: skip
parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                    help="weights' dtype (default: float16 on a GPU, float32 on a CPU)")  # fmt: skip
args = parser.parse_args()


# %% Before anything runs: every model must be a local directory, or a hub id that can be
# fetched (the hub reachable, or under HF_HUB_OFFLINE=1 the model already in the local cache).
def unavailable(name: str) -> str | None:
    """Why ``name`` cannot be loaded, or None where it can."""
    path = Path(name).expanduser()
    if path.exists():
        return None if path.is_dir() else f"{name} is a file, not a checkpoint directory"
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return f"{name} does not exist"
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
        return f"{name} needs the Hugging Face hub (HF_HUB_OFFLINE is set and it is not cached)"
    try:
        HfApi().model_info(name, timeout=30)
    except Exception as err:  # hub errors have many types; each means "cannot fetch it"
        return f"{name} cannot be fetched from the Hugging Face hub ({type(err).__name__})"
    return None


problems = [problem for name in args.models if (problem := unavailable(name))]
if problems:
    print(f"paper_scale.py: {'; '.join(problems)}: give local checkpoint directories instead "
          "(python tutorials/paper_scale.py /path/to/opt-125m /path/to/opt-1.3b) or reach the "
          "hub (unset HF_HUB_OFFLINE)", file=sys.stderr)  # fmt: skip
    sys.exit(2)

# %% The text: the same tokens for every model (the OPT models share one tokenizer).
if args.corpus is None:
    corpus = nk.Corpus.embedded(split="heldout")
elif len(args.corpus) == 1 and args.corpus[0].endswith(".jsonl"):
    corpus = nk.Corpus.from_jsonl(args.corpus[0])
else:
    corpus = nk.Corpus.from_files(args.corpus)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = args.dtype or ("float16" if device == "cuda" else "float32")


# %% Record each model (§2): exact counts of when each FFN neuron is active, never the
# activations. The checkpoint directory makes a stopped run resume; the finished profile is
# saved, and its progress removed.
def label(name: str) -> str:
    """A model's short name: ``opt-125m`` for ``facebook/opt-125m`` or ``/models/opt-125m``."""
    return Path(name.rstrip("/")).name


labels = [label(name) for name in args.models]
if len(set(labels)) < len(labels):  # two folders of one name: keep the names as given
    labels = list(args.models)
profile_dirs = []
for name, short in zip(args.models, labels, strict=True):
    run_dir = args.out / short.replace("/", "--")
    profile_dir, checkpoint_dir = run_dir / "profile", run_dir / "checkpoint"
    profile_dirs.append(profile_dir)
    if (profile_dir / "profile.json").is_file():
        print(f"{short}: recorded before, in {profile_dir}")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        continue
    model = nk.load_opt(name, device=device, dtype=dtype, offload="cpu")
    tokens = corpus.tokenize(model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=args.tokens)
    print(f"{short}: {model.cfg.n_layers} layers of {model.cfg.d_mlp} neurons, "
          f"{tokens.numel()} tokens")  # fmt: skip
    profile = nk.record(model, tokens, corpus=corpus.description, checkpoint_dir=checkpoint_dir)
    profile.save(profile_dir)
    shutil.rmtree(checkpoint_dir)
    print(f"{short}: {profile.n_positions} positions recorded, saved in {profile_dir}")
    del model, profile
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

# %% The models side by side: nk.compare classifies every profile with the same cut-offs and
# places each layer at its depth relative to its model's. The tables are long-form DataFrames;
# the page draws Figures 1a, 1b, 2, 3a, 3b, 4 and 8 (a row per model) and says what differs.
comparison = nk.compare(profile_dirs, labels=labels)
print(comparison.tables["fig1a"].to_string())
print(comparison.tables["fig3a_n1"].to_string())
print("comparison:", comparison.to_html(args.out / "compare.html", title="OPT models"))
