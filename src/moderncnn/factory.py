"""``create_model``: build any registered model by name, with validated options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .registry import get_entry, resolve_config


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model ``name``.

    ``overrides`` are fields of the family's config (``layer_scale_init_value``, ``deploy``,
    ``identity_ratio``...); a misspelled one is an error that lists the valid fields. ``drop_rate`` and
    ``drop_path_rate`` left at ``None`` keep the variant's default. ``checkpoint_path`` loads weights
    (ours, timm's or the official layout) before the head is removed for ``features_only``.
    """
    entry = get_entry(name)
    opts: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **overrides)
    if drop_rate is not None:
        opts["drop_rate"] = drop_rate
    if drop_path_rate is not None:
        opts["drop_path_rate"] = drop_path_rate
    cfg = resolve_config(name, **opts)
    model = entry.model_cls(cfg)
    model.model_name = name
    test_size = entry.test_input_size or entry.input_size
    model.pretrained_cfg = {
        "architecture": name,
        "family": entry.family,
        "input_size": (in_chans, entry.input_size, entry.input_size),
        "test_input_size": (in_chans, test_size, test_size),
        "num_classes": num_classes,
    }
    if checkpoint_path is not None:
        from .interop import load_weights

        load_weights(model, checkpoint_path)
    if features_only:
        model.as_features(out_indices)
    elif out_indices is not None:
        from .errors import ConfigError

        raise ConfigError("out_indices only applies with features_only=True")
    return model
