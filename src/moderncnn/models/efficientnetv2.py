"""EfficientNetV2: "EfficientNetV2: Smaller Models and Faster Training" (Tan & Le, ICML 2021).

Stages of Fused-MBConv (§3.2, Figure 2: one k×k conv replaces MBConv's 1×1 expansion + depthwise conv)
followed by MBConv stages with squeeze-excite; variant rows copy the paper's Table 3 (V2-S) and the
official ``effnetv2_configs.py`` (M, L, XL, and the B0–B3 base scaled by width/depth).

Two padding flavours: ``padding="pytorch"`` pads every k×k conv by k//2 (timm's ``efficientnetv2_*``);
``padding="same"`` reproduces TensorFlow's 'same' padding of the official code (timm's
``tf_efficientnetv2_*``), which on even inputs pads stride-2 convs on the right/bottom only. Weights of
one flavour run in the other, but the logits change.

Native keys: ``stem.{conv,bn}``, ``stages.i.j.{fused,expand,dw,se,project}``, ``conv_head.{conv,bn}``,
``head.fc``; ``moderncnn.interop.efficientnetv2`` maps timm's (and so the official) layout onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layers import ClassifierHead, ConvBNAct, DropPath, SqueezeExcite, make_divisible
from ..registry import register_model
from .base import ModelBase, ModelConfig, levels_at_stage_ends


class Stage(NamedTuple):
    """One row of the paper's stage table (Table 3): ``repeats`` blocks, the first with ``stride``."""

    block: Literal["fused", "mbconv"]
    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int
    se_ratio: float = 0.0  # 0: no squeeze-excite


@dataclass(frozen=True, kw_only=True)
class EfficientNetV2Config(ModelConfig):
    stages: tuple[Stage, ...]
    stem_chs: int = 32  # before width scaling; the official code uses the first stage's input filters
    head_chs: int = 1280  # the 1×1 conv before pooling, scaled by width like every other width
    width_mult: float = 1.0
    depth_mult: float = 1.0
    bn_eps: float = 1e-3  # official hparams.py (timm's efficientnetv2_s/m/l/xl names use 1e-5)
    padding: Literal["same", "pytorch"] = "pytorch"
    # paper's defaults (§2.4, official survival_prob 0.8); names timm has use timm's 0/0 instead and the
    # recipes set the paper's values (docs/architectures.md, "Names shared with timm")
    drop_rate: float = 0.2
    drop_path_rate: float = 0.2
    # ablation switch (§3.2, the table on Fused-MBConv placement): the first ``fused_stages`` stages use
    # Fused-MBConv, the rest MBConv, each keeping its row's expansion, kernel and SE. None: the variant's
    # table (Fused-MBConv in the first three stages); 0: MBConv everywhere; len(stages): Fused everywhere
    fused_stages: int | None = None

    def __post_init__(self) -> None:
        # rows may come from YAML/JSON (``--model-kwargs``, a searched architecture): lists or mappings
        object.__setattr__(self, "stages", tuple(_as_stage(s) for s in self.stages))
        if self.fused_stages is not None and not 0 <= self.fused_stages <= len(self.stages):
            raise ConfigError(
                f"fused_stages must be None (the variant's table) or 0..{len(self.stages)}, got {self.fused_stages}"
            )
        if self.padding not in ("same", "pytorch"):
            raise ConfigError(
                f"padding must be 'same' (TensorFlow, as the official weights) or 'pytorch' (k//2), "
                f"got {self.padding!r}"
            )
        for s in self.stages:
            if s.block not in ("fused", "mbconv"):
                raise ConfigError(f"stage block type must be 'fused' or 'mbconv', got {s.block!r} in {s}")

    def stage_rows(self) -> tuple[Stage, ...]:
        """The stage table with ``fused_stages`` applied."""
        if self.fused_stages is None:
            return self.stages
        return tuple(
            s._replace(block=FUSED if i < self.fused_stages else MBCONV) for i, s in enumerate(self.stages)
        )

    def round_filters(self, filters: int) -> int:
        """Width scaling (official ``round_filters``): nearest multiple of 8, with no 90% correction."""
        return make_divisible(filters * self.width_mult, 8, round_limit=0.0)

    def round_repeats(self, repeats: int) -> int:
        """Depth scaling (official ``round_repeats``): ceil."""
        return int(math.ceil(self.depth_mult * repeats))


