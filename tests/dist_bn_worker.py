"""The two-process body of tests/test_timm_training_flags.py's --dist-bn test, in a module of its own so each
spawned process imports torch and moderncnn's distributed helpers only."""

from __future__ import annotations

import torch
from torch import nn

from moderncnn.training.distributed import DistInfo, distribute_bn


def run(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for mode in ("reduce", "broadcast"):
            net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
            with torch.no_grad():
                net[1].running_mean.fill_(float(rank + 1))
                net[1].running_var.fill_(float(10 * (rank + 1)))
                net[0].weight.fill_(float(rank))  # parameters are not BN statistics: left alone
            distribute_bn(net, DistInfo(rank=rank, world_size=world), mode)
            torch.save({k: v.clone() for k, v in net.state_dict().items()}, f"{out}.{mode}.{rank}")
    finally:
        dist.destroy_process_group()
