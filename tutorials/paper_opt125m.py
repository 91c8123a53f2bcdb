"""The paper on OPT-125m: Voita, Ferrando & Nalmpantis 2024, section by section.

This tutorial needs the Hugging Face hub once, to download ``facebook/opt-125m`` (250 MB), or
a local copy: ``NK_TUTORIAL_MODEL`` names another OPT checkpoint (a hub id or a local
``save_pretrained`` directory; the tests run this file on a tiny local one, offline). Without
either it says so in one line before anything runs. Recording the paper's 5M tokens takes hours
on a CPU and minutes on a GPU; set ``NK_TUTORIAL_TOKENS`` to record fewer (the kinds then rest
on less evidence, and ``classify`` says so).

Run it as a script or cell by cell in a notebook (each ``# %%`` starts a cell).
"""

# %% The checkpoint: a local directory, a hub id already in the local cache, or one the hub can
# give (HF_HUB_OFFLINE=1 rules that out). Checked first, so that a missing one is said at once.
import os

MODEL = os.environ.get("NK_TUTORIAL_MODEL", "facebook/opt-125m")
if not os.path.isdir(MODEL):
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    why = None
    if MODEL.startswith(("/", ".", "~")) or MODEL.count("/") != 1:
        why = "is not a directory"
    else:
        try:
            cached = isinstance(try_to_load_from_cache(MODEL, "config.json"), str)
            if not cached and constants.HF_HUB_OFFLINE:
                why = "is not in the local cache and HF_HUB_OFFLINE is set"
            elif not cached:
                HfApi().model_info(MODEL, timeout=30)
        except Exception as err:  # hub errors have many types; each means "cannot fetch it"
            why = f"cannot be fetched from the hub ({type(err).__name__})"
    if why:
        raise SystemExit(
            f"paper_opt125m.py: {MODEL} {why}: this tutorial needs the Hugging Face hub or a local "
            "checkpoint directory (NK_TUTORIAL_MODEL=/path/to/opt-125m python "
            "tutorials/paper_opt125m.py)"
        )

# %% Load OPT-125m for TransformerLens: weights as the checkpoint has them (no LayerNorm folding,
# docs/kinds.md, "Terms"). offload="cpu" keeps the blocks in CPU memory and moves one at a time to
# the device, as the paper did for OPT-66b on one GPU; on a CPU-only machine it costs nothing.
import tempfile  # noqa: E402

import torch  # noqa: E402

import tl_neuronkinds as nk  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
model = nk.load_opt(MODEL, offload="cpu", device=device)
print(model.cfg.n_layers, "layers of", model.cfg.d_mlp, "neurons")

# %% Text: the embedded corpus here (offline); the paper used 5M tokens of its own data
# (20M for dead neurons). Sequences start with BOS and are T = 2048 tokens long, as OPT's.
corpus = nk.Corpus.embedded(split="heldout")
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 284160))
tokens = corpus.tokenize(model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=n_tokens)

# %% Record once (§2): exact counts, not activations. The checkpoint directory makes the run
# resumable; ngram_cap=50 keeps bigram and trigram counts only where k95_n can be <= 50.
run_dir = tempfile.mkdtemp()
profile = nk.record(model, tokens, corpus=corpus.description, checkpoint_dir=run_dir)
print(profile.n_positions, "positions recorded")

# %% One Analysis computes each layer's statistics once for every table below.
analysis = nk.Analysis(profile)
table = nk.classify(analysis)
tables = nk.figure_tables(analysis)

# %% §3, Figure 1: dead neurons by layer (the paper finds them in the first half of the model)
# and how often the living ones fire.
print(tables["fig1a"].to_string())
print(tables["fig1b"].to_string())

# %% §4.1-4.3, Figures 2-4: how many tokens cover 95% of a neuron's activations, token
# detectors by layer, and how many tokens each layer's detectors cover together.
print(tables["fig2_n1"].to_string())
print(tables["fig3a_n1"].to_string())
print(tables["fig4_n1"].to_string())
found = nk.token_detectors(analysis)
print(found[found.detector.fillna(False)].head(10).to_string())

# %% §4.4, Figures 5-6: what a detector writes to the residual stream. W_out[l][i] taken to the
# logits through the final LayerNorm's centring and gain: promoted and suppressed tokens.
detectors = table[table.token_detector.fillna(False)]
if len(detectors):
    top = detectors.sort_values("evidence", ascending=False).iloc[0]
    print(nk.vocab_projection(model, int(top.layer), [int(top.neuron)], k=5).to_string())
suppression = nk.trigger_suppression(model, analysis)
print(nk.suppression_by_layer(suppression, layers=profile.layers).to_string())

# %% §5, Figures 7-9: positional neurons, their types and the ranges their teams cover.
positional = nk.positional_neurons(analysis)
print(positional[positional.positional].groupby("layer")["pos_type"].value_counts().to_string())
print(tables["fig8"].to_string())

# %% All of it as one self-contained HTML file that opens offline.
print("report:", nk.report(profile, model, out=os.path.join(run_dir, "report.html"),
                           tokens=tokens, analysis=analysis))  # fmt: skip