def _as_stage(row: object) -> Stage:
    """A :class:`Stage` from a Stage, a sequence in its field order, or a mapping of its fields."""
    if isinstance(row, Stage):
        return row
    try:
        if isinstance(row, dict):
            return Stage(**row)
        if isinstance(row, (list, tuple)):
            return Stage(*row)
    except TypeError as exc:
        raise ConfigError(f"bad stage row {row!r}: {exc}; expected (block, expand, kernel, stride, channels, "
                          "repeats[, se_ratio]) or a mapping of those fields") from exc
    raise ConfigError(f"a stage row must be a sequence or a mapping of {Stage._fields}, got {row!r}")


# -- TensorFlow 'same' padding ------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF 'same': output ceil(size/stride); the odd pixel goes after."""
    out = -(-size // stride)  # integer ceil, so symbolic shapes stay symbolic under export/compile
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...]) -> torch.Tensor:
    """Pad ``x`` as TF 'same' would before a conv of this kernel/stride/dilation."""
    ph = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    pw = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return F.pad(x, [pw[0], pw[1], ph[0], ph[1]])


# a leaf for torch.fx (torchvision's create_feature_extractor): the padding depends on the input's size,
# which symbolic tracing does not know
torch.fx.wrap("pad_same")


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'same' padding computed from each input's size.

    A subclass, so anything that folds BatchNorm into an ``nn.Conv2d`` (a deepcopy keeps the class)
    still works and keeps the padding rule.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(pad_same(x, self.kernel_size, self.stride, self.dilation), self.weight, self.bias)


def conv_bn(
    cfg: EfficientNetV2Config, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1,
    groups: int = 1, act: bool = True,
) -> ConvBNAct:
    """Conv (no bias) -> BN (eps ``cfg.bn_eps``) -> SiLU (or nothing), padded as ``cfg.padding`` says."""
    m = ConvBNAct(in_chs, out_chs, kernel, stride, groups=groups, bn_eps=cfg.bn_eps,
                  act_layer=nn.SiLU if act else None)
    # stride 1 with an odd kernel: k//2 on both sides *is* TF 'same', so only strided convs differ
    if cfg.padding == "same" and (stride > 1 or kernel % 2 == 0):
        m.conv = Conv2dSame(in_chs, out_chs, kernel, stride, groups=groups, bias=False)
    return m


# -- blocks (§3.2, Figure 2) -------------------------------------------------------------------------


def _se(in_chs: int, mid_chs: int, se_ratio: float) -> nn.Module:
    # the reduced width comes from the block *input* width (official effnetv2_model.py:
    # max(1, int(input_filters * se_ratio))), not from the expanded width it acts on
    return SqueezeExcite(mid_chs, max(1, int(in_chs * se_ratio)), nn.SiLU) if se_ratio > 0 else nn.Identity()


