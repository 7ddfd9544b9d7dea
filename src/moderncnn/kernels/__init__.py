"""Fast operators behind one dispatch point each.

``depthwise_conv2d`` is the single entry for RepLKNet's large depthwise convolutions: stride 1, 'same'
padding, odd kernel. ``impl="torch"`` is PyTorch's ``F.conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, impl: str = "auto"
) -> torch.Tensor:
    """Depthwise conv, stride 1, 'same' padding: ``x`` (N, C, H, W), ``weight`` (C, 1, k, k)."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, stride=1, padding=k // 2, groups=x.shape[1])


__all__ = ["depthwise_conv2d"]
