"""RepLKNet: "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs" (Ding et al., CVPR 2022).

The network (§4 of the paper; the layer list is in ``docs/architectures.md``): a four-layer stem (output
stride 4), then four stages of [RepLK block, ConvFFN] pairs joined by transitions (1×1 conv, depthwise 3×3
stride 2), then BN -> global average pool -> Linear. The RepLK block's depthwise K×K convolution (K up to 31) is trained
with a parallel small (5×5) depthwise kernel that is merged into it after training (structural
re-parameterization, §3 guideline 2); :meth:`ReparamLargeKernelConv.reparameterize` does that merge.

Every large depthwise convolution runs through :func:`moderncnn.kernels.depthwise_conv2d`, the single
dispatch point for a fast large-kernel implementation.

Key layout (ours; the official ``replknet.py`` layout is mapped in ``moderncnn.interop.replknet``)::

    stem.{0..3}.{conv, bn}
    stages.i.downsample.{0, 1}.{conv, bn}                      (i > 0: the official transitions.{i-1})
    stages.i.blocks.{2j}:   RepLKBlock {norm, pw1, large_kernel.{large_conv, small_conv | reparam_conv}, pw2}
    stages.i.blocks.{2j+1}: ConvFFN    {norm, pw1, pw2}
    feature_norms.i                                            (only with norm_intermediate_features)
    head.{norm, fc}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import ClassifierHead, ConvBN, ConvBNAct, DepthwiseConv2d, DropPath, drop_path_rates, pad_kernel_to
from ..layers.reparam import fold_bn, merged_conv
from ..registry import register_model
from .base import ModelBase, ModelConfig


@dataclass(frozen=True, kw_only=True)
class RepLKNetConfig(ModelConfig):
    """RepLKNet hyper-parameters, named as the official ``RepLKNet`` constructor (paper §4;
    ``docs/architectures.md``, RepLKNet).

    ``drop_path_rate`` defaults to 0.3, the official ``create_RepLKNet*`` factories' default; the paper's
    ImageNet-1K recipe trains 31B with 0.5 (``docs/architectures.md``, RepLKNet training).
    """

    large_kernel_sizes: tuple[int, ...] = (31, 29, 27, 13)
    layers: tuple[int, ...] = (2, 2, 18, 2)
    channels: tuple[int, ...] = (128, 256, 512, 1024)
    small_kernel: int | None = 5  # the parallel small kernel merged into the large one; None: no branch
    dw_ratio: float = 1.0  # RepLK block width D = int(C · dw_ratio)
    ffn_ratio: float = 4.0  # ConvFFN hidden width int(C · ffn_ratio)
    drop_path_rate: float = 0.3
    norm_intermediate_features: bool = False  # extra BN on each feature map (XL on detection/segmentation)
    deploy: bool = False  # build the merged (inference) form directly


class LargeKernelDepthwiseConv(DepthwiseConv2d):
    """Depthwise K×K conv, stride 1, 'same' padding, computed by :func:`moderncnn.kernels.depthwise_conv2d`.

    An ``nn.Conv2d`` in every other respect (``weight``, ``bias``, ``kernel_size``), so tools that inspect
    convolutions keep working while a faster implementation drops in behind the dispatch function.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False, **factory) -> None:
        super().__init__(channels, kernel_size, bias=bias, **factory)


