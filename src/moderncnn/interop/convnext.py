"""ConvNeXt weights from timm and from the official facebookresearch/ConvNeXt layout.

Our keys equal timm's (``stem.{0,1}``, ``stages.i.downsample.{0,1}``, ``stages.i.blocks.j.{conv_dw, norm,
mlp.fc1, mlp.fc2, gamma}``, ``head.{norm, fc}``). The official ``models/convnext.py`` layout is::

    downsample_layers.0.{0: conv 4×4, 1: LayerNorm}    -> stem.{0, 1}
    downsample_layers.i.{0: LayerNorm, 1: conv 2×2}    -> stages.i.downsample.{0, 1}
    stages.i.j.{dwconv, norm, pwconv1, pwconv2, gamma} -> stages.i.blocks.j.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}
    norm, head                                         -> head.norm, head.fc
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from . import StateDict, register_layout, swap_prefix
from .official import register_official_class


def _fit_shapes(sd: StateDict, model: nn.Module) -> StateDict:
    """Reshape 1×1 conv <-> Linear weights where only the layout differs (timm's ``conv_mlp`` variants)."""
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        want = target[k].shape if k in target else None
        if want is not None and v.shape != want and v.numel() == want.numel() and k.endswith("weight"):
            v = v.reshape(want)
        out[k] = v
    return out


def convert_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """timm's keys are ours; refuse what looks the same but computes something else."""
    if any(k.startswith("norm_pre.") for k in sd):
        # timm's head-norm-first variants (``*_hnf``) normalize *before* pooling: renaming norm_pre to
        # head.norm would load without error and give different logits.
        raise CheckpointError(
            "this timm ConvNeXt checkpoint has `norm_pre` (a head-norm-first `*_hnf` model: LayerNorm before "
            "global pooling); moderncnn's ConvNeXt applies the final norm after pooling as in the paper, so "
            "these weights would compute something else. Use a standard convnext_* checkpoint."
        )
    if any(k.startswith("downsample_layers.") for k in sd):
        raise CheckpointError(
            "this is an official facebookresearch ConvNeXt checkpoint; load it with layout='official'"
        )
    return _fit_shapes(dict(sd), model)


_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(.*)$")
_DOWN = re.compile(r"^downsample_layers\.(\d+)\.(\d)\.(.*)$")
_BLOCK_PARTS = {
    "dwconv": "conv_dw", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2", "norm": "norm", "gamma": "gamma"
}


def _official_key(key: str) -> str:
    if m := _DOWN.match(key):
        stage, idx, rest = m.groups()
        if stage == "0":  # the stem: conv 4×4 s4 then LayerNorm
            return f"stem.{idx}.{rest}"
        return f"stages.{stage}.downsample.{idx}.{rest}"
    if m := _BLOCK.match(key):
        stage, block, rest = m.groups()
        head, _, tail = rest.partition(".")
        if head not in _BLOCK_PARTS:
            raise CheckpointError(f"unexpected official ConvNeXt block key {key!r} (is this ConvNeXt V2?)")
        return f"stages.{stage}.blocks.{block}.{_BLOCK_PARTS[head]}" + (f".{tail}" if tail else "")
    if key.startswith("norm."):
        return "head." + key
    if key.startswith("head."):
        return "head.fc." + key[len("head."):]
    raise CheckpointError(f"unexpected key {key!r} in an official ConvNeXt checkpoint")


def convert_official(sd: StateDict, model: nn.Module) -> StateDict:
    """facebookresearch/ConvNeXt ``models/convnext.py`` keys -> ours."""
    return _fit_shapes({_official_key(k): v for k, v in sd.items()}, model)


def native_to_official(sd: StateDict, model: nn.Module) -> StateDict:
    """Ours -> the official layout (the inverse of :func:`convert_official`). The 1×1-conv MLPs of timm's
    ``conv_mlp`` variants become the official Linear layers (the same function per position)."""
    parts = {f"{ours}.": f"{theirs}." for theirs, ours in _BLOCK_PARTS.items()}
    out = {}
    for key, value in sd.items():
        if m := re.match(r"^stem\.(\d)\.(.*)$", key):
            key = f"downsample_layers.0.{m[1]}.{m[2]}"
        elif m := re.match(r"^stages\.(\d+)\.downsample\.(\d)\.(.*)$", key):
            key = f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"
        elif m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
            key = f"stages.{m[1]}.{m[2]}." + ("gamma" if m[3] == "gamma" else swap_prefix(m[3], parts))
            if ".pwconv" in key and value.ndim == 4:
                value = value.flatten(1)  # (O, I, 1, 1) -> (O, I)
        else:
            key = swap_prefix(key, (("head.norm.", "norm."), ("head.fc.", "head.")))
        out[key] = value
    return out


def build_official(config: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Our model equal to ``convnext.ConvNeXt(**config)`` of the official repository.

    Known keyword arguments: in_chans, num_classes, depths, dims, drop_path_rate,
    layer_scale_init_value, head_init_scale. A config with a registered variant's depths and dims
    builds that variant (so ``model_name`` is e.g. ``convnext_tiny``).
    """
    from ..models.convnext import VARIANTS, ConvNeXt, ConvNeXtConfig
    from ..registry import build_model

    known = {
        "in_chans", "num_classes", "depths", "dims", "drop_path_rate", "layer_scale_init_value", "head_init_scale"
    }
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"convnext.ConvNeXt: unsupported arguments {unknown}; supported: {sorted(known)}")
    opts = dict(config, **kwargs)
    depths = tuple(opts.pop("depths", (3, 3, 9, 3)))
    dims = tuple(opts.pop("dims", (96, 192, 384, 768)))
    opts.setdefault("num_classes", 1000)
    opts.setdefault("in_chans", 3)
    for name, cfg in VARIANTS.items():
        if cfg.depths == depths and cfg.dims == dims and not cfg.conv_mlp:
            return build_model(name, **opts)
    model = ConvNeXt(ConvNeXtConfig(depths=depths, dims=dims, **opts))
    model.model_name = f"convnext(depths={depths}, dims={dims})"
    return model


register_layout("convnext", "timm", convert_timm, export=lambda sd, model: dict(sd))  # timm's keys are ours
register_layout("convnext", "official", convert_official, export=native_to_official)
register_official_class("convnext.ConvNeXt", build_official)

__all__ = ["convert_timm", "convert_official", "native_to_official", "build_official"]
