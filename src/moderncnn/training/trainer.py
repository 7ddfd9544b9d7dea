"""The training loop: ``train(TrainConfig) -> TrainResult``.

:meth:`Trainer.setup` builds everything (``training.build``: data, model, schedules, mixup; the progressive
schedule of EfficientNetV2, Tan & Le, ICML 2021, §4); :meth:`Trainer.run` is the loop: for each epoch, apply
the progressive stage, then for each batch take an optimizer step and log; evaluate, save ``last``/``best``;
at the end write the deploy form (``deploy.deploy_model``: fuse, compare, time, write).

Reproducibility is exact on CPU: epoch ``e``'s data order depends only on ``seed + e``, each sample's
augmentation only on ``(seed, e, index)`` (``data.assembly.sample_key``), and a checkpoint stores the optimizer,
counters and every process's RNG, so k steps, stop, resume to N gives the weights of N steps straight.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..errors import ConfigError, ModernCNNError
from ..interop.spec import ModelSpec, spec_metadata
from . import checkpoint as ckpt_io
from .build import model_config, seed_all
from .config import COOLDOWN_SCHEDULES, TrainConfig
from .distributed import (
    DistInfo,
    EpochSampler,
    all_gather_object,
    all_reduce_sum,
    barrier,
    cleanup,
    distribute_bn,
    init_distributed,
)
from .evaluate import evaluate
from .metrics import Progress, RunLog, describe_run, summarize_run
from .run_dir import install_stop_handlers, loader_worker_init, report_bad_images


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
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM), if one did


class Callback:
    """Hooks for tests and extensions; every method is optional."""

    def on_batch(self, trainer: Trainer, x: torch.Tensor, target: torch.Tensor) -> None:
        """The model's input and the loss target of one micro-batch (after augmentation and mixup)."""

    def on_loss(self, trainer: Trainer, loss: torch.Tensor) -> torch.Tensor | None:  # may replace the loss
        return None

    def on_step_end(self, trainer: Trainer) -> None:
        return None

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        return None


