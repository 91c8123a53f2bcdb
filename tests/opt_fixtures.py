"""Tiny OPT checkpoints for tests, written offline in the layouts real checkpoints use.

``make_tiny_opt`` writes a directory that ``tl_neuronkinds.load_opt`` and
``transformers.OPTForCausalLM.from_pretrained`` both read: ``config.json``, the weights
(``model.safetensors``; sharded with ``model.safetensors.index.json``; or
``pytorch_model.bin``) and, when asked, a tokenizer. Every parameter (LayerNorm gains and
biases included) is random, so a conversion that swaps or drops a tensor shows up in the logits.

``hf_reference`` runs the checkpoint through ``transformers`` and returns the logits and every
layer's FFN activation after the ReLU (the input of ``fc2``), the ground truth for
``blocks.{l}.mlp.hook_post``.
"""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

OPT_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared/data/opt-tokenizer"
OPT_VOCAB = 50272  # rows of every OPT embedding matrix (the tokenizer has 50,265 entries)
NO_OPT_TOKENIZER = f"OPT's tokenizer is not at {OPT_TOKENIZER_DIR}"

#: The block layouts of OPT's releases, as ``make_tiny_opt`` keyword arguments: pre-LayerNorm
#: (every size but 350m), OPT-350m's post-LayerNorm blocks with ``project_in`` /
#: ``project_out``, and pre-LayerNorm blocks with the projections.
LAYOUTS = {
    "pre-ln": {},
    "350m-style": {"post_ln": True, "proj_dim": 16},
    "pre-ln-projected": {"proj_dim": 16},
}
#: The ways a checkpoint's weights are stored, as ``make_tiny_opt`` keyword arguments (pre-LN).
STORAGE_LAYOUTS = {
    "safetensors": {},
    "sharded": {"shards": 3},
    "bin": {"fmt": "bin"},
    "bin-sharded": {"fmt": "bin", "shards": 2},
    "legacy-keys": {"legacy_keys": True},
}


def has_opt_tokenizer() -> bool:
    """Whether OPT's real tokenizer is available offline (../shared/data/opt-tokenizer)."""
    return (OPT_TOKENIZER_DIR / "vocab.json").is_file()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built offline with OPT's special tokens and BOS handling.

    Ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 (BOS = EOS, as in OPT), ``<unk>`` 3, then the 256
    byte symbols; no merges. It prepends ``</s>`` once, like OPT's tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=2048,
    )


def opt_tokenizer() -> PreTrainedTokenizerBase:
    """OPT's real tokenizer when present, otherwise ``tiny_tokenizer()``."""
    if has_opt_tokenizer():
        return AutoTokenizer.from_pretrained(str(OPT_TOKENIZER_DIR))
    return tiny_tokenizer()


def tiny_opt_config(
    *,
    n_layers: int = 2,
    d_model: int = 32,
    ffn_dim: int = 64,
    n_heads: int = 4,
    vocab: int = 97,
    n_ctx: int = 64,
    post_ln: bool = False,
    proj_dim: int | None = None,
) -> OPTConfig:
    """An ``OPTConfig`` of the given shape (ReLU, dropout 0, tied embeddings, as OPT)."""
    return OPTConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        ffn_dim=ffn_dim,
        num_attention_heads=n_heads,
        max_position_embeddings=n_ctx,
        do_layer_norm_before=not post_ln,
        word_embed_proj_dim=d_model if proj_dim is None else proj_dim,
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )


