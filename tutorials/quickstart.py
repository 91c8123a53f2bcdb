"""Quickstart: what are the neurons of the embedded model? (runs offline, a minute on a CPU)

Run it as a script (``python tutorials/quickstart.py``) or cell by cell in a notebook; each
``# %%`` starts a cell. ``NK_TUTORIAL_TOKENS`` sets how many held-out tokens to record.
"""

# %% Load the embedded tiny OPT and the held-out split of the embedded corpus.
import os
import tempfile

import tl_neuronkinds as nk

model = nk.load_opt(nk.embedded_model_dir(), device="cpu")
corpus = nk.Corpus.embedded(split="heldout")
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 32768))
tokens = corpus.tokenize(model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=n_tokens)
print(tokens.shape, "BOS first:", bool((tokens[:, 0] == model.tokenizer.bos_token_id).all()))

# %% Record once: counts, never activations. With a checkpoint directory, a run that stops
# (Ctrl-C, a crash) resumes where it was when called again with the same arguments.
run_dir = tempfile.mkdtemp()
profile = nk.record(model, tokens, corpus=corpus.description, checkpoint_dir=run_dir)
print(profile)  # a short summary; in a notebook, a small table
print(profile.n_positions, "positions recorded")

# %% Classify: one row per neuron, the paper's cut-offs (nk.Cutoffs holds them).
table = nk.classify(profile)
print(table.groupby("layer")["kind"].value_counts().unstack(fill_value=0))

# %% How much evidence does each detector rest on? ("evidence": its text activations)
detectors = table[table.token_detector | table.ngram_detector_2 | table.ngram_detector_3]
print(detectors[["layer", "neuron", "evidence", "trigger_n", "triggers"]].head(10).to_string())

# %% Bigram and trigram coverage are exact up to the n-gram cap (50); above it they are
# "censored": proven to exceed the cap without their counts (docs/kinds.md, "The n-gram cap").
print(table.groupby("layer")["k95_3_status"].value_counts().unstack(fill_value=0))

# %% Re-classify with other cut-offs, without the model: a looser detector (k95 <= 10, 90%).
loose = nk.classify(profile, k_max=10, coverage=90)
print("token detectors:", int(table.token_detector.sum()), "->", int(loose.token_detector.sum()))

# %% Positional neurons (§5): mutual information between activation and position.
positional = nk.positional_neurons(profile)
print(positional.sort_values("pos_mi", ascending=False).head(5).to_string())

# %% Runs made elsewhere merge exactly. Each half kept the n-gram counts of its own neurons,
# so a neuron one half dropped is censored (its proof adds up) or, rarely, unknown.
half = tokens.shape[0] // 2
first = nk.record(model, tokens[:half], corpus=corpus.description, progress=False)
second = nk.record(model, tokens[half:], corpus=corpus.description, progress=False)
merged = nk.NeuronProfile.merge([first, second])
print(nk.classify(merged)["k95_3_status"].value_counts().to_string())

# %% The per-layer summary behind the paper's figures.
print(nk.layer_summary(profile).to_string())

# %% One neuron at a glance: its kind, triggers, promoted and suppressed tokens, activation by
# position and the contexts that fire it most (circuitsvis, offline). In a notebook, the last
# line of a cell shows the view inline; here it is saved as a page.
pick = (detectors if len(detectors) else table).sort_values("evidence", ascending=False).iloc[0]
view = nk.show_neuron(model, profile, int(pick.layer), int(pick.neuron), tokens=tokens)
print(view.vocab.head(3).to_string())  # the view's data are DataFrames
print("saved", view.save(os.path.join(run_dir, "neuron.html")))

# %% The report: this run's versions of the paper's figures and a searchable section per
# notable neuron, one self-contained HTML file (needs the report extra: matplotlib).
print("report:", nk.report(profile, model, out=os.path.join(run_dir, "report.html"), tokens=tokens))