class _Residual(nn.Module):
    """Shared tail: identity shortcut with drop path, only when stride 1 and in == out."""

    def _init_residual(self, in_chs: int, out_chs: int, stride: int, drop_path: float) -> None:
        self.has_residual = stride == 1 and in_chs == out_chs
        # no shortcut, nothing to drop: stochastic depth applies to residual blocks only (official code;
        # docs/architectures.md, EfficientNetV2)
        self.drop_path = DropPath(drop_path) if self.has_residual and drop_path > 0 else nn.Identity()

    def _finish(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return shortcut + self.drop_path(x) if self.has_residual else x


class FusedMBConv(_Residual):
    """Fused-MBConv: k×k conv (i -> i·e, stride) -> BN -> SiLU -> [SE] -> 1×1 (-> o) -> BN.

    With e = 1 there is a single k×k conv (i -> o) -> BN -> SiLU: the activation is kept because there
    is no projection after it (official ``FusedMBConvBlock``).
    """

    def __init__(self, cfg: EfficientNetV2Config, in_chs: int, out_chs: int, expand: int, kernel: int,
                 stride: int, se_ratio: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = in_chs * expand
        if expand == 1:
            self.fused = conv_bn(cfg, in_chs, out_chs, kernel, stride)
            self.se = _se(in_chs, out_chs, se_ratio)
            self.project = nn.Identity()
        else:
            self.fused = conv_bn(cfg, in_chs, mid, kernel, stride)
            self.se = _se(in_chs, mid, se_ratio)
            self.project = conv_bn(cfg, mid, out_chs, 1, act=False)
        self._init_residual(in_chs, out_chs, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.project(self.se(self.fused(x))), x)


class MBConv(_Residual):
    """MBConv: 1×1 (i -> i·e) -> BN -> SiLU -> depthwise k×k (stride) -> BN -> SiLU -> SE -> 1×1 (-> o) -> BN."""

    def __init__(self, cfg: EfficientNetV2Config, in_chs: int, out_chs: int, expand: int, kernel: int,
                 stride: int, se_ratio: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = in_chs * expand
        self.expand = conv_bn(cfg, in_chs, mid, 1) if expand != 1 else nn.Identity()
        self.dw = conv_bn(cfg, mid, mid, kernel, stride, groups=mid)
        self.se = _se(in_chs, mid, se_ratio)
        self.project = conv_bn(cfg, mid, out_chs, 1, act=False)
        self._init_residual(in_chs, out_chs, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.project(self.se(self.dw(self.expand(x)))), x)


_BLOCKS = {"fused": FusedMBConv, "mbconv": MBConv}


def block_drop_path_rates(rate: float, n: int) -> list[float]:
    """Official schedule: block idx of n gets ``rate * idx / n`` (survival ``1 - rate·idx/n``), so the
    last block gets ``rate·(n-1)/n`` — not ``linspace(0, rate, n)``."""
    return [rate * i / n for i in range(n)]


class EfficientNetV2(ModelBase):
    """Stem (3×3 s2 conv-BN-SiLU) -> stages -> neck (1×1 conv to 1280·w, BN, SiLU) -> pool, dropout, FC."""

    family = "efficientnetv2"
    head_attrs = ("conv_head", "head")  # features-only drops the 1×1 head conv as well

    def __init__(self, cfg: EfficientNetV2Config) -> None:
        super().__init__(cfg)
        stem_chs = cfg.round_filters(cfg.stem_chs)
        self.stem = conv_bn(cfg, cfg.in_chans, stem_chs, 3, 2)
        rows = cfg.stage_rows()
        repeats = [cfg.round_repeats(s.repeats) for s in rows]
        dpr = block_drop_path_rates(cfg.drop_path_rate, sum(repeats))
        stages, self.feature_info = [], []
        in_chs, reduction, idx = stem_chs, 2, 0
        for i, (s, n) in enumerate(zip(rows, repeats)):
            out_chs = cfg.round_filters(s.channels)
            blocks = []
            for j in range(n):
                stride = s.stride if j == 0 else 1
                blocks.append(_BLOCKS[s.block](cfg, in_chs, out_chs, s.expand, s.kernel, stride,
                                               s.se_ratio, dpr[idx]))
                in_chs, idx = out_chs, idx + 1
            reduction *= s.stride
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        # timm's levels: one per stride (a stride-1 stage joins the level of the stage after it)
        self.feature_info = levels_at_stage_ends(self.feature_info)
        self.num_features = cfg.round_filters(cfg.head_chs)
        self.conv_head = conv_bn(cfg, in_chs, self.num_features, 1)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate, pool_type=cfg.global_pool)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official effnetv2_model.py: conv ~ N(0, sqrt(2 / fan_out)), dense ~ U(±1/sqrt(out))
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(x)


# -- variants -----------------------------------------------------------------------------------------

FUSED, MBCONV = "fused", "mbconv"

#     block    e  k  s    c   n    se      (paper Table 3 / official effnetv2_configs.py)
_BASE = (
    Stage(FUSED,  1, 3, 1,  16,  1),
    Stage(FUSED,  4, 3, 2,  32,  2),
    Stage(FUSED,  4, 3, 2,  48,  2),
    Stage(MBCONV, 4, 3, 2,  96,  3, 0.25),
    Stage(MBCONV, 6, 3, 1, 112,  5, 0.25),
    Stage(MBCONV, 6, 3, 2, 192,  8, 0.25),
)
_S = (
    Stage(FUSED,  1, 3, 1,  24,  2),
    Stage(FUSED,  4, 3, 2,  48,  4),
    Stage(FUSED,  4, 3, 2,  64,  4),
    Stage(MBCONV, 4, 3, 2, 128,  6, 0.25),
    Stage(MBCONV, 6, 3, 1, 160,  9, 0.25),
    Stage(MBCONV, 6, 3, 2, 256, 15, 0.25),
)
_M = (
    Stage(FUSED,  1, 3, 1,  24,  3),
    Stage(FUSED,  4, 3, 2,  48,  5),
    Stage(FUSED,  4, 3, 2,  80,  5),
    Stage(MBCONV, 4, 3, 2, 160,  7, 0.25),
    Stage(MBCONV, 6, 3, 1, 176, 14, 0.25),
    Stage(MBCONV, 6, 3, 2, 304, 18, 0.25),
    Stage(MBCONV, 6, 3, 1, 512,  5, 0.25),
)
_L = (
    Stage(FUSED,  1, 3, 1,  32,  4),
    Stage(FUSED,  4, 3, 2,  64,  7),
    Stage(FUSED,  4, 3, 2,  96,  7),
    Stage(MBCONV, 4, 3, 2, 192, 10, 0.25),
    Stage(MBCONV, 6, 3, 1, 224, 19, 0.25),
    Stage(MBCONV, 6, 3, 2, 384, 25, 0.25),
    Stage(MBCONV, 6, 3, 1, 640,  7, 0.25),
)
_XL = (
    Stage(FUSED,  1, 3, 1,  32,  4),
    Stage(FUSED,  4, 3, 2,  64,  8),
    Stage(FUSED,  4, 3, 2,  96,  8),
    Stage(MBCONV, 4, 3, 2, 192, 16, 0.25),
    Stage(MBCONV, 6, 3, 1, 256, 24, 0.25),
    Stage(MBCONV, 6, 3, 2, 512, 32, 0.25),
    Stage(MBCONV, 6, 3, 1, 640,  8, 0.25),
)

# size: stages, stem, width, depth, dropout, train size (timm's input_size), eval size
# (official code; docs/architectures.md, EfficientNetV2)
_VARIANTS = {
    "b0": (_BASE, 32, 1.0, 1.0, 0.2, 192, 224),
    "b1": (_BASE, 32, 1.0, 1.1, 0.2, 192, 240),
    "b2": (_BASE, 32, 1.1, 1.2, 0.3, 208, 260),
    "b3": (_BASE, 32, 1.2, 1.4, 0.3, 240, 300),
    "s": (_S, 24, 1.0, 1.0, 0.2, 300, 384),
    "m": (_M, 24, 1.0, 1.0, 0.3, 384, 480),
    "l": (_L, 32, 1.0, 1.0, 0.4, 384, 480),
    "xl": (_XL, 32, 1.0, 1.0, 0.4, 384, 512),
}
# any stage table (architecture search, moderncnn.search; docs/search.md): B0's base until overridden, e.g.
# create_model("efficientnetv2_custom", stages=[["fused", 1, 3, 1, 16, 1], ...])
register_model("efficientnetv2_custom", EfficientNetV2, EfficientNetV2Config(stages=_BASE),
               input_size=192, test_input_size=224)
# timm trained its own PyTorch-padded S and M at smaller sizes; its input_size is the default there
_TIMM_PYTORCH_TRAIN_SIZE = {"s": 288, "m": 320}

for _size, (_stages, _stem, _w, _d, _drop, _train, _eval) in _VARIANTS.items():
    for _padding, _prefix in (("pytorch", "efficientnetv2_"), ("same", "tf_efficientnetv2_")):
        _in_timm = _padding == "same" or _size in ("s", "m", "l", "xl")  # timm lacks efficientnetv2_b*
        # same name, same function: a timm name gets timm's defaults (BN eps 1e-5 for its PyTorch-padded
        # models, 1e-3 for the tf_ ports; no dropout, no drop path); our own B0-B3 keep the paper's
        _defaults = dict(drop_rate=0.0, drop_path_rate=0.0) if _in_timm else dict(drop_rate=_drop)
        if _in_timm and _padding == "pytorch":
            _defaults["bn_eps"] = 1e-5
        _cfg = EfficientNetV2Config(stages=_stages, stem_chs=_stem, width_mult=_w, depth_mult=_d,
                                    padding=_padding, **_defaults)
        _input = _TIMM_PYTORCH_TRAIN_SIZE.get(_size, _train) if _padding == "pytorch" else _train
        register_model(_prefix + _size, EfficientNetV2, _cfg,
                       input_size=_input, test_input_size=_eval, in_timm=_in_timm)
