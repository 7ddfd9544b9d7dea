"""The training loop: ``train(TrainConfig) -> TrainResult``.

What it does, in order: build the data (seeded per-sample augmentation, a deterministic per-epoch
sampler sharded over processes), the model, optimizer (``training.optim``), per-step learning-rate
schedule (``training.scheduler``), EMA (``training.ema``) and, for EfficientNetV2, the progressive
schedule (Tan & Le, ICML 2021, §4: image size, RandAugment magnitude, mixup/cutmix alpha, dropout and
batch size change at stage boundaries); then train with optional bfloat16 autocast, channels-last,
gradient accumulation and clipping, ``torch.compile`` and DistributedDataParallel; evaluate top-1/top-5
of the raw and the EMA weights every epoch; keep ``last``/``best`` checkpoints; and finally write the
fused deploy model (structural re-parameterization, RepVGG §3.3) with its error and speed-up.

Reproducibility is exact on CPU: the data order of epoch ``e`` depends only on ``seed + e``, each
sample's augmentation only on ``(seed, e, index)`` (so neither worker count nor rank changes it), and a
checkpoint stores the optimizer, counters and the RNG states of every process. Training N steps straight,
or k steps, stop, resume, and train to N, gives bit-identical weights; a mid-epoch resume skips the
batches the stopped run had already used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..errors import ConfigError, ModernCNNError
from ..factory import create_model
from . import checkpoint as ckpt_io
from .config import TrainConfig, parse_aa, resolve_drop_path
from .distributed import (
    DistInfo,
    EpochSampler,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from .metrics import Progress, RunLog, accuracy


class TrainingDivergedError(ModernCNNError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_completed: int
    global_step: int
    best_top1: float | None
    best_epoch: int | None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    deploy: dict[str, Any] | None = None
    train_time: float = 0.0  # seconds spent in training epochs (no eval, no export)


class Callback:
    """Hooks for tests and extensions; every method is optional."""

    def on_loss(self, trainer: Trainer, loss: torch.Tensor) -> torch.Tensor | None:  # may replace the loss
        return None

    def on_step_end(self, trainer: Trainer) -> None:
        return None

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        return None


# -- data ------------------------------------------------------------------------------------------------
class _SeededRNG:
    """Run a block under a torch RNG seed derived from ``key`` and restore the global torch RNG afterwards,
    so augmentation is a pure function of (seed, epoch, sample) and never disturbs the training RNG.

    Only torch's CPU generator is seeded: the transforms draw from it alone. (``torch.manual_seed`` and
    numpy's state round trip cost ~0.5-1 ms each, which per sample would dominate a small model's step.)
    """

    def __init__(self, key: int) -> None:
        self.key = key % (2**63 - 1)

    def __enter__(self) -> None:
        gen = torch.default_generator
        self.saved = gen.get_state()
        gen.manual_seed(self.key)

    def __exit__(self, *exc: object) -> None:
        torch.default_generator.set_state(self.saved)


class AugmentedDataset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied under a seed derived from (seed, epoch, i)."""

    def __init__(self, base: Dataset, indices: list[int] | None, transform, seed: int, seeded: bool,
                 return_index: bool = False) -> None:
        self.base, self.indices, self.transform, self.seed, self.seeded = base, indices, transform, seed, seeded
        self.return_index = return_index  # (image, label, i): the trainer keys batch-level augmentation by i
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[self.indices[i] if self.indices is not None else i]
        if self.return_index:
            return image, label, i
        if self.transform is None:
            return image, label
        if not self.seeded:
            return self.transform(image), label
        with _SeededRNG(((self.seed * 1_000_003) + self.epoch) * 1_000_003 + i):
            return self.transform(image), label


def _subset(n: int, limit: int | None, seed: int) -> list[int] | None:
    if limit is None or limit >= n:
        return None
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()[:limit])


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


