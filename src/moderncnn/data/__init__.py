"""Datasets (uint8 image tensors), train/eval transforms with a mutable RandAugment, mixup/cutmix."""

from .datasets import DATASETS, load_dataset
from .mixup import MixupCutmix, smooth_one_hot
from .transforms import RandAugment, build_eval_transform, build_train_transform, resolve_mean_std

__all__ = [
    "DATASETS",
    "MixupCutmix",
    "RandAugment",
    "build_eval_transform",
    "build_train_transform",
    "load_dataset",
    "resolve_mean_std",
    "smooth_one_hot",
]
