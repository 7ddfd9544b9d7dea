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


def fuse(model, inplace: bool = False, **kwargs):
    """Deploy form: re-parameterize every Rep block, fold every foldable BatchNorm, drop dropout (eval mode).

    Keyword arguments go to :func:`moderncnn.deploy.fuse.fuse` (``report=True``...).
    """
    from .deploy.fuse import fuse as _fuse

    return _fuse(model, inplace=inplace, **kwargs)


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
