"""``load_opt``: an OPT checkpoint as a HookedTransformer or a TransformerBridge.

Everything comes from the checkpoint directory (``config.json``, the weights, the tokenizer);
nothing reaches the network unless the user names a hub id that is not cached. The model is
built on the meta device and its parameters are then set from the checkpoint's tensors, so
loading never holds two copies of the weights, and an offloaded model never holds its blocks
(``streaming.py``).

Which class comes back: on TransformerLens 3.9, ``HookedTransformer`` whenever it computes
exactly what the checkpoint computes (every OPT size but 350m); otherwise (post-LayerNorm
blocks, ``project_in`` / ``project_out``: OPT-350m), and for every size on TransformerLens 4.x
(which has no HookedTransformer), a ``TransformerBridge`` around
``transformers.OPTForCausalLM``, with the same hook names (``blocks.{l}.mlp.hook_post`` is the
input of ``fc2``: the FFN's activation after ReLU).
"""

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM, PreTrainedTokenizerBase

from tl_neuronkinds.data import shared_tokenizer_dir
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading.checkpoint import Checkpoint, read_config, resolve_checkpoint_dir
from tl_neuronkinds.loading.convert import (
    convert_block,
    convert_globals,
    expected_shapes,
    hooked_config,
    hooked_transformer_can_represent,
    opt_config,
    validate_shapes,
)
from tl_neuronkinds.loading.identity import remember_fingerprint, weights_fingerprint
from tl_neuronkinds.loading.streaming import (
    OFFLOAD_MODES,
    BlockStreamer,
    HostFn,
    attach_streamer,
)
from tl_neuronkinds.loading.tl_adapters import has_hooked_transformer, keep_post_ln_hook_shapes

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
_BLOCK_PREFIX = "decoder.layers.{layer}."


def load_opt(
    name_or_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    offload: str | None = None,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
) -> Any:
    """Load an OPT checkpoint for TransformerLens, its weights as the checkpoint has them.

    No LayerNorm folding and no centring (docs/kinds.md, "Terms"): hidden states are the model's
    own and ``log_softmax(logits)`` equals ``transformers.OPTForCausalLM``'s on the same checkpoint.

    Args:
        name_or_dir: A ``save_pretrained`` directory (``model.safetensors``, sharded safetensors
            with an index, or ``pytorch_model.bin``), or a hub id such as ``facebook/opt-125m``
            (downloaded when online; from the local cache under ``HF_HUB_OFFLINE=1``).
        device: Where the model runs (default: ``"cuda"`` when available, else ``"cpu"``).
        dtype: ``torch.float32`` (default), ``float16``, ``bfloat16`` or ``float64`` (or the
            name of one).
        offload: None (all weights on ``device``), ``"cpu"`` (blocks in pinned CPU memory,
            streamed one by one) or ``"disk"`` (blocks read from the safetensors files on
            demand; needs safetensors weights). See ``tl_neuronkinds.loading.streaming``.
        tokenizer: A tokenizer or a directory holding one; default: the checkpoint's own.
            Without one (no tokenizer files), the model loads with ``tokenizer=None`` and a
            warning: it then takes token ids, not strings.

    Returns:
        A ``HookedTransformer``, or for post-LayerNorm / projected checkpoints (OPT-350m) and on
        TransformerLens 4.x a ``TransformerBridge`` (its ``cfg.d_mlp`` set to ``ffn_dim``). ``to_tokens(text)`` prepends OPT's BOS (``</s>``, id 2) once.
        ``offload_mode(model)`` tells whether it streams.

    Raises:
        NeuronKindsError: A missing directory or ``config.json``, a config that is not OPT,
            missing / unexpected / mis-shaped tensors, a corrupt weights file, an unknown
            ``offload``, ``dtype`` or ``device``, or ``offload="disk"`` with ``.bin`` weights.
    """
    dtype = _check_dtype(dtype)
    if offload is not None and offload not in OFFLOAD_MODES:
        raise NeuronKindsError(f"offload must be None, 'cpu' or 'disk', got {offload!r}")
    target = _check_device(device)
    directory, model_name = resolve_checkpoint_dir(name_or_dir)
    cfg = opt_config(read_config(directory), str(directory / "config.json"))
    if cfg.activation_function != "relu":
        warnings.warn(
            f"{directory}: activation_function is {cfg.activation_function!r}, not OPT's 'relu': "
            "a neuron counts as active where its activation is > the recording threshold (0 by "
            "default), which for this activation is not 'the ReLU let it through' "
            "(docs/kinds.md, Terms)",
            stacklevel=2,
        )
    checkpoint = Checkpoint(directory)
    shapes, optional = expected_shapes(cfg)
    validate_shapes(checkpoint.shapes, shapes, optional, str(directory))
    keys = _keys(shapes, optional)
    if offload == "disk" and checkpoint.format != "safetensors":
        raise NeuronKindsError(
            f"{directory}: offload='disk' reads safetensors files, but this checkpoint has "
            "pytorch_model.bin; use offload='cpu', or convert it once with "
            "OPTForCausalLM.from_pretrained(dir).save_pretrained(new_dir)"
        )
    if not cfg.do_layer_norm_before and cfg.word_embed_proj_dim == cfg.hidden_size:
        raise NeuronKindsError(
            f"{directory}: post-LayerNorm blocks without project_in/project_out "
            "(do_layer_norm_before=false, word_embed_proj_dim == hidden_size) are not an OPT "
            "release and TransformerLens's OPT bridge cannot map them"
        )
    tok = _load_tokenizer(directory, tokenizer)
    hooked = has_hooked_transformer() and hooked_transformer_can_represent(cfg)
    build = _build_hooked if hooked else _build_bridge
    return build(checkpoint, keys, cfg, model_name, target, dtype, offload, tok)


