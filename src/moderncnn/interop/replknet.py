"""RepLKNet weights in the official DingXiaoH/RepLKNet-pytorch layout, and its constructor.

The official ``replknet.py`` keys map to ours (``moderncnn.models.replknet``) as::

    stem.{0..3}.{conv, bn}                           -> stem.{0..3}.{conv, bn}
    transitions.i.{0, 1}.{conv, bn}                  -> stages.{i+1}.downsample.{0, 1}.{conv, bn}
    stages.i.blocks.k.prelkb_bn | preffn_bn          -> stages.i.blocks.k.norm
    stages.i.blocks.k.{pw1, pw2}                     -> stages.i.blocks.k.{pw1, pw2}
    ...large_kernel.lkb_origin | small_conv          -> ...large_kernel.large_conv | small_conv   (train form)
    ...large_kernel.lkb_reparam                      -> ...large_kernel.reparam_conv              (deploy form)
    stages.i.norm                                    -> feature_norms.i   (norm_intermediate_features)
    norm, head                                       -> head.norm, head.fc

Both forms load: the train form (``lkb_origin`` + ``small_conv``) into a model built with
``deploy=False``, the merged form (``lkb_reparam``, ``small_kernel_merged=True`` officially) into one
built with ``deploy=True``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from . import StateDict, register_layout
from .official import register_official_class

_TRANSITION = re.compile(r"^transitions\.(\d+)\.(.*)$")
_STAGE_NORM = re.compile(r"^stages\.(\d+)\.norm\.(.*)$")
_BLOCK = re.compile(r"^(stages\.\d+\.blocks\.\d+)\.(\w+)(\.(\w+))?(\..*)?$")
_BLOCK_PARTS = {"prelkb_bn": "norm", "preffn_bn": "norm", "pw1": "pw1", "pw2": "pw2", "large_kernel": "large_kernel"}
_LARGE_KERNEL_PARTS = {"lkb_origin": "large_conv", "small_conv": "small_conv", "lkb_reparam": "reparam_conv"}


def _official_key(key: str) -> str:
    if key.startswith("stem."):
        return key
    if m := _TRANSITION.match(key):
        i, rest = m.groups()
        return f"stages.{int(i) + 1}.downsample.{rest}"
    if m := _STAGE_NORM.match(key):
        i, rest = m.groups()
        return f"feature_norms.{i}.{rest}"
    if m := _BLOCK.match(key):
        prefix, part, _, sub, rest = m.groups()
        if part not in _BLOCK_PARTS:
            raise CheckpointError(f"unexpected official RepLKNet block key {key!r}")
        if part == "large_kernel":
            if sub not in _LARGE_KERNEL_PARTS:
                raise CheckpointError(f"unexpected official RepLKNet large-kernel key {key!r}")
            return f"{prefix}.large_kernel.{_LARGE_KERNEL_PARTS[sub]}{rest or ''}"
        return f"{prefix}.{_BLOCK_PARTS[part]}" + (f".{sub}" if sub else "") + (rest or "")
    if key.startswith("norm."):
        return "head." + key
    if key.startswith("head."):
        return "head.fc." + key[len("head."):]
    raise CheckpointError(f"unexpected key {key!r} in an official RepLKNet checkpoint")


def convert_official(sd: StateDict, model: nn.Module) -> StateDict:
    """DingXiaoH/RepLKNet-pytorch ``replknet.py`` keys (train or merged form) -> ours."""
    out = {_official_key(k): v for k, v in sd.items()}
    model_deploy = any(".reparam_conv." in k for k in model.state_dict())
    sd_deploy = any(".reparam_conv." in k for k in out)
    sd_train = any(".large_conv." in k for k in out)
    if model_deploy and sd_train and not sd_deploy:
        raise CheckpointError(
            "this official RepLKNet checkpoint is in the training form (lkb_origin/small_conv) but the model was "
            "built with deploy=True; build it with deploy=False, load, then call moderncnn.reparameterize_model"
        )
    if sd_deploy and not sd_train and not model_deploy:
        raise CheckpointError(
            "this official RepLKNet checkpoint has merged kernels (lkb_reparam, small_kernel_merged=True); "
            "build the model with deploy=True to load it"
        )
    return out


_OUR_BLOCK = re.compile(r"^(stages\.\d+\.blocks\.\d+)\.(\w+)(\..*)$")


def native_to_official(sd: StateDict, model: nn.Module) -> StateDict:
    """Ours -> the official layout (the inverse of :func:`convert_official`). A block's ``norm`` is
    ``prelkb_bn`` in a RepLK block (the one with a ``large_kernel``) and ``preffn_bn`` in a ConvFFN."""
    lk_blocks = {m[1] for k in sd if (m := _OUR_BLOCK.match(k)) and m[2] == "large_kernel"}
    kernel_parts = {ours: theirs for theirs, ours in _LARGE_KERNEL_PARTS.items()}
    out = {}
    for key, value in sd.items():
        if m := re.match(r"^stages\.(\d+)\.downsample\.(.*)$", key):
            key = f"transitions.{int(m[1]) - 1}.{m[2]}"
        elif m := re.match(r"^feature_norms\.(\d+)\.(.*)$", key):
            key = f"stages.{m[1]}.norm.{m[2]}"
        elif m := _OUR_BLOCK.match(key):
            block, part, rest = m.groups()
            if part == "norm":
                part = "prelkb_bn" if block in lk_blocks else "preffn_bn"
            elif part == "large_kernel":
                sub, _, tail = rest[1:].partition(".")
                rest = f".{kernel_parts.get(sub, sub)}.{tail}"
            key = f"{block}.{part}{rest}"
        elif key.startswith("head."):
            key = "norm." + key[len("head.norm."):] if key.startswith("head.norm.") else "head." + key[len("head.fc."):]
        out[key] = value
    return out


_KNOWN = {
    "large_kernel_sizes", "layers", "channels", "drop_path_rate", "small_kernel", "dw_ratio", "ffn_ratio",
    "in_channels", "num_classes", "out_indices", "use_checkpoint", "small_kernel_merged", "use_sync_bn",
    "norm_intermediate_features",
}


def build_official(config: dict[str, Any], deploy: bool = False, **kwargs: Any) -> nn.Module:
    """Our model equal to ``replknet.RepLKNet(**config)`` of the official repository.

    ``small_kernel_merged=True`` (or ``deploy=True``) builds the merged form; ``use_checkpoint`` turns on
    gradient checkpointing; ``use_sync_bn`` is ignored (convert with ``nn.SyncBatchNorm
    .convert_sync_batchnorm`` for distributed training); ``out_indices`` (with ``num_classes=None``) returns
    a features-only backbone. ``kwargs`` may repeat official arguments (they override ``config``); the
    rest are our config fields (``drop_rate``...).
    """
    from ..models.replknet import VARIANTS, RepLKNet, RepLKNetConfig

    # official argument names may come as kwargs too (``small_kernel_merged=True``); they override config
    opts = dict(config, **{k: kwargs.pop(k) for k in list(kwargs) if k in _KNOWN})
    unknown = sorted(set(opts) - _KNOWN)
    if unknown:
        raise ConfigError(f"replknet.RepLKNet: unsupported arguments {unknown}; supported: {sorted(_KNOWN)}")
    for required in ("large_kernel_sizes", "layers", "channels", "drop_path_rate", "small_kernel"):
        if required not in opts:
            raise ConfigError(f"replknet.RepLKNet needs {required!r} (a required argument of the official class)")
    out_indices = opts.pop("out_indices", None)
    num_classes = opts.pop("num_classes", 1000)
    if (num_classes is None) == (out_indices is None):
        raise ConfigError("replknet.RepLKNet: give exactly one of num_classes (classifier) and out_indices (backbone)")
    use_checkpoint = opts.pop("use_checkpoint", False)
    opts.pop("use_sync_bn", None)
    cfg = RepLKNetConfig(
        large_kernel_sizes=tuple(opts.pop("large_kernel_sizes")),
        layers=tuple(opts.pop("layers")),
        channels=tuple(opts.pop("channels")),
        small_kernel=opts.pop("small_kernel"),
        drop_path_rate=float(opts.pop("drop_path_rate")),
        dw_ratio=float(opts.pop("dw_ratio", 1)),
        ffn_ratio=float(opts.pop("ffn_ratio", 4)),
        in_chans=opts.pop("in_channels", 3),
        num_classes=num_classes or 0,
        norm_intermediate_features=opts.pop("norm_intermediate_features", False),
        deploy=bool(opts.pop("small_kernel_merged", False) or deploy),
        **kwargs,
    )
    model = RepLKNet(cfg)
    model.model_name = next(
        (
            name for name, (v, _) in VARIANTS.items()
            if (v.large_kernel_sizes, v.layers, v.channels, v.small_kernel, v.dw_ratio)
            == (cfg.large_kernel_sizes, cfg.layers, cfg.channels, cfg.small_kernel, cfg.dw_ratio)
        ),
        f"replknet(kernels={cfg.large_kernel_sizes}, layers={cfg.layers}, channels={cfg.channels})",
    )
    if use_checkpoint:
        model.set_grad_checkpointing(True)
    if out_indices is not None:
        model.as_features(tuple(out_indices))
    return model


register_layout("replknet", "official", convert_official, export=native_to_official)
register_official_class("replknet.RepLKNet", build_official)

__all__ = ["convert_official", "native_to_official", "build_official"]
