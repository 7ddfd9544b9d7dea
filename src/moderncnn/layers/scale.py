import torch
from torch import nn


class LayerScale(nn.Module):
    """Learnable per-channel scale (CaiT); ``channel_dim`` is -1 for NHWC and 1 for NCHW tensors."""

    def __init__(self, dim: int, init_value: float = 1e-6, channel_dim: int = -1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_dim == -1:
            return x * self.gamma
        return x * self.gamma.view(-1, *([1] * (x.ndim - 1 - self.channel_dim)))
