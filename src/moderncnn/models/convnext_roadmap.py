"""The ConvNeXt modernization roadmap: ResNet-50 -> ConvNeXt-T one design decision at a time.

Liu et al., "A ConvNet for the 2020s" (CVPR 2022), §2 and Figure 2; the exact structure of every step
is in docs/architectures.md (ConvNeXt roadmap; each step reproduces the paper's GFLOPs). One configurable network covers
all steps: the config's fields are the roadmap's switches, and every registered model
``convnext_roadmap_<step>_<what>`` is the previous step's config with one (or, for the last step, a
few) switches flipped. The models are for studying the ladder (train them with the same recipe and
compare); the production ConvNeXt lives in ``convnext.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import ClassifierHead, DropPath, LayerNorm2d, create_conv2d, drop_path_rates
from ..registry import register_model
from .base import ModelBase, ModelConfig

STEMS = ("resnet", "patchify")
BLOCKS = ("bottleneck", "inverted", "inverted_dw_first")
ACTS = ("relu", "gelu")
NORMS = ("bn", "ln")


@dataclass(frozen=True, kw_only=True)
class ConvNeXtRoadmapConfig(ModelConfig):
    """The roadmap's switches (defaults: torchvision ResNet-50, v1.5 with the stride in the 3×3)."""

    depths: tuple[int, ...] = (3, 4, 6, 3)  # §2.2 "stage compute ratio" -> (3, 3, 9, 3)
    stem: str = "resnet"  # "resnet": conv 7×7 s2 + norm + act + max-pool 3×3 s2; "patchify": conv 4×4 s4 + norm
    stem_width: int = 64
    # block output channels per stage; the bottleneck's inner width is dims / ratio, the inverted
    # bottleneck's hidden width is dims * ratio (§2.4)
    dims: tuple[int, ...] = (256, 512, 1024, 2048)
    ratio: int = 4
    # "bottleneck": 1×1 (d/4) - k×k (stride) - 1×1 (d)          (ResNet, Fig. 3a)
    # "inverted":   1×1 (4d) - k×k dw (stride) - 1×1 (d)        (Fig. 3b)
    # "inverted_dw_first": k×k dw (stride) - 1×1 (4d) - 1×1 (d) ("moving up the depthwise conv", Fig. 3c)
    block: str = "bottleneck"
    depthwise: bool = False  # the bottleneck's k×k conv grouped per channel (§2.3, ResNeXt-ify)
    kernel_size: int = 3
    act: str = "relu"
    fewer_acts: bool = False  # §2.6: one activation, between the two 1×1 convs; none after the add
    fewer_norms: bool = False  # §2.6: one norm, after the depthwise conv (the projection keeps its norm)
    norm: str = "bn"  # "ln": LayerNorm (eps 1e-6) over channels in place of every BatchNorm
    # §2.6: no in-block stride or projection; LayerNorm + conv 2×2 s2 between stages instead
    separate_downsample: bool = False
    head_norm: bool = False  # a norm after global pooling (ConvNeXt's head)
    conv_bias: bool = False  # convs carry biases (ConvNeXt) instead of leaning on the following BN
    layer_scale_init_value: float = 0.0  # 0 disables layer scale; ConvNeXt uses 1e-6

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("stem", self.stem, STEMS), ("block", self.block, BLOCKS), ("act", self.act, ACTS),
            ("norm", self.norm, NORMS),
        ):
            if value not in allowed:
                raise ConfigError(f"{field}={value!r} is not one of {allowed}")
        if len(self.depths) != len(self.dims):
            raise ConfigError(f"depths {self.depths} and dims {self.dims} need one entry per stage each")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd (same padding), got {self.kernel_size}")
        if (self.fewer_acts or self.fewer_norms) and self.block != "inverted_dw_first":
            raise ConfigError(
                "fewer_acts/fewer_norms are defined for block='inverted_dw_first' (roadmap steps 9-10), "
                f"got block={self.block!r}"
            )
        if self.block == "bottleneck" and any(d % self.ratio for d in self.dims):
            raise ConfigError(f"bottleneck dims {self.dims} must be divisible by ratio={self.ratio}")


