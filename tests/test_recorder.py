"""NeuronRecorder inside a user's own experiment: tokens taken from each forward, hook order
relative to the user's hooks, forwards that stop part-way, OPT-350m's bridge layout, and a short
repr."""

import pytest
import torch
from opt_fixtures import hf_reference, make_tiny_opt
from profile_checks import assert_same
from recording_reference import BOS, assert_matches, brute_force, random_tokens, tiny_model
from tl_models import is_bridge

import tl_neuronkinds as nk
from tl_neuronkinds.recording import recorder as recorder_module

LAYER, NEURON = 1, 7


def _cache(model, tokens: torch.Tensor, hooks=()) -> dict[int, torch.Tensor]:
    """Each layer's hook_post as the model goes on with it (after ``hooks``)."""
    seen: dict[int, torch.Tensor] = {}

    def grab(layer):
        return lambda acts, hook: seen.__setitem__(layer, acts.detach().clone())

    grabs = [(f"blocks.{layer}.mlp.hook_post", grab(layer)) for layer in range(3)]
    model.run_with_hooks(tokens, fwd_hooks=[*hooks, *grabs])
    return seen


def test_a_loop_of_batches_in_one_recording_counts_each_batch_on_its_own_tokens() -> None:
    model = tiny_model()
    batches = [random_tokens(seed, n_seq=n) for seed, n in ((1, 2), (2, 3), (3, 1))]
    recorder = nk.NeuronRecorder(model, bos_token_id=BOS)
    with recorder.recording():
        for batch in batches:
            model(batch)
    profile = recorder.profile()
    tokens = torch.cat(batches)
    assert profile.n_seqs == 6
    for layer in range(3):
        acts = torch.cat([_cache(model, b)[layer] for b in batches])
        assert_matches(profile, layer, brute_force(tokens, acts))
    # The same batches recorded one recording() each merge to the same profile.
    parts = []
    for batch in batches:
        single = nk.NeuronRecorder(model, bos_token_id=BOS)
        with single.recording(batch):
            model(batch)
        parts.append(single.profile())
    assert_same(nk.NeuronProfile.merge(parts), profile)


def test_a_forward_on_other_tokens_than_promised_is_refused() -> None:
    model = tiny_model()
    tokens, other = random_tokens(4), random_tokens(5)
    assert tokens.shape == other.shape
    recorder = nk.NeuronRecorder(model, bos_token_id=BOS)
    with pytest.raises(nk.NeuronKindsError, match="other tokens"):
        with recorder.recording(tokens):
            model(other)
    with recorder.recording(tokens):  # the promise kept: counted, and nothing was counted before
        model(tokens)
    assert recorder.profile().n_seqs == tokens.shape[0]


def _zero_neuron(acts: torch.Tensor, hook) -> torch.Tensor:
    acts = acts.clone()
    acts[..., NEURON] = 0.0
    return acts


@pytest.mark.parametrize("when", ["run_with_hooks", "hooks_before", "hooks_inside"])
def test_the_recorder_sees_the_users_ablation_by_default(when: str) -> None:
    model = tiny_model()
    tokens = random_tokens(6)
    ablation = [(f"blocks.{LAYER}.mlp.hook_post", _zero_neuron)]
    profiles = {}
    for see in ("after_user_hooks", "before_user_hooks"):
        recorder = nk.NeuronRecorder(model, see=see, bos_token_id=BOS)
        if when == "run_with_hooks":
            with recorder.recording():
                model.run_with_hooks(tokens, fwd_hooks=ablation)
        elif when == "hooks_before":  # the user's hook was added before the recorder's
            with model.hooks(fwd_hooks=ablation), recorder.recording():
                model(tokens)
        else:  # ... or after it
            with recorder.recording(), model.hooks(fwd_hooks=ablation):
                model(tokens)
        profiles[see] = recorder.profile()
    ablated, plain = _cache(model, tokens, ablation), _cache(model, tokens)
    after, before = profiles["after_user_hooks"], profiles["before_user_hooks"]
    assert int(after.counts[LAYER].active[NEURON]) == 0
    assert int(before.counts[LAYER].active[NEURON]) > 0
    assert_matches(after, LAYER, brute_force(tokens, ablated[LAYER]))
    assert_matches(before, LAYER, brute_force(tokens, plain[LAYER]))
    assert not model.hook_dict[f"blocks.{LAYER}.mlp.hook_post"]._forward_hooks  # all removed


