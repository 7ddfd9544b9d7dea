"""EfficientNetV2 weights from timm, and from the official TensorFlow release through timm.

timm's layout: ``conv_stem``/``bn1``, ``blocks.i.j`` (stage i, block j), ``conv_head``/``bn2``,
``classifier``. Its three block classes name their layers differently:

- ``ConvBnAct`` (Fused-MBConv e=1): ``conv``, ``bn1`` -> ``fused.{conv,bn}``;
- ``EdgeResidual`` (Fused-MBConv e>1): ``conv_exp``, ``bn1`` -> ``fused``; ``conv_pwl``, ``bn2`` -> ``project``;
- ``InvertedResidual`` (MBConv): ``conv_pw``, ``bn1`` -> ``expand``; ``conv_dw``, ``bn2`` -> ``dw``;
  ``conv_pwl``, ``bn3`` -> ``project``.

SE layers: ``se.conv_reduce``/``se.conv_expand`` -> ``se.reduce``/``se.expand``.

The "official" layout is the same converter: the official checkpoints of ``google/automl``
(efficientnetv2/) are TensorFlow checkpoints, and the way to PyTorch is timm's ``tf_efficientnetv2_*``
port of them (same shapes, TF 'same' padding, BN eps 1e-3). Load such a state dict into a
``tf_efficientnetv2_*`` model (``padding="same"``) to reproduce the official logits.
"""

from __future__ import annotations

import re

from torch import nn

from . import StateDict, register_layout, swap_prefix

_TOP = {
    "conv_stem.": "stem.conv.",
    "bn1.": "stem.bn.",
    "conv_head.": "conv_head.conv.",
    "bn2.": "conv_head.bn.",
    "classifier.": "head.fc.",
}
# layer-name maps per timm block class, keyed by a layer only that class has
_BLOCK_MAPS = {
    "conv": {"conv": "fused.conv", "bn1": "fused.bn"},  # ConvBnAct
    "conv_exp": {"conv_exp": "fused.conv", "bn1": "fused.bn", "conv_pwl": "project.conv", "bn2": "project.bn"},
    "conv_dw": {  # InvertedResidual
        "conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
        "conv_pwl": "project.conv", "bn3": "project.bn",
    },
}
_SE = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def _block_kind(layers: set[str]) -> dict[str, str]:
    for marker, mapping in _BLOCK_MAPS.items():
        if marker in layers:
            return mapping
    return {}


def convert_timm(sd: StateDict, model: nn.Module | None = None) -> StateDict:
    """timm's ``efficientnetv2_*`` / ``tf_efficientnetv2_*`` state dict -> our key names.

    Keys it does not know pass through unchanged, so ``load_weights`` names them as unexpected.
    """
    layers: dict[tuple[str, str], set[str]] = {}
    for key in sd:
        m = _BLOCK_KEY.match(key)
        if m:
            layers.setdefault(m.group(1, 2), set()).add(m.group(3).split(".")[0])
    out: StateDict = {}
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        if m:
            i, j, rest = m.groups()
            mapping = _block_kind(layers[(i, j)])
            out[f"stages.{i}.{j}.{_rename(rest, mapping)}"] = value
            continue
        for old, new in _TOP.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _rename(rest: str, mapping: dict[str, str]) -> str:
    for old, new in _SE.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    layer, _, tail = rest.partition(".")
    return f"{mapping.get(layer, layer)}.{tail}"


def native_to_timm(sd: StateDict, model: nn.Module | None = None,
                   block_maps: dict[frozenset, dict[str, str]] | None = None) -> StateDict:
    """Ours -> timm's layout (the inverse of :func:`convert_timm`). Each block's timm class follows from the
    parts it has: ``dw`` -> ``InvertedResidual``, ``fused`` with ``project`` -> ``EdgeResidual``, ``fused``
    alone -> ``ConvBnAct``; ``block_maps`` adds classes keyed by their exact parts (MobileNetV2's)."""
    parts: dict[tuple[str, str], set[str]] = {}
    for key in sd:
        if m := _OUR_BLOCK_KEY.match(key):
            parts.setdefault(m.group(1, 2), set()).add(m.group(3).split(".")[0])
    out: StateDict = {}
    for key, value in sd.items():
        if m := _OUR_BLOCK_KEY.match(key):
            i, j, rest = m.groups()
            have = parts[(i, j)]
            mapping = (block_maps or {}).get(frozenset(have - {"se"})) or _BLOCK_MAPS[
                "conv_dw" if "dw" in have else "conv_exp" if "project" in have else "conv"]
            rest = swap_prefix(rest, {f"{k}.": f"{v}." for k, v in _SE.items()}, reverse=True)
            out[f"blocks.{i}.{j}.{swap_prefix(rest, {f'{k}.': f'{v}.' for k, v in mapping.items()}, reverse=True)}"] \
                = value
        else:
            out[swap_prefix(key, _TOP, reverse=True)] = value
    return out


_OUR_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.(.+)$")

register_layout("efficientnetv2", "timm", convert_timm, export=native_to_timm)
# official = timm's tf_ port (see above)
register_layout("efficientnetv2", "official", convert_timm, export=native_to_timm)
