"""Figure 11 of the paper: positional neurons over training (offline, about 5 minutes on a CPU).

Voita, Ferrando & Nalmpantis (2024, §5.4, Figure 11) trained OPT-125m for 50k, 150k and 300k
batches: all three have strong positional neurons, but only the longest-trained one has
oscillatory neurons, so learning absolute position takes long training. This tutorial runs the
same experiment in small: it trains a tiny OPT on the embedded corpus, keeping the model after a
sixth and after half of its steps (the paper's 50k and 150k of 300k), records each of the three
models on the same held-out tokens and draws them side by side with ``nk.compare``, one row of
Figure 8 per model, the form Figure 11 takes.

``NK_TUTORIAL_STEPS`` sets the training steps (default 240 batches of 8 x 256 tokens) and
``NK_TUTORIAL_TOKENS`` the held-out tokens recorded per model (default 32768). The training
command keeps checkpoints the same way: ``python -m tl_neuronkinds.training --out my-model
--keep-steps 100,300`` (the embedded model's full size and corpus: about 15 minutes on a CPU).

Run it as a script or cell by cell in a notebook (each ``# %%`` starts a cell).
"""

# %% Settings. A step is one optimiser step on one batch, as the paper counts training batches.
import json
import os
import tempfile
from pathlib import Path

import torch

import tl_neuronkinds as nk
from tl_neuronkinds.data import embedded_tokenizer_dir
from tl_neuronkinds.training.config import TrainConfig
from tl_neuronkinds.training.loop import RECORD_NAME, kept_checkpoint, train
from tl_neuronkinds.training.model import ModelShape
from tl_neuronkinds.training.tokenizer import load_tokenizer

steps = int(os.environ.get("NK_TUTORIAL_STEPS", 240))
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 32768))
keep = sorted({max(1, steps // 6), max(1, steps // 2)} - {steps})  # the paper's 1/6 and 1/2
print(f"training {steps} steps, keeping the model after steps {keep} and at the end")

# %% The model: the embedded model's shape (4 layers, 256 positions, OPT's recipe scaled down,
# see TrainConfig) with 512 neurons per layer instead of 2048, so that it trains in minutes.
# It reuses the embedded models' tokenizer, and trains on the first documents of the embedded
# corpus's training split (about two tokens of text for each one it trains on).
cfg = TrainConfig(
    shape=ModelShape(d_mlp=512),
    n_tokens=steps * 8 * 256,
    batch_size=8,
    heldout_tokens=n_tokens,  # the held-out loss: over as many tokens as are recorded
    log_every=max(1, steps // 12),
)
tokenizer = load_tokenizer(embedded_tokenizer_dir())
train_docs = list(nk.Corpus.embedded(split="train"))[: cfg.n_tokens // 20]
train_corpus = nk.Corpus.from_texts(train_docs, f"embedded(split=train)[:{len(train_docs)}]")
heldout = nk.Corpus.embedded(split="heldout")

# %% Train. keep_steps saves the model after those steps in out/checkpoints/step-000040/ and
# the like, each a checkpoint directory like the final one (weights, tokenizer and a training
# record with its own held-out loss); keeping them changes nothing in the run itself.
run_dir = Path(tempfile.mkdtemp())
out = run_dir / "model"
train(cfg, out, train_corpus, heldout, tokenizer=tokenizer, keep_steps=keep,
      threads=torch.get_num_threads())  # fmt: skip
checkpoints = {f"step {step}": kept_checkpoint(out, step) for step in keep}
checkpoints[f"step {steps}"] = out
for label, path in checkpoints.items():
    record = json.loads((path / RECORD_NAME).read_text())
    print(f"{label}: held-out loss {record['heldout_loss']:.3f}")

# %% Record each model on the same held-out tokens: full-length rows, since positional neurons
# (§5.1) are measured at every position of the context. Only counts are needed here, so no
# max-activating contexts are kept (top_k=0).
tokens = heldout.tokenize(tokenizer, seq_len=cfg.seq_len, n_tokens=n_tokens)
profiles = []
for label, path in checkpoints.items():
    model = nk.load_opt(path, device="cpu")
    profiles.append(nk.record(model, tokens, corpus=heldout.description, progress=False, top_k=0))
    print(label, profiles[-1].n_positions, "positions recorded")

# %% How positional is each layer as training goes on: the largest mutual information between
# a neuron's activation and position (§5.1; a neuron is positional above 0.05 nats). Measured on
# few sequences it is biased upwards (each f_p rests on few rows), so with a small
# NK_TUTORIAL_TOKENS many neurons pass the cut by chance; 128 rows (the default) keep that small.
for label, profile in zip(checkpoints, profiles, strict=True):
    mi = nk.positional_neurons(profile).groupby("layer")["pos_mi"].max()
    print(label, "max I(act; pos) by layer:", mi.round(4).to_dict())

# %% Figure 11: the models side by side. nk.compare classifies every model with the same
# cut-offs and stacks each one's tables by layer. Positional neurons by type and strength
# (§5.2, Figure 7), summed over layers: oscillatory neurons encode position precisely, and the
# paper saw them only after long training. At this tutorial's default budget the tiny model
# has few or none yet; the embedded model, trained 700 steps with 2048 neurons per layer (the
# training command's defaults), has 46 in its first layer on these tokens.
comparison = nk.compare(profiles, labels=list(checkpoints))
fig8 = comparison.tables["fig8"]
print(fig8.pivot_table(index="model", columns=["type", "strength"], values="neurons",
                       aggfunc="sum", sort=False).to_string())  # fmt: skip

# %% The page draws Figure 8 with one row per model, here one per training step, beside the
# other figures that compare models (dead neurons, token detectors) and what differs between
# the runs. It is one self-contained HTML file that opens offline.
print("comparison:", comparison.to_html(run_dir / "compare.html", title="Over training"))
