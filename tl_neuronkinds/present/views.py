"""``show_neuron``: one neuron at a glance, gathered into a ``NeuronView`` (``neuron_view.py``,
which holds its DataFrames and draws its offline HTML).

For neuron ``(layer, neuron)`` of a profile and the model it was recorded from, the view holds:

- its kind and the numbers behind it (``classify``'s row: dead §3, token and n-gram detector
  §4.2 / §4.5, positional §5.1) and its ``k95_n`` with their statuses (``exact``,
  ``undefined``, ``censored`` above the n-gram cap, ``unknown``; docs/kinds.md, "The n-gram cap");
- its triggers for every order it detects, with ``c_g`` (its activations on the trigger),
  ``o_g`` (the trigger's occurrences) and the share of its activations ``A_n`` they cover;
- its promoted and suppressed tokens (``vocab_projection``, §4.4);
- its activation frequency by position, ``f_p`` (§5.1);
- its activation histogram where the profile kept one (``record(..., histogram=True)``);
- with the profile's context windows or ``tokens``: its max-activating contexts
  (``max_activating_contexts``).

``init_notebook``: circuitsvis's bundle displayed once at the top of a notebook, so that no view
needs to carry it (``render``'s module docstring: a notebook's first view carries it otherwise).
"""

import copy
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

from tl_neuronkinds.checks import check_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.classify import classification
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.ngrams import STATUSES, ngram_tokens
from tl_neuronkinds.loading.identity import check_same_model
from tl_neuronkinds.present import render
from tl_neuronkinds.present.neuron_view import NeuronView
from tl_neuronkinds.recording.contexts import max_activating_contexts, windows_cover
from tl_neuronkinds.recording.keys import Table
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.queries import activation_histogram
from tl_neuronkinds.vocab import vocab_projection

NO_TOKENS = (
    "Max-activating contexts: this profile kept no context windows this wide; pass the tokens "
    "it was recorded on (show_neuron(model, profile, layer, neuron, tokens=tokens)) to see them."
)
TRIGGER_COLUMNS = ["n", "rank", "ids", "tokens", "text", "count", "occurrences", "share"]


def _check(model: Any, profile: NeuronProfile, layer: object, neuron: object) -> tuple[int, int]:
    """The neuron as ints; NeuronKindsError for a layer or neuron not in the profile, or a model
    other than the profile's (shapes, config hash and weights fingerprint)."""
    if not isinstance(profile, NeuronProfile):
        raise NeuronKindsError(f"expected a NeuronProfile, got {type(profile).__name__}")
    layer, neuron = check_int("layer", layer), check_int("neuron", neuron)
    if layer not in profile.counts:
        raise NeuronKindsError(f"layer {layer} was not recorded (recorded: {profile.layers})")
    if not 0 <= neuron < profile.d_mlp:
        raise NeuronKindsError(f"neuron {neuron} is out of range 0..{profile.d_mlp - 1}")
    check_same_model(model, profile)
    return layer, neuron


def _one_layer(profile: NeuronProfile, layer: int) -> NeuronProfile:
    """``profile`` restricted to ``layer`` (sharing its tensors): every kind of a neuron is a
    function of its layer's counts and the profile-wide ones, so one view classifies one layer."""
    single = copy.copy(profile)
    single.layers, single.counts = [layer], {layer: profile.counts[layer]}
    return single


def _coverage(analysis: Analysis, layer: int, neuron: int) -> pd.DataFrame:
    profile = analysis.profile
    rows = []
    for n in (1, 2, 3):
        row: dict[str, object] = {"n": n, "A": pd.NA, "k95": pd.NA, "status": "not recorded"}
        if n <= profile.ngram_max:
            cov = analysis.coverage(layer, n)
            status = STATUSES[int(cov.status[neuron])]
            row.update(A=int(cov.active[neuron]), status=status)
            if status == "exact":
                row["k95"] = int(cov.k95[neuron])
        row["cap"] = profile.ngram_cap if n >= 2 else None
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("A", "k95", "cap"):
        table[column] = table[column].astype("Int64")
    return table


def _lookup(table: Table, wanted: Int[np.ndarray, " g"]) -> Int[np.ndarray, " g"]:
    """The counts of ``wanted`` keys (each present) in a sorted sparse table."""
    return table.counts.numpy()[np.searchsorted(table.keys.numpy(), wanted)]


def _triggers(analysis: Analysis, layer: int, neuron: int) -> pd.DataFrame:
    profile = analysis.profile
    rows = []
    for n in range(1, profile.ngram_max + 1):
        cov = analysis.coverage(layer, n)
        gids = cov.triggers.get(neuron)
        if gids is None:
            continue
        counts = _lookup(profile.counts[layer].ngrams[n], gids * profile.d_mlp + neuron)
        occ = _lookup(profile.occurrences[n], gids)
        for rank, (ids, c, o) in enumerate(
            zip(ngram_tokens(gids, n, profile.d_vocab), counts, occ, strict=True)
        ):
            strings = tuple(profile.token_strings[t] for t in ids)
            rows.append(
                {
                    "n": n,
                    "rank": rank,
                    "ids": ids,
                    "tokens": strings,
                    "text": "".join(strings),
                    "count": int(c),
                    "occurrences": int(o),
                    "share": int(c) / int(cov.active[neuron]),
                }
            )
    return pd.DataFrame(rows, columns=TRIGGER_COLUMNS)