class LargeKernelConvBN(nn.Module):
    """:class:`LargeKernelDepthwiseConv` (no bias) followed by BatchNorm; keys ``conv``, ``bn`` as ConvBN."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = LargeKernelDepthwiseConv(channels, kernel_size)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_bn(self.conv.weight, self.bn)


class ReparamLargeKernelConv(nn.Module):
    """Depthwise K×K conv-BN plus a parallel depthwise k×k conv-BN, summed (§3, guideline 2).

    After training the two branches merge into one K×K depthwise conv with bias (``reparam_conv``): each
    BN is folded into its conv, the small kernel is zero-padded by (K−k)/2 on every side so the centres
    align (both convs use stride 1 and 'same' padding), and kernels and biases are added. With
    ``small_kernel=None`` there is no small branch and the merge just folds the BN.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None, deploy: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or (small_kernel is not None and small_kernel % 2 == 0):
            raise ConfigError(
                f"RepLKNet kernels must be odd so 'same' padding centres them; got large {kernel_size}, "
                f"small {small_kernel}"
            )
        if not deploy and small_kernel is not None and small_kernel > kernel_size:
            raise ConfigError(
                f"the small kernel ({small_kernel}) is merged into the large one ({kernel_size}), so it cannot be "
                "larger; use a smaller small_kernel, or small_kernel=None for no small branch"
            )
        self.channels = channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        if deploy:
            self.large_conv = None
            self.small_conv = None
            self.reparam_conv = self._fused_conv()
        else:
            self.large_conv = LargeKernelConvBN(channels, kernel_size)
            # the small branch may be an ordinary conv: it is cheap and disappears after the merge
            self.small_conv = ConvBN(channels, channels, small_kernel, groups=channels) if small_kernel else None
            self.reparam_conv = None

    def _fused_conv(self, **factory) -> LargeKernelDepthwiseConv:
        return LargeKernelDepthwiseConv(self.channels, self.kernel_size, bias=True, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        out = self.large_conv(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return out

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel (D, 1, K, K) and bias (D,) of the single conv equal to both branches in eval mode."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        kernel, bias = self.large_conv.equivalent_kernel_bias()
        if self.small_conv is not None:
            small_kernel, small_bias = self.small_conv.equivalent_kernel_bias()
            kernel = kernel + pad_kernel_to(small_kernel, self.kernel_size)
            bias = bias + small_bias
        return kernel, bias

    def reparameterize(self) -> None:
        """Replace the branches by one K×K depthwise conv with bias (eval mode; a second call is a no-op)."""
        if self.reparam_conv is not None:
            return
        self.reparam_conv = merged_conv(self, self._fused_conv)
        self.large_conv = None
        self.small_conv = None

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, small_kernel={self.small_kernel}"


class RepLKBlock(nn.Module):
    """BN -> 1×1 (C->D) conv-BN-ReLU -> large-kernel DW conv -> ReLU -> 1×1 (D->C) conv-BN -> drop path -> + x.

    The paper's RepLK block (Fig. 4): pre-norm, and the shortcut wraps the whole bottleneck.
    """

    def __init__(
        self,
        channels: int,
        dw_channels: int,
        kernel_size: int,
        small_kernel: int | None,
        drop_path: float = 0.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.pw1 = ConvBNAct(channels, dw_channels, 1)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, kernel_size, small_kernel, deploy)
        self.act = nn.ReLU()
        self.pw2 = ConvBN(dw_channels, channels, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.act(self.large_kernel(self.pw1(self.norm(x)))))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    """BN -> 1×1 (C->4C) conv-BN -> GELU -> 1×1 (4C->C) conv-BN -> drop path -> + x (the paper's ConvFFN)."""

    def __init__(self, channels: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.pw1 = ConvBN(channels, hidden, 1)
        self.act = nn.GELU()
        self.pw2 = ConvBN(hidden, channels, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.act(self.pw1(self.norm(x)))))


class RepLKNetStage(nn.Module):
    """Optional transition (1×1 conv-BN-ReLU, DW 3×3 s2 conv-BN-ReLU) then ``depth`` [RepLKBlock, ConvFFN] pairs.

    The two blocks of a pair share one drop-path rate, as in the official code.
    """

    def __init__(self, cfg: RepLKNetConfig, index: int, dpr: list[float]) -> None:
        super().__init__()
        dim = cfg.channels[index]
        if index > 0:
            self.downsample = nn.Sequential(
                ConvBNAct(cfg.channels[index - 1], dim, 1),
                ConvBNAct(dim, dim, 3, stride=2, groups=dim),
            )
        else:
            self.downsample = nn.Identity()
        blocks = []
        for rate in dpr:
            blocks.append(
                RepLKBlock(
                    dim, int(dim * cfg.dw_ratio), cfg.large_kernel_sizes[index], cfg.small_kernel, rate, cfg.deploy
                )
            )
            blocks.append(ConvFFN(dim, int(dim * cfg.ffn_ratio), rate))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _check_config(cfg: RepLKNetConfig) -> None:
    n = len(cfg.layers)
    if not (len(cfg.large_kernel_sizes) == len(cfg.channels) == n) or n == 0:
        raise ConfigError(
            "large_kernel_sizes, layers and channels need one entry per stage; got "
            f"{len(cfg.large_kernel_sizes)}, {n} and {len(cfg.channels)}"
        )
    if cfg.dw_ratio <= 0 or cfg.ffn_ratio <= 0:
        raise ConfigError(f"dw_ratio and ffn_ratio must be > 0, got {cfg.dw_ratio} and {cfg.ffn_ratio}")


class RepLKNet(ModelBase):
    """RepLKNet (Ding et al., CVPR 2022, §4): stem, four stages of RepLK blocks and ConvFFNs, BN-pool-Linear head."""

    family = "replknet"

    def __init__(self, cfg: RepLKNetConfig) -> None:
        super().__init__(cfg)
        _check_config(cfg)
        c0 = cfg.channels[0]
        # stem, output stride 4: 3×3 s2 conv, DW 3×3, 1×1 conv, DW 3×3 s2 (each conv-BN-ReLU)
        self.stem = nn.Sequential(
            ConvBNAct(cfg.in_chans, c0, 3, stride=2),
            ConvBNAct(c0, c0, 3, groups=c0),
            ConvBNAct(c0, c0, 1),
            ConvBNAct(c0, c0, 3, stride=2, groups=c0),
        )
        dpr = drop_path_rates(cfg.drop_path_rate, sum(cfg.layers))
        stages, self.feature_info, start = [], [], 0
        for i, depth in enumerate(cfg.layers):
            stages.append(RepLKNetStage(cfg, i, dpr[start:start + depth]))
            self.feature_info.append(dict(num_chs=cfg.channels[i], reduction=4 * 2**i, module=f"stages.{i}"))
            start += depth
        self.stages = nn.Sequential(*stages)
        self.feature_norms = (
            nn.ModuleList(nn.BatchNorm2d(c) for c in cfg.channels) if cfg.norm_intermediate_features else None
        )
        self.num_features = cfg.channels[-1]
        # BN on the last feature map, *before* pooling (official code)
        head_norm = nn.BatchNorm2d(self.num_features)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate, head_norm, norm_before_pool=True,
                                   pool_type=cfg.global_pool)

    def _intermediate(self, level: int, x: torch.Tensor, norm: bool) -> torch.Tensor:
        # the official backbone's per-level BN (norm_intermediate_features) is part of the configured
        # network, so it applies whatever ``norm`` says
        return x if self.feature_norms is None else self.feature_norms[level](x)


def _cfg(large_kernels, channels, small_kernel=5, dw_ratio=1.0) -> RepLKNetConfig:
    return RepLKNetConfig(
        large_kernel_sizes=large_kernels, layers=(2, 2, 18, 2), channels=channels, small_kernel=small_kernel,
        dw_ratio=dw_ratio,
    )


# name: large kernels per stage, channels, small kernel, dw_ratio        (official create_RepLKNet*)
VARIANTS = {
    "replknet_31b": (_cfg((31, 29, 27, 13), (128, 256, 512, 1024)), 224),
    "replknet_31l": (_cfg((31, 29, 27, 13), (192, 384, 768, 1536)), 384),
    "replknet_xl": (_cfg((27, 27, 27, 13), (256, 512, 1024, 2048), small_kernel=None, dw_ratio=1.5), 320),
}
# the paper's kernel-size study (§4, the table varying the kernels per stage): RepLKNet-31B widths and
# depths, kernels per stage varied.
# 3-3-3-3 has no parallel small kernel (a 5×5 cannot be merged into a 3×3); the others train with 5×5.
#   kernels per stage
KERNEL_SIZE_STUDY = (
    (3, 3, 3, 3),
    (7, 7, 7, 7),
    (13, 13, 13, 13),
    (25, 25, 25, 13),
    (31, 29, 27, 13),
)
for _k in KERNEL_SIZE_STUDY:
    _c = _cfg(_k, (128, 256, 512, 1024), small_kernel=5 if min(_k) > 5 else None)
    VARIANTS["replknet_31b_k" + "_".join(map(str, _k))] = (_c, 224)
for _name, (_c, _size) in VARIANTS.items():
    register_model(_name, RepLKNet, _c, input_size=_size)