def _check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    raise NeuronKindsError(
        f"dtype must be one of float32, float16, bfloat16, float64, got {dtype!r}"
    )


def _check_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise NeuronKindsError(f"device {device!r} is not a torch device: {err}") from err
    if target.type == "cuda" and not torch.cuda.is_available():
        raise NeuronKindsError(f"device {device!r} asked for, but CUDA is not available")
    return target


def _load_tokenizer(
    directory: Path, tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None
) -> PreTrainedTokenizerBase | None:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if tokenizer is None:  # the embedded models share one tokenizer folder beside them
        tokenizer = shared_tokenizer_dir(directory)
    source = Path(tokenizer) if tokenizer is not None else directory
    if tokenizer is None and not any((directory / f).is_file() for f in _TOKENIZER_FILES):
        warnings.warn(
            f"{directory} has no tokenizer files: the model is loaded with tokenizer=None and "
            "takes token ids only (pass tokenizer=... to load_opt to attach one)",
            stacklevel=3,
        )
        return None
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except Exception as err:  # tokenizer loading raises many types
        raise NeuronKindsError(f"cannot load the tokenizer from {source}: {err}") from err


def _read_block(checkpoint: Checkpoint, keys: list[str], layer: int) -> dict[str, torch.Tensor]:
    prefix = _BLOCK_PREFIX.format(layer=layer)
    tensors = checkpoint.read(prefix + k for k in keys)
    return {k[len(prefix) :]: v for k, v in tensors.items()}


def _keys(shapes: dict[str, tuple[int, ...]], optional: set[str]) -> tuple[list[str], list[str]]:
    """(one block's keys relative to its prefix, the keys outside the blocks)."""
    first = _BLOCK_PREFIX.format(layer=0)
    block = [k[len(first) :] for k in shapes if k.startswith(first)]
    outside = [k for k in shapes if not k.startswith("decoder.layers.") and k not in optional]
    return block, outside


