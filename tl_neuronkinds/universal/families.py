"""Universal neurons and their families (Gurnee et al. 2024, §3-4): the correlation table of the
first model joined with its neurons' weight statistics and activation moments
(``find_universal``), and how the universal neurons compare with every neuron on them
(``UniversalNeurons.families``)."""

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from tl_neuronkinds.progress import Progress
from tl_neuronkinds.universal.settings import EXCESS, MIN_ACTIVE

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
#: ``support_warning`` warns where more than this share of the neurons that fire at all fire
#: at fewer than ``min_active`` text positions, or of the neurons whose excess is above the
#: threshold. Below it the result stands: the few left out are counted, not warned about (the
#: embedded model's default 16,384 tokens leave out 5 of 175 such neurons).
UNSUPPORTED_SHARE = 0.05


@dataclass(frozen=True)
class UniversalNeurons:
    """What ``find_universal`` found.

    Attributes:
        table: One row per neuron of the first model: ``universal_neurons``'s columns, then
            ``weight_stats``'s and ``activation_moments``'s.
        models: The models' names, the first being the one described.
        tokens: Text tokens the correlations were taken over.
        threshold: ``universal`` where the mean excess correlation is above this ...
        min_active: ... and the neuron is active (above 0) at this many text positions at
            least (``table["active"]``; ``tl_neuronkinds.universal.correlations``, "Support").
    """

    table: pd.DataFrame
    models: list[str]
    tokens: int
    threshold: float
    min_active: int = MIN_ACTIVE

    @property
    def n_unsupported(self) -> int:
        """Neurons that fire, but at fewer than ``min_active`` text positions: their
        correlations rest on too few positions, and they are never universal."""
        active = self.table["active"]
        return int(((active > 0) & (active < self.min_active)).sum())

    @property
    def n_left_out(self) -> int:
        """Neurons whose excess correlation is above the threshold but that are active at
        fewer than ``min_active`` text positions, so left out of the universal ones."""
        above = self.table["excess"].fillna(-float("inf")) > self.threshold
        return int((above & (self.table["active"] < self.min_active)).sum())

    def support_warning(self) -> str | None:
        """What to beware of where too few positions support the correlations, None where
        enough do: a warning where more than ``UNSUPPORTED_SHARE`` of the neurons that fire,
        or of those whose excess correlation is above the threshold, fire at fewer than
        ``min_active`` text positions (the latter are left out of the universal neurons)."""
        firing = int((self.table["active"] > 0).sum())
        rare, left_out = self.n_unsupported, self.n_left_out
        above = int(self.table["universal"].sum()) + left_out
        if rare <= UNSUPPORTED_SHARE * firing and left_out <= UNSUPPORTED_SHARE * above:
            return None
        text = (
            f"{rare:,} of the {firing:,} neurons that fire do so at fewer than "
            f"{self.min_active:,} of the {self.tokens:,} text positions"
        )
        if left_out:
            verbs = ("has", "is") if left_out == 1 else ("have", "are")
            text += (
                f"; {left_out:,} of them {verbs[0]} an excess correlation above "
                f"{self.threshold:g} and {verbs[1]} left out of the universal neurons"
            )
        return (
            f"{text}. A correlation over so few active positions means little (active at one, "
            "a neuron correlates 1.0 with any neuron of another model active there alone): "
            "use more tokens."
        )

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
    threshold: float = EXCESS,
    min_active: int = MIN_ACTIVE,
    profile: Any = None,
    progress: bool | None = None,
    **options: Any,
) -> UniversalNeurons:
    """Universal neurons of ``models[0]`` against the others, with its neurons' weight
    statistics (``weight_stats``) and activation moments (``activation_moments`` of
    ``profile``, or of a unigram-only recording of ``models[0]`` over ``tokens``).

    Args:
        models: Two or more models of one tokenizer.
        tokens: ``Int[n_seq seq_len]``, BOS first.
        threshold: As for ``universal_neurons``.
        min_active: As for ``universal_neurons``: a neuron active (above 0) at fewer text
            positions is not universal; the result counts such neurons (``n_unsupported``,
            ``n_left_out``) and says when they matter (``support_warning()``).
        profile: A NeuronProfile of ``models[0]`` holding activation moments (recorded over
            any tokens); default: one is recorded here.
        progress: Show progress (default): the correlations' passes (``universal_neurons``),
            the recording of the moments (``record``), then the weight statistics, each
            named with its total (``tl_neuronkinds.progress``); False for none.
        options: Passed to ``universal_neurons`` (``layers_a``, ``memory``, ``seed``, ...).
    """
    from tl_neuronkinds.kinds import activation_moments
    from tl_neuronkinds.loading.tokens import bos_of
    from tl_neuronkinds.recording.record_run import record
    from tl_neuronkinds.universal.correlations import universal_neurons
    from tl_neuronkinds.universal.weights import weight_stats

    table = universal_neurons(
        models, tokens, threshold=threshold, min_active=min_active, progress=progress, **options
    )
    layers = sorted(set(table["layer"]))
    if profile is None:
        profile = record(
            models[0],
            tokens,
            layers,
            ngram_max=1,
            top_k=0,
            window=None,
            progress=progress,
            bos_token_id=options.get("bos_token_id"),
        )
    keys = ["layer", "neuron"]
    bar = Progress(1, enabled=progress, unit="step", phase="weight statistics")
    try:
        stats = weight_stats(models[0], layers=layers)
        bar.update(1)
    finally:
        bar.close()
    table = table.merge(stats, on=keys, how="left")
    table = table.merge(activation_moments(profile, layers=layers), on=keys, how="left")
    names = [str(model.cfg.model_name) for model in models]
    text = int((tokens != bos_of(models[0], options.get("bos_token_id"))).sum())
    return UniversalNeurons(table, names, text, threshold, min_active)
