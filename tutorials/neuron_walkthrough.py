"""A walk through single neurons with the inline views (runs offline, about a minute).

Three neurons of the embedded model, one of each kind the paper names: a token detector (§4.2),
a positional neuron (§5) and a dead one (§3). For each, ``nk.show_neuron`` gathers what the
profile and the model say about it; in a notebook the view shows inline (circuitsvis, offline:
its JavaScript is inlined, nothing is fetched), and its parts are DataFrames to work with.
Run it as a script or cell by cell (each ``# %%`` starts a cell). In a notebook the first view
carries circuitsvis's bundle (1.3 MB) and the later ones only reference it (docs/recipes.md,
"Notebooks"; ``nk.init_notebook()`` in the first cell puts it there instead).
"""

# %% Record the held-out split once (NK_TUTORIAL_TOKENS sets how many tokens).
import os
import tempfile

import tl_neuronkinds as nk

model = nk.load_opt(nk.embedded_model_dir(), device="cpu")
corpus = nk.Corpus.embedded(split="heldout")
n_tokens = int(os.environ.get("NK_TUTORIAL_TOKENS", 65536))
tokens = corpus.tokenize(model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=n_tokens)
profile = nk.record(model, tokens, corpus=corpus.description, progress=False)
print(profile.n_positions, "positions recorded")
analysis = nk.Analysis(profile)  # shared by the views below: each layer classified once
table = nk.classify(analysis)
out = tempfile.mkdtemp()


def most(kind_rows, column):
    """The (layer, neuron) with the largest ``column`` among ``kind_rows`` (None if empty)."""
    if kind_rows.empty:
        return None
    row = kind_rows.sort_values([column, "layer", "neuron"], ascending=[False, True, True]).iloc[0]
    return int(row.layer), int(row.neuron)


# %% A token detector: the detector with the most evidence (activations at text positions).
# Its triggers cover 95% of its activations with few tokens; does it suppress them (§4.4)?
detector = most(table[table.token_detector.fillna(False)], "evidence")
if detector is not None:
    view = nk.show_neuron(model, profile, *detector, tokens=tokens, analysis=analysis)
    print(view)  # in a notebook: `view` alone on the last line renders it
    print(view.triggers[["text", "count", "occurrences", "share"]].to_string())
    print(view.vocab.groupby("direction").head(3).to_string())
    for c in view.contexts.head(3).itertuples():  # max-activating contexts
        print(f"{c.value:6.2f}", "".join(c.tokens).replace("\n", "⏎"))
    view.save(os.path.join(out, "detector.html"))
    suppression = nk.trigger_suppression(model, analysis).set_index(["layer", "neuron"])
    print("suppresses its triggers:", bool(suppression.loc[detector, "suppresses"]))

# %% A positional neuron: the highest mutual information between activation and position.
# f_p (its firing frequency at each position) tells its type: oscillatory, one or both
# extremes (§5.2).
positional = most(table[table.positional.fillna(False)], "pos_mi")
if positional is not None:
    view = nk.show_neuron(model, profile, *positional, tokens=tokens, analysis=analysis)
    print(view.kinds[["kind", "pos_mi", "pos_type", "pos_strength"]].to_string())
    print(view.positions.dropna().iloc[:: max(1, len(view.positions) // 8)].to_string())
    view.save(os.path.join(out, "positional.html"))

# %% A dead neuron: never active on these tokens (§3). Its view has no contexts and no
# triggers, and says so; what it would write is still there.
dead = table[table.dead.fillna(False)]
if len(dead):
    view = nk.show_neuron(model, profile, int(dead.layer.iloc[0]), int(dead.neuron.iloc[0]),
                          tokens=tokens, analysis=analysis)  # fmt: skip
    print(view.kinds[["kind", "count"]].to_string(), "contexts:", len(view.contexts))

# %% Several views on one page: circuitsvis's bundle is inlined once for the whole page.
from tl_neuronkinds.present.render import page  # noqa: E402

chosen = [n for n in (detector, positional) if n is not None]
views = [nk.show_neuron(model, profile, *n, tokens=tokens, analysis=analysis) for n in chosen]
path = os.path.join(out, "neurons.html")
with open(path, "w", encoding="utf-8") as f:
    f.write(page("Neurons of the embedded model", [v.fragment() for v in views]))
print("views saved in", out)
