"""Per-step learning-rate schedules: cosine, step, TF exponential staircase, constant; linear warmup.

The schedule is a pure function of the global optimizer step, so resuming from a checkpoint reproduces the
learning rate exactly without saving any scheduler state.

EfficientNetV2 (Tan & Le, ICML 2021; ``google/automl/efficientnetv2/utils.py``) warms up linearly for 5 epochs,
then decays ``x0.97`` every 2.4 epochs with a TF ``ExponentialDecay(staircase=True)`` whose step counter starts at
step 0 (not after warmup); the warmup simply overrides the first steps. Cosine is likewise measured from step 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SCHEDULES", "LRSchedule"]

SCHEDULES = ("cosine", "step", "exponential_staircase", "constant")


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

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_epochs * self.steps_per_epoch)

    def _decayed(self, step: int) -> float:
        if self.sched == "constant":
            return self.base_lr
        if self.sched == "cosine":
            t = min(step, self.total_steps) / self.total_steps
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))
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
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / warmup
        return self._decayed(step)

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every param group for ``step``; a group's ``lr_scale`` multiplies it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"LRSchedule({args})"
