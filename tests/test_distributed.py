"""Data parallelism: sharding, and a 2-process gloo run equal to a 1-process run with the same global batch."""

from __future__ import annotations

import csv
import dataclasses
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from moderncnn.training.config import from_dict
from moderncnn.training.distributed import EpochSampler
from moderncnn.training.trainer import train
from test_trainer import TINY_CONVNEXT, make_dataset


def test_epoch_sampler_shards_one_permutation_and_resumes_mid_epoch():
    one = EpochSampler(10, seed=5)
    one.set_epoch(3)
    order = list(one)
    assert sorted(order) == list(range(10)) and order != list(range(10))
    again = EpochSampler(10, seed=5)
    again.set_epoch(3)
    assert list(again) == order  # a function of (seed, epoch) only
    again.set_epoch(4)
    assert list(again) != order
    ranks = [EpochSampler(10, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    # step s of rank r with batch b holds positions 2bs + r + 2j: together the 1-process batch of 2b
    assert [x for pair in zip(*shards) for x in pair] == order
    ranks[1].set_epoch(3, start=2)
    assert list(ranks[1]) == shards[1][2:] and len(ranks[1]) == 3
    padded = EpochSampler(7, seed=0, rank=1, world_size=2)
    assert len(padded) == 4 and len(list(padded)) == 4  # padded like DistributedSampler


def _config(out: str, batch_size: int):
    # LayerNorm model (no BatchNorm statistics that would differ per process), augmentation on (it is seeded
    # per sample, so the rank does not change it), no mixup (that mixes within a process's batch)
    return from_dict(dict(
        model="convnext_atto", model_kwargs=TINY_CONVNEXT, img_size=16, train_crop="pad", hflip=0.5, crop_pct=1.0,
        mean=[0.3], std=[0.3], epochs=2, batch_size=batch_size, lr=3e-3, opt="adamw", weight_decay=0.05,
        clip_grad=1.0, workers=0, no_progress=True, log_interval=1000, output=out, fuse=True, plots=False,
        seed=7, device="cpu", model_ema=True, model_ema_decay=0.9,
    ))


def _worker(rank: int, world: int, port: int, out: str, overrides: dict | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = dataclasses.replace(_config(out, 8 // world), **(overrides or {}))
    train(cfg, train_dataset=make_dataset(32), val_dataset=make_dataset(15, seed=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ref = train(_config(str(one), 8), train_dataset=make_dataset(32), val_dataset=make_dataset(15, seed=1))
    mp.spawn(_worker, args=(2, _free_port(), str(two)), nprocs=2, join=True)
    assert ref.global_step == 8  # 2 epochs × 32 images / global batch 8
    a, b = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    assert a.keys() == b.keys()
    moved = max((a[k] - a[k].new_tensor(0)).abs().max().item() for k in a)
    assert moved > 0
    ea, eb = load_file(str(one / "last_ema.safetensors")), load_file(str(two / "last_ema.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())
        assert torch.allclose(ea[k], eb[k], atol=1e-5, rtol=0), (k, (ea[k] - eb[k]).abs().max())
    assert (two / "model_deploy.safetensors").is_file()  # rank 0 exported while rank 1 waited
    # evaluation is sharded too (rank r takes images r, r + 2, ...; 15 images: 8 + 7) and summed
    rows = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (one, two)]
    for r1, r2 in zip(*rows):
        assert float(r1["eval_loss"]) == pytest.approx(float(r2["eval_loss"]), abs=1e-4)
        assert float(r1["train_loss"]) == pytest.approx(float(r2["train_loss"]), abs=1e-4)
    assert not any(p.name.startswith(".") for p in two.iterdir())  # rank 1 wrote nothing, no stray temp files


def test_two_process_resume_restores_every_rank_rng(tmp_path):
    """Drop-path masks differ per rank; stop mid-epoch and resume must equal the straight 2-process run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    over = dict(drop_path=0.5, fuse=False, model_ema=False)
    mp.spawn(_worker, args=(2, _free_port(), str(straight), over), nprocs=2, join=True)
    mp.spawn(_worker, args=(2, _free_port(), str(resumed), dict(over, max_steps=3)), nprocs=2, join=True)
    state = torch.load(resumed / "last.state.pt", weights_only=True)
    assert state["global_step"] == 3 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])
    mp.spawn(_worker, args=(2, _free_port(), str(resumed), dict(over, resume=str(resumed))), nprocs=2, join=True)
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())


@pytest.mark.slow
def test_torchrun_two_processes_on_fashion_mnist(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "run"
    cmd = [torchrun, "--nproc_per_node=2", "-m", "moderncnn", "train", "--model", "convnext_atto", "--model-kwargs",
           "depths=[1,1]", "dims=[8,16]", "--img-size", "28", "-b", "16", "--epochs", "1", "--train-samples", "128",
           "--val-samples", "64", "-j", "0", "--no-progress", "--no-fuse", "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and "= 32" in proc.stdout  # global batch 16 × 2
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["global_step"] == 4
