"""Calling the classifiers from your own hook-based experiment (runs offline, about a minute).

You already have a TransformerLens experiment with hooks of your own — here, an ablation that
zeroes a few neurons. A ``NeuronRecorder`` counts beside your hooks, over any loop of batches,
and the kinds are then a function of what it counted. Run it as a script or cell by cell
(each ``# %%`` starts a cell). ``NK_TUTORIAL_TOKENS`` sets how many tokens to record.
"""

# %% The embedded model, and batches as your experiment would make them.
import os

import torch

import tl_neuronkinds as nk

model = nk.load_opt(nk.embedded_model_dir(), device="cpu")
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 32768))
tokens = nk.Corpus.embedded(split="heldout").tokenize(
    model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=n_tokens
)
batches = tokens.split(4)  # any sizes; the recorder takes each forward's tokens from it

# %% Your own hook: ablate three neurons of layer 1 (set them to zero).
ABLATED = [0, 1, 2]


def ablate(acts: torch.Tensor, hook) -> torch.Tensor:
    acts[..., ABLATED] = 0.0
    return acts


my_hooks = [("blocks.1.mlp.hook_post", ablate)]

# %% Record beside it. By default the recorder sees what the model goes on with, i.e. after
# your hooks on the same point: the ablated neurons count as dead. see="before_user_hooks"
# counts the activations as computed, before your hooks change them.
after = nk.NeuronRecorder(model, layers=[0, 1])
before = nk.NeuronRecorder(model, layers=[1], see="before_user_hooks")
with after.recording(), before.recording():
    for batch in batches:
        model.run_with_hooks(batch, fwd_hooks=my_hooks)
seen_after, seen_before = after.profile(), before.profile()
print(seen_after.n_positions, "positions recorded")

# %% Classify each: the ablation shows in the first, not in the second.
kinds_after = nk.classify(seen_after).set_index(["layer", "neuron"])
kinds_before = nk.classify(seen_before).set_index(["layer", "neuron"])
for neuron in ABLATED:
    print(
        f"layer 1 neuron {neuron}: after your hook {kinds_after.loc[(1, neuron), 'kind']}, "
        f"before it {kinds_before.loc[(1, neuron), 'kind']}"
    )

# %% Single classifiers, if you only need one kind.
print(nk.dead_neurons(seen_after).head().to_string())
print(nk.token_detectors(seen_after).head().to_string())

# %% What fires a neuron: the recorder kept each neuron's top activations (row of the
# forwards, in the order they ran, and position). Contexts come from those rows alone.
layer, neuron = 0, int(kinds_after.loc[0]["evidence"].idxmax())
contexts = nk.max_activating_contexts(model, seen_after, tokens, layer, neuron, k=3)
for row in contexts.itertuples():
    window = "".join(row.tokens).replace("\n", "⏎")
    print(f"{row.value:6.2f}  …{window}…  (the activating token: {row.tokens[row.center]!r})")

# %% A recorder in a loop you cannot hold in one `with` block: counts add up across blocks,
# and profiles made elsewhere merge exactly (rows of the merge follow the order merged).
more = nk.NeuronRecorder(model, layers=[0, 1])
for batch in batches[:2]:
    with more.recording(), model.hooks(fwd_hooks=my_hooks):
        model(batch)
merged = nk.NeuronProfile.merge([seen_after, more.profile()])
print(merged)  # the tokens of both, as one recording over torch.cat would count them
