"""Per-block streaming (offload="cpu" / "disk"): same numbers, any hooks, two blocks at most."""

from pathlib import Path

import psutil
import pytest
import torch
from opt_fixtures import make_tiny_opt, random_tokens
from tl_models import is_bridge

from tl_neuronkinds.loading import load_opt, loaded_block, offload_mode, stop_at, streamer_of

pytestmark = pytest.mark.filterwarnings("ignore:.*has no tokenizer files")

N_LAYERS = 4
VOCAB = 61
TOKENS = random_tokens(2, 9, VOCAB, seed=2)
VARIANTS = {"hooked": {}, "bridge": {"post_ln": True, "proj_dim": 16}}


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    return {
        name: make_tiny_opt(root / name, n_layers=N_LAYERS, vocab=VOCAB, tokenizer=False, **kw)
        for name, kw in VARIANTS.items()
    }


@pytest.fixture(scope="session")
def resident(ckpts: dict[str, Path]) -> dict:
    return {name: load_opt(path, device="cpu") for name, path in ckpts.items()}


def _assert_released(model) -> None:
    assert streamer_of(model).resident == set()
    for block in model.blocks:
        assert all(p.numel() == 0 for p in block.parameters())


def _zero_neuron(value, hook):
    value[..., 3] = 0.0
    return value


@pytest.mark.slow
@pytest.mark.parametrize("offload", ["cpu", "disk"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hooks_cache_and_stop_at_layer_match_resident(variant, offload, ckpts, resident):
    model = load_opt(ckpts[variant], device="cpu", offload=offload)
    ref = resident[variant]
    streamer = streamer_of(model)
    assert offload_mode(model) == offload
    _assert_released(model)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), ref(TOKENS), atol=1e-5, rtol=0)
        assert dict(streamer.loads) == dict.fromkeys(range(N_LAYERS), 1)
        assert streamer.max_resident == 2
        _assert_released(model)

        hooks = [("blocks.2.mlp.hook_post", _zero_neuron)]
        ours = model.run_with_hooks(TOKENS, fwd_hooks=hooks)
        torch.testing.assert_close(
            ours, ref.run_with_hooks(TOKENS, fwd_hooks=hooks), atol=1e-5, rtol=0
        )
        with model.hooks(fwd_hooks=hooks):
            ours = model(TOKENS)
        with ref.hooks(fwd_hooks=hooks):
            expected = ref(TOKENS)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)

        _, cache = model.run_with_cache(TOKENS)
        _, ref_cache = ref.run_with_cache(TOKENS)
        assert cache.keys() == ref_cache.keys()
        for key in ref_cache.keys():
            torch.testing.assert_close(cache[key], ref_cache[key], atol=1e-5, rtol=0)

        # A call's stop_at_layer tells the streamer where it stops: no block >= 2 is loaded (the
        # bridge calls block 2 before it stops, so that one is loaded there).
        streamer.loads.clear()
        stopped = model(TOKENS, stop_at_layer=2)
        assert set(streamer.loads) == ({0, 1, 2} if is_bridge(model) else {0, 1})
        torch.testing.assert_close(stopped, ref(TOKENS, stop_at_layer=2), atol=1e-5, rtol=0)
        streamer.loads.clear()
        model.run_with_cache(TOKENS, stop_at_layer=1)
        # The bridge's run_with_cache calls forward directly, past the model's hooks: not told,
        # it loads block 1 (which it calls before stopping) and prefetches block 2.
        assert set(streamer.loads) == ({0, 1, 2} if is_bridge(model) else {0})
    _assert_released(model)
    assert streamer.max_resident == 2


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_streaming_under_inference_mode_then_with_autograd(offload, ckpts, resident):
    model = load_opt(ckpts["hooked"], device="cpu", offload=offload)
    with torch.inference_mode():
        first = model(TOKENS, stop_at_layer=3)
    second = model(TOKENS, stop_at_layer=3)  # autograd on: weights must not be inference tensors
    torch.testing.assert_close(first, second.detach(), atol=0, rtol=0)
    _assert_released(model)
    second.sum().backward()  # saved weights survive the blocks' release
    ref = resident["hooked"]
    ref.zero_grad()
    ref(TOKENS, stop_at_layer=3).sum().backward()
    torch.testing.assert_close(model.embed.W_E.grad, ref.embed.W_E.grad, atol=1e-5, rtol=0)


def test_error_inside_a_hook_releases_the_block(ckpts, resident):
    model = load_opt(ckpts["hooked"], device="cpu", offload="disk")

    def fail(value, hook):
        raise RuntimeError("boom")

    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.mlp.hook_post", fail)])
    _assert_released(model)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), resident["hooked"](TOKENS), atol=1e-5, rtol=0)


