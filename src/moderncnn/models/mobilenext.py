"""MobileNeXt: "Rethinking Bottleneck Structure for Efficient Mobile Network Design" (Zhou et al., ECCV 2020).

The sandglass block flips MobileNetV2's inverted residual: the shortcut joins the *wide* tensors and the
bottleneck sits in the middle, with depthwise convs at both wide ends (paper §3.2, Fig. 3). This file
follows the official ``mnext.py`` layer for layer (docs/architectures.md, MobileNeXt), including its four block code
paths, the ``oup / 6`` floor on the hidden width, the stride in the last depthwise conv, and the partial
shortcut of the identity tensor multiplier (§3.3). Official checkpoints load through
``moderncnn.interop.mobilenext``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import ClassifierHead, ConvBN, ConvBNAct, DropPath, drop_path_rates, make_divisible
from ..registry import register_model
from .base import ModelBase, ModelConfig

# paper Table 1 / official ``self.cfgs``; t is a *reduction* ratio here (hidden = inp // t)
#   t,    c, n, s
MOBILENEXT_ARCH = (
    (2, 96, 1, 2),
    (6, 144, 1, 1),
    (6, 192, 3, 2),
    (6, 288, 3, 2),
    (6, 384, 4, 1),
    (6, 576, 4, 2),
    (6, 960, 3, 1),
    (6, 1280, 1, 1),
)


DW_POSITIONS = ("ends", "middle")


@dataclass(frozen=True, kw_only=True)
class MobileNeXtConfig(ModelConfig):
    width_mult: float = 1.0
    arch: tuple[tuple[int, int, int, int], ...] = MOBILENEXT_ARCH  # rows of (t, c, n, s)
    stem_chs: int = 32
    # the 1280-wide last row is not narrowed below width 1.0 (as MobileNetV2's last layer)
    keep_last_below_1: bool = True
    # identity tensor multiplier α (§3.3): the shortcut is added to the first ⌊α·C⌋ channels only;
    # the official ``identity_div = d`` is α = 1/d
    identity_ratio: float = 1.0
    drop_rate: float = 0.2
    # ablation switches (paper §3.2, where to put the depthwise convs, and its ablations of them):
    # "ends": depthwise convs on the wide tensors (the sandglass); "middle": on the narrow bottleneck
    dw_position: str = "ends"
    second_dw: bool = True  # False: blocks with two depthwise convs keep only the first (it takes the stride)
    last_dw_act: bool = False  # ReLU6 after the last depthwise conv (the paper keeps it linear)

    def __post_init__(self) -> None:
        if self.dw_position not in DW_POSITIONS:
            raise ConfigError(f"dw_position must be one of {DW_POSITIONS}, got {self.dw_position!r}")
        if not 0.0 < self.identity_ratio <= 1.0:
            raise ConfigError(
                f"identity_ratio must be in (0, 1] (the fraction of channels that get the shortcut; "
                f"the official identity_div=d is 1/d), got {self.identity_ratio}"
            )
        if self.width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        for row in self.arch:
            if len(row) != 4 or row[2] < 1 or row[3] not in (1, 2) or row[0] < 1:
                raise ConfigError(f"arch rows are (t >= 1, c, n >= 1, s in {{1, 2}}), got {row}")


def hidden_width(inp: int, oup: int, t: int) -> int:
    """Sandglass bottleneck width: ``inp // t``, but at least ``oup / 6`` rounded to 16 (official rule)."""
    hidden = inp // t
    if hidden < oup / 6.0:
        hidden = make_divisible(math.ceil(oup / 6.0), 16)
    return hidden


def identity_channels(channels: int, ratio: float) -> int:
    """⌊channels·ratio⌋; the tiny epsilon keeps ratio = 1/d exactly ``channels // d`` despite rounding."""
    return math.floor(channels * ratio + 1e-9)


def _may_write_in_place(x: torch.Tensor, y: torch.Tensor) -> bool:
    """True when ``y`` may be changed in place: plain eager inference (no autograd graph, no tracing,
    export or compile) and ``y`` a tensor of its own."""
    if isinstance(y, torch.fx.Proxy):  # torch.fx symbolic tracing (create_feature_extractor)
        return False
    if y.requires_grad or x.requires_grad or y is x:
        return False
    return not (
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
        or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
    )


