"""Universal neurons: which neurons of the embedded model come back in its other seeds?
(Gurnee et al. 2024, "Universal Neurons in GPT2 Language Models"; runs offline, about two
minutes on a 2-core CPU at the default 8,192 tokens.)

The package ships three seeds of the embedded model: the same data, tokenizer and settings,
another initialisation and data order (``nk.embedded_model_dir(seed=...)``). A neuron of seed 0
is *universal* where its activations correlate with some neuron of the other seeds far better
than with any direction of a randomly rotated basis of their neurons. Run it as a script or
cell by cell (each ``# %%`` starts a cell). ``NK_TUTORIAL_TOKENS`` sets how many tokens.
"""

# %% The three seeds and held-out text.
import os

import tl_neuronkinds as nk

models = [nk.load_opt(nk.embedded_model_dir(seed=seed), device="cpu") for seed in (0, 1, 2)]
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 8192))
tokens = nk.Corpus.embedded(split="heldout").tokenize(
    models[0].tokenizer, seq_len=models[0].cfg.n_ctx, n_tokens=n_tokens
)

# %% Record seed 0 once: its kinds, and the activation moments of each neuron (mean, variance,
# skew, kurtosis from float64 power sums; sparsity).
profile = nk.record(models[0], tokens, progress=False)
print(profile.n_positions, "positions recorded")

# %% Correlate every neuron of seed 0 with every neuron of seeds 1 and 2 (float64 sums,
# streamed; memory bounded by ``memory=``), against an exactly orthogonal rotation of their
# neurons. Joined with each neuron's weight statistics and activation moments.
found = nk.find_universal(models, tokens, profile=profile, k=3)
print(found.layers().to_string(index=False))

# %% Families: how the universal neurons differ from the rest (Gurnee et al. §4): activation
# skew and kurtosis, sparsity, the vocabulary moments of what they write, prediction /
# suppression / partition shares.
print(found.families().to_string(index=False))

# %% The most universal neurons, with their kind in Voita et al.'s sense.
kinds = nk.classify(profile)[["layer", "neuron", "kind", "freq"]]
top = found.table.merge(kinds, on=["layer", "neuron"])
top = top.sort_values("excess", ascending=False).head(8)
print(top[["layer", "neuron", "kind", "max_corr", "baseline_max_corr", "excess", "act_kurt"]])

# %% What the most universal one writes: its promoted and suppressed tokens.
best = top.iloc[0]
layer, neuron = int(best["layer"]), int(best["neuron"])
print(nk.vocab_projection(models[0], layer, [neuron], k=8)[["direction", "rank", "token"]])

# %% Its best matches in seed 1: the full correlation matrix of its layer with every layer of
# seed 1 fits easily at this size (``correlation_matrix`` refuses what would not).
matrix = nk.correlation_matrix(models[0], models[1], tokens, layers_a=[layer])
print(matrix.loc[(layer, neuron)].sort_values(ascending=False).head(5))
