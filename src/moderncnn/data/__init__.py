"""Datasets (uint8 image tensors; image folders, Hugging Face datasets, WebDataset shards), train/eval
transforms with a mutable RandAugment and timm's AutoAugment policies, mixup/cutmix."""

from .datasets import DATASETS, load_dataset, load_splits
from .mixup import MixupCutmix, smooth_one_hot
from .transforms import (
    AutoAugment,
    RandAugment,
    build_eval_transform,
    build_train_transform,
    resolve_data_config,
    resolve_mean_std,
)

__all__ = [
    "DATASETS",
    "AutoAugment",
    "MixupCutmix",
    "RandAugment",
    "build_eval_transform",
    "build_train_transform",
    "load_dataset",
    "load_splits",
    "resolve_data_config",
    "resolve_mean_std",
    "smooth_one_hot",
]