class Trainer:
    """One training run. Use :func:`train`; the object is exposed to callbacks."""

    def __init__(self, config: TrainConfig, *, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        self.cfg = copy.deepcopy(config)
        self.callbacks = list(callbacks)
        self.datasets = (train_dataset, val_dataset)
        self.epoch = self.step_in_epoch = self.global_step = 0  # step_in_epoch: optimizer steps done this epoch
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.epoch_loss: tuple[float, int] = (0.0, 0)  # running (sum, count) of this epoch's step losses
        self.last_eval: tuple[float | None, float | None] = (None, None)  # (raw, EMA) top-1 of the last eval
        self.last_lr = 0.0
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._last_saved_step: int | None = None
        self._resume_rng: dict[str, Any] | None = None

    def log(self, msg: str) -> None:
        if self.dist.is_primary:
            print(msg, flush=True)

    # -- build everything --------------------------------------------------------------------------------
    def setup(self) -> None:
        from .build import build_criterion, build_data, build_mixup, build_model, build_schedule, prepare_run_dir
        from .ema import ModelEma
        from .optim import create_optimizer, resolve_lr
        from .run_dir import claim_run_dir

        cfg = self.cfg
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device, self.primary = self.dist.device, self.dist.is_primary
        if cfg.threads:  # on a small CPU, 1 thread plus a loader worker beats oversubscribed OpenMP threads
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)
        if cfg.grad_accum_steps < 1:
            raise ConfigError(f"--grad-accum-steps must be >= 1, got {cfg.grad_accum_steps}")

        self.run_data = build_data(cfg, *self.datasets)
        self.data, self.progressive = self.run_data.data, self.run_data.progressive
        self.train_transform, self.num_classes = self.data.train_transform, self.run_data.num_classes
        model = build_model(cfg, self.run_data, self.dist)
        self.model = model.to(self.device, memory_format=torch.channels_last if cfg.channels_last
                              else torch.preserve_format)
        self.ema = ModelEma(model, decay=cfg.model_ema_decay, warmup=cfg.model_ema_warmup) if cfg.model_ema else None
        # static shapes: a new image size (a progressive stage, the evaluation size) compiles a graph of its own.
        # With automatic dynamic shapes torch 2.14's Inductor fails on the second size ("cannot determine truth
        # value of Relational" on the patchify stem's symbolic strides; tests/test_trainer.py)
        self.train_model: nn.Module = torch.compile(model, dynamic=False) if cfg.compile else model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)

        # optimization
        self.global_batch = cfg.batch_size * self.dist.world_size * cfg.grad_accum_steps
        # timm's --lr-base-scale: linear for SGD-like optimizers, square root for Adam-family ones by default
        self.lr = cfg.lr if cfg.lr is not None else resolve_lr(cfg.lr_base, self.global_batch, cfg.lr_base_size,
                                                               cfg.opt, cfg.lr_base_scale)
        self.optimizer = create_optimizer(model, cfg.opt, self.lr, weight_decay=cfg.weight_decay,
                                          momentum=cfg.momentum, eps=cfg.opt_eps,
                                          betas=tuple(cfg.opt_betas) if cfg.opt_betas else None,
                                          layer_decay=cfg.layer_decay)
        # float16 autocast needs loss scaling (Micikevicius et al., ICLR 2018); bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp and cfg.amp_dtype == "float16" else None
        self.sampler = EpochSampler(len(self.data.train_set), seed=cfg.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size, repeats=cfg.aug_repeats)
        # timm's --cooldown-epochs: the cycle schedules run on at min_lr for that many extra epochs
        self.total_epochs = cfg.epochs + (cfg.cooldown_epochs if cfg.sched in COOLDOWN_SCHEDULES else 0)
        self.steps_per_epoch = self._updates_per_epoch(cfg.batch_size)  # nominal (stage-free) length
        self.schedule = build_schedule(cfg, self.lr, self.steps_per_epoch)
        self.mixup = build_mixup(cfg, self.progressive, self.num_classes)  # None when the run never mixes
        self.criterion = build_criterion(cfg)
        self.val_loader = DataLoader(self.data.val_set, batch_size=max(1, cfg.batch_size), num_workers=cfg.workers,
                                     sampler=list(range(len(self.data.val_set)))[self.dist.rank::self.dist.world_size],
                                     pin_memory=self.device.type == "cuda")
        # every check (folder, lock, resume compatibility) before anything is written into the run folder
        self.run_dir, self.lock, resumed = claim_run_dir(cfg, self.dist, self.model.state_dict())
        prepare_run_dir(self.run_dir, cfg, self.dist, self.model, self.progressive,
                        f"global batch {self.global_batch}, lr {self.lr:.6g}")
        if resumed is not None:
            self._resume(resumed)
        if self.dist.rank > 0:  # dropout/drop-path masks differ per process; a resume restores them in run()
            seed_all(cfg.seed + 1000 * self.dist.rank)

    def _updates_per_epoch(self, batch_size: int) -> int:
        updates = len(self.sampler.indices()) // batch_size // self.cfg.grad_accum_steps
        if updates == 0:
            raise ConfigError(
                f"the training set has {len(self.data.train_set)} images, fewer than one optimizer step needs "
                f"({batch_size} per process × {self.dist.world_size} processes × {self.cfg.grad_accum_steps} "
                "accumulation steps); lower --batch-size")
        return updates

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.lock = None
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> TrainResult:
        self.setup()
        cfg = self.cfg
        self.runlog = RunLog(self.run_dir, enabled=self.primary, resume_epoch=self.epoch if cfg.resume else None,
                             plots=cfg.plots)
        self.runlog.event("start", world_size=self.dist.world_size, global_batch=self.global_batch, lr=self.lr,
                          resumed_from=cfg.resume, global_step=self.global_step)
        self.log(describe_run(self))
        from .loggers import ExternalLog

        self.external = ExternalLog(self.run_dir, cfg, enabled=self.primary)
        if self._resume_rng is not None:
            ckpt_io.set_rng_state(self._resume_rng)
        previous = install_stop_handlers(self)
        interrupted, train_time, row, self.last_lr = False, 0.0, {}, self.lr
        try:
            while self.epoch < self.total_epochs and not (cfg.max_steps is not None
                                                          and self.global_step >= cfg.max_steps):
                batch_size, stage = self._apply_stage(self.epoch)
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
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        deploy = None
        if not interrupted:
            if self.step_in_epoch > 0:  # --max-steps mid-epoch: keep the state so the run can be continued
                self.save("last")
                self.log(f"stopped at --max-steps {cfg.max_steps} (epoch {self.epoch + 1}, step "
                         f"{self.step_in_epoch}); continue with --resume {self.run_dir}")
                # the last row is the current model's: an earlier epoch's row (say with --eval-interval 2) is not
                row = {f"eval_{k}": v for k, v in self._evaluate(self.model).items()}
            if cfg.fuse and self.primary:
                deploy = self.export_deploy()
            barrier(self.dist)
        self.runlog.finish()
        self.external.close()
        self.runlog.event("end", interrupted=interrupted, global_step=self.global_step, best_top1=self.best_top1)
        cleanup(self.dist)
        self.train_time = train_time
        if self.primary and not interrupted:
            self.log(summarize_run(self, deploy))
        return TrainResult(self.run_dir, self.epoch, self.global_step, self.best_top1, self.best_epoch, row,
                           interrupted, deploy, train_time, self._stop_signal)

    def train_epoch(self, batch_size: int) -> tuple[float, int]:
        cfg, accum = self.cfg, self.cfg.grad_accum_steps
        updates, start = self._updates_per_epoch(batch_size), self.step_in_epoch
        batches = iter(self._loader(batch_size, start * accum))
        self.train_model.train()
        prog = Progress(updates - start, desc=f"epoch {self.epoch + 1}/{self.total_epochs}", enabled=self.primary,
                        use_bar=not cfg.no_progress and sys.stderr.isatty(), log_interval=cfg.log_interval)
        # the epoch's mean loss survives a mid-epoch resume: the running sums are part of the checkpoint
        total, count = self.epoch_loss if start > 0 else (0.0, 0)
        lr = self.last_lr
        try:
            for i in range(start, updates):
                # the schedule is laid out in nominal steps; a stage's own batch size maps by epoch fraction
                spe = self.steps_per_epoch
                lr = self.schedule.step(self.optimizer, self.epoch * spe + i * spe // updates)
                loss_sum = torch.zeros((), device=self.device)
                for micro in range(accum):
                    ddp_sync = not self.dist.distributed or micro == accum - 1
                    with contextlib.nullcontext() if ddp_sync else self.train_model.no_sync():
                        loss_sum += self._forward_backward(next(batches)) / accum
                loss, stop = self._all_reduce_loss(loss_sum, float(self._stop_requested))
                if not math.isfinite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise self._diverged(f"the training loss became {loss} at optimizer step {self.global_step + 1} "
                                         f"(epoch {self.epoch + 1}, batch {i * accum + 1} of {updates * accum})")
                if self.scaler is not None and cfg.clip_grad:
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.model, self.global_step)
                self.global_step, self.step_in_epoch = self.global_step + 1, i + 1
                total, count = total + loss, count + 1
                self.epoch_loss = (total, count)
                prog.update(i + 1 - start, loss=loss, lr=lr)
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
            del batches
        self.last_lr = lr
        return total / max(1, count), updates

    def _forward_backward(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Loss of one micro-batch, backpropagated (divided by the accumulation steps); returns it detached."""
        x, y = batch[0], batch[1]
        if self.data.batch_transform is not None:  # (image, label, key): augment the batch in one gather
            x = self.data.batch_transform(x, batch[2])
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if self.mixup is not None and self.mixup.active:
            x, target = self.mixup(x, y)
        for cb in self.callbacks:
            cb.on_batch(self, x, target)
        with self._autocast():
            out = self.train_model(x)
        loss = self.criterion(out.float(), target)
        for cb in self.callbacks:
            new = cb.on_loss(self, loss)
            loss = loss if new is None else new
        scaled = loss / self.cfg.grad_accum_steps
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def _end_epoch(self, train_loss: float, batch_size: int, stage, epoch_time: float) -> dict[str, Any]:
        cfg = self.cfg
        row: dict[str, Any] = {"epoch": self.epoch, "train_loss": round(train_loss, 6), "lr": self.last_lr,
                               "img_size": self.train_transform.img_size, "stage": stage.stage if stage else "",
                               "batch_size": batch_size * self.dist.world_size, "steps": self.global_step,
                               "epoch_time": round(epoch_time, 2)}
        metric = None
        distribute_bn(self.model, self.dist, cfg.dist_bn)  # timm's --dist-bn, before evaluating and saving
        if self.ema is not None:
            distribute_bn(self.ema.module, self.dist, cfg.dist_bn)
        if (self.epoch + 1) % max(1, cfg.eval_interval) == 0 or self.epoch + 1 == self.total_epochs:
            ev = self._evaluate(self.model)
            row.update(eval_loss=ev["loss"], eval_top1=ev["top1"], eval_top5=ev["top5"])
            msg = (f"epoch {self.epoch + 1}/{self.total_epochs}: train loss {train_loss:.4f}, "
                   f"eval top-1 {ev['top1']:.2f}%, top-5 {ev['top5']:.2f}%")
            ee = self._evaluate(self.ema.module) if self.ema is not None else None
            if ee is not None:
                row.update(ema_eval_loss=ee["loss"], ema_eval_top1=ee["top1"], ema_eval_top5=ee["top5"])
                msg += f" (EMA {ee['top1']:.2f}% / {ee['top5']:.2f}%)"
            self.last_eval = (ev["top1"], ee["top1"] if ee else None)
            metric = max(ev["top1"], ee["top1"] if ee else -1.0)
            self.log(msg + f"  [{epoch_time:.1f} s]")
        self.schedule.observe(self.epoch + 1, metric)  # plateau: the next epochs' lr follows the evaluations
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.runlog.epoch(row)
        self.external.epoch(row)
        improved = metric is not None and (self.best_top1 is None or metric > self.best_top1)
        if improved:
            self.best_top1, self.best_epoch = metric, self.epoch - 1
        self.save(("last", "best") if improved else "last")
        if self.primary:
            report_bad_images(self.run_dir, self.data.train_set, self.data.val_set)
        return row

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.val_loader, device=self.device, amp=self.cfg.amp,
                        channels_last=self.cfg.channels_last, dist=self.dist, amp_dtype=self.cfg.amp_dtype,
                        progress=self.primary and not self.cfg.no_progress and sys.stderr.isatty())

    def _apply_stage(self, epoch: int) -> tuple[int, Any]:
        """The progressive stage of ``epoch``: image size, RandAugment magnitude, mixup/cutmix, dropout, batch."""
        if self.progressive is None:
            return self.cfg.batch_size, None
        from .progressive import set_dropout

        st = self.progressive.stage_at(epoch)
        self.train_transform.img_size = st.img_size
        self.train_transform.ra_magnitude = st.ra_magnitude
        if self.mixup is not None:
            self.mixup.mixup_alpha, self.mixup.cutmix_alpha = st.mixup_alpha, st.cutmix_alpha
        set_dropout(self.model, st.dropout)
        batch_size = st.batch_size or self.cfg.batch_size
        if st.start_epoch == epoch and self.step_in_epoch == 0:
            self.log(f"progressive stage {st.stage + 1}/{self.progressive.num_stages}: {st.describe(batch_size)}")
        return batch_size, st

    def _loader(self, batch_size: int, start_batch: int) -> DataLoader:
        self.sampler.set_epoch(self.epoch, start=start_batch * batch_size)
        self.data.train_set.epoch = self.epoch
        # a private generator: DataLoader draws its worker base seed from it, not from the global RNG
        gen = torch.Generator().manual_seed(self.cfg.seed + self.epoch)
        return DataLoader(self.data.train_set, batch_sampler=BatchSampler(self.sampler, batch_size, drop_last=True),
                          num_workers=self.cfg.workers, generator=gen, pin_memory=self.device.type == "cuda",
                          worker_init_fn=loader_worker_init() if self.cfg.workers else None)

    def _autocast(self):
        dtype = getattr(torch, self.cfg.amp_dtype)
        return torch.autocast(self.device.type, dtype=dtype) if self.cfg.amp else contextlib.nullcontext()

    def _all_reduce_loss(self, loss_sum: torch.Tensor, stop_flag: float) -> tuple[float, bool]:
        """All-reduce (loss, stop request) so every process sees a NaN or Ctrl-C at the same step."""
        t = all_reduce_sum(torch.stack([loss_sum.float(), torch.tensor(stop_flag, device=loss_sum.device)]), self.dist)
        return t[0].item() / self.dist.world_size, bool(t[1].item() > 0)

    def _diverged(self, what: str) -> TrainingDivergedError:
        """``what`` went wrong (a NaN loss, weights that are not finite): name the last good checkpoint."""
        if self._last_saved_step is not None:
            good = (f"the last good checkpoint is {self.run_dir / 'last.state.pt'} (global step "
                    f"{self._last_saved_step}), left untouched; resume it with --resume {self.run_dir} after ")
        else:
            good = "no checkpoint was saved before it; "
        self.runlog.event("diverged", step=self.global_step, epoch=self.epoch, what=what)
        return TrainingDivergedError(f"{what}; {good}lowering --lr, adding --clip-grad, or turning off --amp")

    # -- checkpoints -----------------------------------------------------------------------------------
    def save(self, tags: str | tuple[str, ...] = "last") -> Path | None:
        """Commit a checkpoint and point the ``tags`` links (``last``, ``best``) at it (rank 0). Called on every
        rank: it gathers each process's RNG state. Weights that are not finite are never saved."""
        rng_ranks = all_gather_object(ckpt_io.rng_state(), self.dist)
        bad = ckpt_io.non_finite(self.model.state_dict())
        if bad:
            raise self._diverged(f"after optimizer step {self.global_step} {len(bad)} weights are not finite "
                                 f"({bad[0]}, ...), so no checkpoint is written")
        if not self.primary:
            return None
        state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                 "optimizer": self.optimizer.state_dict(),
                 "rng_ranks": rng_ranks,  # every process's RNG (dropout and drop-path masks differ per rank)
                 "epoch_loss": list(self.epoch_loss), "best_top1": self.best_top1, "best_epoch": self.best_epoch,
                 "has_ema": self.ema is not None, "world_size": self.dist.world_size, "config": self.cfg.to_dict(),
                 "schedule": self.schedule.state_dict()}  # plateau counters (the other schedules have none)
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()  # float16 AMP: the loss scale continues on resume
        path = ckpt_io.save_checkpoint(
            self.run_dir, tags, model_state=self.model.state_dict(),
            ema_state=self.ema.state_dict() if self.ema is not None else None, train_state=state,
            model_name=self.cfg.model, model_config=model_config(self.model),
            metadata=spec_metadata(ModelSpec.from_model(self.model)))  # the weights describe themselves
        if "last" in tags:
            self._last_saved_step = self.global_step
        return path

    def _resume(self, ck: ckpt_io.Checkpoint) -> None:
        """Continue from ``ck`` (read and checked by ``run_dir.claim_run_dir``)."""
        self.model.load_state_dict({k: v.to(self.device) for k, v in ck.model.items()})
        if self.ema is not None and ck.ema is None:
            self.ema.set(self.model)
            self.log(f"note: {ck.path} has no EMA weights; the EMA starts from the resumed weights")
        elif self.ema is not None:
            self.ema.load_state_dict(ck.ema)
        st = ck.state
        try:
            self.optimizer.load_state_dict(st["optimizer"])
        except ValueError as exc:
            raise ckpt_io.CheckpointError(
                f"the optimizer state in {ck.path} does not fit --opt {self.cfg.opt}: {exc}") from exc
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        if "schedule" in st:
            self.schedule.load_state_dict(st["schedule"])
        if self.scaler is not None and "grad_scaler" in st:
            self.scaler.load_state_dict(st["grad_scaler"])
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

    # -- deploy ----------------------------------------------------------------------------------------
    def export_deploy(self) -> dict[str, Any]:
        """Write ``model_deploy.*``: the deploy form of the final weights (the EMA ones when they evaluated
        better), checked and timed on validation images by ``deploy.deploy_model``."""
        from ..deploy import deploy_model

        # no new evaluation here: only rank 0 exports, and evaluation all-reduces across ranks
        raw_top1, ema_top1 = self.last_eval
        use_ema = self.ema is not None and ema_top1 is not None and raw_top1 is not None and ema_top1 >= raw_top1
        model = copy.deepcopy(self.ema.module if use_ema else self.model)
        model = model.to("cpu", torch.float32, memory_format=torch.contiguous_format)
        rd, val = self.run_data, self.data.val_set
        sample = torch.stack([val[i][0] for i in range(min(16, len(val)))]).float()
        extra = {"img_size": rd.eval_img_size, "mean": list(rd.mean), "std": list(rd.std),
                 "classes": self.data.classes, "weights": "ema" if use_ema else "raw"}
        report = deploy_model(model, self.run_dir / "model_deploy.safetensors", sample, form="auto",
                              spec_extra=extra, bench_batch=64)
        info = {**extra, **report.to_dict(), "path": str(report.path)}
        self.runlog.event("deploy", **info)
        return info


# -- helpers ---------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
          callbacks: list[Callback] | tuple[Callback, ...] = ()) -> TrainResult:
    """Train ``config.model`` as configured (:class:`TrainConfig`). ``train_dataset``/``val_dataset`` replace
    the named data set (``(uint8 CHW image, label)`` with ``num_classes``, ``in_chans``, ``classes``,
    ``image_size``). A NaN/Inf loss raises :class:`TrainingDivergedError`; Ctrl-C saves ``last`` and returns
    with ``interrupted=True``."""
    return Trainer(config, train_dataset=train_dataset, val_dataset=val_dataset, callbacks=callbacks).run()
