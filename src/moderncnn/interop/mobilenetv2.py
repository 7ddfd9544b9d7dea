"""MobileNetV2 weights from timm (``mobilenetv2_050/100/140``).

timm builds MobileNetV2 with its EfficientNet builder, so the layout is EfficientNetV2's (see
``moderncnn.interop.efficientnetv2``) plus one block class of its own: the first row's
``DepthwiseSeparableConv`` (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``) -> ``dw.{conv,bn}``,
``project.{conv,bn}``. It has ``conv_dw`` like an ``InvertedResidual`` but no ``conv_pwl``.
"""

from __future__ import annotations

import re

from torch import nn

from . import StateDict, register_layout
from .efficientnetv2 import convert_timm as convert_effnet_layout
from .efficientnetv2 import native_to_timm as export_effnet_layout

_DS = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv", "bn2": "project.bn"}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.([^.]+)\.(.+)$")


def convert_timm(sd: StateDict, model: nn.Module | None = None) -> StateDict:
    """timm's ``mobilenetv2_*`` state dict -> our key names (unknown keys pass through unchanged)."""
    layers: dict[tuple[str, str], set[str]] = {}
    for key in sd:
        if m := _BLOCK_KEY.match(key):
            layers.setdefault(m.group(1, 2), set()).add(m.group(3))
    out: StateDict = {}
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        if m and "conv_pwl" not in layers[m.group(1, 2)] and m.group(3) in _DS:
            i, j, layer, tail = m.groups()
            key = f"stages.{i}.{j}.{_DS[layer]}.{tail}"
        out[key] = value
    return convert_effnet_layout(out, model)


def native_to_timm(sd: StateDict, model: nn.Module | None = None) -> StateDict:
    """Ours -> timm's ``mobilenetv2_*`` (the inverse of :func:`convert_timm`): the first row's blocks (``dw``
    and ``project`` only) are ``DepthwiseSeparableConv``."""
    return export_effnet_layout(sd, model, block_maps={frozenset({"dw", "project"}): _DS})


register_layout("mobilenetv2", "timm", convert_timm, export=native_to_timm)
