"""MobileNetV2: "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (Sandler et al., CVPR 2018).

The baseline two other families argue against: MobileNeXt (Zhou et al., ECCV 2020) flips its inverted
residual into the sandglass block, and RepLKNet (Ding et al., CVPR 2022, §3, Table 2 and Table 3) runs its
large-kernel guidelines on it, enlarging the depthwise kernels of one stage and training them with a
parallel small kernel that is merged afterwards.

Each row of the paper's Table 2 is one stage of blocks: the first with stride ``s``, all with expansion
``t``. A block is 1×1 (C -> tC) conv-BN-ReLU6 -> depthwise k×k (stride) conv-BN-ReLU6 -> 1×1 (tC -> C')
conv-BN (linear bottleneck, §3.2) [-> + x when stride 1 and C == C' (§3.3)]; with t = 1 (the first row)
the expansion conv is absent. Widths, stem and head follow timm's ``mobilenetv2_*`` (its default
constructor arguments), whose weights load through ``moderncnn.interop.mobilenetv2``.

Native keys: ``stem.{conv,bn}``, ``stages.i.j.{expand,dw,project}`` (``dw.small`` for the parallel small
kernel, ``dw.reparam_conv`` once merged), ``conv_head.{conv,bn}``, ``head.fc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import ClassifierHead, ConvBN, ConvBNAct, DropPath, drop_path_rates, make_divisible, pad_kernel_to
from ..layers.reparam import fold_bn, merged_conv
from ..registry import register_model
from .base import ModelBase, ModelConfig, levels_at_stage_ends
from .efficientnetv2 import EfficientNetV2

# paper Table 2 (after the stem); t is the expansion ratio
#   t,   c, n, s
MOBILENETV2_ARCH = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True, kw_only=True)
class MobileNetV2Config(ModelConfig):
    width_mult: float = 1.0
    arch: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_ARCH  # rows of (t, c, n, s)
    stem_chs: int = 32
    head_chs: int = 1280  # widened with width_mult > 1, never narrowed (timm and the paper)
    # timm's default (same name, same function); the paper's classifier dropout is set by a recipe
    drop_rate: float = 0.0
    # ablation switches
    shortcut: bool = True  # the inverted residual's identity shortcut (§3.3)
    # depthwise kernel per row of ``arch``; RepLKNet (Table 3) enlarges one stage's 3×3 to 7×7 or 13×13
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 3, 3, 3, 3)
    # a parallel depthwise conv-BN of this size beside every larger depthwise kernel, merged into it by
    # ``reparameterize()`` (RepLKNet §3, guideline 2); None: no parallel branch
    small_kernel: int | None = None

    def __post_init__(self) -> None:
        if self.width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        for row in self.arch:
            if len(row) != 4 or row[0] < 1 or row[2] < 1 or row[3] not in (1, 2):
                raise ConfigError(f"arch rows are (t >= 1, c, n >= 1, s in {{1, 2}}), got {row}")
        if len(self.kernel_sizes) != len(self.arch):
            raise ConfigError(
                f"kernel_sizes needs one depthwise kernel per arch row ({len(self.arch)}), got {self.kernel_sizes}"
            )
        kernels = tuple(self.kernel_sizes) + ((self.small_kernel,) if self.small_kernel is not None else ())
        if any(k < 1 or k % 2 == 0 for k in kernels):
            raise ConfigError(
                f"kernel sizes must be odd and positive so 'same' padding centres them; got kernel_sizes="
                f"{self.kernel_sizes}, small_kernel={self.small_kernel}"
            )


class DepthwiseConvBN(nn.Module):
    """Depthwise k×k conv-BN, optionally with a parallel smaller depthwise conv-BN, then ReLU6.

    The small branch uses the same stride and 'same' padding, so after zero-padding its kernel to k×k
    the centres align and the two branches merge into one depthwise conv with bias (RepLKNet §3,
    guideline 2). Without a small branch there is nothing to merge: ``reparameterize()`` leaves the
    conv-BN for :func:`moderncnn.fuse` to fold.
    """

    def __init__(self, chs: int, kernel_size: int, stride: int, small_kernel: int | None = None) -> None:
        super().__init__()
        self.chs, self.kernel_size, self.stride = chs, kernel_size, stride
        self.conv = nn.Conv2d(chs, chs, kernel_size, stride, kernel_size // 2, groups=chs, bias=False)
        self.bn = nn.BatchNorm2d(chs)
        self.small = None
        if small_kernel is not None and small_kernel < kernel_size:
            self.small = ConvBN(chs, chs, small_kernel, stride, groups=chs)
        self.act = nn.ReLU6()
        self.reparam_conv: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))
        y = self.bn(self.conv(x))
        if self.small is not None:
            y = y + self.small(x)
        return self.act(y)

    def _fused_conv(self, **factory) -> nn.Conv2d:
        k = self.kernel_size
        return nn.Conv2d(self.chs, self.chs, k, self.stride, k // 2, groups=self.chs, bias=True, **factory)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel (C, 1, k, k) and bias (C,) of the one conv equal to both branches in eval mode."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        kernel, bias = fold_bn(self.conv.weight, self.bn)
        if self.small is not None:
            small_kernel, small_bias = self.small.equivalent_kernel_bias()
            kernel, bias = kernel + pad_kernel_to(small_kernel, self.kernel_size), bias + small_bias
        return kernel, bias

    def reparameterize(self) -> None:
        """Merge the small branch into the large kernel (eval mode; no-op without a small branch or twice)."""
        if self.small is None or self.reparam_conv is not None:
            return
        self.reparam_conv = merged_conv(self, self._fused_conv)
        del self.conv, self.bn
        self.small = None

    def extra_repr(self) -> str:
        small = None if self.small is None else self.small.conv.kernel_size[0]
        return f"{self.chs}, kernel_size={self.kernel_size}, stride={self.stride}, small_kernel={small}"


class InvertedResidual(nn.Module):
    """1×1 expand (ReLU6) -> depthwise k×k (ReLU6) -> 1×1 linear projection [-> + x] (paper §3.3, Fig. 3d).

    ``expand`` is absent when ``t == 1`` (timm's ``DepthwiseSeparableConv``, the paper's first row).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, t: int, kernel_size: int,
                 small_kernel: int | None = None, shortcut: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = make_divisible(in_chs * t, 8) if t > 1 else in_chs
        self.expand = ConvBNAct(in_chs, mid, 1, act_layer=nn.ReLU6) if t > 1 else None
        self.dw = DepthwiseConvBN(mid, kernel_size, stride, small_kernel)
        self.project = ConvBN(mid, out_chs, 1)
        self.has_shortcut = shortcut and stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_shortcut and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        return x + self.drop_path(y) if self.has_shortcut else y


