"""Training checkpoints: safetensors weights plus a tensors-and-primitives training state, written atomically.

A checkpoint ``TAG`` (``last`` or ``best``) in a run folder is three files:

* ``TAG.safetensors``      the model weights (plain keys, loadable with ``moderncnn.load_weights``),
* ``TAG_ema.safetensors``  the EMA weights, when the run keeps an EMA,
* ``TAG.state.pt``         optimizer state, epoch/step counters, best metric, every process's RNG states (torch, numpy,
                           python, cuda) and the resolved config, saved with ``torch.save`` and read
                           back with ``weights_only=True``: no pickled code is ever executed
                           (ecosystem.md §5, "Checkpoint security").

Every file is written to a temporary name in the same folder, flushed with ``fsync`` and moved into
place with ``os.replace``, so a crash leaves either the previous file or the new one, never a torn one.
The three files carry the same random ``token``; a mismatch (a crash between the renames) is reported.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

STATE_FORMAT = "moderncnn-train-state"
STATE_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then move ``tmp`` onto ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not every file system lets a directory be opened
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _plain_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to be safe
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    sd = _plain_state_dict(state_dict)
    return atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


def load_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc
    return sd, meta


# -- RNG states as tensors + primitives ----------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoints -----------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path  # the state file
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]
    meta: dict[str, str]


def checkpoint_paths(run_dir: str | Path, tag: str) -> tuple[Path, Path, Path]:
    run_dir = Path(run_dir)
    return run_dir / f"{tag}.safetensors", run_dir / f"{tag}_ema.safetensors", run_dir / f"{tag}.state.pt"


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    *,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    train_state: dict[str, Any],
    model_name: str,
    model_config: dict[str, Any],
) -> Path:
    """Write checkpoint ``tag`` into ``run_dir``; returns the state file's path."""
    weights, ema_weights, state_file = checkpoint_paths(run_dir, tag)
    token = uuid.uuid4().hex
    meta = {
        "format": "moderncnn-weights",
        "model": model_name,
        "model_config": json.dumps(model_config, sort_keys=True),
        "epoch": str(train_state.get("epoch", 0)),
        "global_step": str(train_state.get("global_step", 0)),
        "token": token,
    }
    state = dict(train_state, format=STATE_FORMAT, version=STATE_VERSION, token=token, model=model_name,
                 model_config=model_config)
    # temp files first, then the renames back to back: the window for a torn set is tiny, and the
    # token check below catches it
    save_weights(weights, model_state, dict(meta, kind="model"))
    if ema_state is not None:
        save_weights(ema_weights, ema_state, dict(meta, kind="ema"))
    else:
        ema_weights.unlink(missing_ok=True)
    atomic_write(state_file, lambda tmp: torch.save(state, tmp))
    return state_file


def resolve_checkpoint(path: str | Path) -> Path:
    """The state file for a run folder (its ``last``), a ``TAG.state.pt`` or a ``TAG.safetensors``."""
    path = Path(path)
    if path.is_dir():
        cand = path / "last.state.pt"
        if not cand.is_file():
            have = sorted(p.name for p in path.glob("*.state.pt"))
            raise CheckpointError(
                f"{path} holds no checkpoint (expected last.state.pt"
                + (f"; found {', '.join(have)}" if have else "") + "); is it a moderncnn run folder?"
            )
        return cand
    if path.name.endswith(".state.pt"):
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return path
    if path.suffix == ".safetensors":
        tag = path.name[: -len(".safetensors")].removesuffix("_ema")
        cand = path.with_name(f"{tag}.state.pt")
        if cand.is_file():
            return cand
    raise CheckpointError(
        f"cannot resume from {path}: expected a run folder, a TAG.state.pt file or a TAG.safetensors beside one"
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint back safely (``weights_only=True`` and safetensors) and check it is complete."""
    state_file = resolve_checkpoint(path)
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {state_file}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_file} is not a moderncnn training state")
    tag = state_file.name[: -len(".state.pt")]
    weights, ema_weights, _ = checkpoint_paths(state_file.parent, tag)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {state_file} has no weights file {weights.name} beside it")
    model_sd, meta = load_weights_file(weights)
    ema_sd = None
    if meta.get("token") != state["token"]:
        _torn(state_file)
    if state.get("has_ema"):
        if not ema_weights.is_file():
            raise CheckpointError(f"checkpoint {state_file} keeps an EMA but {ema_weights.name} is missing")
        ema_sd, ema_meta = load_weights_file(ema_weights)
        if ema_meta.get("token") != state["token"]:
            _torn(state_file)
    return Checkpoint(state_file, model_sd, ema_sd, state, meta)


def _torn(state_file: Path) -> None:
    raise CheckpointError(
        f"the files of checkpoint {state_file.name[: -len('.state.pt')]!r} in {state_file.parent} come from "
        "different saves (the run stopped while writing them); resume from the other checkpoint (best/last) instead"
    )


def check_same_model(ckpt: Checkpoint, model_name: str, model_state: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint of another model (name, or any key or shape) with a message saying so."""
    theirs = ckpt.state.get("model")
    problems = []
    if theirs != model_name:
        problems.append(f"it was trained with model {theirs!r}, this run builds {model_name!r}")
    missing = [k for k in model_state if k not in ckpt.model]
    extra = [k for k in ckpt.model if k not in model_state]
    shapes = [k for k in model_state if k in ckpt.model and ckpt.model[k].shape != model_state[k].shape]
    for title, keys in (("missing", missing), ("unexpected", extra), ("differently shaped", shapes)):
        if keys:
            more = f" ... and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {title} weights ({', '.join(keys[:5])}{more})")
    if problems:
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not belong to this model: " + "; ".join(problems)
            + ". Resume with the same --model and --model-kwargs, or start a new run with another --output."
        )
