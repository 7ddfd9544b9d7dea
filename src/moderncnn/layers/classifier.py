import torch
from torch import nn

from ..errors import ConfigError

# timm's global pooling types (``timm.layers.SelectAdaptivePool2d``): '' keeps the feature map
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def global_pool(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C), or (N, 2C) for ``catavgmax``; ``''`` returns the map unchanged."""
    if pool_type == "":
        return x
    if pool_type == "avg":
        return x.mean((2, 3))
    if pool_type == "max":
        return x.amax((2, 3))
    avg, peak = x.mean((2, 3)), x.amax((2, 3))
    return 0.5 * (avg + peak) if pool_type == "avgmax" else torch.cat((avg, peak), 1)


class ClassifierHead(nn.Module):
    """Global pool -> dropout -> Linear, with an optional norm (keys ``norm``, ``fc``).

    ``norm_before_pool`` puts the norm on the feature map (RepLKNet's BN) instead of on the pooled vector
    (ConvNeXt's LayerNorm). ``pool_type`` is one of timm's (:data:`POOL_TYPES`); as in timm, ``''``
    (no pooling) needs ``num_classes=0`` (the head then returns the, normalized, feature map), and
    ``catavgmax`` (width 2C) cannot feed a norm sized for C after pooling.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        drop_rate: float = 0.0,
        norm: nn.Module | None = None,
        norm_before_pool: bool = False,
        pool_type: str = "avg",
    ) -> None:
        super().__init__()
        self.in_features = dim
        self.norm_before_pool = norm_before_pool
        if norm is not None:
            self.norm = norm
        self.drop = nn.Dropout(drop_rate)
        self.pool_type = self._check_pool(pool_type, num_classes)
        self.fc = self._fc(num_classes)

    @property
    def num_features(self) -> int:
        """Width of the pooled (pre-logits) vector: twice ``in_features`` for ``catavgmax``."""
        return self.in_features * (2 if self.pool_type == "catavgmax" else 1)

    def _check_pool(self, pool_type: str, num_classes: int) -> str:
        if pool_type not in POOL_TYPES:
            raise ConfigError(f"global_pool {pool_type!r} is not one of timm's pooling types "
                              f"{', '.join(repr(p) for p in POOL_TYPES)}")
        if pool_type == "" and num_classes > 0:
            raise ConfigError("global_pool='' (no pooling) leaves a feature map that a Linear classifier cannot "
                              f"take; build it with num_classes=0 (got {num_classes}), as timm requires")
        norm_after = getattr(self, "norm", None) is not None and not self.norm_before_pool
        if pool_type == "catavgmax" and norm_after and not isinstance(self.norm, nn.Identity):
            raise ConfigError("global_pool='catavgmax' doubles the pooled width, but this head normalizes the "
                              "pooled vector with a norm sized for one (as timm's NormMlpClassifierHead refuses); "
                              "use 'avg', 'max' or 'avgmax'")
        return pool_type

    def _fc(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0 removes it); ``pool_type`` None keeps the pooling."""
        self.pool_type = self._check_pool(self.pool_type if pool_type is None else pool_type, num_classes)
        self.fc = self._fc(num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        norm = getattr(self, "norm", None)
        if norm is not None and self.norm_before_pool:
            x = norm(x)
        x = global_pool(x, self.pool_type)  # (N, C, H, W) -> (N, C) unless pool_type is ''
        if norm is not None and not self.norm_before_pool:
            x = _norm_map(norm, x) if self.pool_type == "" else norm(x)  # decided by the config: fx-traceable
        if pre_logits:
            return x
        return self.fc(self.drop(x))


def _norm_map(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm made for (N, C) vectors applied to every position of an (N, C, H, W) map."""
    if isinstance(norm, nn.LayerNorm):
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (N, C, H, W) -> (N, H, W, C) and back
    return norm(x.flatten(2)).view_as(x)  # BatchNorm1d takes (N, C, L)
