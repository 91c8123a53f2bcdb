"""Quickstart: what are the neurons of the embedded model? (runs offline, a minute on a CPU)

Run it as a script (``python tutorials/quickstart.py``) or cell by cell in a notebook; each
``# %%`` starts a cell. ``NK_TUTORIAL_TOKENS`` sets how many held-out tokens to record.
"""

# %% Load the embedded tiny OPT and the held-out split of the embedded corpus.
import os

import tl_neuronkinds as nk

model = nk.load_opt(nk.embedded_model_dir(), device="cpu")
corpus = nk.Corpus.embedded(split="heldout")
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 32768))
tokens = corpus.tokenize(model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=n_tokens)
print(tokens.shape, "BOS first:", bool((tokens[:, 0] == model.tokenizer.bos_token_id).all()))

# %% Record once: counts, never activations.
half = tokens.shape[0] // 2
first = nk.record(model, tokens[:half], corpus=corpus.description)
second = nk.record(model, tokens[half:], corpus=corpus.description)
profile = nk.NeuronProfile.merge([first, second])  # equal to one run over all rows
print(profile.n_positions, "positions recorded")

# %% Classify: one row per neuron, the paper's cut-offs.
table = nk.classify(profile)
print(table.groupby("layer")["kind"].value_counts().unstack(fill_value=0))

# %% Re-classify with other cut-offs, without the model: a looser detector (k95 <= 10, 90%).
loose = nk.classify(profile, k_max=10, coverage=90)
print("token detectors:", int(table.token_detector.sum()), "->", int(loose.token_detector.sum()))
print(loose[loose.token_detector][["layer", "neuron", "triggers"]].head(10).to_string())

# %% Positional neurons (§5): mutual information between activation and position.
positional = nk.positional_neurons(profile)
print(positional.sort_values("pos_mi", ascending=False).head(5).to_string())

# %% The per-layer summary behind the paper's figures.
print(nk.layer_summary(profile).to_string())