def _randomize(model: OPTForCausalLM, seed: int) -> None:
    """Give every parameter a random value: matrices N(0, 0.05), biases N(0, 0.1), gains 1 + N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim >= 2:
                param.copy_(0.05 * noise)
            elif "layer_norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def _state_for_file(model: OPTForCausalLM, legacy_keys: bool) -> dict[str, torch.Tensor]:
    """The state dict as checkpoints store it: tied ``lm_head.weight`` left out."""
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if legacy_keys:
            key = key.removeprefix("model.")
        state[key] = value.detach().clone().contiguous()
    return state


def _write_weights(
    state: dict[str, torch.Tensor], path: Path, fmt: str, shards: int | None
) -> None:
    """Write ``state`` as one file or as ``shards`` files plus an index, as save_pretrained does."""
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    keys = list(state)
    n = 1 if shards is None else shards
    groups = [keys[i::n] for i in range(n)]
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"{stem}.{ext}" if shards is None else f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}"
        part = {k: state[k] for k in group}
        if fmt == "safetensors":
            save_file(part, str(path / name), metadata={"format": "pt"})
        else:
            torch.save(part, path / name)
        weight_map.update(dict.fromkeys(group, name))
    if shards is not None:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def make_tiny_opt(
    path: str | os.PathLike,
    *,
    n_layers: int = 2,
    d_model: int = 32,
    ffn_dim: int = 64,
    n_heads: int = 4,
    vocab: int = 97,
    n_ctx: int = 64,
    post_ln: bool = False,
    proj_dim: int | None = None,
    shards: int | None = None,
    fmt: str = "safetensors",
    legacy_keys: bool = False,
    seed: int = 0,
    tokenizer: bool = True,
) -> Path:
    """Write a random tiny OPT checkpoint to ``path`` and return the directory.

    Args:
        path: Directory to create (may exist).
        n_layers, d_model, ffn_dim, n_heads, vocab, n_ctx: The shape. Use ``vocab=OPT_VOCAB``
            only where a test feeds OPT-tokenized text through the model.
        post_ln: OPT-350m's post-LayerNorm blocks (``do_layer_norm_before=False``).
        proj_dim: ``word_embed_proj_dim`` when it differs from ``d_model`` (OPT-350m: 512 vs
            1024), which adds ``project_in`` / ``project_out``.
        shards: None for one weights file; an int for that many shards plus an index file.
        fmt: ``"safetensors"`` (as ``save_pretrained`` writes) or ``"bin"``
            (``pytorch_model.bin``, the older format).
        legacy_keys: Store keys as ``decoder.…`` (no ``model.`` prefix), as the facebook/opt-*
            hub checkpoints do.
        seed: Seed of the random weights; the same seed gives the same file contents.
        tokenizer: Save a tokenizer (OPT's real one when present, else ``tiny_tokenizer()``).
    """
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_opt_config(
        n_layers=n_layers,
        d_model=d_model,
        ffn_dim=ffn_dim,
        n_heads=n_heads,
        vocab=vocab,
        n_ctx=n_ctx,
        post_ln=post_ln,
        proj_dim=proj_dim,
    )
    torch.manual_seed(seed)
    model = OPTForCausalLM(cfg).eval()
    _randomize(model, seed)
    if fmt == "safetensors" and shards is None and not legacy_keys:
        model.save_pretrained(out)
    else:
        cfg.save_pretrained(out)
        _write_weights(_state_for_file(model, legacy_keys), out, fmt, shards)
    if tokenizer:
        opt_tokenizer().save_pretrained(out)
    return out


def hf_reference(
    path: str | os.PathLike, tokens: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits ``[batch, pos, d_vocab]`` and per-layer post-ReLU FFN activations ``[batch, pos, d_mlp]``
    of ``transformers.OPTForCausalLM`` loaded from ``path`` (float32, CPU)."""
    hf = OPTForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    layers = hf.model.decoder.layers
    posts: list[torch.Tensor] = [torch.empty(0)] * len(layers)

    def grab(index: int):
        def hook(_module, args):
            posts[index] = args[0].reshape(*tokens.shape, -1).clone()

        return hook

    handles = [layer.fc2.register_forward_pre_hook(grab(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            logits = hf(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, posts


def random_tokens(batch: int, pos: int, vocab: int, seed: int = 0, bos: int = 2) -> torch.Tensor:
    """Random ids ``[batch, pos]`` in ``[3, vocab)`` with BOS at position 0."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, vocab, (batch, pos), generator=gen)
    tokens[:, 0] = bos
    return tokens
