"""What a training run is built from, given its :class:`TrainConfig`: the data (through ``data.assembly``),
the progressive schedule (``training.progressive``) and the model. :meth:`Trainer.setup` calls these."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from ..data.assembly import TrainData, assemble
from ..data.mixup import MixupCutmix
from ..errors import ConfigError
from ..interop.io import atomic_write_text
from .config import TrainConfig, resolve_drop_path
from .distributed import DistInfo
from .progressive import ProgressiveSchedule, schedule_for
from .scheduler import LRSchedule

__all__ = ["RunData", "build_criterion", "build_data", "build_mixup", "build_model", "build_schedule", "model_config",
           "prepare_run_dir", "seed_all"]


@dataclass
class RunData:
    data: TrainData
    progressive: ProgressiveSchedule | None
    dataset_name: str
    num_classes: int
    in_chans: int
    eval_img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def build_data(cfg: TrainConfig, train: Dataset | None = None, val: Dataset | None = None) -> RunData:
    """The run's data: ``train``/``val`` (or the configured data set), the progressive schedule, and the
    training/eval transforms at the sizes and statistics the configuration asks for."""
    from ..data.datasets import check_splits, load_splits
    from ..data.transforms import build_eval_transform, build_train_transform

    if train is None or val is None:
        loaded = load_splits(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                             skip_bad_images=cfg.skip_bad_images, **split_options(cfg))
        train, val = train or loaded[0], val or loaded[1]
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"the {'training' if len(train) == 0 else 'validation'} set of {cfg.dataset!r} is empty")
    check_splits(train, val)
    if cfg.num_classes is not None and cfg.num_classes < train.num_classes:
        raise ConfigError(f"--num-classes {cfg.num_classes} is fewer than the {train.num_classes} classes of the "
                          f"training data (labels 0 to {train.num_classes - 1}); leave it out to use the data's")
    prog = None
    if cfg.progressive:
        prog = schedule_for(cfg.model, cfg.epochs, cfg.progressive, num_stages=cfg.prog_stages,
                            default_dropout=cfg.drop, seed=cfg.seed, **_prog_ranges(cfg))
    native = train.image_size if isinstance(train.image_size, int) else None
    settings = data_settings(cfg, native)
    img_size = prog.stage_at(0).img_size if prog else settings["img_size"]
    if img_size is None:
        raise ConfigError(f"the images of {cfg.dataset!r} vary in size; pass --img-size")
    # progressive runs are evaluated at the range's final size (random mode may never draw it)
    eval_img_size = cfg.eval_img_size or (int(prog.size[1]) if prog else img_size)
    mean, std = settings["mean"], settings["std"]
    in_chans = cfg.in_chans or train.in_chans
    if cfg.mean is not None and len(mean) not in (1, in_chans):  # RGB statistics of a model average for gray
        raise ConfigError(f"--mean/--std give {len(mean)} values for {in_chans}-channel input; give one per "
                          "channel (or one for all)")
    chans = dict(in_chans=in_chans, source_chans=train.in_chans, mean=mean, std=std)
    train_transform = build_train_transform(
        img_size, crop=cfg.train_crop, scale=tuple(cfg.scale), hflip=cfg.hflip, aa=cfg.aa,
        ra_magnitude=prog.stage_at(0).ra_magnitude if prog else None, re_prob=cfg.reprob, **chans)
    clip = train_transform.randaugment.max_magnitude
    if prog and max(s.ra_magnitude for s in prog.stages) > clip:
        raise ConfigError(f"the progressive RandAugment magnitude reaches {max(s.ra_magnitude for s in prog.stages):g} "
                          f"but --aa {cfg.aa} clips magnitudes at {clip:g} (timm's default mmax is 10); add "
                          "-mmax<largest magnitude> to --aa")
    if prog and train_transform.autoaugment is not None and max(s.ra_magnitude for s in prog.stages) > 0:
        raise ConfigError(f"--progressive schedules a RandAugment magnitude, and --aa {cfg.aa} is AutoAugment: "
                          "the run would apply both; use a RandAugment --aa (rand-...), or prog_ra_magnitude: "
                          "[0, 0] in the recipe")
    eval_transform = build_eval_transform(eval_img_size, **chans, crop_pct=settings["crop_pct"],
                                          interpolation=settings["interpolation"], crop_mode=settings["crop_mode"])
    data = assemble(train, val, train_transform, eval_transform, seed=cfg.seed, train_samples=cfg.train_samples,
                    val_samples=cfg.val_samples, fixed_size=prog is None)
    return RunData(data, prog, getattr(train, "name", "") or cfg.dataset, cfg.num_classes or train.num_classes,
                   in_chans, eval_img_size, tuple(mean), tuple(std))


# -- data sets and transforms as timm (issue 12) ------------------------------------------------------
def split_options(cfg: TrainConfig) -> dict[str, Any]:
    """The split names, class map and column keys of ``cfg`` as :func:`data.datasets.load_splits` takes them."""
    return dict(train_split=cfg.train_split, val_split=cfg.val_split, class_map=cfg.class_map,
                input_key=cfg.input_key, target_key=cfg.target_key)


def data_settings(cfg: TrainConfig, native_size: int | None, model: str | None = None) -> dict[str, Any]:
    """Image size, mean/std, eval crop (``crop_pct``, ``crop_mode``) and interpolation of a run.

    Image-file data sets (imagefolder, hfds, wds, CIFAR; RGB photos of any size) resolve every setting
    left unset from the model's ``pretrained_cfg`` as timm's ``resolve_data_config`` does, so a model sees
    data prepared as its weights expect. The embedded Fashion-MNIST keeps its own statistics and native
    28 px (gray 28×28 images: ImageNet statistics would mis-normalize them, 224 px would be 64× the work for
    no information), and so does data handed to the trainer directly."""
    from ..data.datasets import FILE_DATASETS, dataset_key
    from ..data.transforms import resolve_data_config, resolve_mean_std

    if dataset_key(cfg.dataset) in FILE_DATASETS:
        from ..registry import default_pretrained_cfg

        dc = resolve_data_config(default_pretrained_cfg(model or cfg.model), img_size=cfg.img_size, mean=cfg.mean,
                                 std=cfg.std, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation)
        return {**dc, "img_size": dc["input_size"][-1]}
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg.mean and cfg.std else resolve_mean_std(cfg.dataset)
    return {"img_size": cfg.img_size or native_size, "mean": mean, "std": std, "crop_pct": cfg.crop_pct or 0.875,
            "crop_mode": "center", "interpolation": cfg.interpolation or "bilinear"}


def build_model(cfg: TrainConfig, run: RunData, dist: DistInfo) -> nn.Module:
    """The model to train (initial weights loaded, SyncBatchNorm when asked), on the CPU."""
    from ..factory import create_model

    model = create_model(cfg.model, num_classes=run.num_classes, in_chans=run.in_chans, drop_rate=cfg.drop,
                         drop_path_rate=resolve_drop_path(cfg.drop_path, cfg.model),
                         **{k: _tuplify(v) for k, v in (cfg.model_kwargs or {}).items()})
    min_size, size = getattr(model, "min_input_size", 1), min(run.data.train_transform.img_size, run.eval_img_size)
    if size < min_size:
        raise ConfigError(f"{cfg.model} downsamples by {min_size}, so it needs images of at least {min_size} px; "
                          f"the run would use {size} px. Pass --img-size {min_size} (or larger).")
    load_initial_weights(model, cfg)
    if cfg.head_init_scale is not None:  # timm's --head-init-scale: after loading, so a re-initialised head shrinks
        _scale_classifier(model, cfg.head_init_scale)
    if cfg.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def load_initial_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """The run's starting weights (fine-tuning, issue 12): ``--pretrained-path``, or ``--initial-checkpoint``
    with ``--pretrained``, loads as pretrained weights (timm's ``load_pretrained``: a classifier for another
    class count re-initialised, the first conv adapted, each with a warning); ``--initial-checkpoint``
    otherwise loads strictly, after the pretrained weights when both are given (as in timm's train.py)."""
    from ..interop import load_pretrained, load_weights

    pretrained = cfg.pretrained_path or (cfg.initial_checkpoint if cfg.pretrained else None)
    if cfg.pretrained and not pretrained:
        raise ConfigError("--pretrained needs the weights as a local file: moderncnn downloads nothing. Pass "
                          "--initial-checkpoint PATH (or --pretrained-path PATH): a timm or official checkpoint, "
                          f"or one converted with `moderncnn convert SRC DST.safetensors --model {cfg.model}`")
    if pretrained:
        load_pretrained(model, pretrained)
    if cfg.initial_checkpoint and cfg.initial_checkpoint != pretrained:
        load_weights(model, cfg.initial_checkpoint)


def build_schedule(cfg: TrainConfig, lr: float, steps_per_epoch: int) -> LRSchedule:
    """The per-step learning rate, laid out over ``cfg.epochs`` epochs of ``steps_per_epoch`` steps."""
    try:
        return LRSchedule(lr, cfg.epochs * steps_per_epoch, steps_per_epoch,
                          sched={"exponential": "exponential_staircase"}.get(cfg.sched, cfg.sched),
                          warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                          decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
                          decay_milestones=cfg.decay_milestones, patience_epochs=cfg.patience_epochs,
                          plateau_mode="max")  # the plateau metric is eval top-1 (timm's default --eval-metric)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build_mixup(cfg: TrainConfig, prog: ProgressiveSchedule | None, num_classes: int) -> MixupCutmix | None:
    """Mixup/CutMix when the run mixes at all (now, or in a later progressive stage). Its targets are plain
    mixed one-hot probabilities: the loss (``nn.CrossEntropyLoss(label_smoothing=...)``) smooths every target
    alike, which equals mixing smoothed targets since smoothing is linear."""
    stages = prog.stages if prog is not None else []
    if not (cfg.mixup > 0 or cfg.cutmix > 0 or any(s.mixup_alpha > 0 or s.cutmix_alpha > 0 for s in stages)):
        return None
    return MixupCutmix(cfg.mixup, cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                       label_smoothing=0.0, num_classes=num_classes, split_batch=cfg.mixup_split_batch)


# -- timm training flags (issue 12) ---------------------------------------------------------------------
@torch.no_grad()
def _scale_classifier(model: nn.Module, scale: float) -> None:
    """Multiply the classifier's weight and bias by ``scale`` (ConvNeXt fine-tuning's head init scale 0.001,
    Liu et al., CVPR 2022, Table 6)."""
    fc = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(fc, nn.Module) or getattr(fc, "weight", None) is None:
        raise ConfigError(f"--head-init-scale: {type(model).__name__} has no classifier with weights to scale "
                          "(built with num_classes=0?)")
    fc.weight.mul_(scale)
    if getattr(fc, "bias", None) is not None:
        fc.bias.mul_(scale)


def build_criterion(cfg: TrainConfig) -> nn.Module:
    """The training loss: softmax cross-entropy with label smoothing, or timm's ``--bce-loss``."""
    if cfg.bce_loss:
        from .loss import BinaryCrossEntropy

        return BinaryCrossEntropy(cfg.smoothing, cfg.bce_target_thresh)
    return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)  # smooths mixed targets too


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def _prog_ranges(cfg: TrainConfig) -> dict[str, Any]:
    ranges = dict(size=cfg.prog_size, ra_magnitude=cfg.prog_ra_magnitude, mixup=cfg.prog_mixup,
                  cutmix=cfg.prog_cutmix, dropout=cfg.prog_dropout,
                  batch_sizes=list(cfg.prog_batch_sizes) if cfg.prog_batch_sizes else None)
    return {k: v for k, v in ranges.items() if v is not None}


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, dist: DistInfo, model: nn.Module,
                    prog: ProgressiveSchedule | None, note: str) -> Path:
    """Write the run folder's resolved ``config.yaml``, the model description ``config.json`` that rebuilds
    ``last``/``best``, and ``progressive.png`` (rank 0), once ``run_dir.claim_run_dir`` has taken the folder."""
    from ..interop.spec import ModelSpec, write_spec

    if not dist.is_primary:
        return run_dir
    resolved = dict(cfg.to_dict(), output=str(run_dir), resume=None)
    header = (f"# moderncnn train: resolved config ({datetime.now().isoformat(timespec='seconds')}, "
              f"world size {dist.world_size}, {note})\n")
    atomic_write_text(run_dir / "config.yaml", header + yaml.safe_dump(resolved, sort_keys=False))
    write_spec(ModelSpec.from_model(model), run_dir)
    if prog is not None and cfg.plots:
        try:
            prog.plot(str(run_dir / "progressive.png"))
        except Exception as exc:  # a plot never stops training
            print(f"warning: could not draw progressive.png: {exc}", file=sys.stderr)
    return run_dir


def model_config(model: nn.Module) -> dict[str, Any]:
    """The model's whole config as JSON types (checkpoint metadata, read by ``check_same_model``)."""
    cfg = getattr(model, "cfg", None)
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str)) if cfg is not None else {}


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
