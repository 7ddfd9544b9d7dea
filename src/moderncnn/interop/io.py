"""Our weight files: ``NAME.safetensors`` plus ``NAME.json`` (model name and config overrides)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: str | Path, overrides: dict[str, Any] | None = None) -> None:
    """Save ``model``'s weights as safetensors (atomically) and its recipe as JSON beside it."""
    from safetensors.torch import save

    path = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(sd, metadata={"format": "pt"}))
    cfg = getattr(model, "cfg", None)
    meta = {
        "architecture": getattr(model, "model_name", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "in_chans": getattr(model, "in_chans", None),
        "overrides": overrides or {},
        "deploy": bool(getattr(cfg, "deploy", False)),
    }
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())


__all__ = ["atomic_write_bytes", "save_weights"]
