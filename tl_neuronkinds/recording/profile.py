"""NeuronProfile: the counts one recording leaves, with save, load and exact merge.

Every kind (dead, n-gram detector, positional) is a function of these counts (docs/kinds.md), so a
profile is all a user needs to re-classify with other cut-offs, merge runs made elsewhere, or
resume. Counts are int64 and exact. The fields, and what each does on save and merge, are
declared once, in the dataclasses below (``_role``); ``profile_format.py`` (save, load, the
format versions) and ``merge.py`` (the merge algebra) act on the fields by these roles:

- ``setting``: stored in ``profile.json``; two profiles merge only where they agree.
- ``total``: stored in ``profile.json``; summed by a merge.
- ``counts``: a tensor in ``counts.safetensors``; summed by a merge.
- ``tables``: sparse count tables (``keys.Table``) per n-gram order; merged key by key.
- ``cap``: the n-gram cap, in ``profile.json``; a merge keeps the smallest (a certificate
  ``k95_n > cap`` holds for any smaller cap too).
- ``ngram_state``: per n >= 2, which neurons' tables are complete and, for the others, a lower
  bound of their *tail* (the certificate of ``k95_n > cap``, ``plan.py``). A merge keeps the
  neurons complete in every part and adds the tails (the others' k95 is then censored or
  unknown, never guessed — docs/kinds.md, "The n-gram cap").
- ``plan``: the neurons a recording set out to count n >= 2 for (its plan).
- ``top_k``: in ``profile.json``, how many top activations per neuron were kept; a merge keeps
  the smallest.
- ``examples``: per layer, the top-k activations ``[d_mlp, k]`` with their sequence and position
  and, where kept, their context windows ``[d_mlp, k, w]`` (``top_k.py``), None where not
  kept; merged exactly (the top-k of the parts' top-k).
- ``examples_window``: the windows' ``(before, after)`` in ``profile.json``, None where none
  were kept; a merge keeps the windows where every part kept the same ones.
- ``optional_counts``: a tensor that may be absent (the activation histogram, the activation
  power sums); summed by a merge where every part has it (absent otherwise: a merge with a part
  recorded before it was kept has none, never a partial sum).

Per recorded layer (``LayerCounts``): ``active`` / ``active_text`` (active positions per neuron,
over all positions and over text positions, §3), ``pos_active`` (``[seq_len, d_mlp]`` active
counts at p over the sequences whose token at p is text, §5), ``ngrams[n]`` (the table of
``c_g(l, i)`` keyed ``g * d_mlp + i``, §4), ``complete`` / ``tail``, ``plan``, and where kept the
top-k activations (``top_values`` / ``top_seq`` / ``top_pos``, with their context windows
``top_window_acts`` / ``top_window_ids``) and the histogram ``hist``; ``moments``
(``[4, d_mlp]`` float64: row k - 1 holds the sum of ``h**k`` over the text positions, the
positions of ``active_text``, for ``kinds.moments``; None in profiles of format 4 and before).
Profile-wide: n-gram occurrences ``o_g``, the sequences with a text token at each position,
totals, the tokenizer's string for each id and provenance metadata.

On disk: ``profile_format.py`` (format 5; earlier formats still load, newer ones are refused).
``meta["recording"]`` holds the settings the recording was made with
(``settings.RecordingSettings.to_dict``; ``NeuronProfile.settings`` gives them, for profiles of
every format, from the fields).
"""

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_neuronkinds.recording.keys import Table
from tl_neuronkinds.recording.merge import merge_profiles
from tl_neuronkinds.recording.profile_format import flatten, read_profile, write_profile
from tl_neuronkinds.recording.settings import RecordingSettings


def _role(role: str, **kwargs: Any) -> Any:
    return field(metadata={"role": role}, **kwargs)


