"""Per-step learning-rate schedules under timm's names (cosine, tanh, step, multistep, plateau, poly, constant) and
the TF exponential staircase; linear warmup.

The schedule is a function of the global optimizer step (as timm's with ``--sched-on-updates``; the ``step``,
``multistep`` and ``plateau`` schedules change once per epoch, as timm's default), so resuming from a checkpoint
reproduces the learning rate exactly; ``plateau``, the one schedule that also depends on the evaluations, saves its
counters (:meth:`LRSchedule.state_dict`).

EfficientNetV2 (Tan & Le, ICML 2021; ``google/automl/efficientnetv2/utils.py``) warms up linearly for 5 epochs,
then decays ``x0.97`` every 2.4 epochs with a TF ``ExponentialDecay(staircase=True)`` whose step counter starts at
step 0 (not after warmup); the warmup simply overrides the first steps. Cosine is likewise measured from step 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SCHEDULES", "LRSchedule"]

SCHEDULES = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "exponential_staircase", "constant")

# timm's TanhLRScheduler bounds: tanh runs from lb to ub over the schedule (Hsueh et al., 2019)
_TANH_LB, _TANH_UB = -7.0, 3.0
# torch's ReduceLROnPlateau threshold, which timm's plateau schedule keeps: relative improvement of 1e-4
_PLATEAU_THRESHOLD = 1e-4


class LRSchedule:
    """Learning rate as a function of the optimizer step.

    Args:
        base_lr: peak learning rate (after warmup).
        total_steps: total optimizer steps of the run (cosine reaches ``min_lr`` there).
        steps_per_epoch: optimizer steps per epoch (converts the epoch-valued arguments to steps).
        sched: one of :data:`SCHEDULES`:

            - ``cosine``: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2``.
            - ``step``: timm's ``StepLRScheduler`` stepped per epoch:
              ``base_lr * decay_rate ** floor(epoch / decay_epochs)``, ``epoch = step // steps_per_epoch``.
            - ``exponential_staircase``: TF ``ExponentialDecay(staircase=True)`` on steps:
              ``base_lr * decay_rate ** floor(step / (decay_epochs * steps_per_epoch))``.
            - ``constant``: ``base_lr``.

            ``step`` and ``exponential_staircase`` are floored at ``min_lr`` (the official ``minimal_lr``).
            timm's schedules (``timm.scheduler.create_scheduler_v2``, same meaning of every argument):

            - ``tanh``: ``min_lr + (base_lr - min_lr) * (1 - tanh(-7 (1 - t) + 3 t)) / 2``, ``t = step /
              total_steps``; its warmup ends at the schedule's value there (as timm's).
            - ``multistep``: ``base_lr * decay_rate ** n`` in epoch ``e`` (0-based), ``n`` the number of
              ``decay_milestones`` not above ``e + 1`` (timm's convention: milestone ``m`` applies in the m-th epoch).
            - ``plateau``: ``base_lr * decay_rate ** k``, ``k`` the decays so far: one each time ``patience_epochs``
              evaluations in a row failed to improve the metric (relative 1e-4, ``plateau_mode`` max or min) fed to
              :meth:`observe`; floored at ``min_lr``.
            - ``poly``: ``min_lr + (base_lr - min_lr) * (1 - step / total_steps) ** decay_rate``.

            ``cosine``, ``tanh`` and ``poly`` stay at ``min_lr`` after ``total_steps`` (timm's
            ``--cooldown-epochs`` trains on there).
        warmup_epochs: linear warmup length in epochs (may be fractional).
        warmup_lr: learning rate at step 0 of the warmup (official code: 0).
        min_lr: lower bound.
        decay_epochs, decay_rate: period and factor of the step/staircase decays (EfficientNetV2: 2.4, 0.97).
    """

    def __init__(
        self,
        base_lr: float,
        total_steps: int,
        steps_per_epoch: int,
        *,
        sched: str = "cosine",
        warmup_epochs: float = 0,
        warmup_lr: float = 0.0,
        min_lr: float = 0.0,
        decay_epochs: float = 2.4,
        decay_rate: float = 0.97,
        decay_milestones: tuple[int, ...] = (),
        patience_epochs: int = 10,
        plateau_mode: str = "max",
    ) -> None:
        if sched not in SCHEDULES:
            raise ValueError(f"Unknown lr schedule {sched!r}; expected one of {', '.join(SCHEDULES)}.")
        if steps_per_epoch <= 0 or total_steps <= 0:
            raise ValueError(f"steps_per_epoch and total_steps must be positive, got {steps_per_epoch}, {total_steps}")
        if sched in ("step", "exponential_staircase") and decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be positive for sched={sched!r}, got {decay_epochs}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.sched = sched
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.decay_epochs = float(decay_epochs)
        self.decay_rate = float(decay_rate)
        self.decay_milestones = tuple(int(m) for m in decay_milestones)
        self.patience_epochs = int(patience_epochs)
        if plateau_mode not in ("max", "min"):
            raise ValueError(f"plateau_mode must be max or min, got {plateau_mode!r}")
        self.plateau_mode = plateau_mode
        # plateau state (saved in checkpoints): decays so far, best metric, evaluations without improvement
        self.plateau_decays, self.best, self.bad_epochs = 0, None, 0

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_epochs * self.steps_per_epoch)

    def _decayed(self, step: int) -> float:
        if self.sched == "constant":
            return self.base_lr
        t = min(step, self.total_steps) / self.total_steps
        if self.sched == "cosine":
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))
        if self.sched == "tanh":
            if step >= self.total_steps:
                return self.min_lr
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
                1.0 - math.tanh(_TANH_LB * (1.0 - t) + _TANH_UB * t))
        if self.sched == "poly":
            return self.min_lr + (self.base_lr - self.min_lr) * (1.0 - t) ** self.decay_rate
        if self.sched == "multistep":
            epoch = step // self.steps_per_epoch
            return self.base_lr * self.decay_rate ** sum(m <= epoch + 1 for m in self.decay_milestones)
        if self.sched == "plateau":
            return max(self.base_lr * self.decay_rate**self.plateau_decays, self.min_lr)
        if self.sched == "step":
            epoch = step // self.steps_per_epoch
            lr = self.base_lr * self.decay_rate ** math.floor(epoch / self.decay_epochs)
        else:  # exponential_staircase
            lr = self.base_lr * self.decay_rate ** math.floor(step / (self.decay_epochs * self.steps_per_epoch))
        return max(lr, self.min_lr)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        warmup = self.warmup_steps
        if step < warmup:
            # timm's tanh warms up to where its curve is at the end of the warmup; the others to base_lr
            target = self._decayed(warmup) if self.sched == "tanh" else self.base_lr
            return self.warmup_lr + (target - self.warmup_lr) * step / warmup
        return self._decayed(step)

    def observe(self, epochs_done: int, metric: float | None) -> None:
        """Feed the evaluation metric after ``epochs_done`` epochs (``plateau`` only; others ignore it). As in
        timm, metrics of warmup epochs are not counted."""
        if self.sched != "plateau" or metric is None or epochs_done <= self.warmup_epochs:
            return
        if self.best is None:
            better = True
        elif self.plateau_mode == "max":
            better = metric > self.best * (1.0 + _PLATEAU_THRESHOLD)
        else:
            better = metric < self.best * (1.0 - _PLATEAU_THRESHOLD)
        if better:
            self.best, self.bad_epochs = float(metric), 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience_epochs:
            self.plateau_decays, self.bad_epochs = self.plateau_decays + 1, 0

    def state_dict(self) -> dict:
        """What :meth:`observe` has learnt (the rest is configuration)."""
        return {"plateau_decays": self.plateau_decays, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_decays, self.best, self.bad_epochs = state["plateau_decays"], state["best"], state["bad_epochs"]

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every param group for ``step``; a group's ``lr_scale`` multiplies it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"LRSchedule({args})"
