"""From data sets to what the training loop iterates: fixed subsets, seeded per-sample augmentation, and one
key per (seed, epoch, sample) that every random augmentation of that sample derives from.

Augmentation is a pure function of the key, so neither the number of loader workers nor the number of
processes changes it, and a run stopped mid-epoch resumes with the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .transforms import BatchPadCropFlip, EvalTransform, TrainTransform

__all__ = ["AugmentedDataset", "TrainData", "assemble", "random_subset", "sample_key"]

_PRIME = 1_000_003


def sample_key(seed: int, epoch: int, index: int | torch.Tensor) -> int | torch.Tensor:
    """The augmentation key of sample ``index`` (an int or an int64 tensor) in ``epoch`` of a run seeded ``seed``."""
    return (seed * _PRIME + epoch) * _PRIME + index


class _SeededRNG:
    """Run a block under a torch RNG seed ``key`` and restore the global torch RNG afterwards, so augmentation
    never disturbs the training RNG.

    Only torch's CPU generator is seeded: the transforms draw from it alone. (``torch.manual_seed`` and
    numpy's state round trip cost ~0.5-1 ms each, which per sample would dominate a small model's step.)
    """

    def __init__(self, key: int) -> None:
        self.key = key % (2**63 - 1)

    def __enter__(self) -> None:
        self.saved = torch.default_generator.get_state()
        torch.default_generator.manual_seed(self.key)

    def __exit__(self, *exc: object) -> None:
        torch.default_generator.set_state(self.saved)


class AugmentedDataset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied under the seed ``sample_key(seed, epoch, i)``.

    ``seeded=False`` applies ``transform`` without seeding (deterministic eval transforms).
    ``return_key=True`` skips the transform and yields ``(image, label, key)``: the loop augments the whole
    batch at once with a batch transform keyed per sample.
    """

    def __init__(self, base: Dataset, indices: list[int] | None, transform: Callable | None, *, seed: int = 0,
                 seeded: bool = True, return_key: bool = False) -> None:
        self.base, self.indices, self.transform = base, indices, transform
        self.seed, self.seeded, self.return_key = seed, seeded, return_key
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[self.indices[i] if self.indices is not None else i]
        if self.return_key:
            return image, label, sample_key(self.seed, self.epoch, i)
        if self.transform is None:
            return image, label
        if not self.seeded:
            return self.transform(image), label
        with _SeededRNG(sample_key(self.seed, self.epoch, i)):
            return self.transform(image), label


def random_subset(n: int, limit: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a fixed random subset of ``limit`` of ``n`` samples (None: all of them)."""
    if limit is None or limit >= n:
        return None
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()[:limit])


# in-memory data is resized once only while the copy stays this small: CIFAR at a pretrained_cfg's 224-288 px
# would take 7-12 GB (docs/training.md, "Data"); larger copies are resized per sample instead
_RESIZE_ONCE_BYTES = 1 << 30


def _fits(data: Any, size: int) -> bool:
    return len(data) * data.in_chans * size * size <= _RESIZE_ONCE_BYTES


@dataclass
class TrainData:
    train_set: AugmentedDataset
    val_set: AugmentedDataset
    train_transform: TrainTransform  # mutable between epochs (progressive learning)
    batch_transform: BatchPadCropFlip | None  # set when the train set yields (image, label, key)
    classes: list[str]


def assemble(train: Any, val: Any, train_transform: TrainTransform, eval_transform: EvalTransform, *,
             seed: int, train_samples: int | None = None, val_samples: int | None = None,
             fixed_size: bool = True) -> TrainData:
    """Wrap the base data sets for the loop (subsets keep their indices across resumes: they are seeded).

    In-memory data at a fixed training size (``fixed_size``, i.e. no progressive resizing) is resized once
    instead of once per sample and epoch (same pixels); and when the training transform is pad-crop + flip
    alone, the whole batch is augmented in one gather by :class:`BatchPadCropFlip` (on a 2-core CPU the
    per-sample transform cost about a fifth of a small model's step).
    """
    t = train_transform
    batch_transform = None
    if fixed_size and hasattr(train, "resized"):
        if t.crop == "pad" and _fits(train, t.img_size):
            train = train.resized(t.img_size)
            chans = t.to_input.source_chans, t.to_input.in_chans
            if t.ra_magnitude == 0 and t.autoaugment is None and t.re_prob == 0 and chans[0] in (1, chans[1]):
                batch_transform = BatchPadCropFlip(t.img_size, in_chans=chans[1], source_chans=chans[0],
                                                   pad=t.pad, hflip=t.hflip, mean=t.mean, std=t.std)
        if eval_transform.crop_pct >= 1.0 and _fits(val, eval_transform.img_size):
            val = val.resized(eval_transform.img_size, interpolation=eval_transform.interpolation)
    train_set = AugmentedDataset(train, random_subset(len(train), train_samples, seed),
                                 None if batch_transform else t, seed=seed, return_key=batch_transform is not None)
    val_set = AugmentedDataset(val, random_subset(len(val), val_samples, seed + 1), eval_transform, seeded=False)
    return TrainData(train_set, val_set, t, batch_transform, list(getattr(train, "classes", []) or []))
