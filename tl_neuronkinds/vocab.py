"""Promoted and suppressed tokens of FFN neurons (Voita et al. 2024, §4.4, Figures 5-6).

Neuron (l, i) adds ``act * W_out[l][i]`` to the residual stream. Its *vocabulary projection*
``s`` (``[d_vocab]``) is that row taken to the logits through the linear part of what lies
between (SPEC.md, "Promoted and suppressed tokens"):

- every LayerNorm on the way, as its centring (subtract the row's mean over ``d_model``) and its
  gain (multiply by its weight). Pre-LayerNorm models (every OPT but 350m) have one, the final
  LayerNorm ``ln_final``. In post-LayerNorm OPT-350m the update passes the LayerNorm after the
  FFN of its own block (``ln2``) and both LayerNorms of every later block (``ln1``, ``ln2``),
  and the model has no final one. A LayerNorm's bias and its division by the standard
  deviation do not depend on the neuron (a shift, and a positive factor per position) and are
  left out;
- OPT-350m's ``project_out`` (``d_model`` -> ``word_embed_proj_dim``);
- the unembedding ``W_U``. OPT has no unembedding bias.

``load_opt`` neither folds nor centres (SPEC "Terms"), so the centring and gains are applied
here. A HookedTransformer loaded by TransformerLens with ``fold_ln`` has ``LNPre`` (the gain is
in ``W_U``: centring only) and with ``center_writing_weights`` a centred ``W_out`` (centring it
again changes nothing): both give the same ``s``. ``center_unembed`` shifts each neuron's ``s``
by a constant, which keeps the ranking but moves ``mean_trigger_score``.

The rows pass the LayerNorms and ``project_out`` in float64; scores are then float32 matrix
products with ``W_U`` (float16 / bfloat16 models are widened: float32 accumulation; on CUDA,
TF32 follows ``torch.backends.cuda.matmul.allow_tf32``), on the model's device, a chunk of
neurons at a time. Ranks order tokens by score, ties by increasing token id, so results are
deterministic.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.analysis import Analysis, analysis_of
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.kinds.neurons import token_detectors
from tl_neuronkinds.loading.streaming import loaded_block
from tl_neuronkinds.recording.identity import model_identity
from tl_neuronkinds.recording.profile import IDENTITY_KEYS, NeuronProfile

#: Scores held at once: a chunk of neurons times d_vocab float32 (64 MiB).
CHUNK_ELEMENTS = 1 << 24
DIRECTIONS = ("promoted", "suppressed")
PROJECTION_COLUMNS = ["layer", "neuron", "direction", "rank", "token_id", "token", "score"]
SUPPRESSION_COLUMNS = [
    "layer",
    "neuron",
    "triggers",
    "trigger_ids",
    "mean_trigger_score",
    "trigger_rank_pct",
    "suppresses",
]


@dataclass(frozen=True)
class Readout:
    """The linear map from a layer's FFN update to the logits (see the module docstring).

    Attributes:
        gains: The LayerNorms passed, in order: each centres, then multiplies by its gain
            (``[d_model]``; None where the LayerNorm has none or it is folded into ``W_U``).
        project_out: ``[d_unembed, d_model]``, or None (``d_unembed = d_model``).
        W_U: ``[d_unembed, d_vocab]``, as the model holds it.
    """

    gains: list[torch.Tensor | None]
    project_out: torch.Tensor | None
    W_U: torch.Tensor

    def apply(self, rows: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n d_unembed"]:
        """``rows`` through the LayerNorms' centring and gains and ``project_out`` (float64)."""
        out = rows.to(torch.float64)
        for gain in self.gains:
            out = out - out.mean(dim=-1, keepdim=True)
            if gain is not None:
                out = out * gain.to(out)
        if self.project_out is not None:
            out = out @ self.project_out.to(out).T
        return out


def _is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerBridge around Hugging Face's OPT (``load_opt``'s bridge:
    OPT-350m on TransformerLens 3.9, every OPT on 4.x). A HookedTransformer, or a bridge around
    TransformerLens's own native model, keeps its weights as ``cfg`` describes them."""
    original = getattr(model, "original_model", None)
    return hasattr(getattr(getattr(original, "model", None), "decoder", None), "project_out")


def _is_foreign_bridge(model: Any) -> bool:
    """A bridge around a Hugging Face model that is not OPT (its weights are laid out otherwise)."""
    return hasattr(getattr(model, "original_model", None), "config") and not _is_bridge(model)