@pytest.mark.filterwarnings("ignore:.*has no tokenizer files")
def test_a_350m_style_bridge_is_counted_from_transformer_lens_layout(tmp_path) -> None:
    """OPT-350m's layout (post-LayerNorm, projected) loads as a TransformerBridge whose FFN runs
    on ``[batch * pos, d_model]``; the recorder's hooks, added through TransformerLens, see
    ``[batch, pos, d_mlp]`` and count exactly what transformers computes."""
    path = make_tiny_opt(tmp_path / "opt", tokenizer=False, seed=3, post_ln=True, proj_dim=16)
    model = nk.load_opt(path, device="cpu")
    assert is_bridge(model)
    tokens = random_tokens(21, n_seq=3, seq_len=9)
    _, posts = hf_reference(path, tokens)
    recorder = nk.NeuronRecorder(model, bos_token_id=BOS)
    with recorder.recording(tokens):
        model(tokens)
    profile = recorder.profile()
    for layer, acts in enumerate(posts):
        assert_matches(profile, layer, brute_force(tokens, acts))
    assert not any(model.hook_dict[f"blocks.{layer}.mlp.hook_post"].fwd_hooks for layer in (0, 1))


def test_a_forward_that_stops_part_way_makes_the_recorder_refuse() -> None:
    model = tiny_model()
    tokens = random_tokens(8)
    recorder = nk.NeuronRecorder(model, bos_token_id=BOS)
    with pytest.raises(nk.NeuronKindsError, match="stop before the last recorded layer"):
        with recorder.recording():
            model(tokens, stop_at_layer=2)
    with pytest.raises(nk.NeuronKindsError, match="inconsistent"):
        recorder.profile()
    with pytest.raises(nk.NeuronKindsError, match="see must be"):
        nk.NeuronRecorder(model, see="sometimes", bos_token_id=BOS)
    stopped = nk.NeuronRecorder(model, layers=[0], bos_token_id=BOS)
    with stopped.recording():  # stopping after the last recorded layer is fine
        model(tokens, stop_at_layer=1)
    assert stopped.profile().n_seqs == tokens.shape[0]


def test_a_forward_with_tokens_without_bos_is_refused_before_it_runs() -> None:
    model = tiny_model()
    tokens = random_tokens(9)
    tokens[0, 0] = 5
    recorder = nk.NeuronRecorder(model, bos_token_id=BOS)
    with pytest.raises(nk.NeuronKindsError, match="BOS"):
        with recorder.recording():
            model(tokens)
    with pytest.raises(nk.NeuronKindsError, match="nothing was recorded"):
        recorder.profile()


@pytest.mark.slow
def test_a_capped_recorder_plans_after_its_sample(monkeypatch) -> None:
    monkeypatch.setattr(recorder_module, "PLAN_SAMPLE_POSITIONS", 24)
    model = tiny_model()
    batches = [random_tokens(seed, n_seq=2) for seed in range(10, 14)]
    recorder = nk.NeuronRecorder(model, ngram_cap=5, bos_token_id=BOS)
    with recorder.recording():
        for batch in batches:
            model(batch)
    profile = recorder.profile()
    exhaustive = nk.NeuronRecorder(model, bos_token_id=BOS)
    assert 0 < recorder.nbytes
    with exhaustive.recording():
        for batch in batches:
            model(batch)
    full = exhaustive.profile()
    assert recorder.nbytes <= exhaustive.nbytes  # the plan can only leave n-gram pairs out
    assert profile.ngram_cap == 5 and profile.plan is not None
    for layer in range(3):
        for n in (2, 3):
            complete = profile.complete(layer, n)
            assert torch.equal(
                profile.counts[layer].ngrams[n].keys,
                full.counts[layer].ngrams[n].of_neurons(complete).keys,
            )
            assert torch.equal(
                profile.counts[layer].ngrams[1].keys, full.counts[layer].ngrams[1].keys
            )


def test_a_profile_shows_briefly_in_a_notebook() -> None:
    model = tiny_model()
    profile = nk.record(model, random_tokens(3), bos_token_id=BOS, progress=False)
    text = repr(profile)
    assert len(text) < 400 and "ngram_cap=50" in text and "tokens=60" in text
    html = profile._repr_html_()
    assert html.startswith("<table") and "NeuronProfile" in html and len(html) < 2000