def test_loaded_block_exposes_weights_outside_a_forward(ckpts, resident):
    model = load_opt(ckpts["hooked"], device="cpu", offload="cpu")
    ref = resident["hooked"]
    with loaded_block(model, 3):
        assert torch.equal(model.blocks[3].mlp.W_out, ref.blocks[3].mlp.W_out)
    assert model.blocks[3].mlp.W_out.numel() == 0
    with loaded_block(ref, 3):  # a resident model: nothing to do
        assert ref.blocks[3].mlp.W_out.numel() > 0


def _rss() -> int:
    return psutil.Process().memory_info().rss


def test_disk_offload_peak_memory_is_near_two_blocks(tmp_path):
    """8 blocks of 9 MiB each against 0.2 MiB of embeddings: a forward that streams from disk
    must stay far below the blocks' 72 MiB (RSS, sampled inside every block)."""
    d_model, ffn, n_layers = 256, 4096, 8
    path = make_tiny_opt(
        tmp_path,
        n_layers=n_layers,
        d_model=d_model,
        ffn_dim=ffn,
        vocab=128,
        n_ctx=32,
        tokenizer=False,
    )
    block_bytes = 4 * (4 * d_model * d_model + 2 * d_model * ffn)
    model = load_opt(path, device="cpu", offload="disk")
    tokens = random_tokens(1, 32, 128)
    samples: list[int] = []

    def sample(value, hook):
        samples.append(_rss())

    names = lambda name: name.endswith(("mlp.hook_post", "hook_resid_post"))  # noqa: E731
    with torch.no_grad():
        before = _rss()
        model.run_with_hooks(tokens, fwd_hooks=[(names, sample)])
    assert len(samples) == 2 * n_layers
    peak_extra = max(samples) - before
    assert peak_extra < 0.4 * n_layers * block_bytes, (peak_extra, block_bytes)
    assert streamer_of(model).max_resident == 2


@pytest.mark.parametrize("told", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stop_at_layer_loads_the_blocks_that_run_and_one_more_at_most(
    variant, told, ckpts, resident
):
    """``run_with_hooks`` calls ``forward`` past the model's own hooks: told the stop with
    ``stop_at``, the streamer prefetches no block past it; not told, it may load one block too
    many, never one too few."""
    model = load_opt(ckpts[variant], device="cpu", offload="cpu")
    streamer = streamer_of(model)
    seen = []
    hooks = [("blocks.0.mlp.hook_post", lambda value, hook: seen.append(hook.name))]
    with torch.no_grad():
        for stop in (1, 3, -1):
            streamer.loads.clear()
            waiting = streamer.resident  # prefetched by the previous forward, not run there
            with stop_at(model, stop if told else None):
                out = model.run_with_hooks(TOKENS, fwd_hooks=hooks, stop_at_layer=stop)
            expected = resident[variant].run_with_hooks(TOKENS, stop_at_layer=stop)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
            k = stop % N_LAYERS
            runs = set(range(k))
            if not is_bridge(model):
                loaded = runs if told else runs | {k}  # not told: block k prefetched
            else:  # the bridge calls block k before it stops; not told, k prefetches k + 1
                loaded = runs | {k} if told else runs | ({k, k + 1} & set(range(N_LAYERS)))
            assert set(streamer.loads) | waiting == loaded
            assert all(n == 1 for n in streamer.loads.values())
            # Not told, the block after the stop may wait, prefetched, for the next forward.
            assert streamer.resident <= (set() if told else {k})
        model(TOKENS)  # the next forward drops what waited
    assert len(seen) == 3
    _assert_released(model)


def test_a_wrong_stop_costs_loads_never_a_block(ckpts, resident):
    """A forward running further than the streamer was told still loads every block it runs."""
    model = load_opt(ckpts["hooked"], device="cpu", offload="cpu")
    with torch.no_grad(), stop_at(model, 1):
        out = model(TOKENS)
    torch.testing.assert_close(out, resident["hooked"](TOKENS), atol=1e-5, rtol=0)
    assert set(streamer_of(model).loads) == set(range(N_LAYERS))
    _assert_released(model)


def test_the_streamer_is_kept_beside_the_model_not_on_it(ckpts):
    import gc
    import weakref

    model = load_opt(ckpts["hooked"], device="cpu", offload="cpu")
    assert not [name for name in vars(model) if "nk" in name.lower()]
    gone = weakref.ref(streamer_of(model))
    del model
    gc.collect()
    assert gone() is None  # the model's streamer goes with it