def _weight(module: Any) -> torch.Tensor | None:
    """A (bridged) LayerNorm's or Linear's weight (detached), or None where it has none."""
    weight = getattr(getattr(module, "original_component", module), "weight", None)
    return None if weight is None else weight.detach()


def gain(norm: Any) -> torch.Tensor | None:
    """A LayerNorm's gain as the model holds it now (detached), None where it has none (no
    LayerNorm, or ``LNPre`` after ``fold_ln``). A bridge's ``w`` is an alias bound when the
    bridge was built (a streamed block's placeholder, say); the module it wraps holds the
    current ``weight``."""
    if getattr(norm, "original_component", None) is not None:
        return _weight(norm)
    w = getattr(norm, "w", None)
    return None if w is None else w.detach()


def readout(model: Any, layer: int) -> Readout:
    """The ``Readout`` of ``layer``'s FFN updates in ``model``: a HookedTransformer, a bridge of
    TransformerLens's native model (4.x), or an OPT TransformerBridge from ``load_opt``.

    Raises:
        NeuronKindsError: A normalization other than LayerNorm, or a bridge that is not OPT.
    """
    gains: list[torch.Tensor | None] = []
    if _is_foreign_bridge(model):
        raise NeuronKindsError("vocabulary projections of bridges support OPT models only")
    if not _is_bridge(model):
        norm = model.cfg.normalization_type
        if norm not in ("LN", "LNPre", None):
            raise NeuronKindsError(
                f"normalization_type {norm!r} is not supported (OPT uses LayerNorm: 'LN', or "
                "'LNPre' after fold_ln)"
            )
        if norm is not None:
            gains.append(gain(model.ln_final))
        return Readout(gains, None, model.W_U.detach())
    decoder = model.original_model.model.decoder
    if not model.original_model.config.do_layer_norm_before:
        for later in range(layer, model.cfg.n_layers):
            with loaded_block(model, later):
                block = model.blocks[later]
                norms = [block.ln2] if later == layer else [block.ln1, block.ln2]
                gains += [None if (w := _weight(n)) is None else w.clone() for n in norms]
    if decoder.final_layer_norm is not None:
        gains.append(_weight(decoder.final_layer_norm))
    project = None if decoder.project_out is None else _weight(decoder.project_out)
    return Readout(gains, project, model.W_U.detach())


def _check_layer(model: Any, layer: object) -> int:
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise NeuronKindsError(f"layer must be an integer, got {layer!r}")
    if not 0 <= int(layer) < n_layers:
        raise NeuronKindsError(f"layer {layer} out of range 0..{n_layers - 1}")
    return int(layer)


def _d_mlp(model: Any) -> int:
    """Neurons per layer (``load_opt`` sets a bridge's ``cfg.d_mlp`` to OPT's ``ffn_dim``)."""
    return int(model.cfg.d_mlp)


def _check_neurons(model: Any, neurons: object) -> Int[torch.Tensor, " n"]:
    d_mlp = _d_mlp(model)
    if neurons is None:
        return torch.arange(d_mlp)
    if isinstance(neurons, int | np.integer) and not isinstance(neurons, bool):
        neurons = [neurons]
    try:
        ids = (
            neurons.detach().cpu()
            if isinstance(neurons, torch.Tensor)
            else torch.tensor(np.asarray(neurons))  # a copy: read-only arrays are fine
        )
    except (TypeError, ValueError) as err:
        raise NeuronKindsError(f"neurons must be integers, got {neurons!r}") from err
    integer = not ids.dtype.is_floating_point and not ids.dtype.is_complex
    if ids.ndim != 1 or not (ids.numel() == 0 or (integer and ids.dtype != torch.bool)):
        raise NeuronKindsError(f"neurons must be a 1-D sequence of integers, got {neurons!r}")
    ids = ids.to(torch.int64)
    bad = ids[(ids < 0) | (ids >= d_mlp)]
    if bad.numel():
        raise NeuronKindsError(f"neuron {int(bad[0])} out of range 0..{d_mlp - 1}")
    return ids


