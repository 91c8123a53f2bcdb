"""record() under torch.distributed (gloo, 2 CPU processes) equals one process over all rows:
every count, the n-gram plan and which neurons are complete; the tail bounds prove the same."""

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from profile_checks import assert_same
from tl_models import tl_model

import tl_neuronkinds as nk


def _model() -> Any:
    cfg = dict(
        n_layers=2, d_model=16, d_mlp=24, d_head=4, n_heads=4, n_ctx=16, d_vocab=30,
        act_fn="relu", normalization_type="LN", seed=3,
    )  # fmt: skip
    return tl_model(**cfg)


def _tokens() -> torch.Tensor:
    tokens = torch.randint(0, 9, (14, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 2
    return tokens


def _worker(rank: int, world_size: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        for cap in (None, 5):
            profile = nk.record(
                _model(), _tokens(), ngram_cap=cap, bos_token_id=2, batch_size=2, progress=False
            )
            profile.save(Path(out) / f"rank{rank}-cap{cap}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_record_equals_single_process(tmp_path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for cap in (None, 5):
        single = nk.record(_model(), _tokens(), ngram_cap=cap, bos_token_id=2, progress=False)
        for rank in (0, 1):
            got = nk.NeuronProfile.load(tmp_path / f"rank{rank}-cap{cap}")
            assert got.n_seqs == single.n_seqs == 14 and got.meta["world_size"] == 2
            assert_same(got, single, tails=False)
