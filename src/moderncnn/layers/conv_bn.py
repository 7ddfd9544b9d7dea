from collections.abc import Callable

import torch
from torch import nn

from .dwconv import create_conv2d
from .reparam import fold_bn


class ConvBN(nn.Module):
    """Conv2d (no bias) followed by BatchNorm2d; keys ``conv.weight`` and ``bn.*``.

    A depthwise conv is a :class:`~moderncnn.layers.DepthwiseConv2d` (:func:`create_conv2d`), so it runs
    through :mod:`moderncnn.kernels`' dispatch; same keys and numbers as ``nn.Conv2d``.

    ``equivalent_kernel_bias()`` gives the single conv it equals in eval mode (used by the Rep blocks);
    whole-model BN folding is :func:`moderncnn.fuse`'s job.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride, padding, groups)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_bn(self.conv.weight, self.bn)


class ConvBNAct(ConvBN):
    """:class:`ConvBN` followed by an activation (``act_layer=None`` for none)."""

    def __init__(self, *args, act_layer: Callable[[], nn.Module] | None = nn.ReLU, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
