"""Exponential moving average of model weights (Polyak averaging), as used by EfficientNetV2 (decay 0.9999) and
the ConvNeXt / RepLKNet recipes.

The official EfficientNetV2 code (``google/automl/efficientnetv2/utils.py``) uses TF's
``ExponentialMovingAverage(decay, num_updates=step)``, whose effective decay is ``min(decay, (1 + step) /
(10 + step))``: early in training the average follows the weights closely instead of remembering the random
initialisation for ~10,000 steps. ``warmup=True`` reproduces that.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class ModelEma:
    """A frozen copy of a model whose weights track an exponential moving average of the training weights.

    ``ema = decay_t * ema + (1 - decay_t) * weights`` for every floating-point parameter and buffer, where
    ``decay_t = min(decay, (1 + step) / (10 + step))`` when ``warmup`` (TF's ``num_updates`` rule) else ``decay``.
    Non-floating buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied.

    Args:
        model: the model to track (a DDP / compiled wrapper is unwrapped). Create the EMA after moving the
            model to its device and before wrapping it in DDP, like timm.
        decay: the target decay.
        warmup: use the ``(1 + step) / (10 + step)`` warmup.
        device: keep the average on another device (e.g. ``"cpu"`` to save accelerator memory).
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, device: torch.device | str | None = None
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.module.to(self.device)
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0

    def decay_at(self, step: int) -> float:
        """Effective decay for update number ``step`` (0-based)."""
        if self.warmup:
            return min(self.decay, (1.0 + step) / (10.0 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Fold the current weights of ``model`` into the average. ``step`` defaults to the number of previous
        updates (pass the global optimizer step to make resumes exact)."""
        if step is None:
            step = self.num_updates
        d = self.decay_at(step)
        source = unwrap_model(model).state_dict()
        ema_float, src_float = [], []
        for name, ema_v in self.module.state_dict().items():
            v = source[name].detach()
            if v.device != ema_v.device:
                v = v.to(ema_v.device, non_blocking=True)
            if ema_v.is_floating_point():
                ema_float.append(ema_v)
                src_float.append(v.to(ema_v.dtype))
            else:  # integer buffers (num_batches_tracked) are copied
                ema_v.copy_(v)
        if ema_float:
            # ema += (1 - d) * (v - ema); one fused kernel per dtype/device instead of one per tensor
            torch._foreach_lerp_(ema_float, src_float, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy ``model``'s weights into the average (e.g. after loading pretrained weights)."""
        self.module.load_state_dict(unwrap_model(model).state_dict())

    def state_dict(self) -> dict:
        """The averaged model's plain state dict (what timm saves as ``state_dict_ema``), loadable into a bare
        model. The update counter is not saved: pass the global ``step`` to :meth:`update` after a resume."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        self.module.load_state_dict(state, strict=strict)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)
