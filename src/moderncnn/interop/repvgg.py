"""RepVGG weights from timm and from the official repository (DingXiaoH/RepVGG), both forms.

Our keys (``moderncnn.models.repvgg``): ``stages.{i}.{j}.conv_3x3.{conv,bn}``, ``conv_1x1``, ``identity``,
``se.{reduce,expand}``, ``reparam_conv``, ``head.fc``, where stage 0 (the paper's first layer) is
``stages.0.0``.

- timm (``byobnet.py``): ``stem.*`` is our ``stages.0.0``, its ``stages.{i}`` is our ``stages.{i+1}``;
  ``conv_kxk`` -> ``conv_3x3``, ``attn.fc1/fc2`` -> ``se.reduce/expand``.
- official (``repvgg.py``): ``stage0.*`` -> ``stages.0.0``, ``stage{i}.{j}`` -> ``stages.{i}.{j}``;
  ``rbr_dense`` -> ``conv_3x3``, ``rbr_1x1`` -> ``conv_1x1``, ``rbr_identity`` -> ``identity``,
  ``rbr_reparam`` -> ``reparam_conv`` (deploy form), ``se.down/up`` -> ``se.reduce/expand``,
  ``linear`` -> ``head.fc``.

A deploy-form checkpoint loads into a model built with ``deploy=True``; a train-form one into the train
form (fuse afterwards with ``moderncnn.reparameterize_model``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from . import StateDict, register_layout, swap_prefix
from .official import register_official_class

_TIMM_BLOCK = (("conv_kxk.", "conv_3x3."), ("attn.fc1.", "se.reduce."), ("attn.fc2.", "se.expand."))
_OFFICIAL_BLOCK = (
    ("rbr_dense.", "conv_3x3."),
    ("rbr_1x1.", "conv_1x1."),
    ("rbr_identity.", "identity."),
    ("rbr_reparam.", "reparam_conv."),
    ("se.down.", "se.reduce."),
    ("se.up.", "se.expand."),
)


def _rename_block(rest: str, table: tuple[tuple[str, str], ...]) -> str:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _check_form(sd: StateDict, model: nn.Module, fused_marker: str) -> None:
    """A deploy checkpoint cannot fill a train-form model (or the reverse): say so instead of listing keys."""
    ckpt_fused = any(fused_marker in k for k in sd)
    model_fused = any(".reparam_conv." in k for k in model.state_dict())
    if ckpt_fused != model_fused:
        have, want = ("deploy", "train") if ckpt_fused else ("train", "deploy")
        fix = (
            "build the model with deploy=True"
            if ckpt_fused
            else "build the train form (deploy=False), load, then call moderncnn.reparameterize_model"
        )
        raise CheckpointError(f"this is a {have}-form RepVGG checkpoint but the model is in {want} form: {fix}")


def timm_to_native(sd: StateDict, model: nn.Module) -> StateDict:
    """timm ``repvgg_*`` (``ByobNet``) keys -> ours."""
    _check_form(sd, model, ".reparam_conv.")
    out = {}
    for key, value in sd.items():
        if key.startswith("stem."):
            key = "stages.0.0." + _rename_block(key[len("stem."):], _TIMM_BLOCK)
        elif m := re.match(r"stages\.(\d+)\.(\d+)\.(.*)", key):
            key = f"stages.{int(m[1]) + 1}.{m[2]}." + _rename_block(m[3], _TIMM_BLOCK)
        out[key] = value  # head.fc.* is already ours
    return out


def official_to_native(sd: StateDict, model: nn.Module) -> StateDict:
    """Official ``repvgg.RepVGG`` keys (train form or deploy form) -> ours."""
    _check_form(sd, model, ".rbr_reparam.")
    out = {}
    for key, value in sd.items():
        if key.startswith("stage0."):
            key = "stages.0.0." + _rename_block(key[len("stage0."):], _OFFICIAL_BLOCK)
        elif m := re.match(r"stage(\d)\.(\d+)\.(.*)", key):
            key = f"stages.{m[1]}.{m[2]}." + _rename_block(m[3], _OFFICIAL_BLOCK)
        elif key.startswith("linear."):
            key = "head.fc." + key[len("linear."):]
        out[key] = value
    return out


def _to_foreign(sd: StateDict, stem: str, stage: Callable[[int, str], str], block: tuple[tuple[str, str], ...],
                top: tuple[tuple[str, str], ...] = ()) -> StateDict:
    """Ours -> a foreign layout: ``stages.0.0`` becomes ``stem``, ``stages.i.j`` becomes ``stage(i, j)``, block
    layers and top-level keys renamed by the (foreign, ours) tables read backwards."""
    out = {}
    for key, value in sd.items():
        if key.startswith("stages.0.0."):
            key = stem + swap_prefix(key[len("stages.0.0."):], block, reverse=True)
        elif m := re.match(r"stages\.(\d+)\.(\d+)\.(.*)", key):
            key = stage(int(m[1]), m[2]) + swap_prefix(m[3], block, reverse=True)
        else:
            key = swap_prefix(key, top, reverse=True)
        out[key] = value
    return out


def native_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """Ours -> timm ``repvgg_*`` (the inverse of :func:`timm_to_native`)."""
    return _to_foreign(sd, "stem.", lambda i, j: f"stages.{i - 1}.{j}.", _TIMM_BLOCK)


def native_to_official(sd: StateDict, model: nn.Module) -> StateDict:
    """Ours -> official ``repvgg.RepVGG`` (the inverse of :func:`official_to_native`)."""
    return _to_foreign(sd, "stage0.", lambda i, j: f"stage{i}.{j}.", _OFFICIAL_BLOCK, (("linear.", "head.fc."),))


def build_from_official(config: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Our model equal to ``repvgg.RepVGG(**config)`` of the official code.

    ``width_multiplier`` is the official four per-stage multipliers; ``override_groups_map`` maps the
    global layer index (stage 0's block is 0) to its groups. ``kwargs`` (e.g. ``deploy=True``) override
    ``config``.
    """
    from ..models.repvgg import RepVGG, RepVGGConfig

    config = {**config, **kwargs}
    known = {"num_blocks", "num_classes", "width_multiplier", "override_groups_map", "use_se", "deploy",
             "use_checkpoint", "in_chans", "drop_rate", "drop_path_rate"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"repvgg.RepVGG has no argument {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "num_blocks" not in config or config.get("width_multiplier") is None:
        raise ConfigError("repvgg.RepVGG needs num_blocks and width_multiplier (four per-stage multipliers)")
    groups_map = {int(k): int(v) for k, v in (config.get("override_groups_map") or {}).items()}
    groups_map = {k: v for k, v in groups_map.items() if v != 1}
    if len(set(groups_map.values())) > 1:
        raise ConfigError(
            f"override_groups_map {groups_map} mixes group counts; moderncnn's RepVGG uses one group count "
            "for all grouped layers (as every released official model does)"
        )
    cfg = RepVGGConfig(
        num_blocks=tuple(int(n) for n in config["num_blocks"]),
        width_multiplier=tuple(float(w) for w in config["width_multiplier"]),
        group_layers=tuple(sorted(groups_map)),
        groups=next(iter(groups_map.values()), 1),
        use_se=bool(config.get("use_se", False)),
        deploy=bool(config.get("deploy", False)),
        num_classes=int(config.get("num_classes", 1000)),
        in_chans=int(config.get("in_chans", 3)),
        drop_rate=float(config.get("drop_rate", 0.0)),
        drop_path_rate=float(config.get("drop_path_rate", 0.0)),
    )
    model = RepVGG(cfg)
    model.model_name = "repvgg (official config)"
    if config.get("use_checkpoint"):
        model.set_grad_checkpointing(True)
    return model


register_layout("repvgg", "timm", timm_to_native, export=native_to_timm)
register_layout("repvgg", "official", official_to_native, export=native_to_official)
register_official_class("repvgg.RepVGG", build_from_official)

__all__ = ["timm_to_native", "official_to_native", "native_to_timm", "native_to_official", "build_from_official"]
