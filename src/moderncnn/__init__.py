"""moderncnn: MobileNeXt, EfficientNetV2, RepVGG, RepLKNet and ConvNeXt, faithful, fast, deployable."""

from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputShapeError,
    ModernCNNError,
    UnknownModelError,
)
from .factory import create_model
from .interop import load_weights
from .interop.official import from_official_config
from .layers.reparam import reparameterize_model
from .registry import list_models

__version__ = "0.1.0"


def fuse(model, inplace: bool = False):
    """Deploy form: re-parameterize every Rep block, fold every BatchNorm, drop dropout (eval mode)."""
    from .deploy.fuse import fuse as _fuse

    return _fuse(model, inplace=inplace)


__all__ = [
    "create_model",
    "list_models",
    "load_weights",
    "reparameterize_model",
    "from_official_config",
    "fuse",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputShapeError",
    "ModernCNNError",
    "UnknownModelError",
]