class SandglassBlock(nn.Module):
    """Sandglass block (paper §3.2, Fig. 3b), with the four code paths of the official ``SGBlock``.

    ``dw1`` (DW 3×3, ReLU6) -> ``pw_reduce`` (1×1 to ``hidden``, linear) -> ``pw_expand`` (1×1 to
    ``oup``, ReLU6) -> ``dw2`` (DW 3×3 carrying the stride, linear) [-> + shortcut]. Which parts exist
    (docs/architectures.md, "Sandglass block as the official code builds it"):

    1. ``t == 2`` (the first block): all four, no shortcut;
    2. ``inp != oup``, stride 1, not ``keep_3x3``: the two 1×1 convs only;
    3. ``inp != oup``, stride 2, not ``keep_3x3``: no ``dw1``;
    4. otherwise: all four; shortcut unless ``keep_3x3`` (a row with n = 1 and s = 1).

    The shortcut (after the last BN, no activation after the add) goes to the first
    ``identity_channels`` channels only; absent parts are ``None``.

    Ablation switches: ``dw_position="middle"`` runs both depthwise convs on the ``hidden`` channels between
    the two 1×1 convs (each layer keeps its own BN and activation); ``second_dw=False`` drops ``dw2`` where
    ``dw1`` exists and gives ``dw1`` the stride; ``last_dw_act`` adds ReLU6 after ``dw2``.
    """

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        t: int,
        keep_3x3: bool = False,
        identity_ratio: float = 1.0,
        drop_path: float = 0.0,
        dw_position: str = "ends",
        second_dw: bool = True,
        last_dw_act: bool = False,
    ) -> None:
        super().__init__()
        hidden = hidden_width(inp, oup, t)
        self.hidden = hidden
        if t == 2:
            path = 1
        elif inp != oup and not keep_3x3:
            path = 2 if stride == 1 else 3
        else:
            path = 4
        self.path = path
        relu6 = partial(nn.ReLU6, inplace=True)  # on the fresh BN output: no extra wide tensor per activation
        self.middle = dw_position == "middle"
        dw_in, dw_out = (hidden, hidden) if self.middle else (inp, oup)
        has_dw1, has_dw2 = path in (1, 4), path != 2
        if has_dw1 and not second_dw:
            has_dw2 = False
        dw1_stride = 1 if has_dw2 else stride
        self.dw1 = ConvBNAct(dw_in, dw_in, 3, dw1_stride, groups=dw_in, act_layer=relu6) if has_dw1 else None
        self.pw_reduce = ConvBN(inp, hidden, 1)
        self.pw_expand = ConvBNAct(hidden, oup, 1, act_layer=relu6)
        # the stride sits in the last DW conv, so the shortcut and the reduction see full resolution
        last_act = relu6 if last_dw_act else None
        self.dw2 = ConvBNAct(dw_out, dw_out, 3, stride, groups=dw_out, act_layer=last_act) if has_dw2 else None
        self.has_shortcut = path == 4 and not keep_3x3 and inp == oup and stride == 1
        self.identity_channels = identity_channels(oup, identity_ratio) if self.has_shortcut else 0
        if self.has_shortcut and self.identity_channels == 0:
            raise ConfigError(
                f"identity_ratio={identity_ratio} leaves no shortcut channel in a {oup}-channel block; "
                f"use a ratio >= 1/{oup}"
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.middle:
            y = self.pw_reduce(x)
            y = y if self.dw1 is None else self.dw1(y)
            y = y if self.dw2 is None else self.dw2(y)
            y = self.pw_expand(y)
        else:
            y = x if self.dw1 is None else self.dw1(x)
            y = self.pw_expand(self.pw_reduce(y))
            y = y if self.dw2 is None else self.dw2(y)
        if not self.has_shortcut:
            return y
        y = self.drop_path(y)
        k = self.identity_channels
        if _may_write_in_place(x, y):
            # inference: add into the first k channels of y's own storage. The point of the partial
            # shortcut (§3.3) is fewer element-wise adds and less memory traffic; a torch.cat would
            # rewrite all C channels and so cost more than the full shortcut.
            y[:, :k] += x[:, :k]
            return y
        if k == self.pw_expand.conv.out_channels:  # a Python int, so torch.fx can trace this branch
            return y + x
        # pure form for autograd and export/compile: no in-place writes into a tensor of the graph
        return torch.cat([y[:, :k] + x[:, :k], y[:, k:]], dim=1)


class MobileNeXt(ModelBase):
    """MobileNeXt (Zhou et al., ECCV 2020): stem, 20 sandglass blocks, average pool, dropout, Linear.

    Feature levels (``stages``) end at each resolution: /4, /8, /16, /32.
    """

    family = "mobilenext"

    def __init__(self, cfg: MobileNeXtConfig) -> None:
        super().__init__(cfg)
        w = cfg.width_mult
        stem = make_divisible(cfg.stem_chs * w, 8)
        self.stem = ConvBNAct(cfg.in_chans, stem, 3, 2, act_layer=partial(nn.ReLU6, inplace=True))
        dpr = drop_path_rates(cfg.drop_path_rate, sum(n for _, _, n, _ in cfg.arch))
        stages: list[list[SandglassBlock]] = [[]]
        self.feature_info, inp, reduction, idx = [], stem, 2, 0
        last = len(cfg.arch) - 1
        for r, (t, c, n, s) in enumerate(cfg.arch):
            keep = r == last and cfg.keep_last_below_1 and w < 1
            oup = c if keep else make_divisible(c * w, 8)
            if s == 2 and r > 0:  # a new resolution: close the current feature level
                self._close(stages, inp, reduction)
            for i in range(n):
                stride = s if i == 0 else 1
                keep_3x3 = i == 0 and n == 1 and s == 1
                stages[-1].append(SandglassBlock(
                    inp, oup, stride, t, keep_3x3, cfg.identity_ratio, dpr[idx],
                    cfg.dw_position, cfg.second_dw, cfg.last_dw_act,
                ))
                inp, reduction, idx = oup, reduction * stride, idx + 1
        self._close(stages, inp, reduction, final=True)
        self.stages = nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])
        self.num_features = inp
        # pool -> dropout -> Linear, no 1×1 conv
        self.head = ClassifierHead(inp, cfg.num_classes, cfg.drop_rate, pool_type=cfg.global_pool)
        self.apply(self._init_weights)

    def _close(self, stages: list, chs: int, reduction: int, final: bool = False) -> None:
        self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"stages.{len(stages) - 1}"))
        if not final:
            stages.append([])

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official init (MobileNetV2's): He-normal with fan = k·k·out_channels, even for depthwise convs
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# name: width multiplier (official README; paper Table 3)
MOBILENEXT_WIDTHS = {
    "mobilenext_035": 0.35,
    "mobilenext_050": 0.5,
    "mobilenext_075": 0.75,
    "mobilenext_100": 1.0,
    "mobilenext_140": 1.4,
}
for _name, _w in MOBILENEXT_WIDTHS.items():
    register_model(_name, MobileNeXt, MobileNeXtConfig(width_mult=_w))
