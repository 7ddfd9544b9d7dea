"""The face every model shares (timm's interface), so a backbone is swappable by name."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..errors import ConfigError, InputShapeError


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Fields every family's config has; a family subclasses it with its own (frozen, kw-only)."""

    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly over the blocks


class ModelBase(nn.Module):
    """Base of every model: stem -> stages -> (neck) -> head.

    A family sets ``self.stem``, ``self.stages`` (an iterable of modules, one per feature level),
    ``self.feature_info`` (one ``dict(num_chs, reduction, module)`` per stage), ``self.num_features``,
    and implements ``forward_head`` and ``reset_classifier``. ``forward_neck`` runs after the last stage
    (e.g. EfficientNetV2's 1×1 head conv); ``head_attrs`` names what features-only mode removes.
    """

    family: str = ""  # written once here, per family; registration and weight loading read it
    head_attrs: tuple[str, ...] = ("head",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {cfg.in_chans}")
        if cfg.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 removes the classifier), got {cfg.num_classes}")
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        self.num_classes = cfg.num_classes
        self.drop_rate = cfg.drop_rate
        self.grad_checkpointing = False
        self.features_only = False
        self.out_indices: tuple[int, ...] = ()
        self.model_name = type(self).__name__
        self.pretrained_cfg: dict = {}

    # -- input validation --------------------------------------------------------------------------
    @property
    def min_input_size(self) -> int:
        """Smallest spatial size that survives every downsampling (the total stride)."""
        info = getattr(self, "full_feature_info", self.feature_info)
        return max(i["reduction"] for i in info)

    def check_input(self, x: torch.Tensor) -> None:
        if torch.compiler.is_compiling():
            return
        if x.ndim != 4:
            raise InputShapeError(
                f"{self.model_name} expects a 4-D batch (N, {self.in_chans}, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise InputShapeError(
                f"{self.model_name} expects {self.in_chans} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)}); build it with in_chans={x.shape[1]} or convert the images"
            )
        weight = self.stem_weight_dtype()
        if not x.is_floating_point() or (x.dtype != weight and not torch.is_autocast_enabled(x.device.type)):
            hint = (" (images as integers: convert with x.float() / 255, then normalize)" if not x.is_floating_point()
                    else f" (convert with x.to({weight}), or the model with model.to({x.dtype}))")
            raise InputShapeError(f"{self.model_name} has {weight} weights but got {x.dtype} input{hint}")
        h, w = x.shape[-2:]
        r = self.min_input_size
        if min(h, w) < r:
            raise InputShapeError(
                f"{self.model_name} downsamples by {r}, so it needs images of at least {r}×{r}; got {h}×{w}"
            )
        # BatchNorm cannot train on one value per channel: one image whose last feature map is 1×1
        if self.training and x.shape[0] == 1 and -(-h // r) * -(-w // r) == 1 and self.has_batchnorm():
            raise InputShapeError(
                f"{self.model_name} is in training mode and has BatchNorm, which cannot compute batch statistics "
                f"from one {h}×{w} image (its last feature map is 1×1); train with batches of 2 or more or larger "
                "images, or call model.eval() for inference")

    def stem_weight_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def has_batchnorm(self) -> bool:
        if not hasattr(self, "_has_bn"):
            self._has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())
        return self._has_bn

    # -- forward -----------------------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last on the CPU from the stem's output on (kernels.preferred_layout; docs/kernels.md)
        return kernels.preferred_layout(self.stem(x))

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one stage; with gradient checkpointing, block by block (each block's activations are
        recomputed in the backward pass). A stage is an ``nn.Sequential`` of blocks, or a module with
        ``downsample`` and ``blocks`` whose forward is ``blocks(downsample(x))``."""
        if not (self.grad_checkpointing and self.training and not torch.jit.is_scripting()):
            return stage(x)
        if isinstance(stage, nn.Sequential):
            blocks = stage
        else:
            x = stage.downsample(x)  # cheap and parameter-light: not worth recomputing
            blocks = stage.blocks
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """The output of every stage in ``indices`` (all stages by default)."""
        self.check_input(x)
        indices = tuple(range(len(self.feature_info))) if indices is None else indices
        last = max(indices)
        out = []
        x = self.forward_stem(x)
        for i, stage in enumerate(self.stages):
            x = self._run_stage(stage, x)
            if i in indices:
                out.append(x)
            if i == last:
                break
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.forward_stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self.forward_neck(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits)  # a layers.ClassifierHead; families with another head override

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices)
        return self.forward_head(self.forward_features(x))

    # -- timm-style helpers ------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def as_features(self, out_indices: tuple[int, ...] | None = None) -> ModelBase:
        """Turn this model into a backbone returning a list of per-stage feature maps (in place)."""
        n = len(self.feature_info)
        out_indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
        bad = [i for i in out_indices if not -n <= i < n]
        if bad or not out_indices:
            raise ConfigError(f"out_indices {out_indices} out of range for {n} stages (valid: 0..{n - 1})")
        self.out_indices = tuple(sorted(i % n for i in out_indices))
        self.features_only = True
        for attr in self.head_attrs:
            if hasattr(self, attr):
                setattr(self, attr, nn.Identity())
        self.full_feature_info = self.feature_info
        self.feature_info = [self.feature_info[i] for i in self.out_indices]
        return self
