"""Which model a profile counts: its name, a hash of its shapes, a fingerprint of its weights.

Two checkpoints in folders of the same name, of the same shape but with other weights, must not
merge silently, so a profile's identity is ``config_hash`` (name and shapes) plus
``model_fingerprint``: the SHA-256 of the token embedding ``W_E`` and of every block's ``b_in``,
as the model holds them (dtype included). ``load_opt`` computes it once at load (a streamed
model's blocks are not resident then); other models get it computed from their parameters on
first use. Fingerprints are kept beside the model in a weak dictionary, never on it.
"""

import hashlib
import json
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from tl_neuronkinds.errors import NeuronKindsError

#: The keys of a profile's meta that say which model it counts.
IDENTITY_KEYS = ("config_hash", "model_fingerprint")
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_CONFIG_FIELDS = (
    "model_name",
    "n_layers",
    "d_model",
    "d_mlp",
    "d_vocab",
    "n_ctx",
    "n_heads",
    "act_fn",
)


def model_config_hash(model: Any) -> str:
    """A short hash of what identifies a model's neurons by name and shape."""
    fields = {k: str(getattr(model.cfg, k, None)) for k in _CONFIG_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(w_e: torch.Tensor, b_ins: Iterable[torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of ``W_E`` and each block's ``b_in``, with their dtypes and shapes."""
    digest = hashlib.sha256()
    for tensor in (w_e, *b_ins):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def remember_fingerprint(model: Any, fingerprint: str) -> None:
    """Record the fingerprint ``load_opt`` computed for ``model``."""
    _FINGERPRINTS[model] = fingerprint


def model_fingerprint(model: Any) -> str:
    """The fingerprint of ``model``'s weights (computed once, then remembered)."""
    known = _FINGERPRINTS.get(model)
    if known is not None:
        return known
    b_in = model.b_in
    if b_in.numel() == 0:
        raise NeuronKindsError(
            "this model's blocks are not resident (a streamed model not made by load_opt): "
            "its weights cannot be fingerprinted"
        )
    fingerprint = weights_fingerprint(model.W_E, list(b_in))
    _FINGERPRINTS[model] = fingerprint
    return fingerprint


def model_identity(model: Any) -> dict[str, str]:
    """``model_name``, ``config_hash`` and ``model_fingerprint``, as stored in a profile's meta."""
    return {
        "model_name": str(getattr(model.cfg, "model_name", "")),
        "config_hash": model_config_hash(model),
        "model_fingerprint": model_fingerprint(model),
    }


def check_same_model(model: Any, profile: Any, *, strict: bool = False) -> None:
    """NeuronKindsError unless ``profile`` counts ``model``'s neurons: the same ``d_mlp`` and
    ``d_vocab``, recorded layers the model has, and the identity in ``profile.meta``
    (``IDENTITY_KEYS``: config hash and weights fingerprint) equal to the model's.

    Args:
        model: A HookedTransformer or TransformerBridge.
        profile: A NeuronProfile (its ``d_mlp``, ``d_vocab``, ``layers`` and ``meta``).
        strict: Refuse a profile whose meta lacks an identity key, for results that pair the
            profile's counts with the model's weights (trigger suppression, the report);
            otherwise a missing key is not compared (a view or the contexts of one neuron).
    """
    cfg = model.cfg
    d_mlp = int(cfg.d_mlp)
    if (profile.d_mlp, profile.d_vocab) != (d_mlp, cfg.d_vocab) or max(
        profile.layers, default=-1
    ) >= cfg.n_layers:
        raise NeuronKindsError(
            f"the profile (d_mlp {profile.d_mlp}, d_vocab {profile.d_vocab}, layers "
            f"{profile.layers}) does not fit the model (d_mlp {d_mlp}, d_vocab {cfg.d_vocab}, "
            f"{cfg.n_layers} layers): it was recorded on another model"
        )
    mine = model_identity(model)
    for key in IDENTITY_KEYS:
        theirs = profile.meta.get(key)
        if theirs is None and strict:
            raise NeuronKindsError(
                f"the profile's meta has no {key}, so it cannot be matched to a model: use a "
                "profile recorded on this model by this version (nk.record or nk.NeuronRecorder)"
            )
        if theirs is not None and theirs != mine[key]:
            raise NeuronKindsError(
                f"the profile was recorded on another model: its {key} is {theirs} "
                f"({profile.meta.get('model_name')}), this model's {mine[key]} "
                f"({mine['model_name']})"
            )