@dataclass(eq=False)
class LayerCounts:
    """The counts of one recorded layer (see the module docstring)."""

    active: Int[torch.Tensor, " d_mlp"] = _role("counts")
    active_text: Int[torch.Tensor, " d_mlp"] = _role("counts")
    pos_active: Int[torch.Tensor, "pos d_mlp"] = _role("counts")
    # n -> c_g table; for n >= 2 it holds the pairs of the ``complete`` neurons only.
    ngrams: dict[int, Table] = _role("tables")
    # n >= 2 -> neurons whose n-gram counts are complete; None: every neuron's (exhaustive).
    complete: dict[int, Bool[torch.Tensor, " d_mlp"]] | None = _role("ngram_state", default=None)
    # n >= 2 -> for the other neurons, a lower bound of their tail: A_n less the sum of their
    # ngram_cap largest c_g (``plan.py``, "The tail certificate"); 0 for complete neurons.
    tail: dict[int, Int[torch.Tensor, " d_mlp"]] | None = _role("ngram_state", default=None)
    # The neurons whose n >= 2 counts the recording set out to keep (its plan); None: all.
    plan: Bool[torch.Tensor, " d_mlp"] | None = _role("plan", default=None)
    # Each neuron's top-k activations (descending; ties by seq, then pos), -inf / -1 padded.
    top_values: Float[torch.Tensor, "d_mlp k"] | None = _role("examples", default=None)
    top_seq: Int[torch.Tensor, "d_mlp k"] | None = _role("examples", default=None)
    top_pos: Int[torch.Tensor, "d_mlp k"] | None = _role("examples", default=None)
    # Each top activation's context (the profile's ``window``): the neuron's activations and the
    # tokens at pos - before .. pos + after of its row, NaN / -1 outside the row.
    top_window_acts: Float[torch.Tensor, "d_mlp k w"] | None = _role("examples", default=None)
    top_window_ids: Int[torch.Tensor, "d_mlp k w"] | None = _role("examples", default=None)
    # Each neuron's active values in the fixed bins of ``top_k.HIST_EDGES``.
    hist: Int[torch.Tensor, "d_mlp bins"] | None = _role("optional_counts", default=None)
    # Row k - 1: each neuron's sum of h**k over the text positions, float64; None before format 5.
    moments: Float[torch.Tensor, "4 d_mlp"] | None = _role("optional_counts", default=None)


