"""ConvNeXt: "A ConvNet for the 2020s" (Liu et al., CVPR 2022).

Keys follow timm's layout (``stem.0``, ``stages.i.downsample.1``, ``stages.i.blocks.j.conv_dw``,
``mlp.fc1``, ``gamma``, ``head.norm``, ``head.fc``), so timm checkpoints load unchanged; the official
facebookresearch layout is mapped in ``moderncnn.interop.convnext``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import ClassifierHead, DepthwiseConv2d, DropPath, LayerNorm2d, drop_path_rates
from ..registry import register_model
from .base import ModelBase, ModelConfig


@dataclass(frozen=True, kw_only=True)
class ConvNeXtConfig(ModelConfig):
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    layer_scale_init_value: float = 1e-6  # 0 disables layer scale
    head_init_scale: float = 1.0  # 0.001 when fine-tuning (paper §A)
    conv_mlp: bool = False  # 1×1 convs + LayerNorm2d instead of NHWC Linear (timm's atto..nano)
    norm_eps: float = 1e-6


class Mlp(nn.Module):
    """Inverted-bottleneck MLP: fc1 (d -> 4d), GELU, fc2 (4d -> d); Linear on NHWC or 1×1 conv on NCHW."""

    def __init__(self, dim: int, hidden: int, conv: bool = False) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.fc1 = layer(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = layer(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """dw k×k -> LayerNorm -> 1×1 (4d) -> GELU -> 1×1 (d) -> layer scale -> drop path -> + x (§3)."""

    def __init__(self, cfg: ConvNeXtConfig, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_mlp = cfg.conv_mlp
        self.conv_dw = DepthwiseConv2d(dim, cfg.kernel_size, bias=True)
        self.norm = (LayerNorm2d if cfg.conv_mlp else nn.LayerNorm)(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(cfg.mlp_ratio * dim), conv=cfg.conv_mlp)
        ls = cfg.layer_scale_init_value
        self.gamma = nn.Parameter(torch.full((dim,), ls)) if ls > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def layer_scale_target(self) -> nn.Module:
        """The module whose output ``gamma`` scales (``moderncnn.fuse`` folds it there)."""
        return self.mlp.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            x = self.mlp(self.norm(x))
            x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        if self.gamma is not None:
            x = x * self.gamma.reshape(1, -1, 1, 1)
        return shortcut + self.drop_path(x)


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm + 2×2 stride-2 conv, §2.6) then ``depth`` blocks."""

    def __init__(self, cfg: ConvNeXtConfig, in_dim: int, dim: int, depth: int, dpr: list[float]) -> None:
        super().__init__()
        if in_dim != dim:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=cfg.norm_eps), nn.Conv2d(in_dim, dim, 2, 2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cfg, dim, dpr[i]) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(ModelBase):
    family = "convnext"

    def __init__(self, cfg: ConvNeXtConfig) -> None:
        super().__init__(cfg)
        dims, depths = cfg.dims, cfg.depths
        # "patchify" stem: 4×4 stride-4 conv + LayerNorm (§2.2)
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, dims[0], 4, 4), LayerNorm2d(dims[0], eps=cfg.norm_eps)
        )
        dpr = drop_path_rates(cfg.drop_path_rate, sum(depths))
        stages, self.feature_info, prev, start = [], [], dims[0], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(cfg, prev, dim, depth, dpr[start:start + depth]))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        # the LayerNorm comes *after* global pooling (official code)
        head_norm = nn.LayerNorm(dims[-1], eps=cfg.norm_eps)
        self.head = ClassifierHead(dims[-1], cfg.num_classes, cfg.drop_rate, norm=head_norm,
                                   pool_type=cfg.global_pool)
        self.apply(self._init_weights)
        if cfg.num_classes > 0 and cfg.head_init_scale != 1.0:
            with torch.no_grad():
                self.head.fc.weight.mul_(cfg.head_init_scale)
                self.head.fc.bias.mul_(cfg.head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _cfg(depths, dims, **kw) -> ConvNeXtConfig:
    return ConvNeXtConfig(depths=depths, dims=dims, **kw)


# name: depths, dims                          (paper Table 9; atto..nano are timm's small widths)
VARIANTS = {
    "convnext_atto": _cfg((2, 2, 6, 2), (40, 80, 160, 320), conv_mlp=True),
    "convnext_femto": _cfg((2, 2, 6, 2), (48, 96, 192, 384), conv_mlp=True),
    "convnext_pico": _cfg((2, 2, 6, 2), (64, 128, 256, 512), conv_mlp=True),
    "convnext_nano": _cfg((2, 2, 8, 2), (80, 160, 320, 640), conv_mlp=True),
    "convnext_tiny": _cfg((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": _cfg((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": _cfg((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": _cfg((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": _cfg((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
for _name, _c in VARIANTS.items():
    register_model(_name, ConvNeXt, _c, in_timm=True)
