import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> Linear, with an optional norm (keys ``norm``, ``fc``).

    ``norm_before_pool`` puts the norm on the feature map (RepLKNet's BN) instead of on the pooled vector
    (ConvNeXt's LayerNorm).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        drop_rate: float = 0.0,
        norm: nn.Module | None = None,
        norm_before_pool: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = dim
        self.norm_before_pool = norm_before_pool
        if norm is not None:
            self.norm = norm
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        norm = getattr(self, "norm", None)
        if norm is not None and self.norm_before_pool:
            x = norm(x)
        x = x.mean((2, 3))  # (N, C, H, W) -> (N, C)
        if norm is not None and not self.norm_before_pool:
            x = norm(x)
        if pre_logits:
            return x
        return self.fc(self.drop(x))
