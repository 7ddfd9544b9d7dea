"""Deployment: fuse (re-parameterize + fold BatchNorm), export (ONNX, torch.export, safetensors), bench."""

from .export import ExportResult, export_model, load_checkpoint_model, load_exported
from .fuse import FuseReport, count_batchnorms, fuse, is_fused
from .pipeline import DeployReport, deploy_model

__all__ = [
    "DeployReport",
    "deploy_model",
    "ExportResult",
    "FuseReport",
    "count_batchnorms",
    "export_model",
    "fuse",
    "is_fused",
    "load_checkpoint_model",
    "load_exported",
]
