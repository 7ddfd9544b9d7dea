"""Build our model from an official constructor name and its keyword arguments.

Golden files in the reference data store ``official_class`` (``repvgg.RepVGG``, ``replknet.RepLKNet``,
``convnext.ConvNeXt``, ``mnext.MXNet``) and ``config`` (the constructor's keyword arguments). Each family
registers a builder that turns them into an equivalent ``create_model`` call or model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_official_class(name: str, builder: Callable[..., nn.Module]) -> None:
    _BUILDERS[name] = builder


def from_official_config(official_class: str, config: dict[str, Any] | str, **kwargs: Any) -> nn.Module:
    """Our equivalent of ``official_class(**config)``; ``config`` may be the JSON string of a golden file.

    Extra ``kwargs`` (``deploy=True``...) go to the builder.
    """
    import json

    from . import _ensure_loaded

    _ensure_loaded()
    if isinstance(config, str):
        config = json.loads(config)
    if official_class not in _BUILDERS:
        raise ConfigError(f"unknown official class {official_class!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[official_class](dict(config), **kwargs)
