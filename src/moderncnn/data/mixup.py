"""Mixup (Zhang et al., ICLR 2018), CutMix (Yun et al., ICCV 2019) and label smoothing (Szegedy et al., 2016)
as batch-level operations that return probability targets, which ``nn.CrossEntropyLoss`` takes as they are.

EfficientNetV2's progressive learning raises the mixup/cutmix alpha per stage, so the alphas are mutable
attributes. With both alphas > 0 the official code gives half the batch mixup and half cutmix
(``split_batch=True``); timm instead picks one of them per batch with ``switch_prob`` (the default here).
"""

from __future__ import annotations

import math

import torch

__all__ = ["MixupCutmix", "smooth_one_hot"]


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 - smoothing + smoothing / K`` on the true class and
    ``smoothing / K`` elsewhere (rows sum to 1)."""
    # checked on the CPU only: on an accelerator the check would synchronize every batch
    if y.device.type == "cpu" and y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]; "
                         "is num_classes right?")
    off = smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, device=y.device, dtype=torch.float32)
    return out.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + off)


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


class MixupCutmix:
    """Batch-wise mixup / cutmix with label smoothing: ``x, y_soft = mix(x, y)``.

    Each image is mixed with the image at the mirrored batch position (``x.flip(0)``), as in timm.

    Args:
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 disables that method (both 0: only
            smoothed one-hot targets are returned, ``x`` unchanged). Mutable between epochs.
        prob: probability of mixing a given batch.
        switch_prob: with both alphas > 0, probability of cutmix instead of mixup for a batch.
        label_smoothing: smoothing applied to both target distributions before mixing.
        num_classes: number of classes of the targets.
        split_batch: with both alphas > 0, mix the first half of the batch with mixup and the second with cutmix
            (the official EfficientNetV2 behaviour) instead of switching per batch.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        split_batch: bool = False,
    ) -> None:
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.split_batch = split_batch

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @staticmethod
    def _mixup(x: torch.Tensor, t: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        return x * lam + x.flip(0) * (1.0 - lam), t * lam + t.flip(0) * (1.0 - lam)

    @staticmethod
    def _cutmix(x: torch.Tensor, t: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)  # box side ratio so that its area is (1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out = x.clone()
        out[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the box was clipped at the border: use its true area
        return out, t * lam + t.flip(0) * (1.0 - lam)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = smooth_one_hot(y, self.num_classes, self.label_smoothing).to(x.dtype if x.is_floating_point() else
                                                                        torch.float32)
        if not self.active or (self.prob < 1.0 and float(torch.rand(())) >= self.prob):
            return x, t
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            if self.split_batch and x.shape[0] >= 4:
                half = x.shape[0] // 2
                xa, ta = self._mixup(x[:half], t[:half], _beta(self.mixup_alpha))
                xb, tb = self._cutmix(x[half:], t[half:], _beta(self.cutmix_alpha))
                return torch.cat([xa, xb]), torch.cat([ta, tb])
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        if use_cutmix:
            return self._cutmix(x, t, _beta(self.cutmix_alpha))
        return self._mixup(x, t, _beta(self.mixup_alpha))

    def __repr__(self) -> str:
        return (f"MixupCutmix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, label_smoothing={self.label_smoothing}, "
                f"num_classes={self.num_classes}, split_batch={self.split_batch})")
