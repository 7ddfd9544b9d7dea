"""``create_model``: build any registered model by name, with validated options, as timm's ``create_model``.

Dependencies point one way: ``factory`` -> ``interop`` (weights) -> ``registry`` (the model object).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError
from .interop import load_pretrained, load_weights
from .registry import build_model

_REMOTE = ("hf-hub:", "hf_hub:", "timm/", "local-dir:")


def create_model(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: Mapping[str, Any] | str | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    checkpoint_path: str | Path | None = None,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    global_pool: str | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    cache_dir: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model ``name`` (timm's arguments, with timm's meaning).

    ``overrides`` are fields of the family's config (``layer_scale_init_value``, ``deploy``,
    ``identity_ratio``...); a misspelled one is an error that lists the valid fields. Options left at
    ``None`` keep the variant's default (as timm prunes ``None`` keyword arguments). ``global_pool`` is one
    of timm's pooling types (``avg``, ``max``, ``avgmax``, ``catavgmax``, ``''`` with ``num_classes=0``).

    Weights: nothing is ever downloaded. ``pretrained=True`` loads the local file named by
    ``pretrained_cfg_overlay=dict(file=PATH)`` (or ``pretrained_cfg=dict(file=PATH)``; ``state_dict=``
    works too), in any layout :func:`moderncnn.load_weights` reads, and adapts it as timm's
    ``load_pretrained`` does (:func:`moderncnn.interop.load_pretrained`: a classifier for another class
    count is left freshly initialised, a first conv for another ``in_chans`` is adapted, each with a
    warning). The overlay's keys update ``model.pretrained_cfg``; its ``num_classes`` and ``input_size``
    are the defaults of ``num_classes`` and ``in_chans``, as in timm. ``checkpoint_path`` then loads a
    checkpoint strictly (timm's ``load_checkpoint``), before the head is removed for ``features_only``.
    A model name may carry a timm tag (``convnext_atto.d2_in1k``); it is kept as ``pretrained_cfg["tag"]``.
    ``cache_dir`` is accepted for timm's signature and unused.
    """
    name, tag = _split_tag(name)
    cfg_in = _pretrained_cfg_dict(pretrained_cfg)
    if pretrained_cfg_overlay is not None and not isinstance(pretrained_cfg_overlay, Mapping):
        raise ConfigError(f"pretrained_cfg_overlay must be a dict, e.g. dict(file=PATH), got "
                          f"{type(pretrained_cfg_overlay).__name__}")
    cfg_in.update(pretrained_cfg_overlay or {})
    if num_classes is None:
        num_classes = int(cfg_in.get("num_classes", 1000))
    if in_chans is None:
        in_chans = int((cfg_in.get("input_size") or (3,))[0])
    opts: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **overrides)
    for key, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate), ("global_pool", global_pool)):
        if value is not None:
            opts[key] = value
    model = build_model(name, **opts)
    if hasattr(model, "pretrained_cfg"):
        # the table's values, then what the caller gave (timm's overlay); sizes take the model's channels
        model.pretrained_cfg.update({k: v for k, v in cfg_in.items() if k != "state_dict"})
        for key in ("input_size", "test_input_size"):
            if key in cfg_in:
                model.pretrained_cfg[key] = (in_chans, *tuple(cfg_in[key])[1:])
        if tag:
            model.pretrained_cfg["tag"] = tag
    if pretrained:
        load_pretrained(model, _weights_source(name, cfg_in))
    if checkpoint_path is not None:
        load_weights(model, checkpoint_path)
    if features_only:
        model.as_features(out_indices)
    elif out_indices is not None:
        raise ConfigError("out_indices only applies with features_only=True")
    return model


def _split_tag(name: str) -> tuple[str, str | None]:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a registered name (moderncnn list), got {name!r}")
    if name.startswith(_REMOTE):
        raise ConfigError(
            f"{name!r} names weights on the Hugging Face Hub; moderncnn downloads nothing. Download the weights "
            "yourself, then create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))")
    base, _, tag = name.partition(".")
    return base, tag or None


def _pretrained_cfg_dict(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):  # timm: a pretrained tag
        return {"tag": value}
    if hasattr(value, "to_dict"):  # a timm PretrainedCfg
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConfigError(f"pretrained_cfg must be a dict (or a tag string), got {type(value).__name__}")
    return dict(value)


def _weights_source(name: str, cfg: Mapping[str, Any]) -> Any:
    if cfg.get("state_dict") is not None:
        return cfg["state_dict"]
    if cfg.get("file"):
        return cfg["file"]
    raise ConfigError(
        f"create_model({name!r}, pretrained=True): moderncnn downloads nothing, and no local weights were given. "
        f"Download the released checkpoint (timm's or the official one) and pass it as "
        f"pretrained_cfg_overlay=dict(file=PATH), or convert it once with `moderncnn convert SRC "
        f"{name}.safetensors --model {name}` and pass that file; checkpoint_path=PATH loads a file strictly "
        "without adapting the classifier")