def _norm(cfg: ConvNeXtRoadmapConfig, chs: int) -> nn.Module:
    return LayerNorm2d(chs, eps=1e-6) if cfg.norm == "ln" else nn.BatchNorm2d(chs)


def _act(cfg: ConvNeXtRoadmapConfig) -> nn.Module:
    return nn.GELU() if cfg.act == "gelu" else nn.ReLU(inplace=True)


class RoadmapBlock(nn.Module):
    """One residual block of any roadmap step: three convs, each optionally followed by norm and act.

    ``conv1 -> norm1 -> act1 -> conv2 -> norm2 -> act2 -> conv3 -> norm3 -> layer scale -> drop path
    -> + shortcut -> act_out``; the config decides which convs are depthwise, which norms and
    activations exist, and where the stride sits (always in the k×k conv).
    """

    def __init__(
        self, cfg: ConvNeXtRoadmapConfig, in_chs: int, out_chs: int, stride: int, drop_path: float
    ) -> None:
        super().__init__()
        k, bias = cfg.kernel_size, cfg.conv_bias
        if cfg.block == "bottleneck":
            mid = out_chs // cfg.ratio
            groups = mid if cfg.depthwise else 1
            specs = [(in_chs, mid, 1, 1, 1), (mid, mid, k, stride, groups), (mid, out_chs, 1, 1, 1)]
        elif cfg.block == "inverted":
            hidden = out_chs * cfg.ratio
            specs = [(in_chs, hidden, 1, 1, 1), (hidden, hidden, k, stride, hidden), (hidden, out_chs, 1, 1, 1)]
        else:  # inverted_dw_first: the depthwise conv works on the narrow input
            hidden = out_chs * cfg.ratio
            specs = [(in_chs, in_chs, k, stride, in_chs), (in_chs, hidden, 1, 1, 1), (hidden, out_chs, 1, 1, 1)]
        # which positions keep a norm / an activation (§2.6, micro design, removes all but one of each)
        norms = (True, False, False) if cfg.fewer_norms else (True, True, True)
        acts = (False, True) if cfg.fewer_acts else (True, True)
        for i, (cin, cout, ks, s, g) in enumerate(specs, start=1):
            setattr(self, f"conv{i}", create_conv2d(cin, cout, ks, s, ks // 2, groups=g, bias=bias))
            setattr(self, f"norm{i}", _norm(cfg, cout) if norms[i - 1] else nn.Identity())
            if i < 3:
                setattr(self, f"act{i}", _act(cfg) if acts[i - 1] else nn.Identity())
        ls = cfg.layer_scale_init_value
        self.gamma = nn.Parameter(torch.full((out_chs,), ls)) if ls > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if in_chs != out_chs or stride != 1:  # ResNet's projection shortcut (1×1, stride, norm)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=bias), _norm(cfg, out_chs)
            )
        else:
            self.shortcut = nn.Identity()
        self.act_out = nn.Identity() if cfg.fewer_acts else _act(cfg)

    def layer_scale_target(self) -> nn.Module:
        """The module whose output ``gamma`` scales (``moderncnn.fuse`` folds it there)."""
        return self.conv3 if isinstance(self.norm3, nn.Identity) else self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.act2(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        if self.gamma is not None:
            y = y * self.gamma.reshape(1, -1, 1, 1)
        return self.act_out(self.shortcut(x) + self.drop_path(y))


class RoadmapStage(nn.Module):
    """Optional separate downsampling layer (norm + conv 2×2 s2, §2.6), then the blocks."""

    def __init__(
        self, cfg: ConvNeXtRoadmapConfig, in_chs: int, out_chs: int, depth: int, stride: int, dpr: list[float]
    ) -> None:
        super().__init__()
        if cfg.separate_downsample and stride > 1:
            self.downsample = nn.Sequential(
                _norm(cfg, in_chs), nn.Conv2d(in_chs, out_chs, 2, 2, bias=cfg.conv_bias)
            )
            in_chs, stride = out_chs, 1
        else:
            self.downsample = nn.Identity()
        blocks = []
        for i in range(depth):
            blocks.append(RoadmapBlock(cfg, in_chs, out_chs, stride if i == 0 else 1, dpr[i]))
            in_chs = out_chs
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtRoadmap(ModelBase):
    """One network for every step of Figure 2 (Liu et al., CVPR 2022); see the module docstring."""

    family = "convnext_roadmap"

    def __init__(self, cfg: ConvNeXtRoadmapConfig) -> None:
        super().__init__(cfg)
        w = cfg.stem_width
        if cfg.stem == "resnet":
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.in_chans, w, 7, 2, 3, bias=cfg.conv_bias), _norm(cfg, w), _act(cfg),
                nn.MaxPool2d(3, 2, 1),
            )
        else:  # "patchify": non-overlapping 4×4 patches, like a ViT's (§2.2)
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, w, 4, 4, bias=cfg.conv_bias), _norm(cfg, w))
        dpr = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        stages, self.feature_info, prev, start = [], [], w, 0
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            stride = 1 if i == 0 else 2
            stages.append(RoadmapStage(cfg, prev, dim, depth, stride, dpr[start:start + depth]))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        head_norm = None
        if cfg.head_norm:  # a norm on the pooled vector (step 12, as ConvNeXt)
            head_norm = nn.LayerNorm(prev, eps=1e-6) if cfg.norm == "ln" else nn.BatchNorm1d(prev)
        self.head = ClassifierHead(prev, cfg.num_classes, cfg.drop_rate, norm=head_norm,
                                   pool_type=cfg.global_pool)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        # ResNet's He init under BatchNorm; ConvNeXt's truncated normal once the norms are LayerNorm
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if self.cfg.norm == "ln" or isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _ladder() -> dict[str, ConvNeXtRoadmapConfig]:
    """Figure 2, each step cumulative (docs/architectures.md, ConvNeXt roadmap)."""
    steps = {}
    c = steps["0_resnet50"] = ConvNeXtRoadmapConfig()
    c = steps["1_stage_ratio"] = replace(c, depths=(3, 3, 9, 3))
    c = steps["2_patchify_stem"] = replace(c, stem="patchify")
    c = steps["3_depthwise"] = replace(c, depthwise=True)
    c = steps["4_width"] = replace(c, stem_width=96, dims=(384, 768, 1536, 3072))
    c = steps["5_inverted_bottleneck"] = replace(c, block="inverted", dims=(96, 192, 384, 768))
    c = steps["6_move_up_dwconv"] = replace(c, block="inverted_dw_first")
    for k in (5, 7, 9, 11):
        steps[f"7_kernel{k}"] = replace(c, kernel_size=k)
    c = steps["8_gelu"] = replace(steps["7_kernel7"], act="gelu")
    c = steps["9_fewer_activations"] = replace(c, fewer_acts=True)
    # the convs take biases once most of the BNs that made them redundant are gone (as in ConvNeXt's
    # code): the step-10 count 25.84M (docs/architectures.md) is 25.80M + the biases (6d per block)
    c = steps["10_fewer_norms"] = replace(c, fewer_norms=True, conv_bias=True)
    c = steps["11_layernorm"] = replace(c, norm="ln")
    # step 12's 28.58M is without layer scale; with it (+6,624 gammas) this is ConvNeXt-T, 28.59M
    steps["12_convnext"] = replace(c, separate_downsample=True, head_norm=True, layer_scale_init_value=1e-6)
    return steps


ROADMAP = _ladder()
for _step, _c in ROADMAP.items():
    register_model(f"convnext_roadmap_{_step}", ConvNeXtRoadmap, _c)
