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
from tl_neuronkinds.data import embedded_model_dir, embedded_tokenizer_dir, shared_tokenizer_dir
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.training.cli import _parser, main
from tl_neuronkinds.training.config import TrainConfig, check_keep_steps
from tl_neuronkinds.training.loop import (
    CHECKPOINTS_DIR,
    RECORD_NAME,
    kept_checkpoint,
    lr_at,
    train,
)
from tl_neuronkinds.training.model import ModelShape, build_model
from tl_neuronkinds.training.tokenizer import load_tokenizer, train_tokenizer

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


def test_models_sharing_a_tokenizer_write_it_once_and_refuse_another(
    standard: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = standard
    shared = tmp_path / "tokenizer"
    nopos = dataclasses.replace(TINY, variant="nopos")
    train(nopos, tmp_path / "a", TRAIN, HELDOUT, tokenizer=load_tokenizer(out), tokenizer_dir=shared, log=False)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", RECORD_NAME,
    ]  # fmt: skip
    assert (shared / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    written = (shared / "tokenizer_config.json").stat().st_mtime_ns
    train(nopos, tmp_path / "b", TRAIN, HELDOUT, tokenizer=load_tokenizer(shared), tokenizer_dir=shared, log=False)  # fmt: skip
    assert (shared / "tokenizer_config.json").stat().st_mtime_ns == written, "rewritten"
    other = train_tokenizer(HELDOUT, TINY.shape.vocab_size, TINY.shape.n_ctx)
    with pytest.raises(NeuronKindsError, match="holds another tokenizer"):
        train(nopos, tmp_path / "c", TRAIN, HELDOUT, tokenizer=other, tokenizer_dir=shared, log=False)  # fmt: skip
    assert not (tmp_path / "c").exists()
    assert (shared / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


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


# ------------------------------------------------------ checkpoints kept during a run (Figure 11)

KEEP = (5, 20, 40)  # TINY runs 40 steps; the last kept step is the final model


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("kept") / "model"
    return out, train(TINY, out, TRAIN, HELDOUT, log=False, keep_steps=KEEP)


def test_keeping_checkpoints_changes_nothing_in_the_run(
    standard: tuple[Path, dict], kept: tuple[Path, dict]
) -> None:
    (plain, plain_record), (out, record) = standard, kept
    a, b = load_file(plain / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert record["loss_curve"] == plain_record["loss_curve"]
    assert record["heldout_loss"] == plain_record["heldout_loss"]
    assert record["kept_steps"] == list(KEEP) and plain_record["kept_steps"] == []
    assert sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir()) == [
        kept_checkpoint(out, step).name for step in KEEP
    ]
    assert kept_checkpoint(out, 5) == out / "checkpoints" / "step-000005"


def test_kept_checkpoints_are_loadable_models_at_their_step(kept: tuple[Path, dict]) -> None:
    out, final = kept
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    heldout = HELDOUT.tokenize(load_tokenizer(out), seq_len=TINY.seq_len)[:8]
    losses = []
    for step in KEEP:
        path = kept_checkpoint(out, step)
        assert sorted(p.name for p in path.iterdir()) == files
        record = json.loads((path / RECORD_NAME).read_text())
        assert (record["steps"], record["run_steps"]) == (step, final["steps"])
        assert record["tokens_seen"] == step * TINY.batch_size * TINY.seq_len
        assert record["loss_curve"] == [p for p in final["loss_curve"] if p["step"] <= step]
        assert record["config"] == final["config"] and record["seed"] == final["seed"]
        model = tl_neuronkinds.load_opt(path, device="cpu")
        assert model.cfg.n_layers == TINY.shape.n_layers
        hf = OPTForCausalLM.from_pretrained(path, dtype=torch.float32)
        with torch.no_grad():
            loss = hf(input_ids=heldout, labels=heldout).loss.item()
        assert loss == pytest.approx(record["heldout_loss"], rel=1e-4)
        losses.append(record["heldout_loss"])
    assert losses[0] > losses[-1] == pytest.approx(final["heldout_loss"])
    first = load_file(kept_checkpoint(out, KEEP[0]) / "model.safetensors")
    last = load_file(kept_checkpoint(out, KEEP[-1]) / "model.safetensors")
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(last[k], weights[k]) for k in weights)
    assert not all(torch.equal(first[k], weights[k]) for k in weights)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((0,), "integer >= 1"),
        ((5, 2.5), "integer >= 1"),
        ((True,), "integer >= 1"),
        ((5, 5), "increasing order without repeats"),
        ((20, 5), "increasing order without repeats"),
        ((5, 41), "step 41 is beyond the run's 40 steps"),
        ("5", "a sequence of step numbers"),
    ],
)
def test_bad_keep_steps_raise_before_training(
    steps: object, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr("tl_neuronkinds.training.loop._run", no_training)
    with pytest.raises(NeuronKindsError, match=message):
        train(TINY, tmp_path / "bad", TRAIN, HELDOUT, log=False, keep_steps=steps)
    assert not list(tmp_path.iterdir())
    with pytest.raises(NeuronKindsError, match=message):
        check_keep_steps(steps, TINY.n_steps)
    with pytest.raises(NeuronKindsError, match="a sequence of step numbers, got None"):
        check_keep_steps(None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep-steps", "100,x"], "'x' is not an integer"),
        (["--keep-steps", "300,100"], "increasing order without repeats"),
        (["--keep-steps", "100,100"], "increasing order without repeats"),
        (["--keep-steps", "0"], "integer >= 1"),
        (["--keep-steps", "2"], "needs --out"),
        (["--out", "m", "--tokens", "4096", "--keep-steps", "1,3"], "beyond the run's 2 steps"),
    ],
)
def test_cli_refuses_bad_keep_steps_before_reading_the_corpus(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_corpus(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(Corpus, "embedded", no_corpus)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert _parser().parse_args(["--keep-steps", "100, 300"]).keep_steps == (100, 300)


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
    assert shared_tokenizer_dir(path) == embedded_tokenizer_dir()
    assert not list(path.glob("tokenizer*")), "the shipped models share one tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    assert len(tokenizer) == config["vocab_size"]
    ids = tokenizer("def f(x):\n    return x + 1").input_ids
    assert ids[0] == 2 and 2 not in ids[1:]
    loaded = tl_neuronkinds.load_opt(path, device="cpu").tokenizer
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded("def f(x):\n    return x + 1").input_ids == ids


def test_only_the_shipped_folders_get_the_shared_tokenizer(tmp_path: Path) -> None:
    copy = tmp_path / SHIPPED["standard"].name
    copy.mkdir()
    assert shared_tokenizer_dir(copy) is None
    assert shared_tokenizer_dir(SHIPPED["standard"].parent / "tokenizer") is None
    assert shared_tokenizer_dir(SHIPPED["standard"].parent) is None
    assert shared_tokenizer_dir(SHIPPED["seed2"] / ".." / SHIPPED["nopos"].name) == (
        embedded_tokenizer_dir()
    )


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
