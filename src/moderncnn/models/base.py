"""The face every model shares (timm's interface), so a backbone is swappable by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..errors import ConfigError, InputShapeError
from .pretrained_cfgs import pretrained_cfg_for


def preferred_layout(x: torch.Tensor) -> torch.Tensor:
    # looked up at call time (set_default_impl switches it off); an fx leaf (torch.fx.wrap below), since the
    # choice looks at the tensor's device, dtype and channels
    return kernels.preferred_layout(x)


torch.fx.wrap("preferred_layout")


def _is_tracing(x: torch.Tensor) -> bool:
    """Symbolic tracing (torch.fx, torchvision's ``create_feature_extractor``), TorchScript tracing or
    torch.compile: shapes are not concrete, so input checks step aside."""
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling()


def feature_take_indices(num_levels: int, indices: int | tuple[int, ...] | list[int] | None = None
                         ) -> tuple[list[int], int]:
    """timm's rule for ``indices``: None -> every level, an int n -> the last n, a sequence -> those
    (negative counts from the end). Returns (absolute indices, the largest)."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ConfigError(f"last-n indices={indices} out of range: this model has {num_levels} feature levels")
        take = list(range(num_levels - indices, num_levels))
    else:
        take = []
        for i in indices:
            if not -num_levels <= i < num_levels:
                raise ConfigError(f"feature index {i} out of range: valid 0..{num_levels - 1} (or negative)")
            take.append(i % num_levels)
        if not take:
            raise ConfigError("indices must name at least one feature level")
    return take, max(take)


def levels_at_stage_ends(stage_info: list[dict]) -> list[dict]:
    """Feature levels as timm counts them: a stage's output is a level where the next stage downsamples,
    and at the last stage (so one level per stride). Each level keeps its ``stage`` index."""
    return [dict(f, stage=i) for i, f in enumerate(stage_info)
            if i == len(stage_info) - 1 or stage_info[i + 1]["reduction"] > f["reduction"]]


class FeatureInfo:
    """timm's ``FeatureInfo`` face over the per-level dicts of a features-only model.

    ``channels()``, ``reduction()``, ``module_name()``, ``get()`` and ``get_dicts()`` answer as timm's
    (``idx`` indexes every level; None means the selected ``out_indices``). Iterating, ``len`` and ``[i]``
    walk the selected levels only (as this package always did), where timm's walk all levels.
    """

    def __init__(self, feature_info: list[dict], out_indices: tuple[int, ...]) -> None:
        self.info = [dict(f, index=i) for i, f in enumerate(feature_info)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | list[int] | tuple[int, ...] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: list[str] | None = None, idx=None):
        pick = self.out_indices if idx is None else (idx if isinstance(idx, (tuple, list)) else None)
        if pick is None:
            f = self.info[idx]
            return f if keys is None else {k: f[k] for k in keys}
        return [self.info[i] if keys is None else {k: self.info[i][k] for k in keys} for i in pick]

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.get_dicts()[item]

    def __len__(self) -> int:
        return len(self.out_indices)

    def __iter__(self):
        return iter(self.get_dicts())

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, reduction={self.reduction()})"


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Fields every family's config has; a family subclasses it with its own (frozen, kw-only)."""

    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly over the blocks
    global_pool: str = "avg"  # timm's pooling types: avg, max, avgmax, catavgmax, '' (layers.classifier)


