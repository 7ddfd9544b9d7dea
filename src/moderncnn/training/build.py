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
from .checkpoint import atomic_write_text
from .config import TrainConfig, resolve_drop_path
from .distributed import DistInfo
from .progressive import ProgressiveSchedule, schedule_for
from .scheduler import LRSchedule

__all__ = ["RunData", "build_data", "build_mixup", "build_model", "build_schedule", "model_config", "prepare_run_dir",
           "seed_all"]


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
    from ..data.transforms import build_eval_transform, build_train_transform, resolve_mean_std

    if train is None or val is None:
        loaded = load_splits(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                             skip_bad_images=cfg.skip_bad_images)
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
                            default_dropout=cfg.drop, **_prog_ranges(cfg))
    native = train.image_size if isinstance(train.image_size, int) else None
    img_size = prog.stage_at(0).img_size if prog else cfg.img_size or native
    if img_size is None:
        raise ConfigError(f"the images of {cfg.dataset!r} vary in size; pass --img-size")
    eval_img_size = cfg.eval_img_size or (max(s.img_size for s in prog.stages) if prog else img_size)
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg.mean and cfg.std else resolve_mean_std(cfg.dataset)
    in_chans = cfg.in_chans or train.in_chans
    if len(mean) not in (1, in_chans):
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
    crop = {} if cfg.crop_pct is None else {"crop_pct": cfg.crop_pct}
    eval_transform = build_eval_transform(eval_img_size, **chans, **crop)
    data = assemble(train, val, train_transform, eval_transform, seed=cfg.seed, train_samples=cfg.train_samples,
                    val_samples=cfg.val_samples, fixed_size=prog is None)
    return RunData(data, prog, getattr(train, "name", "") or cfg.dataset, cfg.num_classes or train.num_classes,
                   in_chans, eval_img_size, tuple(mean), tuple(std))


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
                          decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate)
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
