"""Training the embedded model: determinism, loss, the written checkpoint, the nopos variant,
and the shipped checkpoints (tl_neuronkinds/data)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, OPTForCausalLM

import tl_neuronkinds
from tl_neuronkinds.corpus import Corpus
from tl_neuronkinds.data import embedded_model_dir
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.cli import _parser
from tl_neuronkinds.training.config import TrainConfig
from tl_neuronkinds.training.loop import RECORD_NAME, lr_at, train
from tl_neuronkinds.training.model import ModelShape, build_model
from tl_neuronkinds.training.tokenizer import load_tokenizer

TINY = TrainConfig(
    shape=ModelShape(vocab_size=320, d_model=16, n_layers=2, n_heads=2, d_mlp=32, n_ctx=32),
    n_tokens=4 * 32 * 40,
    batch_size=4,
    peak_lr=1e-2,
    heldout_tokens=256,
    log_every=5,
)
WORDS = "the cat sat on a mat while dogs ran far away from home and ate red apples".split()


def _texts(n: int, offset: int) -> list[str]:
    return [
        " ".join(WORDS[(i * 7 + j * (i % 5 + 1) + offset) % len(WORDS)] for j in range(12 + i % 9))
        + f". {i * 37 % 1000} + {i % 17} = {i * 37 % 1000 + i % 17}"
        for i in range(n)
    ]


TRAIN = Corpus.from_texts(_texts(300, 0), "tiny train")
HELDOUT = Corpus.from_texts(_texts(40, 3), "tiny heldout")


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("std") / "model"
    return out, train(TINY, out, TRAIN, HELDOUT, log=False)


def test_same_seed_same_weights(standard: tuple[Path, dict], tmp_path: Path) -> None:
    out, record = standard
    again = train(TINY, tmp_path / "again", TRAIN, HELDOUT, log=False)
    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["loss_curve"] == record["loss_curve"]
    other = train(dataclasses.replace(TINY, seed=1), tmp_path / "seed1", TRAIN, HELDOUT, log=False)
    assert other["loss_curve"] != record["loss_curve"]


def test_loss_decreases_and_record_is_complete(standard: tuple[Path, dict]) -> None:
    out, record = standard
    curve = record["loss_curve"]
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.5
    on_disk = json.loads((out / RECORD_NAME).read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["steps"] == TINY.n_tokens // (TINY.batch_size * TINY.seq_len)
    assert record["tokens_seen"] == curve[-1]["tokens"] == TINY.n_tokens
    assert [p["step"] for p in curve] == list(range(5, record["steps"] + 1, 5))
    assert record["config"]["seed"] == record["seed"] == 0
    assert record["threads"] == 1 and record["device"] == "cpu"
    assert record["heldout_tokens"] == TINY.heldout_tokens
    assert math.isfinite(record["heldout_loss"]) and record["heldout_loss"] < math.log(320)
    assert record["corpus"] == {"train": "tiny train", "heldout": "tiny heldout"}


def test_output_loads_as_float16_opt_with_bos_once(standard: tuple[Path, dict]) -> None:
    out, record = standard
    assert not list(out.parent.glob(".model.*")), "temporary directory left behind"
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float16" and config["activation_function"] == "relu"
    assert config["do_layer_norm_before"] is True
    assert all(t.dtype == torch.float16 for t in load_file(out / "model.safetensors").values())
    model = OPTForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (2, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    ids = tokenizer("the cat sat").input_ids
    assert ids[0] == 2 and 2 not in ids[1:]
    assert ids[1:] == tokenizer("the cat sat", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat sat"
    tokens = HELDOUT.tokenize(tokenizer, seq_len=TINY.seq_len)[:8]
    with torch.no_grad():
        loss = model(input_ids=tokens, labels=tokens).loss.item()
    assert loss == pytest.approx(record["heldout_loss"], rel=1e-4)


def test_nopos_keeps_positions_zero_and_reuses_tokenizer(
    standard: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = standard
    cfg = dataclasses.replace(TINY, variant="nopos")
    record = train(
        cfg, tmp_path / "nopos", TRAIN, HELDOUT, tokenizer=load_tokenizer(out), log=False
    )
    weights = load_file(tmp_path / "nopos" / "model.safetensors")
    positions = weights["model.decoder.embed_positions.weight"]
    assert positions.shape == (TINY.shape.n_ctx + 2, TINY.shape.d_model)
    assert not positions.any()
    assert (tmp_path / "nopos" / "tokenizer.json").read_text() == (
        out / "tokenizer.json"
    ).read_text()
    assert record["config"]["variant"] == "nopos"
    assert record["loss_curve"][-1]["loss"] < record["loss_curve"][0]["loss"]


def test_lr_schedule_warms_up_then_decays_to_a_tenth() -> None:
    cfg = TrainConfig(peak_lr=1e-3, warmup_frac=0.1)
    rates = [lr_at(step, 100, cfg) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(1e-3 * (0.1 + 0.9 / 90))
    assert all(a <= b for a, b in zip(rates[:9], rates[1:10], strict=True))
    assert all(a >= b for a, b in zip(rates[10:-1], rates[11:], strict=True))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": "rope"}, "unknown variant"),
        ({"n_tokens": 10}, "less than one batch"),
        (
            {
                "shape": ModelShape(
                    vocab_size=100, d_model=16, n_layers=1, n_heads=2, d_mlp=8, n_ctx=32
                )
            },
            "too small",
        ),
        ({"batch_size": 1000, "n_tokens": 32_000}, "fewer than batch_size"),
    ],
)
def test_bad_settings_raise(change: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(NeuronKindsError, match=message):
        train(dataclasses.replace(TINY, **change), tmp_path / "bad", TRAIN, HELDOUT, log=False)
    assert not (tmp_path / "bad").exists()


def test_build_model_rejects_heads_not_dividing_width() -> None:
    with pytest.raises(NeuronKindsError, match="not divisible"):
        build_model(ModelShape(d_model=10, n_heads=4), "standard", 0.0)


# ---------------------------------------------------------------------- the shipped checkpoints

#: name: (variant, seed): the standard model, its other seeds (universal neurons), nopos.
KINDS = {
    "standard": ("standard", 0),
    "seed1": ("standard", 1),
    "seed2": ("standard", 2),
    "nopos": ("nopos", 0),
}
SHIPPED = {name: embedded_model_dir(*kind) for name, kind in KINDS.items()}


def test_shipped_models_exist_and_the_package_stays_under_40_mb() -> None:
    for name, path in SHIPPED.items():
        assert (path / "model.safetensors").is_file(), f"{name} model missing at {path}"
    total = sum(f.stat().st_size for path in SHIPPED.values() for f in path.iterdir())
    assert total <= 32 * 2**20
    package = Path(tl_neuronkinds.__file__).parent
    files = [f for f in package.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    assert sum(f.stat().st_size for f in files) < 40 * 10**6


@pytest.mark.parametrize("name", list(KINDS))
def test_shipped_model_loads_offline_and_matches_its_record(name: str) -> None:
    variant, seed = KINDS[name]
    path = SHIPPED[name]
    record = json.loads((path / RECORD_NAME).read_text())
    config = json.loads((path / "config.json").read_text())
    shape = record["config"]["shape"]
    assert record["config"]["variant"] == variant and record["seed"] == seed
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (
        shape["vocab_size"],
        shape["d_model"],
        shape["n_layers"],
    )
    assert (
        config["num_attention_heads"],
        config["ffn_dim"],
        config["max_position_embeddings"],
    ) == (
        shape["n_heads"],
        shape["d_mlp"],
        shape["n_ctx"],
    )
    assert config["dtype"] == "float16"
    assert (
        record["tokens_seen"] == record["steps"] * record["config"]["batch_size"] * shape["n_ctx"]
    )
    assert record["loss_curve"][-1]["tokens"] == record["tokens_seen"]
    model = OPTForCausalLM.from_pretrained(path)
    positions = model.model.decoder.embed_positions.weight
    assert bool(positions.any()) == (variant == "standard")
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == config["vocab_size"]
    ids = tokenizer("def f(x):\n    return x + 1").input_ids
    assert ids[0] == 2 and 2 not in ids[1:]
    assert (path / "tokenizer.json").read_text() == (
        SHIPPED["standard"] / "tokenizer.json"
    ).read_text()


def test_cli_defaults_reproduce_the_shipped_settings() -> None:
    for name, path in SHIPPED.items():
        variant, seed = KINDS[name]
        record = json.loads((path / RECORD_NAME).read_text())
        args = _parser().parse_args(["--variant", variant, "--seed", str(seed)])
        assert args.tokens == record["config"]["n_tokens"] == record["tokens_seen"]
        assert args.lr == record["config"]["peak_lr"]
        assert args.batch_size == record["config"]["batch_size"]
        assert args.seed == record["seed"]
        assert args.threads == record["threads"]
        expected = dataclasses.replace(TrainConfig(), variant=variant, seed=seed)
        assert record["config"] == expected.to_dict()
