from collections.abc import Callable

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018): mean pool -> 1×1 (C -> r, bias) -> act -> 1×1 (r -> C,
    bias) -> sigmoid -> scale the input. Keys ``reduce``, ``expand``.

    The reduced width ``rd_chs`` is the caller's choice: EfficientNetV2 derives it from the block *input*
    width (with SiLU), RepVGG-D2se from the block width (with ReLU). RepVGG's official ``SEBlock`` pools
    with ``avg_pool2d(kernel=W)``, which equals this global mean on the square inputs it was built for.
    """

    def __init__(self, chs: int, rd_chs: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(chs, rd_chs, 1)
        self.act = act_layer()
        self.expand = nn.Conv2d(rd_chs, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()