@dataclass(eq=False)
class NeuronProfile:
    """Counts of one or more recordings of a model's FFN neurons, plus their provenance.

    Attributes:
        layers: Recorded layer indices, ascending.
        d_mlp, d_vocab, seq_len, threshold, bos_token_id: Recording settings.
        ngram_max: Largest n-gram order counted (1 to 3).
        ngram_cap: The n-gram cap (docs/kinds.md): n >= 2 counts are kept for the neurons that can
            have ``k95_n <= ngram_cap``; None: for every neuron.
        top_k: Top activations kept per neuron (0: none; ``top_k.py``).
        window: ``(before, after)`` of the context windows kept around them; None: none.
        n_seqs, n_positions, n_text_positions: Totals seen.
        occurrences: n -> sorted n-gram ids seen at text positions where the n-gram is
            defined, with their occurrences ``o_g`` (§4.2).
        pos_text_seqs: ``[seq_len]`` number of sequences whose token at p is text (§5).
        counts: Layer index -> its ``LayerCounts``.
        token_strings: The tokenizer's string for every token id (for triggers).
        meta: Model identity (name, config hash, weight fingerprint), tokenizer, corpus,
            package version, timings, ...
    """

    layers: list[int] = _role("setting")
    d_mlp: int = _role("setting")
    d_vocab: int = _role("setting")
    seq_len: int = _role("setting")
    ngram_max: int = _role("setting")
    ngram_cap: int | None = _role("cap")
    top_k: int = _role("examples_k")
    window: tuple[int, int] | None = _role("examples_window")
    threshold: float = _role("setting")
    bos_token_id: int = _role("setting")
    n_seqs: int = _role("total")
    n_positions: int = _role("total")
    n_text_positions: int = _role("total")
    occurrences: dict[int, Table] = _role("tables")
    pos_text_seqs: Int[torch.Tensor, " pos"] = _role("counts")
    counts: dict[int, LayerCounts] = _role("layers")
    token_strings: list[str] = _role("header")
    meta: dict[str, Any] = _role("header", default_factory=dict)

    @property
    def tokens_seen(self) -> int:
        """Positions recorded (BOS included)."""
        return self.n_positions

    @property
    def plan(self) -> dict[int, Bool[torch.Tensor, " d_mlp"]] | None:
        """Layer -> the neurons the recording counted n >= 2 for (pass it to ``record(plan=)``
        to record another run the same way); None for an exhaustive recording."""
        if all(self.counts[layer].plan is None for layer in self.layers):
            return None
        full = torch.ones(self.d_mlp, dtype=torch.bool)
        return {
            layer: full if (mask := self.counts[layer].plan) is None else mask
            for layer in self.layers
        }

    def complete(self, layer: int, n: int) -> Bool[torch.Tensor, " d_mlp"]:
        """The neurons of ``layer`` whose order-``n`` counts are complete."""
        state = self.counts[layer].complete
        if n == 1 or state is None:
            return torch.ones(self.d_mlp, dtype=torch.bool)
        return state[n]

    def tail(self, layer: int, n: int) -> Int[torch.Tensor, " d_mlp"]:
        """A lower bound of each incomplete neuron's order-``n`` tail (0 where complete)."""
        state = self.counts[layer].tail
        if n == 1 or state is None:
            return torch.zeros(self.d_mlp, dtype=torch.int64)
        return state[n]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held in memory."""
        return sum(t.numel() * t.element_size() for t in flatten(self).values())

    # ---------------------------------------------------------------- display
    def _summary(self) -> dict[str, str]:
        n = self.ngram_max
        kept = (
            "all"
            if n < 2 or all(self.counts[layer].complete is None for layer in self.layers)
            else f"{sum(int(self.complete(layer, n).sum()) for layer in self.layers):,} of "
            f"{self.d_mlp * len(self.layers):,}"
        )
        return {
            "model": str(self.meta.get("model_name") or "?"),
            "layers": _ranges(self.layers),
            "tokens": f"{self.n_positions:,} ({self.n_seqs:,} x {self.seq_len})",
            "text tokens": f"{self.n_text_positions:,}",
            "d_mlp": f"{self.d_mlp:,}",
            "ngram_max": str(self.ngram_max),
            "ngram_cap": str(self.ngram_cap),
            "top activations kept": str(self.top_k)
            + ("" if self.window is None else f" (context {self.window[0]} + {self.window[1]})"),
            f"neurons with complete {n}-gram counts": kept,
            "size": f"{self.nbytes / 2**20:,.1f} MiB",
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{k.replace(' ', '_')}={v}" for k, v in self._summary().items())
        return f"NeuronProfile({inner})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self._summary().items()
        )
        return f"<table><caption>NeuronProfile</caption>{rows}</table>"

    @property
    def settings(self) -> RecordingSettings:
        """The settings these counts hold (``settings.py``; after a merge, the least cap and
        top-k of the parts; ``histogram`` where every layer kept one)."""
        return RecordingSettings(
            threshold=self.threshold,
            ngram_max=self.ngram_max,
            ngram_cap=self.ngram_cap,
            top_k=self.top_k,
            histogram=all(self.counts[layer].hist is not None for layer in self.layers),
            window=self.window,
            bos_token_id=self.bos_token_id,
        )

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the profile to ``directory`` (safetensors + JSON, no pickle), atomically.

        The files are written into a temporary sibling directory which then replaces
        ``directory``; an existing profile there is replaced only once the new one is complete
        (``profile_format.py``).
        """
        write_profile(self, Path(directory))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, verify: bool = True) -> "NeuronProfile":
        """Read a profile written by ``save`` (of this format or an earlier one).

        Args:
            directory: The profile's directory.
            verify: Check ``counts.safetensors`` against the SHA-256 in ``profile.json``
                (streamed: about a second per GB).

        Raises:
            NeuronKindsError: The profile is missing, damaged (the message names the file), or
                of a format version this package does not read.
        """
        return read_profile(Path(directory), cls, LayerCounts, verify=verify)

    # ---------------------------------------------------------------- merge
    @classmethod
    def merge(
        cls, profiles: "list[NeuronProfile]", *, same_tokens: bool = False
    ) -> "NeuronProfile":
        """One profile equal to a single recording over all the profiles' tokens, exactly.

        Where the parts kept n >= 2 counts for different neurons (different plans), the merged
        profile keeps them for the neurons complete in every part; the others are reported as
        censored or unknown by the kinds, never guessed.

        Args:
            profiles: The parts.
            same_tokens: False (default): the parts were recorded on different token tensors,
                taken in the order given; the merged top activations' ``seq`` index the rows of
                their concatenation (part i's rows shifted by the rows of the parts before it),
                as one recording over ``torch.cat`` of the tokens would. True: the parts recorded
                disjoint rows of one token tensor and their ``seq`` already index it (the ranks
                and checkpoint intervals of one ``nk.record``).

        Raises:
            NeuronKindsError: The profiles differ in model (config or weights), threshold,
                seq_len, layers, n-gram order or cap.
        """
        return merge_profiles(profiles, same_tokens=same_tokens)


def _ranges(values: list[int]) -> str:
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ",".join(map(str, values))
