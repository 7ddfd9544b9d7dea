"""Building blocks shared by two or more families."""

from .classifier import ClassifierHead
from .conv_bn import ConvBN, ConvBNAct
from .drop import DropPath, drop_path
from .dwconv import DepthwiseConv2d, create_conv2d
from .helpers import drop_path_rates, make_divisible
from .norm import LayerNorm2d
from .reparam import (
    bn_affine,
    fold_bn,
    identity_kernel,
    pad_kernel_to,
    reparameterize_model,
)
from .squeeze_excite import SqueezeExcite

__all__ = [
    "ClassifierHead",
    "ConvBN",
    "ConvBNAct",
    "DepthwiseConv2d",
    "create_conv2d",
    "DropPath",
    "drop_path",
    "make_divisible",
    "drop_path_rates",
    "LayerNorm2d",
    "bn_affine",
    "fold_bn",
    "identity_kernel",
    "pad_kernel_to",
    "reparameterize_model",
    "SqueezeExcite",
]
