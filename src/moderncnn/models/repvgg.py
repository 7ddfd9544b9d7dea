"""RepVGG: "RepVGG: Making VGG-style ConvNets Great Again" (Ding et al., CVPR 2021).

Training form: every layer is a :class:`RepVGGBlock` with three parallel branches (3×3 conv-BN,
1×1 conv-BN, identity BN) summed before the ReLU (§3.2–3.3). Deploy form: each block is one 3×3 conv
with bias followed by ReLU, a plain VGG-style stack (§3.3, "structural re-parameterization").

The network has five stride-2 levels and no max pool. Following the paper (and the official code) the
first block is "stage 0", so ``self.stages`` holds all five levels and ``self.stem`` is empty:

    stages.0.0          3 -> min(64, 64a), stride 2                  (reduction 2)
    stages.1.*          64a,   first block stride 2                   (reduction 4)
    stages.2.*          128a                                          (reduction 8)
    stages.3.*          256a                                          (reduction 16)
    stages.4.*          512b                                          (reduction 32)
    head                global average pool -> dropout -> Linear

Block keys: ``conv_3x3.{conv,bn}``, ``conv_1x1.{conv,bn}``, ``identity`` (a BatchNorm2d), ``se.reduce``,
``se.expand`` (RepVGG-D2se only) and ``reparam_conv`` once fused. ``moderncnn.interop.repvgg`` maps
timm's and the official layouts onto these names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import (
    ClassifierHead,
    ConvBN,
    DropPath,
    SqueezeExcite,
    drop_path_rates,
    fold_bn,
    identity_kernel,
    pad_kernel_to,
)
from ..layers.reparam import merged_conv
from ..registry import register_model
from .base import ModelBase, ModelConfig

BRANCHES = ("3x3", "1x1", "identity")


@dataclass(frozen=True, kw_only=True)
class RepVGGConfig(ModelConfig):
    """RepVGG's hyper-parameters (paper §3.4, Tables 2–3).

    ``num_blocks`` counts the blocks of stages 1–4 (stage 0 is always one block). ``width_multiplier``
    is ``(a, b)`` as in the paper (stages 1–3 scaled by ``a``, stage 4 by ``b``), or four per-stage
    multipliers as the official constructor takes them. ``group_layers`` lists the global layer indices
    (stage 0's block is layer 0, then counting on through all stages, as the official
    ``override_groups_map``) whose 3×3 and 1×1 convs use ``groups`` groups.
    """

    num_blocks: tuple[int, ...] = (2, 4, 14, 1)
    width_multiplier: tuple[float, ...] = (0.75, 2.5)
    group_layers: tuple[int, ...] = ()
    groups: int = 1
    use_se: bool = False  # squeeze-excite before the ReLU in every block (RepVGG-D2se)
    se_reduction: int = 16
    # ablation switches (paper Table 6 and Table 7): the branches a block trains with, any subset of
    # BRANCHES that has a conv; and the identity branch with its BatchNorm or as a bare x ("Identity w/o BN")
    branches: tuple[str, ...] = ("3x3", "1x1", "identity")
    identity_bn: bool = True
    deploy: bool = False  # build the fused (re-parameterized) form directly

    def __post_init__(self) -> None:
        bad = [b for b in self.branches if b not in BRANCHES]
        if bad or len(set(self.branches)) != len(self.branches):
            raise ConfigError(f"branches must be distinct names from {BRANCHES}, got {self.branches}")
        if not {"3x3", "1x1"} & set(self.branches):
            raise ConfigError(
                f"branches={self.branches} has no conv: a block that changes width or resolution needs the "
                "3x3 or the 1x1 branch"
            )

    def stage_widths(self) -> tuple[int, ...]:
        """Output channels of stages 0–4; ``int()`` truncates as in the official code."""
        wm = self.width_multiplier
        if len(wm) == 2:
            wm = (wm[0], wm[0], wm[0], wm[1])
        if len(wm) != 4:
            raise ConfigError(
                f"width_multiplier must be (a, b) or four per-stage multipliers, got {self.width_multiplier}"
            )
        widths = tuple(int(base * m) for base, m in zip((64, 128, 256, 512), wm))
        return (min(64, int(64 * wm[0])), *widths)


class RepVGGBlock(nn.Module):
    """ReLU(SE(3×3 conv-BN + 1×1 conv-BN + BN)) at training time, ReLU(SE(3×3 conv)) at deploy (§3.2).

    The identity branch exists only when the block keeps the shape (``in == out`` and stride 1). Groups
    apply to the 3×3 and the 1×1 branch alike. ``drop_path`` (not in the paper; timm's addition) drops the
    summed conv branches of identity blocks only, so a dropped block still passes its input on.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        groups: int = 1,
        se_hidden: int = 0,
        drop_path: float = 0.0,
        deploy: bool = False,
        branches: tuple[str, ...] = BRANCHES,
        identity_bn: bool = True,
    ) -> None:
        super().__init__()
        if in_chs % groups or out_chs % groups:
            raise ConfigError(
                f"RepVGGBlock: {in_chs} -> {out_chs} channels cannot be split into {groups} groups; "
                "choose groups that divide both widths"
            )
        self.in_chs, self.out_chs, self.stride, self.groups = in_chs, out_chs, stride, groups
        self.reparam_conv: nn.Conv2d | None = None
        self.conv_3x3: ConvBN | None = None
        self.conv_1x1: ConvBN | None = None
        self.identity: nn.BatchNorm2d | nn.Identity | None = None
        if deploy:
            self.reparam_conv = self._fused_conv()
        else:
            if "3x3" in branches:
                self.conv_3x3 = ConvBN(in_chs, out_chs, 3, stride, padding=1, groups=groups)
            if "1x1" in branches:
                self.conv_1x1 = ConvBN(in_chs, out_chs, 1, stride, padding=0, groups=groups)
            if "identity" in branches and in_chs == out_chs and stride == 1:
                self.identity = nn.BatchNorm2d(in_chs) if identity_bn else nn.Identity()
        has_drop = drop_path > 0 and self.identity is not None
        self.drop_path = DropPath(drop_path) if has_drop else nn.Identity()
        self.se = SqueezeExcite(out_chs, se_hidden) if se_hidden else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def _fused_conv(self, **factory) -> nn.Conv2d:
        return nn.Conv2d(self.in_chs, self.out_chs, 3, self.stride, 1, groups=self.groups, bias=True, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        convs = [branch(x) for branch in (self.conv_3x3, self.conv_1x1) if branch is not None]
        out = self.drop_path(convs[0] + convs[1] if len(convs) == 2 else convs[0])
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(self.se(out))

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3×3 kernel and bias equal to the three branches in eval mode (§3.3).

        The 1×1 kernel is zero-padded to the 3×3 centre; the identity is the grouped identity kernel
        ``I[c, c mod (C/g), 1, 1] = 1`` passed through its BN (or taken as is without one). Absent
        branches (``branches`` switch) contribute nothing. Pure and differentiable (no in-place ops),
        so it can also serve regularizers on the equivalent kernel.
        """
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        parts = [conv.equivalent_kernel_bias() for conv in (self.conv_3x3, self.conv_1x1) if conv is not None]
        kernel = sum(pad_kernel_to(k, 3) for k, _ in parts)
        bias = sum(b for _, b in parts)
        if self.identity is not None:
            eye = identity_kernel(self.in_chs, self.groups, 3, dtype=kernel.dtype, device=kernel.device)
            if isinstance(self.identity, nn.BatchNorm2d):
                eye, bi = fold_bn(eye, self.identity)
                bias = bias + bi
            kernel = kernel + eye
        return kernel, bias

    def reparameterize(self) -> None:
        """Replace the branches by ``self.reparam_conv`` (eval mode only; a second call does nothing)."""
        if self.reparam_conv is not None:
            return
        self.reparam_conv = merged_conv(self, self._fused_conv)
        self.conv_3x3 = self.conv_1x1 = self.identity = None
        self.drop_path = nn.Identity()  # nothing left to drop: the block is a plain conv now

    def extra_repr(self) -> str:
        form = "deploy" if self.reparam_conv is not None else "train"
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}, groups={self.groups}, form={form}"


class RepVGG(ModelBase):
    """RepVGG (paper §3.4): five levels of RepVGG blocks, each level's first block with stride 2."""

    family = "repvgg"

    def __init__(self, cfg: RepVGGConfig) -> None:
        super().__init__(cfg)
        if len(cfg.num_blocks) != 4 or min(cfg.num_blocks) < 1:
            raise ConfigError(f"num_blocks must give stages 1–4 at least one block each, got {cfg.num_blocks}")
        widths = cfg.stage_widths()
        depths = (1, *cfg.num_blocks)  # stage 0 is a single block
        num_layers = sum(depths)
        bad = sorted(i for i in cfg.group_layers if not 0 <= i < num_layers)
        if bad:
            raise ConfigError(f"group_layers {bad} out of range: this RepVGG has layers 0..{num_layers - 1}")
        if cfg.groups < 1:
            raise ConfigError(f"groups must be >= 1, got {cfg.groups}")
        # timm's schedule: linear over the blocks of stages 1-4 (stage 0 never drops)
        dpr = [0.0] + drop_path_rates(cfg.drop_path_rate, num_layers - 1)
        # the stem is the paper's "stage 0", kept in self.stages so there is one entry per feature level
        self.stem = nn.Identity()
        stages, self.feature_info, prev, layer = [], [], cfg.in_chans, 0
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(RepVGGBlock(
                    prev,
                    width,
                    stride=2 if j == 0 else 1,
                    groups=cfg.groups if layer in cfg.group_layers else 1,
                    se_hidden=width // cfg.se_reduction if cfg.use_se else 0,
                    drop_path=dpr[layer],
                    deploy=cfg.deploy,
                    branches=cfg.branches,
                    identity_bn=cfg.identity_bn,
                ))
                prev, layer = width, layer + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[-1]
        # PyTorch's default initialization, as the official code uses
        self.head = ClassifierHead(widths[-1], cfg.num_classes, cfg.drop_rate, pool_type=cfg.global_pool)

    def group_matcher(self, coarse: bool = False) -> dict:
        # timm's grouping of the same network: the paper's stage 0 (one block) is timm's stem; the other
        # stages are timm's stages, block by block (its final_conv has no parameters here)
        return dict(stem=r"^stages\.0\.", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")


# official `optional_groupwise_layers`: every other layer of stages 1-3 in the 28-layer B models
_B_GROUPED = tuple(range(2, 27, 2))


def _cfg(num_blocks, a, b, groups=1, **kw) -> RepVGGConfig:
    grouped = _B_GROUPED if groups > 1 else ()
    return RepVGGConfig(num_blocks=num_blocks, width_multiplier=(a, b), group_layers=grouped, groups=groups, **kw)


# name:           blocks of stages 1-4   a     b    groups    (paper Tables 2-3; stage 0 is one block)
_VARIANTS = {
    "repvgg_a0": _cfg((2, 4, 14, 1), 0.75, 2.5),
    "repvgg_a1": _cfg((2, 4, 14, 1), 1.0, 2.5),
    "repvgg_a2": _cfg((2, 4, 14, 1), 1.5, 2.75),
    "repvgg_b0": _cfg((4, 6, 16, 1), 1.0, 2.5),
    "repvgg_b1": _cfg((4, 6, 16, 1), 2.0, 4.0),
    "repvgg_b1g2": _cfg((4, 6, 16, 1), 2.0, 4.0, 2),
    "repvgg_b1g4": _cfg((4, 6, 16, 1), 2.0, 4.0, 4),
    "repvgg_b2": _cfg((4, 6, 16, 1), 2.5, 5.0),
    "repvgg_b2g2": _cfg((4, 6, 16, 1), 2.5, 5.0, 2),
    "repvgg_b2g4": _cfg((4, 6, 16, 1), 2.5, 5.0, 4),
    "repvgg_b3": _cfg((4, 6, 16, 1), 3.0, 5.0),
    "repvgg_b3g2": _cfg((4, 6, 16, 1), 3.0, 5.0, 2),
    "repvgg_b3g4": _cfg((4, 6, 16, 1), 3.0, 5.0, 4),
    "repvgg_d2se": _cfg((8, 14, 24, 1), 2.5, 5.0, use_se=True),  # post-paper; trained 224, tested 320
}
_NOT_IN_TIMM = {"repvgg_b1g2", "repvgg_b2g2", "repvgg_b3g2"}
for _name, _c in _VARIANTS.items():
    register_model(
        _name,
        RepVGG,
        _c,
        test_input_size=320 if _name == "repvgg_d2se" else None,
        in_timm=_name not in _NOT_IN_TIMM,
    )
