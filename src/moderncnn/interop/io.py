"""Writing files so that a crash never leaves half of one: the project's one atomic writer (weights, model
descriptions, checkpoints, run logs, experiment results). A file is written under a temporary name in the
same folder, fsynced and moved over the target with ``os.replace``, so a reader sees the old file or the new
one, never half; the folder is fsynced so the rename survives a power cut."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the renames in folder ``path`` durable (where the file system lets a folder be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (``.NAME.tmp-PID-RANDOM``), unique per process and call."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then move ``tmp`` onto ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "temp_name"]