class MobileNetV2(ModelBase):
    """Stem (3×3 s2 conv-BN-ReLU6) -> seven stages of inverted residuals -> 1×1 conv-BN-ReLU6 -> pool, FC.

    Feature levels are timm's: one per stride (2, 4, 8, 16, 32), each the output of the last stage at
    that stride.
    """

    family = "mobilenetv2"
    head_attrs = ("conv_head", "head")

    def __init__(self, cfg: MobileNetV2Config) -> None:
        super().__init__(cfg)
        w = cfg.width_mult
        stem = make_divisible(cfg.stem_chs * w, 8)
        self.stem = ConvBNAct(cfg.in_chans, stem, 3, 2, act_layer=nn.ReLU6)
        dpr = drop_path_rates(cfg.drop_path_rate, sum(n for _, _, n, _ in cfg.arch))
        stages, self.feature_info, inp, reduction, idx = [], [], stem, 2, 0
        for i, ((t, c, n, s), k) in enumerate(zip(cfg.arch, cfg.kernel_sizes)):
            oup = make_divisible(c * w, 8)
            blocks = []
            for j in range(n):
                stride = s if j == 0 else 1
                blocks.append(InvertedResidual(inp, oup, stride, t, k, cfg.small_kernel, cfg.shortcut, dpr[idx]))
                inp, idx = oup, idx + 1
            reduction *= s
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=oup, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_info = levels_at_stage_ends(self.feature_info)  # one level per stride, as timm's
        self.num_features = max(cfg.head_chs, make_divisible(cfg.head_chs * w, 8))
        self.conv_head = ConvBNAct(inp, self.num_features, 1, act_layer=nn.ReLU6)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate, pool_type=cfg.global_pool)
        # timm initializes MobileNetV2 as EfficientNet (TensorFlow's rule): the same function serves both
        self.apply(EfficientNetV2._init_weights)

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(x)


# name: width multiplier (timm's mobilenetv2_050/100/140)
MOBILENETV2_WIDTHS = {"mobilenetv2_050": 0.5, "mobilenetv2_100": 1.0, "mobilenetv2_140": 1.4}
for _name, _w in MOBILENETV2_WIDTHS.items():
    register_model(_name, MobileNetV2, MobileNetV2Config(width_mult=_w), in_timm=True)
