"""Building blocks shared by two or more families."""

from .classifier import ClassifierHead
from .conv_bn import ConvBN, ConvBNAct
from .drop import DropPath, drop_path
from .dwconv import DepthwiseConv2d, create_conv2d
from .helpers import drop_path_rates, make_divisible
from .norm import LayerNorm2d
from .reparam import (
    fuse_conv_bn,
    fuse_conv_bn_tensors,
    identity_kernel,
    pad_kernel_to,
    reparameterize_model,
)

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
    "fuse_conv_bn",
    "fuse_conv_bn_tensors",
    "identity_kernel",
    "pad_kernel_to",
    "reparameterize_model",
]
