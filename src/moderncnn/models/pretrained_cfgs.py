"""Per-name ``pretrained_cfg``: the evaluation settings a checkpoint of that name was made for.

The keys are timm's (``input_size``, ``test_input_size``, ``crop_pct``, ``test_crop_pct``, ``crop_mode``,
``interpolation``, ``mean``, ``std``, ``first_conv``, ``classifier``, ``license``, ``paper_ids``), so
``timm.data.resolve_model_data_config(model)`` and our own transforms read the same numbers.

Sources (docs/architectures.md, "Evaluation settings"):
- names timm has: the values of timm 1.0.31's default pretrained cfg of the same name (its first,
  default tag), so a model resolves to the same data config as timm's;
- MobileNeXt (our own names): ImageNet mean/std, 224 px, crop 0.875, bilinear -- the standard
  MobileNetV2-style evaluation the paper reports against (§4.1 trains "following MobileNetV2"); the
  official repository's evaluation script was not checked, so treat the interpolation as a default;
- RepLKNet (our own names): ImageNet mean/std, bicubic, crop 0.875 at 224 and crop 1.0 at 320/384
  (the official repository builds on the ConvNeXt/BEiT code, whose evaluation uses these);
- efficientnetv2_b0-b3 (PyTorch padding, not in timm): the tf_ names' values, as their weights are
  those of the tf_ names;
- ConvNeXt roadmap steps: ConvNeXt's (the paper trains every step with the ConvNeXt recipe, §2.1).

``first_conv`` and ``classifier`` name *our* modules (they are what a loader adapts for ``in_chans`` and
``num_classes``), not timm's.
"""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

_COMMON = dict(crop_pct=0.875, crop_mode="center", interpolation="bicubic", mean=IMAGENET_MEAN,
               std=IMAGENET_STD, classifier="head.fc")

# family defaults; per-name rows below override them
_FAMILY: dict[str, dict[str, Any]] = {
    "convnext": dict(first_conv="stem.0", license="apache-2.0", paper_ids="arXiv:2201.03545",
                     test_input_size=(3, 288, 288), test_crop_pct=1.0),
    "convnext_roadmap": dict(first_conv="stem.0", license="apache-2.0", paper_ids="arXiv:2201.03545"),
    "efficientnetv2": dict(first_conv="stem.conv", license="apache-2.0", paper_ids="arXiv:2104.00298"),
    "mobilenetv2": dict(first_conv="stem.conv", license="apache-2.0", paper_ids="arXiv:1801.04381"),
    "mobilenext": dict(first_conv="stem.conv", interpolation="bilinear", license="apache-2.0",
                       paper_ids="arXiv:2007.02269"),
    "repvgg": dict(first_conv=("stages.0.0.conv_3x3.conv", "stages.0.0.conv_1x1.conv"),
                   interpolation="bilinear", license="mit", paper_ids="arXiv:2101.03697"),
    "replknet": dict(first_conv="stem.0.conv", license="mit", paper_ids="arXiv:2203.06717"),
}

_TF_V2 = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0, crop_mode="squash")
# name: what differs from its family's row (timm 1.0.31 default cfgs; sizes as (C, H, W))
_NAMES: dict[str, dict[str, Any]] = {
    "convnext_atto": dict(test_crop_pct=0.95),
    "convnext_femto": dict(test_crop_pct=0.95),
    "convnext_pico": dict(test_crop_pct=0.95),
    "convnext_nano": dict(crop_pct=0.95),
    "convnext_tiny": dict(crop_pct=0.95),
    "convnext_small": dict(crop_pct=0.95),
    "efficientnetv2_s": dict(input_size=(3, 288, 288), test_input_size=(3, 384, 384), crop_pct=1.0),
    "efficientnetv2_m": dict(input_size=(3, 320, 320), test_input_size=(3, 416, 416), crop_pct=1.0),
    "efficientnetv2_l": dict(input_size=(3, 384, 384), test_input_size=(3, 480, 480), crop_pct=1.0),
    "efficientnetv2_xl": dict(input_size=(3, 384, 384), test_input_size=(3, 512, 512), crop_pct=1.0),
    "tf_efficientnetv2_s": dict(_TF_V2, input_size=(3, 300, 300), test_input_size=(3, 384, 384),
                                crop_mode="center"),
    "tf_efficientnetv2_m": dict(_TF_V2, input_size=(3, 384, 384), test_input_size=(3, 480, 480)),
    "tf_efficientnetv2_l": dict(_TF_V2, input_size=(3, 384, 384), test_input_size=(3, 480, 480)),
    "tf_efficientnetv2_xl": dict(_TF_V2, input_size=(3, 384, 384), test_input_size=(3, 512, 512)),
    "tf_efficientnetv2_b0": dict(input_size=(3, 192, 192), test_input_size=(3, 224, 224)),
    "tf_efficientnetv2_b1": dict(input_size=(3, 192, 192), test_input_size=(3, 240, 240), crop_pct=0.882),
    "tf_efficientnetv2_b2": dict(input_size=(3, 208, 208), test_input_size=(3, 260, 260), crop_pct=0.89),
    "tf_efficientnetv2_b3": dict(_TF_V2, input_size=(3, 240, 240), test_input_size=(3, 300, 300),
                                 crop_pct=0.9),
    "repvgg_d2se": dict(input_size=(3, 320, 320), crop_pct=1.0),
    "replknet_31l": dict(input_size=(3, 384, 384), crop_pct=1.0),
    "replknet_xl": dict(input_size=(3, 320, 320), crop_pct=1.0),
}
for _s in ("b0", "b1", "b2", "b3"):  # our PyTorch-padded B0-B3 carry the tf_ weights' settings
    _NAMES[f"efficientnetv2_{_s}"] = _NAMES[f"tf_efficientnetv2_{_s}"]

# what the model itself decides (the factory's values win for these)
_MODEL_KEYS = ("architecture", "family", "num_classes")


def pretrained_cfg_for(name: str, family: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``pretrained_cfg`` of ``name``: family row, then the name's row, then ``base``'s
    architecture/family/num_classes; ``base``'s input sizes fill in where the tables say nothing, and
    every size takes ``base``'s channel count (``in_chans``)."""
    base = dict(base or {})
    cfg: dict[str, Any] = {**_COMMON, **_FAMILY.get(family, {}), **_NAMES.get(name, {})}
    for key in ("input_size", "test_input_size"):
        cfg.setdefault(key, base.get(key))
    if cfg["test_input_size"] is None or cfg["test_input_size"] == cfg["input_size"]:
        cfg.pop("test_input_size")
    if "test_input_size" not in cfg:
        cfg.pop("test_crop_pct", None)
    chans = (base.get("input_size") or (3,))[0]
    for key in ("input_size", "test_input_size"):
        if cfg.get(key) is not None:
            cfg[key] = (chans, *cfg[key][1:])
    cfg.update({k: base[k] for k in _MODEL_KEYS if k in base})
    cfg.setdefault("architecture", name)
    return cfg