def _w_out_rows(
    model: Any, layer: int, neurons: Int[torch.Tensor, " n"]
) -> Float[torch.Tensor, "n d_model"]:
    """Rows ``neurons`` of ``W_out[layer]`` (a copy; a streamed model loads that block only)."""
    with loaded_block(model, layer):
        w_out = model.blocks[layer].mlp.W_out.detach()
        return w_out[neurons.to(w_out.device)].clone()


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in ``tensor``: a finite sum proves it in one cheap reduction (a NaN or
    an infinity would make it NaN or infinite); otherwise every element is checked. The scores
    are checked rather than ``W_U``: as cheap for a whole layer, and a view of one neuron does
    not read all of ``W_U`` again."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def score_chunks(
    model: Any, layer: int, neurons: Int[torch.Tensor, " n"]
) -> Iterator[tuple[slice, Float[torch.Tensor, "chunk d_vocab"]]]:
    """The float32 scores of ``neurons`` of ``layer``, a chunk of neurons at a time, on the
    model's device: ``(positions in neurons, scores)`` pairs (see ``vocab_scores``). Each
    chunk's scores are written into one buffer: they are valid until the next chunk."""
    with loaded_block(model, layer):  # one load of the block for both
        rows = _w_out_rows(model, layer, neurons)
        out = readout(model, layer)
    unembed = out.W_U.to(torch.float32)
    step = max(1, min(rows.shape[0], CHUNK_ELEMENTS // unembed.shape[1]))
    buffer = torch.empty(step, unembed.shape[1], dtype=torch.float32, device=unembed.device)
    for start in range(0, rows.shape[0], step):
        part = slice(start, min(start + step, rows.shape[0]))
        directions = out.apply(rows[part]).to(unembed)
        if not _finite(directions):
            raise NeuronKindsError(f"W_out[{layer}] holds NaN or infinite values")
        scores = buffer[: part.stop - start]
        torch.mm(directions, unembed, out=scores)  # a reused buffer: no page faults per chunk
        if not _finite(scores):  # a NaN or infinity in W_U reaches every row's score of its token
            raise NeuronKindsError(
                f"W_U holds NaN or infinite values (or the scores of W_out[{layer}] overflow "
                "float32)"
            )
        yield part, scores


def vocab_scores(
    model: Any, layer: int, neurons: Sequence[int] | torch.Tensor | np.ndarray | None = None
) -> Float[torch.Tensor, "n d_vocab"]:
    """Vocabulary projections ``s`` of neurons of one layer (§4.4; see the module docstring).

    Args:
        model: A HookedTransformer or TransformerBridge of OPT (``load_opt``; streamed models
            load block ``layer`` only, and for post-LayerNorm OPT-350m the LayerNorm gains of
            the later blocks).
        layer: The layer.
        neurons: Neuron indices (default: all ``d_mlp``), in the order wanted.

    Returns:
        ``[len(neurons), d_vocab]`` float32 on the CPU: row j is ``s`` of ``neurons[j]``.

    Raises:
        NeuronKindsError: ``layer`` or a neuron out of range, non-finite weights.
    """
    layer = _check_layer(model, layer)
    ids = _check_neurons(model, neurons)
    out = torch.empty(ids.numel(), model.cfg.d_vocab, dtype=torch.float32)
    for part, scores in score_chunks(model, layer, ids):
        out[part] = scores.cpu()
    return out


def _ranked(
    scores: Float[torch.Tensor, "n d_vocab"], k: int, largest: bool
) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
    """The ``k`` largest (or smallest) scores of each row and their token ids, best first, ties
    by increasing id: the first ``k`` of a stable sort of the row, without sorting the row.

    ``topk(k + 1)`` finds each row's top k; where its (k+1)-th value is not tied with its k-th,
    that set is exact and only its order is settled (by id, then stably by score); rows with a
    tie across the k-th place are stably sorted whole.
    """
    values, ids = scores.topk(min(k + 1, scores.shape[1]), dim=1, largest=largest, sorted=True)
    if k < scores.shape[1]:
        tied = values[:, k] == values[:, k - 1]
        values, ids = values[:, :k], ids[:, :k]
    else:  # every token: the set is exact
        tied = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    ids, by_id = ids.sort(dim=1)
    values = values.gather(1, by_id)
    values, by_score = values.sort(dim=1, descending=largest, stable=True)
    ids = ids.gather(1, by_score)
    rows = tied.nonzero().flatten()
    if rows.numel():
        full, order = scores[rows].sort(dim=1, descending=largest, stable=True)
        values[rows], ids[rows] = full[:, :k], order[:, :k]
    return values, ids


def _token_strings(tokenizer: Any, ids: Int[np.ndarray, " m"]) -> dict[int, str]:
    """Each id's text as the tokenizer decodes it; ``<id>`` for ids it does not have (as
    ``recording.identity.token_strings``)."""
    unique = [int(i) for i in np.unique(ids)]
    n = 0 if tokenizer is None else len(tokenizer)
    known = [i for i in unique if i < n]
    decoded = tokenizer.batch_decode([[i] for i in known]) if known else []
    strings = dict(zip(known, decoded, strict=True))
    return {i: strings.get(i, f"<{i}>") for i in unique}


def vocab_projection(
    model: Any,
    layer: int,
    neurons: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    k: int = 10,
) -> pd.DataFrame:
    """Each neuron's promoted and suppressed tokens: the top-k and bottom-k of ``s`` (§4.4,
    Figure 5).

    Args:
        model: A HookedTransformer or TransformerBridge of OPT (see ``vocab_scores``).
        layer: The layer.
        neurons: Neuron indices (default: all ``d_mlp``, in chunks on the model's device).
        k: Tokens per direction (1..d_vocab; the paper's Figure 5 shows the top few).

    Returns:
        One row per (neuron, direction, rank), neurons in the order given, ``"promoted"`` then
        ``"suppressed"``: ``layer``, ``neuron``, ``direction``, ``rank`` (0 = strongest: the
        largest score promoted, the smallest suppressed; equal scores by increasing token id),
        ``token_id``, ``token`` (the tokenizer's string; ``<id>`` without one) and ``score``
        (float32 ``s``).

    Raises:
        NeuronKindsError: ``layer`` or a neuron out of range, ``k`` out of 1..d_vocab.
    """
    layer = _check_layer(model, layer)
    ids = _check_neurons(model, neurons)
    d_vocab = model.cfg.d_vocab
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= d_vocab:
        raise NeuronKindsError(f"k must be an integer in 1..{d_vocab}, got {k!r}")
    k = int(k)
    values = torch.empty(ids.numel(), 2, k, dtype=torch.float32)
    tokens = torch.empty(ids.numel(), 2, k, dtype=torch.int64)
    for part, scores in score_chunks(model, layer, ids):
        for d, largest in enumerate((True, False)):
            v, t = _ranked(scores, k, largest)
            values[part, d], tokens[part, d] = v.cpu(), t.cpu()
    token_ids = tokens.numpy().reshape(-1)
    strings = _token_strings(getattr(model, "tokenizer", None), token_ids)
    n = ids.numel()
    table = pd.DataFrame(
        {
            "layer": np.full(n * 2 * k, layer, dtype=np.int64),
            "neuron": np.repeat(ids.numpy(), 2 * k),
            "direction": pd.array(np.tile(np.repeat(DIRECTIONS, k), n), dtype="string"),
            "rank": np.tile(np.arange(k), 2 * n),
            "token_id": token_ids,
            "token": pd.array([strings[int(t)] for t in token_ids], dtype="string"),
            "score": values.numpy().reshape(-1),
        }
    )
    return table[PROJECTION_COLUMNS]


def _check_identity(model: Any, profile: NeuronProfile) -> None:
    """The profile must count this model's neurons: same shapes and identity (its meta)."""
    cfg, d_mlp = model.cfg, _d_mlp(model)
    if (profile.d_mlp, profile.d_vocab) != (d_mlp, cfg.d_vocab) or max(
        profile.layers, default=-1
    ) >= cfg.n_layers:
        raise NeuronKindsError(
            f"the profile (d_mlp {profile.d_mlp}, d_vocab {profile.d_vocab}, layers "
            f"{profile.layers}) does not fit the model (d_mlp {d_mlp}, d_vocab "
            f"{cfg.d_vocab}, {cfg.n_layers} layers)"
        )
    identity = model_identity(model)
    for key in IDENTITY_KEYS:
        theirs = profile.meta.get(key)
        if theirs is None:
            raise NeuronKindsError(
                f"the profile's meta has no {key}, so it cannot be matched to the model: use a "
                "profile recorded on this model (nk.record or nk.NeuronRecorder)"
            )
        if theirs != identity[key]:
            raise NeuronKindsError(
                f"the profile was recorded on another model: its {key} is {theirs}, this "
                f"model's is {identity[key]}"
            )


def trigger_suppression(
    model: Any,
    profile: NeuronProfile | Analysis,
    cutoffs: Cutoffs | None = None,
    **overrides: object,
) -> pd.DataFrame:
    """Do token detectors suppress the tokens that trigger them? (§4.4, Figure 6)

    The token detectors (n = 1, §4.2) and their triggers come from ``token_detectors`` of the
    profile; each trigger t is looked up in the detector's vocabulary projection ``s``
    (``vocab_scores``). A detector *suppresses its triggers* where the mean of ``s_t`` over its
    triggers is negative (SPEC.md; §4.4 finds this for over 80% of OPT-66b's token detectors).

    Args:
        model: The model the profile was recorded on (a HookedTransformer or TransformerBridge
            of OPT); checked against the profile's ``config_hash`` and ``model_fingerprint``.
        profile: A NeuronProfile, or an ``Analysis`` of one.
        cutoffs, **overrides: The cut-offs of the detector test (``Cutoffs``; ``k_max``,
            ``coverage`` and ``min_count``, as in ``token_detectors``).

    Returns:
        One row per token detector, by layer then neuron: ``layer``, ``neuron``, ``triggers``
        (token strings) and ``trigger_ids`` (lists, by decreasing activation count, as in
        ``token_detectors``), ``mean_trigger_score`` (float64 mean of the float32 ``s_t``),
        ``trigger_rank_pct`` (per trigger, ``100 * |{v : s_v < s_t}| / d_vocab``: the
        percentage of the vocabulary scored strictly below it; near 0 the most suppressed
        tokens, near 100 the most promoted) and ``suppresses`` (``mean_trigger_score < 0``).

    Raises:
        NeuronKindsError: The profile was recorded on another model (or does not say which).
    """
    analysis = analysis_of(profile, cutoffs, overrides)
    _check_identity(model, analysis.profile)
    detectors = token_detectors(analysis)
    detectors = detectors[detectors["detector"].fillna(False).to_numpy(dtype=bool)]
    rows = []
    for layer, group in detectors.groupby("layer", sort=True):
        neurons = torch.tensor(group["neuron"].to_numpy(dtype=np.int64))
        triggers = list(group["trigger_ids"])
        for part, scores in score_chunks(model, int(layer), neurons):
            for j in range(part.start, part.stop):
                row = scores[j - part.start]
                ids = torch.as_tensor(triggers[j], dtype=torch.int64, device=row.device)
                s_t = row[ids]
                below = (row[None, :] < s_t[:, None]).sum(dim=1)
                mean = float(s_t.to(torch.float64).mean())
                rows.append(
                    {
                        "layer": int(layer),
                        "neuron": int(neurons[j]),
                        "triggers": list(group["triggers"].iloc[j]),
                        "trigger_ids": [int(t) for t in triggers[j]],
                        "mean_trigger_score": mean,
                        "trigger_rank_pct": (100.0 * below.cpu().double() / row.numel()).tolist(),
                        "suppresses": mean < 0,
                    }
                )
    table = pd.DataFrame(rows, columns=SUPPRESSION_COLUMNS)
    return table.astype(
        {"layer": np.int64, "neuron": np.int64, "mean_trigger_score": float, "suppresses": bool}
    )


def suppression_by_layer(table: pd.DataFrame, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Per layer, how many token detectors suppress their triggers (Figure 6).

    Args:
        table: ``trigger_suppression``'s output.
        layers: The layers to report (default: those in ``table``); pass ``profile.layers`` to
            list layers without token detectors too.

    Returns:
        One row per layer: ``layer``, ``token_detectors``, ``suppressing`` (how many suppress
        their triggers) and ``suppressing_fraction`` (their share; NaN without detectors).
    """
    missing = [c for c in ("layer", "suppresses") if c not in table.columns]
    if missing:
        raise NeuronKindsError(f"expected trigger_suppression's table; it lacks {missing}")
    wanted = sorted(set(table["layer"].tolist())) if layers is None else [int(x) for x in layers]
    grouped = table.groupby("layer")["suppresses"]
    counts = grouped.size().reindex(wanted, fill_value=0)
    suppressing = grouped.sum().reindex(wanted, fill_value=0)
    return pd.DataFrame(
        {
            "layer": np.asarray(wanted, dtype=np.int64),
            "token_detectors": counts.to_numpy(dtype=np.int64),
            "suppressing": suppressing.to_numpy(dtype=np.int64),
            "suppressing_fraction": np.divide(
                suppressing.to_numpy(dtype=float),
                counts.to_numpy(dtype=float),
                out=np.full(len(wanted), np.nan),
                where=counts.to_numpy() > 0,
            ),
        }
    )