# -- the trainer -------------------------------------------------------------------------------------------
class Trainer:
    """One training run. Use :func:`train`; the object is exposed to callbacks."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
    ) -> None:
        self.cfg = copy.deepcopy(config)
        self.callbacks = list(callbacks)
        self._train_dataset, self._val_dataset = train_dataset, val_dataset
        self.epoch = 0
        self.step_in_epoch = 0  # optimizer steps done in the current epoch
        self.global_step = 0
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self._stop_requested = False
        self._last_saved_step: int | None = None
        self.last_eval: tuple[float | None, float | None] = (None, None)  # (raw, EMA) top-1 of the last eval
        self.epoch_loss: tuple[float, int] = (0.0, 0)  # running (sum, count) of this epoch's step losses

    # -- output ----------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.dist.is_primary:
            print(msg, flush=True)

    # -- set-up ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = self.dist.device
        if cfg.threads:  # on a small CPU, 1 thread plus a loader worker beats oversubscribed OpenMP threads
            torch.set_num_threads(cfg.threads)
        _seed_all(cfg.seed)
        self._build_data()
        self._build_model()
        self._build_optimization()
        self._prepare_run_dir()
        if cfg.resume:
            self._resume(cfg.resume)
        if self.dist.rank > 0:  # dropout/drop-path masks differ per process; a resume restores them in run()
            _seed_all(cfg.seed + 1000 * self.dist.rank)

    def _build_data(self) -> None:
        from ..data.transforms import BatchPadCropFlip, build_eval_transform, build_train_transform, resolve_mean_std

        cfg = self.cfg
        if self._train_dataset is None or self._val_dataset is None:
            from ..data.datasets import load_dataset

            self._train_dataset = self._train_dataset or load_dataset(
                cfg.dataset, data_dir=cfg.data_dir, split="train", download=cfg.download)
            self._val_dataset = self._val_dataset or load_dataset(
                cfg.dataset, data_dir=cfg.data_dir, split="val", download=cfg.download)
        tr, va = self._train_dataset, self._val_dataset
        if len(tr) == 0 or len(va) == 0:
            raise ConfigError(f"the {'training' if len(tr) == 0 else 'validation'} set of {cfg.dataset!r} is empty")
        self.num_classes = cfg.num_classes or tr.num_classes
        self.source_chans = tr.in_chans
        self.in_chans = cfg.in_chans or tr.in_chans
        native = tr.image_size if isinstance(tr.image_size, int) else None
        self.progressive = self._build_progressive()
        if self.progressive is not None:
            stage0 = self.progressive.stage_at(0)
            self.img_size = stage0.img_size
            self.eval_img_size = cfg.eval_img_size or max(s.img_size for s in self.progressive.stages)
        else:
            self.img_size = cfg.img_size or native
            self.eval_img_size = cfg.eval_img_size or self.img_size
        if self.img_size is None:
            raise ConfigError(f"the images of {cfg.dataset!r} vary in size; pass --img-size")
        if cfg.mean is not None and cfg.std is not None:
            mean, std = cfg.mean, cfg.std
        else:
            mean, std = resolve_mean_std(cfg.dataset)
        self.mean, self.std = tuple(mean), tuple(std)
        aa = parse_aa(cfg.aa)
        ra_m = aa["m"] if aa else 0.0
        if self.progressive is not None:
            ra_m = self.progressive.stage_at(0).ra_magnitude
        self.train_transform = build_train_transform(
            self.img_size, in_chans=self.in_chans, source_chans=self.source_chans,
            scale=cfg.scale, hflip=cfg.hflip, ra_magnitude=ra_m, ra_num_ops=int(aa["n"]) if aa else 2,
            ra_magnitude_std=aa["mstd"] if aa else 0.0, re_prob=cfg.reprob, mean=self.mean, std=self.std,
            crop=cfg.train_crop,
        )
        eval_kw = dict(in_chans=self.in_chans, source_chans=self.source_chans, mean=self.mean, std=self.std)
        if cfg.crop_pct is not None:
            eval_kw["crop_pct"] = cfg.crop_pct
        self.eval_transform = build_eval_transform(self.eval_img_size, **eval_kw)
        self.batch_transform = None
        train_transform = self.train_transform
        if self.progressive is None and hasattr(tr, "resized"):
            # in-memory data at a fixed size: resize once, not once per sample and epoch (same pixels)
            if cfg.train_crop == "pad":
                tr = tr.resized(self.img_size)
                if ra_m == 0 and not cfg.reprob and self.source_chans in (1, self.in_chans):
                    # pad-crop + flip only: augment whole batches in one gather (see train_epoch)
                    self.batch_transform = BatchPadCropFlip(
                        self.img_size, in_chans=self.in_chans, source_chans=self.source_chans, hflip=cfg.hflip,
                        mean=self.mean, std=self.std)
                    train_transform = None
            if getattr(self.eval_transform, "crop_pct", 0) >= 1.0:
                va = va.resized(self.eval_img_size)
        self.train_set = AugmentedDataset(tr, _subset(len(tr), cfg.train_samples, cfg.seed), train_transform,
                                          cfg.seed, seeded=True, return_index=self.batch_transform is not None)
        self.val_set = AugmentedDataset(va, _subset(len(va), cfg.val_samples, cfg.seed + 1), self.eval_transform,
                                        cfg.seed, seeded=False)
        self.class_names = list(getattr(tr, "classes", []) or [])

    def _build_progressive(self):
        cfg = self.cfg
        if not cfg.progressive:
            return None
        from .progressive import MODES, ProgressiveSchedule, from_model

        if cfg.progressive not in MODES:
            raise ConfigError(f"--progressive {cfg.progressive!r}: expected one of {', '.join(MODES)}")
        over = {k: v for k, v in dict(
            size=cfg.prog_size, ra_magnitude=cfg.prog_ra_magnitude, mixup=cfg.prog_mixup, cutmix=cfg.prog_cutmix,
            dropout=cfg.prog_dropout, batch_sizes=list(cfg.prog_batch_sizes) if cfg.prog_batch_sizes else None,
        ).items() if v is not None}
        try:
            return from_model(cfg.model, cfg.epochs, cfg.progressive, num_stages=cfg.prog_stages, **over)
        except ValueError as exc:
            if "No progressive-learning targets" not in str(exc):
                raise ConfigError(str(exc)) from exc
            if cfg.prog_size is None:
                raise ConfigError(
                    f"{cfg.model} has no EfficientNetV2 progressive table; give the ranges yourself "
                    "(prog_size: [min, max], and optionally prog_ra_magnitude, prog_mixup, prog_dropout)"
                ) from exc
            over.setdefault("ra_magnitude", 0.0)
            over.setdefault("dropout", cfg.drop or 0.0)
            try:
                return ProgressiveSchedule(cfg.epochs, num_stages=cfg.prog_stages, mode=cfg.progressive, **over)
            except ValueError as exc2:
                raise ConfigError(str(exc2)) from exc2

    def _build_model(self) -> None:
        cfg = self.cfg
        kwargs = {k: _tuplify(v) for k, v in (cfg.model_kwargs or {}).items()}
        self.model_kwargs = kwargs
        model = create_model(
            cfg.model, num_classes=self.num_classes, in_chans=self.in_chans, drop_rate=cfg.drop,
            drop_path_rate=resolve_drop_path(cfg.drop_path, cfg.model), **kwargs,
        )
        min_size = getattr(model, "min_input_size", 1)
        if min(self.img_size, self.eval_img_size) < min_size:
            raise ConfigError(
                f"{cfg.model} downsamples by {min_size}, so it needs images of at least {min_size} px; "
                f"the run would use {min(self.img_size, self.eval_img_size)} px. Pass --img-size {min_size} "
                "(or larger)."
            )
        if cfg.initial_checkpoint:
            from ..interop import load_weights

            load_weights(model, cfg.initial_checkpoint)
        if cfg.sync_bn and self.dist.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.model_config = _jsonable(dataclasses.asdict(model.cfg)) if hasattr(model, "cfg") else {}
        self.ema = None
        if cfg.model_ema:
            from .ema import ModelEma

            self.ema = ModelEma(model, decay=cfg.model_ema_decay, warmup=cfg.model_ema_warmup)
        self.train_model: nn.Module = model
        if cfg.compile:
            self.train_model = torch.compile(model)
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)

    def _build_optimization(self) -> None:
        from .optim import create_optimizer
        from .scheduler import LRSchedule

        cfg = self.cfg
        if cfg.grad_accum_steps < 1:
            raise ConfigError(f"--grad-accum-steps must be >= 1, got {cfg.grad_accum_steps}")
        self.global_batch = cfg.batch_size * self.dist.world_size * cfg.grad_accum_steps
        self.lr = cfg.lr if cfg.lr is not None else cfg.lr_base * self.global_batch / cfg.lr_base_size
        self.optimizer = create_optimizer(
            self.model, cfg.opt, self.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
            eps=cfg.opt_eps, betas=tuple(cfg.opt_betas) if cfg.opt_betas else None,
        )
        self.sampler = EpochSampler(len(self.train_set), seed=cfg.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size)
        self.steps_per_epoch = self._updates_per_epoch(cfg.batch_size)  # nominal (stage-free) length
        sched = {"exponential": "exponential_staircase"}.get(cfg.sched, cfg.sched)
        try:
            self.schedule = LRSchedule(
                self.lr, cfg.epochs * self.steps_per_epoch, self.steps_per_epoch, sched=sched,
                warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.eval_sampler = list(range(len(self.val_set)))[self.dist.rank :: self.dist.world_size]
        self.mixup = None
        mix_any = cfg.mixup > 0 or cfg.cutmix > 0 or (
            self.progressive is not None and any(s.mixup_alpha > 0 or s.cutmix_alpha > 0
                                                 for s in self.progressive.stages))
        if mix_any:
            from ..data.mixup import MixupCutmix, SoftTargetCrossEntropy

            self.mixup = MixupCutmix(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                                     switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                                     num_classes=self.num_classes, split_batch=cfg.mixup_split_batch)
            self.soft_loss = SoftTargetCrossEntropy()
        self.hard_loss = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
        self.eval_loss = nn.CrossEntropyLoss()

    def _updates_per_epoch(self, batch_size: int) -> int:
        batches = len(self.sampler.indices()) // batch_size
        updates = batches // self.cfg.grad_accum_steps
        if updates == 0:
            raise ConfigError(
                f"the training set has {len(self.train_set)} images, fewer than one optimizer step needs "
                f"({batch_size} per process × {self.dist.world_size} processes × {self.cfg.grad_accum_steps} "
                "accumulation steps); lower --batch-size"
            )
        return updates

    def _prepare_run_dir(self) -> None:
        cfg = self.cfg
        if cfg.output:
            run_dir = Path(cfg.output)
        elif cfg.resume:
            p = Path(cfg.resume)
            run_dir = p if p.is_dir() else p.parent
        else:
            run_dir = Path("runs") / f"{cfg.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(broadcast_object(str(run_dir), self.dist))
        self.primary = self.dist.is_primary
        if self.primary:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resolved = dict(self.cfg.to_dict(), output=str(self.run_dir), resume=None)
            header = (f"# moderncnn train: resolved config ({datetime.now().isoformat(timespec='seconds')}, "
                      f"world size {self.dist.world_size}, global batch {self.global_batch}, lr {self.lr:.6g})\n")
            ckpt_io.atomic_write_text(self.run_dir / "config.yaml", header + yaml.safe_dump(resolved, sort_keys=False))
            # what rebuilds the model of last/best.safetensors (read by `moderncnn fuse|export|eval`)
            model_json = {"model": cfg.model, "model_kwargs": _jsonable(dict(self.model_kwargs)),
                          "num_classes": self.num_classes, "in_chans": self.in_chans}
            ckpt_io.atomic_write_text(self.run_dir / "config.json", json.dumps(model_json, indent=2))
            if self.progressive is not None and cfg.plots:
                try:
                    self.progressive.plot(str(self.run_dir / "progressive.png"))
                except Exception as exc:  # a plot never stops training
                    print(f"warning: could not draw progressive.png: {exc}", file=sys.stderr)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _train_state(self, rng_ranks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "rng_ranks": rng_ranks,  # every process's RNG (dropout and drop-path masks differ per rank)
            "epoch_loss": list(self.epoch_loss),
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "has_ema": self.ema is not None,
            "world_size": self.dist.world_size,
            "config": self.cfg.to_dict(),
        }

    def save(self, tag: str = "last") -> Path | None:
        """Write checkpoint ``tag`` (rank 0). Called on every rank: it gathers each process's RNG state."""
        rng_ranks = all_gather_object(ckpt_io.rng_state(), self.dist)
        if not self.primary:
            return None
        path = ckpt_io.save_checkpoint(
            self.run_dir, tag, model_state=self.model.state_dict(),
            ema_state=self.ema.state_dict() if self.ema is not None else None,
            train_state=self._train_state(rng_ranks), model_name=self.cfg.model, model_config=self.model_config,
        )
        if tag == "last":
            self._last_saved_step = self.global_step
        return path

    def _resume(self, source: str) -> None:
        ck = ckpt_io.load_checkpoint(source)
        ckpt_io.check_same_model(ck, self.cfg.model, self.model.state_dict())
        self.model.load_state_dict({k: v.to(self.device) for k, v in ck.model.items()})
        if self.ema is not None:
            if ck.ema is None:
                self.ema.set(self.model)
                self.log(f"note: {ck.path} has no EMA weights; the EMA starts from the resumed weights")
            else:
                self.ema.load_state_dict(ck.ema)
        st = ck.state
        try:
            self.optimizer.load_state_dict(st["optimizer"])
        except ValueError as exc:
            raise ckpt_io.CheckpointError(
                f"the optimizer state in {ck.path} does not fit --opt {self.cfg.opt}: {exc}") from exc
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        self.best_top1, self.best_epoch = st.get("best_top1"), st.get("best_epoch")
        self.epoch_loss = tuple(st.get("epoch_loss", (0.0, 0)))
        ranks = st["rng_ranks"] if "rng_ranks" in st else [st["rng"]]  # "rng": rank 0 only, older checkpoints
        self._resume_rng = ranks[self.dist.rank] if self.dist.rank < len(ranks) else None
        if len(ranks) != self.dist.world_size:
            self.log(f"note: {ck.path} was written by {len(ranks)} process(es), this run has "
                     f"{self.dist.world_size}; only the RNG states of ranks below {len(ranks)} are restored")
        self._last_saved_step = self.global_step
        self.log(f"resumed from {ck.path}: epoch {self.epoch + 1}, step {self.step_in_epoch} of that epoch, "
                 f"global step {self.global_step}")

    # -- progressive stages ----------------------------------------------------------------------------
    def _apply_stage(self, epoch: int) -> tuple[int, Any]:
        """Stage parameters for ``epoch`` (idempotent: called at the start of every epoch)."""
        cfg = self.cfg
        if self.progressive is None:
            if self.mixup is not None:
                self.mix_alphas = (cfg.mixup, cfg.cutmix)
            return cfg.batch_size, None
        st = self.progressive.stage_at(epoch)
        self.train_transform.img_size = st.img_size
        if hasattr(self.train_transform, "ra_magnitude"):
            self.train_transform.ra_magnitude = st.ra_magnitude
        self.mix_alphas = (st.mixup_alpha, st.cutmix_alpha)
        if self.mixup is not None:
            self.mixup.mixup_alpha, self.mixup.cutmix_alpha = st.mixup_alpha, st.cutmix_alpha
        set_dropout(self.model, st.dropout)
        return st.batch_size or cfg.batch_size, st

    # -- loops -----------------------------------------------------------------------------------------
    def _loader(self, batch_size: int, start_batch: int) -> DataLoader:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, start=start_batch * batch_size)
        self.train_set.epoch = self.epoch
        batches = BatchSampler(self.sampler, batch_size, drop_last=True)
        # a private generator: DataLoader draws its worker base seed from it, not from the global RNG
        gen = torch.Generator().manual_seed(cfg.seed + self.epoch)
        return DataLoader(self.train_set, batch_sampler=batches, num_workers=cfg.workers, generator=gen,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _autocast(self):
        if not self.cfg.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _check_finite(self, loss_sum: torch.Tensor, stop_flag: float) -> tuple[float, bool]:
        """All-reduce (loss, stop request) so every process sees a NaN or Ctrl-C at the same step."""
        t = torch.stack([loss_sum.detach().float(), torch.tensor(stop_flag, device=loss_sum.device)])
        t = all_reduce_sum(t, self.dist)
        loss = t[0].item() / self.dist.world_size
        return loss, bool(t[1].item() > 0)

    def _diverged(self, loss: float, batch: int, n_batches: int) -> TrainingDivergedError:
        step = self.global_step + 1
        where = (f"optimizer step {step} (epoch {self.epoch + 1}, batch {batch + 1} of {n_batches})")
        if self._last_saved_step is not None:
            good = (f"the last good checkpoint is {self.run_dir / 'last.state.pt'} (global step "
                    f"{self._last_saved_step}), left untouched; resume it with --resume {self.run_dir} after ")
        else:
            good = "no checkpoint was saved before it; "
        self.runlog.event("diverged", step=step, epoch=self.epoch, loss=str(loss))
        return TrainingDivergedError(
            f"the training loss became {loss} at {where}; {good}lowering --lr, adding --clip-grad, "
            "or turning off --amp"
        )

    def train_epoch(self, batch_size: int) -> tuple[float, int]:
        cfg = self.cfg
        accum = cfg.grad_accum_steps
        updates = self._updates_per_epoch(batch_size)
        start = self.step_in_epoch
        loader = self._loader(batch_size, start * accum)
        it = iter(loader)
        mix = self.mixup is not None and (self.mix_alphas[0] > 0 or self.mix_alphas[1] > 0)
        self.train_model.train()
        prog = Progress(updates - start, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", enabled=self.primary,
                        use_bar=not cfg.no_progress and sys.stderr.isatty(), log_interval=cfg.log_interval)
        # the epoch's mean loss survives a mid-epoch resume: the running sums are part of the checkpoint
        total, count = self.epoch_loss if start > 0 else (0.0, 0)
        lr = self.last_lr
        try:
            for i in range(start, updates):
                lr = self.schedule.step(self.optimizer, self._sched_step(i, updates))
                loss_sum = torch.zeros((), device=self.device)
                for micro in range(accum):
                    if self.batch_transform is not None:
                        # each image's crop/flip is keyed by (seed, epoch, sample index): resumable, and the same
                        # whatever the number of processes
                        x, y, index = next(it)
                        key = (cfg.seed * 1_000_003 + self.epoch) * 1_000_003
                        x = self.batch_transform(x, index.to(torch.int64) + key)
                    else:
                        x, y = next(it)
                    x = x.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    if mix:
                        x, target = self.mixup(x, y)
                        criterion = self.soft_loss
                    else:
                        target, criterion = y, self.hard_loss
                    sync = (self.dist.distributed and micro < accum - 1)
                    ctx = self.train_model.no_sync() if sync else contextlib.nullcontext()
                    with ctx:
                        with self._autocast():
                            out = self.train_model(x)
                        loss = criterion(out.float(), target)
                        for cb in self.callbacks:
                            new = cb.on_loss(self, loss)
                            loss = new if new is not None else loss
                        (loss / accum).backward()
                    loss_sum = loss_sum + loss.detach() / accum
                loss_val, stop = self._check_finite(loss_sum, float(self._stop_requested))
                if not math.isfinite(loss_val):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise self._diverged(loss_val, i * accum, updates * accum)
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.model, self.global_step)
                self.global_step += 1
                self.step_in_epoch = i + 1
                total, count = total + loss_val, count + 1
                self.epoch_loss = (total, count)
                prog.update(i + 1 - start, loss=loss_val, lr=lr)
                for cb in self.callbacks:
                    cb.on_step_end(self)
                if cfg.checkpoint_interval and self.global_step % cfg.checkpoint_interval == 0 and i + 1 < updates:
                    self.save("last")
                if stop or (self._stop_requested and not self.dist.distributed):
                    raise KeyboardInterrupt
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    break
        finally:
            prog.close()
            del it, loader
        self.last_lr = lr
        return (total / max(1, count)), updates

    def _sched_step(self, i: int, updates: int) -> int:
        # the schedule is laid out in nominal steps; with a stage's own batch size, map by epoch fraction
        if updates == self.steps_per_epoch:
            return self.epoch * self.steps_per_epoch + i
        return self.epoch * self.steps_per_epoch + i * self.steps_per_epoch // updates

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        loader = DataLoader(self.val_set, batch_size=max(1, self.cfg.batch_size), sampler=self.eval_sampler,
                            num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda")
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, top1, top5, count
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = model(x)
            out = out.float()
            top1, top5 = accuracy(out, y, (1, 5))
            sums += torch.stack([self.eval_loss(out, y) * len(y), top1, top5,
                                 torch.tensor(len(y), device=self.device)]).double()
        sums = all_reduce_sum(sums, self.dist)
        n = max(1.0, sums[3].item())
        return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n}

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_requested = True
            if self.dist.is_primary:
                print("\nCtrl-C: finishing this step, saving a checkpoint (press again to abort at once)",
                      file=sys.stderr, flush=True)

        return signal.signal(signal.SIGINT, handler)

    def run(self) -> TrainResult:
        self.setup()
        cfg = self.cfg
        resumed = bool(cfg.resume)
        self.runlog = RunLog(self.run_dir, enabled=self.primary, resume_epoch=self.epoch if resumed else None,
                             plots=cfg.plots)
        self.runlog.event("start", world_size=self.dist.world_size, global_batch=self.global_batch, lr=self.lr,
                          resumed_from=cfg.resume, global_step=self.global_step)
        self._describe()
        if getattr(self, "_resume_rng", None) is not None:
            ckpt_io.set_rng_state(self._resume_rng)
        previous = self._install_sigint()
        interrupted, train_time, row = False, 0.0, {}
        self.last_lr = self.lr
        try:
            while self.epoch < cfg.epochs:
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    break
                batch_size, stage = self._apply_stage(self.epoch)
                if stage is not None and stage.start_epoch == self.epoch and self.step_in_epoch == 0:
                    self.log(f"progressive stage {stage.stage + 1}/{self.progressive.num_stages}: "
                             f"{stage.img_size} px, RandAugment m {stage.ra_magnitude:.3g}, mixup "
                             f"{stage.mixup_alpha:.3g}, cutmix {stage.cutmix_alpha:.3g}, dropout {stage.dropout:.3g}, "
                             f"batch {batch_size}")
                t0 = time.perf_counter()
                train_loss, updates = self.train_epoch(batch_size)
                train_time += time.perf_counter() - t0
                if self.step_in_epoch < updates:  # stopped mid-epoch by --max-steps
                    break
                row = self._end_epoch(train_loss, batch_size, stage, time.perf_counter() - t0)
        except KeyboardInterrupt:
            interrupted = True
            self.optimizer.zero_grad(set_to_none=True)
            path = self.save("last")
            self.runlog.event("interrupted", epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                              global_step=self.global_step)
            barrier(self.dist)
            self.log(f"\ninterrupted at epoch {self.epoch + 1}, step {self.step_in_epoch} of that epoch "
                     f"(global step {self.global_step}); checkpoint saved to {path}\n"
                     f"resume with: moderncnn train --resume {self.run_dir}")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        deploy = None
        if not interrupted:
            stopped_mid_epoch = self.step_in_epoch > 0
            if stopped_mid_epoch:  # --max-steps: keep the state so the run can be continued
                self.save("last")
                self.log(f"stopped at --max-steps {cfg.max_steps} (epoch {self.epoch + 1}, step "
                         f"{self.step_in_epoch}); continue with --resume {self.run_dir}")
                if not row:
                    row = {f"eval_{k}": v for k, v in self.evaluate(self.model).items()}
            if cfg.fuse and self.primary:
                deploy = self.export_deploy()
            barrier(self.dist)
        self.runlog.finish()
        self.runlog.event("end", interrupted=interrupted, global_step=self.global_step, best_top1=self.best_top1)
        epochs_done = self.epoch
        cleanup(self.dist)
        self.train_time = train_time
        if self.primary and not interrupted:
            self._print_summary(deploy)
        return TrainResult(self.run_dir, epochs_done, self.global_step, self.best_top1, self.best_epoch, row,
                           interrupted, deploy, train_time)

    def _end_epoch(self, train_loss: float, batch_size: int, stage, epoch_time: float) -> dict[str, Any]:
        cfg = self.cfg
        row: dict[str, Any] = {"epoch": self.epoch, "train_loss": round(train_loss, 6), "lr": self.last_lr,
                               "img_size": self.train_transform.img_size if stage else self.img_size,
                               "batch_size": batch_size * self.dist.world_size,
                               "stage": stage.stage if stage else "", "steps": self.global_step,
                               "epoch_time": round(epoch_time, 2)}
        last_epoch = self.epoch + 1 == cfg.epochs
        metric = None
        if (self.epoch + 1) % max(1, cfg.eval_interval) == 0 or last_epoch:
            ev = self.evaluate(self.model)
            row.update(eval_loss=ev["loss"], eval_top1=ev["top1"], eval_top5=ev["top5"])
            metric = ev["top1"]
            msg = f"epoch {self.epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, eval top-1 {ev['top1']:.2f}%, " \
                  f"top-5 {ev['top5']:.2f}%"
            if self.ema is not None:
                ee = self.evaluate(self.ema.module)
                row.update(ema_eval_loss=ee["loss"], ema_eval_top1=ee["top1"], ema_eval_top5=ee["top5"])
                metric = max(metric, ee["top1"])
                self.last_eval = (ev["top1"], ee["top1"])
                msg += f" (EMA {ee['top1']:.2f}% / {ee['top5']:.2f}%)"
            else:
                self.last_eval = (ev["top1"], None)
            self.log(msg + f"  [{epoch_time:.1f} s]")
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        self.epoch += 1
        self.step_in_epoch = 0
        self.runlog.epoch(row)
        improved = metric is not None and (self.best_top1 is None or metric > self.best_top1)
        if improved:
            self.best_top1, self.best_epoch = metric, self.epoch - 1
        self.save("last")
        if improved:
            self.save("best")
        return row

    def _describe(self) -> None:
        cfg, d = self.cfg, self.dist
        n_params = sum(p.numel() for p in self.model.parameters())
        name = getattr(self._train_dataset, "name", "") or cfg.dataset
        self.log(f"moderncnn train: {cfg.model} ({n_params / 1e6:.3f} M params) on {name} "
                 f"({len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes), "
                 f"{self.img_size} px")
        self.log(f"  {cfg.epochs} epochs × {self.steps_per_epoch} steps, batch {cfg.batch_size} per process × "
                 f"{d.world_size} process(es) × {cfg.grad_accum_steps} accumulation = {self.global_batch}, "
                 f"{cfg.opt} lr {self.lr:.4g} ({cfg.sched}), device {self.device}"
                 + (", bf16 autocast" if cfg.amp else "") + (f", EMA {cfg.model_ema_decay}" if self.ema else ""))
        if self.progressive is not None:
            self.log(self.progressive.table())
        self.log(f"  writing to {self.run_dir}")

    def _print_summary(self, deploy: dict[str, Any] | None) -> None:
        lines = [(f"done: best top-1 {self.best_top1:.2f}% (epoch {self.best_epoch + 1})"
                  if self.best_top1 is not None else "done")
                 + f"; {self.train_time:.0f} s in training epochs (evaluation and export not counted)"]
        lines.append(f"  run folder      {self.run_dir}")
        for name in ("config.yaml", "metrics.csv", "log.jsonl", "curves.png", "progressive.png",
                     "last.safetensors", "best.safetensors", "model_deploy.safetensors"):
            if (self.run_dir / name).exists():
                lines.append(f"    {name}")
        if deploy:
            lines.append(f"  deploy model: fused with {deploy['fused_with']}, max |Δlogit| {deploy['max_abs_err']:.3g}"
                         f" (relative {deploy['rel_err']:.3g}); batch {deploy['bench_batch']} forward on this "
                         f"machine: train form {deploy['train_ms']:.2f} ms, deploy form {deploy['deploy_ms']:.2f} ms "
                         f"({deploy['speedup']:.2f}×)")
        self.log("\n".join(lines))

    # -- deploy ----------------------------------------------------------------------------------------
    def export_deploy(self) -> dict[str, Any]:
        """Fuse the final weights (the EMA ones when they evaluate better) and write ``model_deploy.*``."""
        source, which = self.model, "raw"
        # no new evaluation here: only rank 0 exports, and evaluate() all-reduces across ranks
        raw_top1, ema_top1 = self.last_eval
        if self.ema is not None and ema_top1 is not None and raw_top1 is not None and ema_top1 >= raw_top1:
            source, which = self.ema.module, "ema"
        model = copy.deepcopy(source).float().to("cpu").eval()
        model = model.to(memory_format=torch.contiguous_format)
        fused, how = fuse_for_deploy(model)
        x = torch.stack([self.val_set[i][0] for i in range(min(16, len(self.val_set)))]).float()
        with torch.no_grad():
            ref, out = model(x), fused(x)
        max_abs = (out - ref).abs().max().item()
        rel = max_abs / max(1e-12, ref.abs().max().item())
        bench_x = x.repeat(max(1, 64 // len(x)), 1, 1, 1)[:64]
        train_ms, deploy_ms = _time_forward(model, bench_x), _time_forward(fused, bench_x)
        kwargs = dict(self.model_kwargs)
        if how == "reparameterize_model" and "deploy" in self.model_config:
            kwargs["deploy"] = True
        info = {
            "model": self.cfg.model, "model_kwargs": _jsonable(kwargs), "num_classes": self.num_classes,
            "in_chans": self.in_chans, "img_size": self.eval_img_size, "mean": list(self.mean), "std": list(self.std),
            "classes": self.class_names, "weights": which, "fused_with": how,
            "max_abs_err": max_abs, "rel_err": rel, "bench_batch": len(bench_x), "train_ms": train_ms,
            "deploy_ms": deploy_ms, "speedup": train_ms / max(1e-9, deploy_ms),
            "how_to_load": ("create_model(model, num_classes=..., in_chans=..., **model_kwargs), then "
                            + ("load_weights" if how == "reparameterize_model" and "deploy" in kwargs
                               else f"{how}(model.eval()) and load_state_dict")),
        }
        meta = {"format": "moderncnn-deploy", "model": self.cfg.model, "config": json.dumps(info)}
        ckpt_io.save_weights(self.run_dir / "model_deploy.safetensors", fused.state_dict(), meta)
        ckpt_io.atomic_write_text(self.run_dir / "model_deploy.json", json.dumps(info, indent=2) + "\n")
        self.runlog.event("deploy", **info)
        return info


# -- helpers ---------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def set_dropout(model: nn.Module, p: float) -> None:
    """Set the classifier dropout (``model.drop_rate`` and every ``nn.Dropout`` in the head)."""
    if hasattr(model, "drop_rate"):
        model.drop_rate = p
    for attr in getattr(model, "head_attrs", ("head",)):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            for m in head.modules():
                if isinstance(m, nn.Dropout):
                    m.p = p


def fuse_for_deploy(model: nn.Module) -> tuple[nn.Module, str]:
    """The deploy form: ``moderncnn.fuse`` (re-parameterize + fold BatchNorms). For families with a ``deploy``
    config field, ``reparameterize_model`` output loads straight into ``create_model(..., deploy=True)``, so
    that form is preferred for them."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and "deploy" in {f.name for f in dataclasses.fields(cfg)}:
        from ..layers.reparam import reparameterize_model

        return reparameterize_model(model.eval()), "reparameterize_model"
    from ..deploy.fuse import fuse

    return fuse(model.eval()), "fuse"


@torch.no_grad()
def _time_forward(model: nn.Module, x: torch.Tensor, budget_s: float = 1.0) -> float:
    """Median milliseconds per forward of ``x`` (a couple of warm-up calls, then up to ``budget_s``)."""
    model(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 50):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def train(
    config: TrainConfig,
    *,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> TrainResult:
    """Train ``config.model`` as configured; see :class:`TrainConfig` for every option.

    ``train_dataset``/``val_dataset`` replace the named data set (any dataset of ``(uint8 CHW image,
    label)`` with ``num_classes``, ``in_chans``, ``classes``, ``image_size``). A NaN/Inf loss raises
    :class:`TrainingDivergedError`; Ctrl-C saves ``last`` and returns with ``interrupted=True``.
    """
    return Trainer(config, train_dataset=train_dataset, val_dataset=val_dataset, callbacks=callbacks).run()
