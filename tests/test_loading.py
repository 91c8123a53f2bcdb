"""load_opt: OPT checkpoints into TransformerLens, equal to transformers.OPTForCausalLM."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from opt_fixtures import LAYOUTS as BLOCK_LAYOUTS
from opt_fixtures import (
    NO_OPT_TOKENIZER,
    OPT_TOKENIZER_DIR,
    STORAGE_LAYOUTS,
    has_opt_tokenizer,
    hf_reference,
    make_tiny_opt,
    random_tokens,
    tiny_opt_config,
)
from safetensors.torch import load_file, save_file
from tl_models import TL4, is_bridge
from transformers import AutoTokenizer, OPTForCausalLM

from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.loading import load_opt, offload_mode
from tl_neuronkinds.loading.convert import convert_block, convert_globals, hooked_config

VOCAB = 97
TOKENS = random_tokens(3, 11, VOCAB, seed=1)
NO_TOKENIZER = "ignore:.*has no tokenizer files"

#: Every way of storing the weights (pre-LN blocks), then the other block layouts.
LAYOUTS = STORAGE_LAYOUTS | {name: kwargs for name, kwargs in BLOCK_LAYOUTS.items() if kwargs}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("opt")
    return {
        name: make_tiny_opt(root / name, tokenizer=False, seed=3, **kwargs)
        for name, kwargs in LAYOUTS.items()
    }


@pytest.fixture(scope="session")
def references(checkpoints: dict[str, Path]) -> dict[str, tuple]:
    return {name: hf_reference(path, TOKENS) for name, path in checkpoints.items()}


@pytest.mark.filterwarnings(NO_TOKENIZER)
@pytest.mark.parametrize("offload", [None, "cpu", "disk"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_and_hook_post_equal_transformers(layout, offload, checkpoints, references):
    if offload == "disk" and layout.startswith("bin"):
        pytest.skip("disk offload reads safetensors only (tested to raise below)")
    model = load_opt(checkpoints[layout], device="cpu", offload=offload)
    # TransformerLens 4 has no HookedTransformer: every layout loads as a bridge there.
    assert is_bridge(model) == (TL4 or layout in ("350m-style", "pre-ln-projected"))
    assert offload_mode(model) == offload
    ref_logits, ref_posts = references[layout]
    with torch.no_grad():
        logits, cache = model.run_with_cache(TOKENS, names_filter=lambda n: "hook_post" in n)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        logits.log_softmax(-1), ref_logits.log_softmax(-1), atol=1e-4, rtol=0
    )
    for layer, ref_post in enumerate(ref_posts):
        post = cache[f"blocks.{layer}.mlp.hook_post"]
        assert post.shape == ref_post.shape
        torch.testing.assert_close(post, ref_post, atol=1e-4, rtol=0)
        assert (post >= 0).all()  # after the ReLU


@pytest.mark.skipif(TL4, reason="TransformerLens 4 has no HookedTransformer conversion")
def test_per_block_conversion_is_transformer_lens_conversion(checkpoints):
    from transformer_lens.pretrained.weight_conversions.opt import convert_opt_weights

    hf = OPTForCausalLM.from_pretrained(str(checkpoints["safetensors"])).eval()
    path = checkpoints["safetensors"]
    cfg = hooked_config(path, hf.config, "tiny", torch.device("cpu"), torch.float32)
    expected = convert_opt_weights(hf, cfg)
    state = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    ours = convert_globals(state, cfg.d_vocab, torch.float32)
    for layer in range(cfg.n_layers):
        prefix = f"decoder.layers.{layer}."
        block = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        converted = convert_block(block, cfg.n_heads, torch.float32)
        ours.update({f"blocks.{layer}.{k}": v for k, v in converted.items()})
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.filterwarnings(NO_TOKENIZER)
def test_config_mirrors_transformer_lens_opt(checkpoints):
    model = load_opt(checkpoints["safetensors"], device="cpu")
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (32, 4, 8, 64)
    assert (cfg.n_layers, cfg.d_vocab, cfg.n_ctx) == (2, VOCAB, 64)
    assert cfg.act_fn == "relu" and cfg.eps == 1e-5
    assert cfg.normalization_type == "LN" and cfg.positional_embedding_type == "standard"
    architecture = cfg.architecture if TL4 else cfg.original_architecture
    assert architecture == "OPTForCausalLM" and cfg.default_prepend_bos
    assert cfg.model_name == "safetensors"
    assert model.W_pos.shape == (64, 32)  # OPT's two offset rows dropped


def _assert_one_bos(model, tokenizer) -> None:
    text = "Hello, I'm am conscious and"
    tokens = model.to_tokens(text)[0].tolist()
    assert tokens == tokenizer(text)["input_ids"]
    assert tokens[0] == 2 and tokens.count(2) == 1
    batch = model.to_tokens(["a b", "Hello there world"])
    assert (batch[:, 0] == 2).all() and (batch[:, 1] != 2).all()


@pytest.mark.skipif(not has_opt_tokenizer(), reason=NO_OPT_TOKENIZER)
@pytest.mark.parametrize("post_ln", [False, True])
def test_opt_tokenizer_prepends_bos_once(tmp_path, post_ln):
    path = make_tiny_opt(tmp_path, post_ln=post_ln, proj_dim=16 if post_ln else None)
    model = load_opt(path, device="cpu")
    assert model.tokenizer is not None
    assert model.to_tokens("Hello, I'm am conscious and")[0].tolist() == [
        2, 31414, 6, 38, 437, 524, 13316, 8,
    ]  # fmt: skip
    _assert_one_bos(model, AutoTokenizer.from_pretrained(str(OPT_TOKENIZER_DIR)))


def test_fallback_tokenizer_prepends_bos_once(tmp_path, monkeypatch):
    import opt_fixtures

    monkeypatch.setattr(opt_fixtures, "has_opt_tokenizer", lambda: False)
    path = make_tiny_opt(tmp_path)
    model = load_opt(path, device="cpu")
    _assert_one_bos(model, AutoTokenizer.from_pretrained(str(path)))


def test_no_tokenizer_files_warns_and_loads_without(checkpoints, tmp_path):
    with pytest.warns(UserWarning, match="no tokenizer files"):
        model = load_opt(checkpoints["safetensors"], device="cpu")
    assert model.tokenizer is None
    tok_dir = tmp_path / "tok"
    from opt_fixtures import opt_tokenizer

    opt_tokenizer().save_pretrained(tok_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_opt(checkpoints["safetensors"], device="cpu", tokenizer=tok_dir)
    assert model.to_tokens("hi")[0, 0].item() == 2


@pytest.mark.filterwarnings(NO_TOKENIZER)
@pytest.mark.parametrize("dtype", [torch.float16, "bfloat16"])
def test_half_precision_dtypes(checkpoints, references, dtype):
    model = load_opt(checkpoints["safetensors"], device="cpu", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {
        torch.float16 if dtype == torch.float16 else torch.bfloat16
    }
    with torch.no_grad():
        logits = model(TOKENS).float()
    torch.testing.assert_close(logits, references["safetensors"][0], atol=0.05, rtol=0)


def _fake_hub_cache(cache: Path, repo: str, source: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


@pytest.mark.filterwarnings(NO_TOKENIZER)
def test_hub_id_resolves_offline_from_the_local_cache(
    checkpoints, references, tmp_path, monkeypatch
):
    import huggingface_hub.constants as hub

    assert hub.HF_HUB_OFFLINE, "tests run with HF_HUB_OFFLINE=1 (conftest)"
    _fake_hub_cache(tmp_path, "facebook/opt-125m", checkpoints["safetensors"])
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    model = load_opt("facebook/opt-125m", device="cpu")
    assert model.cfg.model_name == "facebook/opt-125m"
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), references["safetensors"][0], atol=1e-4, rtol=0)
    with pytest.raises(NeuronKindsError, match="facebook/opt-66b.*not in the local cache"):
        load_opt("facebook/opt-66b", device="cpu")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    state = load_file(str(file))
    edit(state)
    save_file(state, str(file), metadata={"format": "pt"})


@pytest.mark.filterwarnings(NO_TOKENIZER)
def test_another_activation_loads_with_a_warning_on_what_active_means(checkpoints, tmp_path):
    gelu = _copy(checkpoints["safetensors"], tmp_path / "gelu")
    _edit_config(gelu, activation_function="gelu")
    with pytest.warns(UserWarning, match=r"'gelu', not OPT's 'relu'.*active.*> the recording"):
        model = load_opt(gelu, device="cpu")
    assert model.cfg.act_fn == "gelu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*has no tokenizer files")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        load_opt(checkpoints["safetensors"], device="cpu")  # ReLU: no warning


def test_bad_checkpoints_raise_naming_the_problem(checkpoints, tmp_path):
    good = checkpoints["safetensors"]
    cases = []

    cases.append((tmp_path / "absent", "does not exist"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "config.json is missing"))

    gpt2 = _copy(good, tmp_path / "gpt2")
    _edit_config(gpt2, model_type="gpt2")
    cases.append((gpt2, "model_type is 'gpt2', not 'opt'"))

    no_field = _copy(good, tmp_path / "nofield")
    _edit_config(no_field, ffn_dim="64")
    cases.append((no_field, "ffn_dim must be an integer >= 1"))

    no_weights = _copy(good, tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    cases.append((no_weights, "no weights found"))

    missing = _copy(good, tmp_path / "missing")
    _edit_weights(missing, lambda s: s.pop("model.decoder.layers.1.fc1.weight"))
    cases.append((missing, r"missing tensors \['decoder.layers.1.fc1.weight'\]"))

    extra = _copy(good, tmp_path / "extra")
    _edit_weights(extra, lambda s: s.update({"model.decoder.layers.2.fc1.weight": torch.ones(2)}))
    cases.append((extra, "unexpected tensors"))

    shape = _copy(good, tmp_path / "shape")
    _edit_config(shape, ffn_dim=48)
    cases.append((shape, "fc1.weight: \\[64, 32\\] \\(config says \\[48, 32\\]\\)"))

    corrupt = _copy(good, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    cases.append((corrupt, "model.safetensors is not a valid safetensors file"))

    truncated = _copy(good, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append((truncated, "model.safetensors"))

    bad_bin = _copy(checkpoints["bin"], tmp_path / "badbin")
    (bad_bin / "pytorch_model.bin").write_bytes(b"garbage")
    cases.append((bad_bin, "pytorch_model.bin is not a readable PyTorch file"))

    lost_shard = _copy(checkpoints["sharded"], tmp_path / "lostshard")
    (lost_shard / "model-00002-of-00003.safetensors").unlink()
    cases.append((lost_shard, "model-00002-of-00003.safetensors is missing"))

    for path, message in cases:
        with pytest.raises(NeuronKindsError, match=message):
            load_opt(path, device="cpu")


def test_bad_arguments_raise(checkpoints):
    path = checkpoints["safetensors"]
    with pytest.raises(NeuronKindsError, match="offload must be None, 'cpu' or 'disk'"):
        load_opt(path, offload="gpu")
    with pytest.raises(NeuronKindsError, match="dtype must be one of"):
        load_opt(path, dtype=torch.int64)
    with pytest.raises(NeuronKindsError, match="dtype must be one of"):
        load_opt(path, dtype="float8")
    with pytest.raises(NeuronKindsError, match="not a torch device"):
        load_opt(path, device="tpu:x")
    with pytest.raises(NeuronKindsError, match="offload='disk' reads safetensors"):
        load_opt(checkpoints["bin"], offload="disk")


def test_post_ln_without_projection_is_refused(tmp_path):
    cfg = tiny_opt_config(post_ln=True)
    OPTForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(NeuronKindsError, match="post-LayerNorm blocks without project_in"):
        load_opt(tmp_path, device="cpu")


@pytest.mark.filterwarnings(NO_TOKENIZER)
def test_350m_style_bridge_takes_hooks_that_return_values(checkpoints, references):
    model = load_opt(checkpoints["350m-style"], device="cpu")

    def double(value, hook):
        return value * 2

    with torch.no_grad():
        _, cache = model.run_with_cache(TOKENS)
        patched = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_mid", double)])
    assert cache["blocks.1.mlp.hook_post"].shape == (3, 11, 64)
    assert cache["blocks.0.hook_resid_mid"].shape == (3, 11, 32)
    assert not torch.allclose(patched, references["350m-style"][0])


@pytest.mark.filterwarnings(NO_TOKENIZER)
def test_post_ln_adapter_changes_ln2_hooks_only_and_names_its_version(checkpoints, monkeypatch):
    """The adapter finds what it was written to change on the TransformerLens line it was
    written for, and on any other version says which line that was."""
    from transformer_lens.model_bridge.supported_architectures import opt as tl_opt

    from tl_neuronkinds.loading import tl_adapters

    line = ".".join(tl_adapters.installed_version().split(".")[:2])
    assert line in tl_adapters.WRITTEN_FOR
    model = load_opt(checkpoints["350m-style"], device="cpu")
    for block in model.blocks:  # the adapter left no flattening conversion at hook_mlp_in
        assert block.hook_mlp_in.hook_conversion is None
        for point in (block.ln2.hook_in, block.ln2.hook_out):
            assert type(point.hook_conversion).__name__ != "_UnflattenTokens"
        # hook_post runs in the flattened region: its conversion stays (where the line has one)
        post = block.mlp.hook_post.hook_conversion
        assert post is None or type(post).__name__ == "_UnflattenTokens"
        block.hook_mlp_in.hook_conversion = tl_opt._UnflattenTokens()  # as TransformerLens sets
    assert tl_adapters.keep_post_ln_hook_shapes(model) == len(model.blocks)
    monkeypatch.setattr(tl_adapters, "installed_version", lambda: "5.0.0")
    with pytest.warns(
        tl_adapters.AdapterVersionWarning, match=r"written for transformer-lens 3\.9\.x and 4\.3"
    ):
        assert tl_adapters.keep_post_ln_hook_shapes(model) == 0


@pytest.mark.filterwarnings(NO_TOKENIZER)
@pytest.mark.parametrize("offload", [None, "cpu"])
def test_loaded_model_owns_its_weights(checkpoints, references, tmp_path, offload):
    """Checkpoint tensors come memory-mapped; a loaded model must not depend on the files."""
    path = _copy(checkpoints["safetensors"], tmp_path / "ckpt")
    model = load_opt(path, device="cpu", offload=offload)
    (path / "model.safetensors").write_bytes(b"")  # truncated in place: a mapped page would fault
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), references["safetensors"][0], atol=1e-4, rtol=0)
