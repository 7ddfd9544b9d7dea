"""Depthwise convolution computed through :func:`moderncnn.kernels.depthwise_conv2d`."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    # looked up at call time, so a replaced or monkeypatched implementation takes effect at once
    return kernels.depthwise_conv2d(x, weight, bias, stride=stride)


# a leaf for torch.fx (torchvision's create_feature_extractor): the dispatch looks at shapes and devices
torch.fx.wrap("depthwise_conv")


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise k×k conv (odd k, stride 1 or 2, padding k // 2) run by :func:`moderncnn.kernels.depthwise_conv2d`.

    An ``nn.Conv2d`` in every other respect (``weight`` (C, 1, k, k), ``bias``, ``kernel_size``, state-dict
    keys), so weight loading, BN folding (:func:`moderncnn.fuse` keeps the module and sets its ``bias``),
    export and anything else that inspects convolutions keep working, while the dispatch picks the
    implementation measured fastest for the device, layout, kernel size and stride (``docs/kernels.md``).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, bias: bool = False, **factory) -> None:
        super().__init__(
            channels, channels, kernel_size, stride, padding=kernel_size // 2, groups=channels, bias=bias, **factory
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv(x, self.weight, self.bias, self.stride[0])


def create_conv2d(
    in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, padding: int | None = None, groups: int = 1,
    bias: bool = False,
) -> nn.Conv2d:
    """``nn.Conv2d`` with padding ``kernel_size // 2`` by default, or a :class:`DepthwiseConv2d` when it is
    one (``groups == in_chs == out_chs > 1``, odd k, padding k // 2, stride 1 or 2): same parameters, keys
    and numbers either way."""
    padding = kernel_size // 2 if padding is None else padding
    if groups == in_chs == out_chs > 1 and kernel_size % 2 == 1 and padding == kernel_size // 2 and stride in (1, 2):
        return DepthwiseConv2d(out_chs, kernel_size, stride, bias=bias)
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=bias)