def _own(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A contiguous copy on ``device`` that shares nothing with the checkpoint's mapped files."""
    return tensor.to(device, memory_format=torch.contiguous_format, copy=True)


def _host_fn(offload: str, n_layers: int, block: HostFn, device: torch.device) -> HostFn:
    """Where an offloaded block's tensors come from: copies in CPU memory made now (pinned for a
    CUDA device), or the files (``Checkpoint.read`` maps them; pages are read when touched)."""
    if offload == "disk":
        return block
    pin = device.type == "cuda" and torch.cuda.is_available()
    store = []
    for layer in range(n_layers):
        tensors = block(layer)
        # Contiguous pinned memory: a non-contiguous source would make the copy to the GPU go
        # through a pageable temporary, synchronous with the host, and the prefetch would stall.
        store.append(
            {k: v.contiguous().pin_memory() if pin else v.clone() for k, v in tensors.items()}
        )
    return store.__getitem__


def _placeholders(
    module: nn.Module, names: list[str], device: torch.device, dtype: torch.dtype
) -> dict[str, tuple[nn.Module, str]]:
    """Put empty parameters on ``device`` in place of ``module``'s ``names``; return their slots."""
    slots = {}
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        empty = torch.empty(0, dtype=dtype, device=device)
        setattr(owner, leaf, nn.Parameter(empty, requires_grad=False))
        slots[name] = (owner, leaf)
    return slots


def _materialize_buffers(model: nn.Module, device: torch.device) -> None:
    """Give meta buffers their values: TransformerLens attention's ``mask`` and ``IGNORE``."""
    values = {
        "mask": lambda: torch.empty((0, 0), dtype=torch.bool, device=device),
        "IGNORE": lambda: torch.tensor(-torch.inf, device=device),
    }
    for module_name, module in model.named_modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name not in values:
                raise NeuronKindsError(
                    f"internal: unknown TransformerLens buffer {module_name}.{name}; "
                    "this transformer-lens version is not supported"
                )
            setattr(module, name, values[name]())  # an existing buffer: stays one, as it was


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set ``model``'s parameters to ``state``'s tensors (no copy); every meta tensor must go."""
    result = model.load_state_dict(state, strict=False, assign=True)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if result.unexpected_keys or meta:
        raise NeuronKindsError(
            f"internal: converted weights do not fit the model: unexpected "
            f"{result.unexpected_keys[:5]}, unloaded {meta[:5]}"
        )


def _build_hooked(
    checkpoint: Checkpoint,
    keys: tuple[list[str], list[str]],
    cfg: OPTConfig,
    model_name: str,
    device: torch.device,
    dtype: torch.dtype,
    offload: str | None,
    tok: PreTrainedTokenizerBase | None,
) -> Any:
    from transformer_lens import HookedTransformer

    block_keys, outside_keys = keys
    n_heads = cfg.num_attention_heads

    def block(layer: int) -> dict[str, torch.Tensor]:
        hf = _read_block(checkpoint, block_keys, layer)
        return convert_block(hf, n_heads, dtype)

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", DeprecationWarning)  # "HookedTransformer is deprecated"
        model = HookedTransformer(
            hooked_config(checkpoint.directory, cfg, model_name, device, dtype),
            move_to_device=False,
        )
    _materialize_buffers(model, device)
    state = convert_globals(checkpoint.read(outside_keys), cfg.vocab_size, dtype)
    state = {k: _own(v, device) for k, v in state.items()}
    if offload is None:
        for layer in range(cfg.num_hidden_layers):
            converted = block(layer).items()
            state.update({f"blocks.{layer}.{k}": _own(v, device) for k, v in converted})
    else:
        names = [n for n, _ in model.blocks[0].named_parameters()]
        params = [_placeholders(b, names, device, dtype) for b in model.blocks]
        host = _host_fn(offload, cfg.num_hidden_layers, block, device)
        attach_streamer(model, BlockStreamer(offload, list(model.blocks), params, host, model))
    _assign(model, state)
    if tok is not None:
        model.set_tokenizer(tok)
    _remember_fingerprint(model, checkpoint, cfg.num_hidden_layers, dtype)
    return model.eval()


def _build_bridge(
    checkpoint: Checkpoint,
    keys: tuple[list[str], list[str]],
    cfg: OPTConfig,
    model_name: str,
    device: torch.device,
    dtype: torch.dtype,
    offload: str | None,
    tok: PreTrainedTokenizerBase | None,
) -> Any:
    from transformer_lens.model_bridge.sources.transformers import boot

    block_keys, outside_keys = keys

    def block(layer: int) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) for k, v in _read_block(checkpoint, block_keys, layer).items()}

    with torch.device("meta"):
        hf = OPTForCausalLM(cfg)
    hf.set_attn_implementation("eager")  # as TransformerLens's boot: attention-pattern hooks
    state = {
        f"model.{k}" if k.startswith("decoder.") else k: _own(v.to(dtype), device)
        for k, v in checkpoint.read(outside_keys).items()
    }
    layers = list(hf.model.decoder.layers)
    if offload is None:
        for layer in range(cfg.num_hidden_layers):
            prefix = "model." + _BLOCK_PREFIX.format(layer=layer)
            state.update({prefix + k: _own(v, device) for k, v in block(layer).items()})
    params = (
        []
        if offload is None
        else [_placeholders(layer, block_keys, device, dtype) for layer in layers]
    )
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.decoder.embed_tokens.weight"]
    _assign(hf, state)
    if cfg.tie_word_embeddings:
        hf.lm_head.weight = hf.model.decoder.embed_tokens.weight
    hf.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = boot(
            str(checkpoint.directory), hf_model=hf, device=device, dtype=dtype, tokenizer=tok
        )
    bridge.cfg.model_name = model_name
    # TransformerLens 4 derives d_mlp as 4 * d_model for OPT; the checkpoint says ffn_dim (equal
    # in every OPT release, not in every checkpoint of OPT's layout).
    bridge.cfg.d_mlp = cfg.ffn_dim
    if tok is None:
        bridge.tokenizer = None
    if not cfg.do_layer_norm_before:
        keep_post_ln_hook_shapes(bridge)
    if offload is not None:
        host = _host_fn(offload, cfg.num_hidden_layers, block, device)
        attach_streamer(bridge, BlockStreamer(offload, list(bridge.blocks), params, host, bridge))
    _remember_fingerprint(bridge, checkpoint, cfg.num_hidden_layers, dtype)
    return bridge.eval()


def _remember_fingerprint(
    model: Any, checkpoint: Checkpoint, n_layers: int, dtype: torch.dtype
) -> None:
    """Fingerprint the weights now, from the checkpoint's ``fc1.bias`` (= each block's ``b_in``),
    since a streamed model's blocks are not resident later (``loading/identity.py``)."""
    keys = [_BLOCK_PREFIX.format(layer=layer) + "fc1.bias" for layer in range(n_layers)]
    biases = checkpoint.read(keys)
    remember_fingerprint(model, weights_fingerprint(model.W_E, [biases[k].to(dtype) for k in keys]))
