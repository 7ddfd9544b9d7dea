"""MobileNeXt weights from the official layout (``zhoudaquan/rethinking_bottleneck_design``, ``mnext.py``).

Official keys: ``features.0.{0: conv, 1: bn}`` (stem), ``features.{i}.conv.{j}`` for block i = 1..20
(one ``nn.Sequential`` per block whose indices depend on the block's code path), ``classifier.1``
(the Linear after the Dropout). The index of each of our parts follows from the block's path: in
order, ``dw1`` (conv, BN, ReLU6), ``pw_reduce`` (conv, BN), ``pw_expand`` (conv, BN, ReLU6), ``dw2``
(conv, BN), skipping the parts that path lacks; so the map is read off our model, never hard-coded.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from . import StateDict, register_layout
from .official import register_official_class

# our part -> number of official Sequential entries it spans (conv, BN, and an activation if any)
_PARTS = (("dw1", 3), ("pw_reduce", 2), ("pw_expand", 3), ("dw2", 2))
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_key_map(model: nn.Module) -> dict[str, str]:
    """``{official key: our key}`` for every tensor of ``model`` (a :class:`MobileNeXt`)."""
    mapping = {"features.0.0.weight": "stem.conv.weight"}
    mapping.update({f"features.0.1.{t}": f"stem.bn.{t}" for t in _BN_TENSORS})
    index = 1
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            j = 0
            for part, span in _PARTS:
                if getattr(block, part) is None:
                    continue
                ours = f"stages.{s}.{b}.{part}"
                mapping[f"features.{index}.conv.{j}.weight"] = f"{ours}.conv.weight"
                mapping.update({f"features.{index}.conv.{j + 1}.{t}": f"{ours}.bn.{t}" for t in _BN_TENSORS})
                j += span
            index += 1
    mapping["classifier.1.weight"] = "head.fc.weight"
    mapping["classifier.1.bias"] = "head.fc.bias"
    return mapping


def convert_official(sd: StateDict, model: nn.Module) -> StateDict:
    """Official ``MXNet`` keys -> ours; a key the model has no place for is an error naming it."""
    mapping = official_key_map(model)
    unknown = [k for k in sd if k not in mapping]
    if unknown:
        more = f" ... and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise CheckpointError(
            f"{len(unknown)} official MobileNeXt keys have no place in this model: {', '.join(unknown[:5])}{more}. "
            "Is the checkpoint for another width_mult?"
        )
    return {mapping[k]: v for k, v in sd.items()}


def build_official(config: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Our model equal to the official ``mnext.MXNet(num_classes, width_mult)`` with ``identity_div``.

    ``identity_div = d`` becomes ``identity_ratio = 1/d``. A registered width builds that variant.
    """
    from ..models.mobilenext import MOBILENEXT_WIDTHS, MobileNeXt, MobileNeXtConfig
    from ..registry import build_model

    known = {"num_classes", "width_mult", "identity_div", "input_size"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"mnext.MXNet: unsupported arguments {unknown}; supported: {sorted(known)}")
    opts = dict(config)
    opts.pop("input_size", None)  # the official constructor asserts it; the network does not depend on it
    width = float(opts.pop("width_mult", 1.0))
    div = opts.pop("identity_div", 1)
    if not isinstance(div, int) or div < 1:
        raise ConfigError(f"identity_div must be a positive integer, got {div!r}")
    opts["identity_ratio"] = 1.0 / div
    opts.setdefault("num_classes", 1000)
    opts.update(kwargs)
    for name, w in MOBILENEXT_WIDTHS.items():
        if w == width:
            return build_model(name, **opts)
    model = MobileNeXt(MobileNeXtConfig(width_mult=width, **opts))
    model.model_name = f"mobilenext(width_mult={width})"
    return model


def native_to_official(sd: StateDict, model: nn.Module) -> StateDict:
    """Ours -> official ``MXNet`` keys (the inverse of :func:`convert_official`)."""
    ours = {v: k for k, v in official_key_map(model).items()}
    return {ours.get(k, k): v for k, v in sd.items()}


register_layout("mobilenext", "official", convert_official, export=native_to_official)
register_official_class("mnext.MXNet", build_official)

__all__ = ["convert_official", "native_to_official", "build_official", "official_key_map"]