def _positions(profile: NeuronProfile, layer: int, neuron: int) -> pd.DataFrame:
    active = profile.counts[layer].pos_active[1:, neuron].numpy()
    seqs = profile.pos_text_seqs[1:].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        f_p = np.where(seqs > 0, active / seqs, np.nan)
    return pd.DataFrame(
        {"position": np.arange(1, profile.seq_len), "active": active, "seqs": seqs, "f_p": f_p}
    )


def show_neuron(
    model: Any,
    profile: NeuronProfile,
    layer: int | np.integer,
    neuron: int | np.integer,
    tokens: Int[torch.Tensor, "n_seq pos"] | None = None,
    k: int | None = None,
    *,
    vocab_k: int = 10,
    before: int = 12,
    after: int = 4,
    cutoffs: Cutoffs | None = None,
    analysis: Analysis | None = None,
    contexts: pd.DataFrame | None = None,
) -> NeuronView:
    """Everything about one neuron: a ``NeuronView`` that a notebook shows inline (circuitsvis,
    offline) and whose DataFrames hold the data (see ``NeuronView``).

    Args:
        model: The model the profile was recorded from (for the vocabulary projection and the
            contexts' activations).
        profile: Its NeuronProfile.
        layer, neuron: The neuron.
        tokens: The tokens the profile was recorded on. Needed for the max-activating contexts
            only where the profile kept no context windows as wide as ``before`` / ``after``
            (``record(..., window=...)``); without either the view shows everything else, and
            says so.
        k: How many max-activating contexts (default: all the profile kept, ``top_k``).
        vocab_k: Promoted and suppressed tokens shown (10 as in §4.4's examples).
        before, after: Tokens of context before and after the activating one.
        cutoffs: The kinds' cut-offs (the paper's defaults where None).
        analysis: An ``Analysis`` of ``profile`` to reuse: its classification of every layer
            is computed once for all the views made with it (a report of many neurons).
            Without one, the view classifies the neuron's layer only.
        contexts: The neuron's contexts, already computed (``recording.contexts.contexts_of``,
            which does many neurons in one pass: a report); ``tokens`` is then not needed.

    Raises:
        NeuronKindsError: A layer the profile did not record, a neuron out of range, a model
            other than the profile's, or tokens other than those it was recorded on.
    """
    layer, neuron = _check(model, profile, layer, neuron)
    if analysis is None:
        analysis = Analysis(_one_layer(profile, layer), cutoffs)
    else:
        analysis = analysis_of(profile, cutoffs, {}, analysis)
    table = analysis.memo(
        "views.classification", lambda: classification(analysis).set_index(["layer", "neuron"])
    )
    kinds = table.loc[[(layer, neuron)]].reset_index()
    counts = profile.counts[layer]
    notes: list[str] = []
    if contexts is None and counts.top_values is None:
        notes.append("Max-activating contexts: this profile kept none (record with top_k > 0).")
    elif contexts is None and (tokens is not None or windows_cover(profile, before, after)):
        contexts = max_activating_contexts(
            model, profile, tokens, layer, neuron, k=k, before=before, after=after
        )
    elif contexts is None:
        notes.append(NO_TOKENS)
    histogram = None
    if counts.hist is not None:
        histogram = activation_histogram(profile, layer, neuron)
    model_name = str(profile.meta.get("model_name") or "")
    return NeuronView(
        layer=layer,
        neuron=neuron,
        kinds=kinds,
        coverage=_coverage(analysis, layer, neuron),
        triggers=_triggers(analysis, layer, neuron),
        positions=_positions(profile, layer, neuron),
        vocab=vocab_projection(model, layer, [neuron], k=vocab_k),
        contexts=contexts,
        histogram=histogram,
        title=f"Layer {layer}, neuron {neuron}: {kinds['kind'].iloc[0]}"
        + (f" ({model_name})" if model_name else ""),
        notes=tuple(notes),
        bos_token_id=profile.bos_token_id,
    )


def init_notebook(*, every_view: bool = False) -> None:
    """Display circuitsvis's JavaScript bundle (1.3 MB, offline) as this cell's output, so the
    neuron views after it carry none (each some tens of kB).

    Without it a notebook's first view carries the bundle; calling this in the first cell keeps
    the bundle at the top whatever is cleared, re-run or deleted below (a view whose output is
    re-rendered before the bundle waits for it). Running it again displays the bundle again.

    Args:
        every_view: Every later view carries its own copy instead (1.3 MB each), for front-ends
            that show each output in its own frame; Colab is detected and needs no call.

    Raises:
        NeuronKindsError: IPython is not installed (this is for notebooks).
    """
    try:
        from IPython.display import HTML, display
    except ImportError as err:
        raise NeuronKindsError("init_notebook is for notebooks: IPython is not installed") from err
    render.notebook_mode(every_view=every_view)
    if not every_view:
        display(HTML(render.notebook_html("", bundle=True)))
