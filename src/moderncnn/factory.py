"""``create_model``: build any registered model by name, with validated options.

Dependencies point one way: ``factory`` -> ``interop`` (weights) -> ``registry`` (the model object).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError
from .interop import load_weights
from .registry import build_model


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
    opts: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **overrides)
    if drop_rate is not None:
        opts["drop_rate"] = drop_rate
    if drop_path_rate is not None:
        opts["drop_path_rate"] = drop_path_rate
    model = build_model(name, **opts)
    if checkpoint_path is not None:
        load_weights(model, checkpoint_path)
    if features_only:
        model.as_features(out_indices)
    elif out_indices is not None:
        raise ConfigError("out_indices only applies with features_only=True")
    return model
