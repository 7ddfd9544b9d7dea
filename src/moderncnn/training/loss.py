"""Binary cross-entropy on one-hot targets (timm's ``--bce-loss``).

Each class is an independent sigmoid; the target of a sample is its (mixed) one-hot vector, smoothed to
``(1 - smoothing) * y + smoothing / K`` over ``K`` classes, then optionally binarized at ``target_thresh``. As
in ResNet strikes back (Wightman, Touvron & Jégou, 2021, §3: BCE with thresholded Mixup/CutMix targets) and
timm's ``BinaryCrossEntropy``. Smoothing is linear, so smoothing mixed one-hot targets equals mixing smoothed
ones (timm's Mixup smooths before mixing): the trainer's mixup hands over unsmoothed targets either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BinaryCrossEntropy"]


class BinaryCrossEntropy(nn.Module):
    """``BCEWithLogits`` (mean over samples and classes) on smoothed, optionally thresholded one-hot targets.

    ``target`` is either class indices ``(N,)`` or class probabilities ``(N, K)`` (mixup/cutmix output).
    """

    def __init__(self, smoothing: float = 0.0, target_thresh: float | None = None) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing, self.target_thresh = smoothing, target_thresh

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[-1]
        if target.shape != logits.shape:  # class indices
            target = F.one_hot(target.long(), k).to(logits.dtype)
        target = target.to(logits.dtype) * (1.0 - self.smoothing) + self.smoothing / k
        if self.target_thresh is not None:
            target = (target > self.target_thresh).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target)