class ModelBase(nn.Module):
    """Base of every model: stem -> stages -> (neck) -> head.

    A family sets ``self.stem``, ``self.stages`` (an iterable of modules, one per feature level),
    ``self.feature_info`` (one ``dict(num_chs, reduction, module)`` per stage), ``self.num_features``,
    and implements ``forward_head`` and ``reset_classifier``. ``forward_neck`` runs after the last stage
    (e.g. EfficientNetV2's 1×1 head conv); ``head_attrs`` names what features-only mode removes.

    Feature levels follow timm's for the same name: one per stride. A family whose stages do not all
    downsample (EfficientNetV2, MobileNetV2) builds its levels with :func:`levels_at_stage_ends`, and each
    level's ``stage`` says which stage ends it.
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
        self._pretrained_cfg: dict = {}

    # -- pretrained_cfg ----------------------------------------------------------------------------
    @property
    def pretrained_cfg(self) -> dict:
        """timm's ``pretrained_cfg``: input sizes, mean/std, crop, interpolation, first conv and classifier
        names, license and paper of this name (``moderncnn.models.pretrained_cfgs`` says where the values
        come from); ``timm.data.resolve_model_data_config(model)`` reads it."""
        return self._pretrained_cfg

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict) -> None:
        # whoever builds the model sets architecture/num_classes/sizes; the per-name table completes it
        value = dict(value)
        if "architecture" in value:
            value = pretrained_cfg_for(value["architecture"], self.family, value)
        self._pretrained_cfg = value

    @property
    def default_cfg(self) -> dict:  # timm's older name for the same dict
        return self._pretrained_cfg

    # -- input validation --------------------------------------------------------------------------
    @property
    def min_input_size(self) -> int:
        """Smallest spatial size that survives every downsampling (the total stride)."""
        info = getattr(self, "full_feature_info", self.feature_info)
        return max(i["reduction"] for i in info)

    def check_input(self, x: torch.Tensor) -> None:
        if _is_tracing(x):
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
        return preferred_layout(self.stem(x))

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

    def _levels(self) -> list[dict]:
        """Every feature level's dict (also in features-only mode, where ``feature_info`` is selective)."""
        return getattr(self, "full_feature_info", self.feature_info)

    def _stage_ends(self) -> list[int]:
        return [f.get("stage", i) for i, f in enumerate(self._levels())]

    def _intermediate(self, level: int, x: torch.Tensor, norm: bool) -> torch.Tensor:
        """A level's feature map as returned by ``forward_intermediates``; a family with per-level norms
        applies them here."""
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: the feature maps of the levels in ``indices`` (None: all; an
        int n: the last n; a sequence: those, negative from the end) and, unless ``intermediates_only``,
        the final features first: ``(final, intermediates)``. ``final`` is ``forward_features``' output
        when every stage ran; with ``stop_early`` the stages after the last wanted level are skipped and
        ``final`` is the last stage's output that ran (no neck)."""
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt must be 'NCHW' (the only layout these ConvNets produce), got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self._levels()), indices)
        ends = self._stage_ends()
        take_stages = {ends[i]: i for i in take}
        last = ends[max_index] if stop_early else len(self.stages) - 1
        intermediates = []
        x = self.forward_stem(x)
        for i, stage in enumerate(self.stages):
            if i > last:
                break
            x = self._run_stage(stage, x)
            if i in take_stages:
                intermediates.append(self._intermediate(take_stages[i], x, norm))
        if intermediates_only:
            return intermediates
        if last == len(self.stages) - 1:
            x = self.forward_neck(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's ``prune_intermediate_layers``: drop the stages after the last level in ``indices``; the
        neck (e.g. a 1×1 head conv) goes with them or with the head, and the classifier goes unless
        ``prune_head=False`` (and stages were kept). Returns the absolute level indices kept."""
        levels = self._levels()
        take, max_index = feature_take_indices(len(levels), indices)
        last = self._stage_ends()[max_index]
        truncated = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        if prune_norm or prune_head or truncated:
            for attr in self.head_attrs:
                if attr != "head" and hasattr(self, attr):
                    setattr(self, attr, nn.Identity())
            self.num_features = levels[max_index]["num_chs"]
        if prune_head or truncated:
            self.reset_classifier(0)
            if hasattr(self.head, "norm"):  # the head's norm is sized for the last stage: it goes too (timm)
                self.head.norm = nn.Identity()
                self.head.in_features = self.num_features
        return take

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
            return self.forward_intermediates(x, self.out_indices, norm=True, stop_early=True,
                                              intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    # -- timm-style helpers ------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ``reset_classifier``: a fresh classifier for ``num_classes`` (0 removes it), and the
        pooling ``global_pool`` (None keeps the current one). ``cfg`` follows, so a saved model's
        description rebuilds the new head."""
        self.head.reset(num_classes, global_pool)
        self.num_classes = num_classes
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes, global_pool=self.head.pool_type)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping (``timm.models.group_parameters``; layer-wise lr decay in
        ``create_optimizer_v2(layer_decay=...)``): the stem first, then stage by stage (``coarse``) or
        block by block, the neck last among the blocks; the classifier is left unmatched (the top group).
        A stage is either ``stages.i.j`` (blocks) or ``stages.i.{downsample,blocks.j}`` (the downsample
        grouped with the first block, as timm's ConvNeXt)."""
        neck = [a for a in self.head_attrs if a != "head"]
        tail = [(rf"^(?:{'|'.join(neck)})", (99999,))] if neck else []
        if coarse:
            return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)", None), *tail])
        return dict(stem=r"^stem", blocks=[
            (r"^stages\.(\d+)\.downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^stages\.(\d+)\.(\d+)", None),
            *tail,
        ])

    def as_features(self, out_indices: tuple[int, ...] | None = None) -> ModelBase:
        """Turn this model into a backbone returning a list of per-level feature maps (in place);
        ``feature_info`` becomes a :class:`FeatureInfo` over the selected levels."""
        levels = self._levels()
        n = len(levels)
        out_indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
        bad = [i for i in out_indices if not -n <= i < n]
        if bad or not out_indices:
            raise ConfigError(f"out_indices {out_indices} out of range for {n} feature levels (valid: 0..{n - 1})")
        self.out_indices = tuple(sorted(i % n for i in out_indices))
        self.features_only = True
        for attr in self.head_attrs:
            if hasattr(self, attr):
                setattr(self, attr, nn.Identity())
        self.full_feature_info = list(levels)
        self.feature_info = FeatureInfo(self.full_feature_info, self.out_indices)
        return self
