"""Data-parallel set-up: ``torchrun --nproc_per_node=N -m moderncnn train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; we start a
process group on gloo (CPU) or NCCL (CUDA) and wrap the model in ``DistributedDataParallel``, which
averages gradients over processes. ``-b`` is the per-process batch, as in timm, so the global batch is
``b × world_size``. Data is sharded by :class:`EpochSampler`: one permutation per epoch seeded with
``seed + epoch`` (the same on every rank), then rank ``r`` takes positions ``r, r + W, r + 2W, ...``,
so optimizer step ``s`` of a W-process run sees exactly the samples of step ``s`` of a 1-process run with
a W-times larger batch. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..validation import check_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # we started the process group, so we end it

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's environment and start the process group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = check_device(device)  # an unknown or absent device is a one-line error, not torch's RuntimeError
    if dev.type == "cuda":
        index = local_rank if dev.index is None else dev.index
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world, local_rank, dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        info.initialized_here = True
    elif dist.is_initialized():
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    return info


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (e.g. the run folder name, which contains a timestamp)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order, on every rank (a collective: all ranks must call it)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch shuffling, sharded over ranks, resumable mid-epoch.

    ``set_epoch(epoch, start=k)`` yields this rank's indices of epoch ``epoch`` from position ``k`` on,
    so a resumed run skips exactly the samples it has already trained on. With ``pad`` the permutation
    is padded (by repeating its start) to a multiple of the world size, like ``DistributedSampler``.
    """

    def __init__(
        self, length: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True, pad: bool = True,
        repeats: int = 0,
    ) -> None:
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.shuffle, self.pad = shuffle, pad
        self.repeats = repeats  # > 0: repeated augmentation (see _repeated)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.repeats:
            return self._repeated(order)
        if self.pad and self.length % self.world_size:
            extra = self.world_size - self.length % self.world_size
            order += (order * (extra // max(1, len(order)) + 1))[:extra]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        if self.repeats:
            return max(0, self._selected() - self.start)
        n = -(-self.length // self.world_size) if self.pad else len(range(self.rank, self.length, self.world_size))
        return max(0, n - self.start)

    # -- timm training flags (issue 12): repeated augmentation --
    def _selected(self) -> int:
        """Samples per process and epoch under repeated augmentation: the epoch keeps its usual length (the data
        set over the processes), rounded down to a multiple of 256 images first when there are that many, as
        timm's ``RepeatAugSampler`` (and DeiT's RASampler) do."""
        per_rank = -(-self.length * self.repeats // self.world_size)
        if self.length >= 256:
            return min(per_rank, self.length // 256 * 256 // self.world_size)
        return min(per_rank, -(-self.length // self.world_size))

    def _repeated(self, order: list[int]) -> list[int]:
        """Repeated augmentation (Hoffer et al., CVPR 2020; Berman et al., 2019; DeiT's RASampler; timm's
        ``--aug-repeats``): each index of the permutation ``repeats`` times in a row, dealt round-robin over the
        processes (so the copies of a sample land on different processes, each augmented differently), padded by
        wrapping around, then cut to :meth:`_selected`."""
        order = [i for i in order for _ in range(self.repeats)]
        total = -(-len(order) // self.world_size) * self.world_size
        mine = range(self.rank, total, self.world_size)[: self._selected()]
        return [order[i % len(order)] for i in mine]


# -- timm training flags (issue 12): --dist-bn ---------------------------------------------------------------
@torch.no_grad()
def distribute_bn(model: torch.nn.Module, info: DistInfo, mode: str) -> None:
    """Make the BatchNorm running statistics of ``model`` agree across processes (timm's ``--dist-bn``):
    ``reduce`` replaces them by their mean over the processes, ``broadcast`` by rank 0's; ``""`` leaves each
    process its own. A collective: every rank calls it."""
    if not info.distributed or not mode:
        return
    if mode not in ("reduce", "broadcast"):
        raise ValueError(f"dist_bn must be '', 'reduce' or 'broadcast', got {mode!r}")
    for name, buf in model.named_buffers():
        if not name.endswith(("running_mean", "running_var")):
            continue
        if mode == "reduce":
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world_size)
        else:
            dist.broadcast(buf, src=0)
