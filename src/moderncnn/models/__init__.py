"""Importing this package registers every family's variants."""

from . import convnext, convnext_roadmap, efficientnetv2, mobilenetv2, mobilenext, replknet, repvgg  # noqa: F401
from .base import ModelBase, ModelConfig

__all__ = ["ModelBase", "ModelConfig"]
