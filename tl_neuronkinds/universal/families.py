"""Universal neurons and their families (Gurnee et al. 2024, §3-4): the correlation table of the
first model joined with its neurons' weight statistics and activation moments
(``find_universal``), and how the universal neurons compare with every neuron on them
(``UniversalNeurons.families``)."""

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

#: Per group of neurons: the statistics compared (Gurnee et al. Figure 4 compares universal
#: neurons with the rest on activation moments, sparsity and weight statistics), and how each
#: is summarised.
FAMILY_STATS = {
    "act_skew": "median",
    "act_kurt": "median",
    "sparsity": "mean",
    "vocab_skew": "median",
    "vocab_kurt": "median",
    "w_out_norm": "mean",
    "cos_in_out": "mean",
    "entropy_score": "mean",
    "prediction": "mean",
    "suppression": "mean",
    "partition": "mean",
}


@dataclass(frozen=True)
class UniversalNeurons:
    """What ``find_universal`` found.

    Attributes:
        table: One row per neuron of the first model: ``universal_neurons``'s columns, then
            ``weight_stats``'s and ``activation_moments``'s.
        models: The models' names, the first being the one described.
        tokens: Text tokens the correlations were taken over.
        threshold: ``universal`` where the mean excess correlation is above this.
    """

    table: pd.DataFrame
    models: list[str]
    tokens: int
    threshold: float

    def layers(self) -> pd.DataFrame:
        """Per layer: ``neurons``, ``universal`` (count), ``share``, and the means of
        ``max_corr``, ``baseline_max_corr`` and ``excess``."""
        grouped = self.table.groupby("layer")
        out = pd.DataFrame(
            {
                "neurons": grouped.size(),
                "universal": grouped["universal"].sum(),
                "max_corr": grouped["max_corr"].mean(),
                "baseline_max_corr": grouped["baseline_max_corr"].mean(),
                "excess": grouped["excess"].mean(),
            }
        )
        out.insert(2, "share", out["universal"] / out["neurons"])
        return out.reset_index()

    def families(self) -> pd.DataFrame:
        """One row per group (``universal``, ``other``, ``all``): ``neurons`` and each of
        ``FAMILY_STATS`` (shares for the boolean families), over the neurons whose statistics
        are defined."""
        rows = []
        groups = {
            "universal": self.table["universal"],
            "other": ~self.table["universal"],
            "all": pd.Series(True, index=self.table.index),
        }
        for name, mask in groups.items():
            part = self.table[mask]
            row: dict[str, Any] = {"group": name, "neurons": len(part)}
            for column, how in FAMILY_STATS.items():
                values = part[column].astype(float)
                row[column] = values.median() if how == "median" else values.mean()
            rows.append(row)
        return pd.DataFrame(rows)


def find_universal(
    models: list[Any],
    tokens: torch.Tensor,
    *,
    threshold: float = 0.5,
    profile: Any = None,
    **options: Any,
) -> UniversalNeurons:
    """Universal neurons of ``models[0]`` against the others, with its neurons' weight
    statistics (``weight_stats``) and activation moments (``activation_moments`` of
    ``profile``, or of a unigram-only recording of ``models[0]`` over ``tokens``).

    Args:
        models: Two or more models of one tokenizer.
        tokens: ``Int[n_seq seq_len]``, BOS first.
        threshold: As for ``universal_neurons``.
        profile: A NeuronProfile of ``models[0]`` holding activation moments (recorded over
            any tokens); default: one is recorded here.
        options: Passed to ``universal_neurons`` (``layers_a``, ``memory``, ``seed``, ...).
    """
    from tl_neuronkinds.kinds import activation_moments
    from tl_neuronkinds.loading.tokens import bos_of
    from tl_neuronkinds.recording import record
    from tl_neuronkinds.universal.correlations import universal_neurons
    from tl_neuronkinds.universal.weights import weight_stats

    table = universal_neurons(models, tokens, threshold=threshold, **options)
    layers = sorted(set(table["layer"]))
    if profile is None:
        profile = record(
            models[0],
            tokens,
            layers,
            ngram_max=1,
            top_k=0,
            window=None,
            progress=False,
            bos_token_id=options.get("bos_token_id"),
        )
    keys = ["layer", "neuron"]
    table = table.merge(weight_stats(models[0], layers=layers), on=keys, how="left")
    table = table.merge(activation_moments(profile, layers=layers), on=keys, how="left")
    names = [str(model.cfg.model_name) for model in models]
    text = int((tokens != bos_of(models[0], options.get("bos_token_id"))).sum())
    return UniversalNeurons(table, names, text, threshold)
