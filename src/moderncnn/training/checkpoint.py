"""Training checkpoints, committed whole: one folder per save, written under a temporary name and made
visible by one rename, so a checkpoint appears complete or not at all (README, "Preemption-safe training").

A run folder holds::

    checkpoints/step-00000120/   one checkpoint, the unit that is committed:
        model.safetensors        the model weights (plain keys, loadable with ``moderncnn.load_weights``)
        ema.safetensors          the EMA weights, when the run keeps an EMA
        state.pt                 optimizer state, epoch/step counters, best metric, every process's RNG
                                 states and the resolved config: tensors and primitives saved with
                                 ``torch.save`` and read back with ``weights_only=True``, so no pickled
                                 code is ever executed
        manifest.json            step, epoch, save number, tags, the best checkpoint, file sizes, token
    last.safetensors  last_ema.safetensors  last.state.pt    links to the newest checkpoint's files
    best.safetensors  best_ema.safetensors  best.state.pt    links to the best checkpoint's files

How :func:`save_checkpoint` writes one (each step is a point where :data:`FAULT_HOOK` is called, so a
test can kill the writer there; :data:`WRITE_POINTS` lists them in order):

1. weights that are not finite are refused: a checkpoint is only "good" if every weight is finite;
2. every file goes into ``checkpoints/.tmp-...`` and is fsynced; the manifest is written last;
3. the temporary folder is renamed to ``checkpoints/step-N``: the commit. Until then the previous
   checkpoint is the newest complete one, and it stays untouched;
4. the ``last``/``best`` links are replaced one file at a time (hard link under a temporary name, then
   ``os.replace``; a copy where the file system has no hard links);
5. older checkpoints, except the best, are renamed to ``.trash-...`` and deleted.

Reading: a run folder resolves to its newest complete checkpoint (the highest save number whose
manifest, files, tokens and weights check out); a damaged newer one is skipped with a note.
:func:`clean_run_dir`, called by the run that owns the folder when it starts, deletes what a killed
writer left (``.tmp-``/``.trash-`` folders, temporary files) and points the links at the newest
checkpoint again. Run folders written before this layout (``TAG.safetensors``, ``TAG_ema.safetensors``
and ``TAG.state.pt`` side by side with one token) still load.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..interop.io import atomic_write, temp_name
from ..interop.io import fsync_dir as _fsync_dir

STATE_FORMAT = "moderncnn-train-state"
STATE_VERSION = 1
MANIFEST_FORMAT = "moderncnn-checkpoint"
MANIFEST_VERSION = 1
CHECKPOINTS = "checkpoints"  # the sub-folder of a run that holds the checkpoint folders
TAGS = ("last", "best")
FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "state": "state.pt"}
# the run-folder links of tag TAG: TAG.safetensors -> model, TAG_ema.safetensors -> ema, TAG.state.pt -> state
VIEWS = {"model": "{tag}.safetensors", "ema": "{tag}_ema.safetensors", "state": "{tag}.state.pt"}

# Called as FAULT_HOOK(point) after each step of the writer; a test sets it to kill the process there.
FAULT_HOOK: Callable[[str], None] | None = None
WRITE_POINTS = (
    "temp-folder",  # the empty temporary folder exists
    "model",  # model.safetensors written and fsynced in it
    "ema",
    "state",
    "manifest",  # every file is there; the folder is not committed yet
    "commit",  # renamed to step-N
    *(f"link:{tag}:{kind}" for tag in TAGS for kind in VIEWS),  # one run-folder link replaced
    "trash",  # an older checkpoint renamed to .trash-...
    "prune",  # ... and deleted
)


def _fault(point: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(point)


def _plain_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to be safe
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> Path:
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


def non_finite(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
    path: Path  # the checkpoint folder (or, for the older layout, the state file)
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]
    meta: dict[str, str]  # the model weights' safetensors metadata
    notes: list[str] = field(default_factory=list)  # newer checkpoints that were skipped, and why


def checkpoint_paths(run_dir: str | Path, tag: str) -> tuple[Path, Path, Path]:
    """The run-folder links of ``tag``: (weights, EMA weights, training state)."""
    run_dir = Path(run_dir)
    return tuple(run_dir / VIEWS[kind].format(tag=tag) for kind in ("model", "ema", "state"))  # type: ignore


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {folder} has no readable manifest.json ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} is not a moderncnn checkpoint manifest")
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise CheckpointError(f"{path} was written by a newer moderncnn (manifest version {manifest['version']})")
    return manifest


def committed_checkpoints(run_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, manifest)`` of every committed checkpoint of a run, newest (highest save number) first.
    Folders whose manifest cannot be read are left out (:func:`load_checkpoint` reports them)."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                found.append((folder, _read_manifest(folder)))
            except CheckpointError:
                continue
    return sorted(found, key=lambda fm: fm[1].get("seq", -1), reverse=True)


def _link(src: Path, dst: Path) -> None:
    """Replace ``dst`` by a hard link to ``src`` (a copy where hard links are not possible), atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = temp_name(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        # rename() between two links of one file does nothing and leaves ``tmp``
        tmp.unlink(missing_ok=True)


def _point_links(run_dir: Path, tag: str, folder: Path, manifest: Mapping[str, Any]) -> None:
    for kind in VIEWS:
        view = run_dir / VIEWS[kind].format(tag=tag)
        if kind in manifest["files"]:
            _link(folder / FILES[kind], view)
        else:  # a checkpoint without EMA: no stale EMA link beside it
            view.unlink(missing_ok=True)
        _fault(f"link:{tag}:{kind}")
    _fsync_dir(run_dir)


def _remove_folder(folder: Path) -> None:
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    os.replace(folder, trash)
    _fault("trash")
    shutil.rmtree(trash, ignore_errors=True)
    _fault("prune")


def save_checkpoint(
    run_dir: str | Path,
    tags: str | Iterable[str] = "last",
    *,
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, torch.Tensor] | None,
    train_state: dict[str, Any],
    model_name: str,
    model_config: dict[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Commit one checkpoint of ``run_dir`` and point the links of ``tags`` (``last``, ``best``) at it.

    ``metadata`` is added to the weight files' safetensors metadata (e.g. the model description).
    Returns the checkpoint folder. Raises :class:`CheckpointError` before writing anything when a
    weight is not finite.
    """
    run_dir = Path(run_dir)
    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    unknown = [t for t in tags if t not in TAGS]
    if unknown or not tags:
        raise ValueError(f"checkpoint tags must be among {TAGS}, got {tags}")
    step = int(train_state.get("global_step", 0))
    bad = non_finite(model_state) + [f"ema.{k}" for k in non_finite(ema_state or {})]
    if bad:
        more = f" ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(
            f"refusing to save a checkpoint at global step {step}: {len(bad)} weights are not finite "
            f"({', '.join(bad[:5])}{more}); the previous checkpoint is kept"
        )
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    existing = committed_checkpoints(run_dir)
    seq = 1 + max((m.get("seq", 0) for _, m in existing), default=0)
    name = f"step-{step:08d}"
    if (root / name).exists():  # the same step saved again (e.g. a run resumed from an older checkpoint)
        name = f"{name}-{seq}"
    previous_best = next((m.get("best") for _, m in existing), None)
    best = name if "best" in tags else (previous_best if previous_best and (root / previous_best).is_dir() else None)

    token = uuid.uuid4().hex
    meta = {
        "format": "moderncnn-weights",
        "model": model_name,  # a label; the model description is the spec in ``metadata`` (interop.spec)
        "epoch": str(train_state.get("epoch", 0)),
        "global_step": str(step),
        "token": token,
        **dict(metadata or {}),
    }
    state = dict(train_state, format=STATE_FORMAT, version=STATE_VERSION, token=token, model=model_name,
                 model_config=model_config)
    tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _fault("temp-folder")
        files: dict[str, int] = {}

        def write(kind: str, fn: Callable[[Path], None]) -> None:
            path = tmp / FILES[kind]
            fn(path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[kind] = path.stat().st_size
            _fault(kind)

        model_sd = _plain_state_dict(model_state)
        write("model", lambda p: save_file(model_sd, str(p), metadata=dict(meta, kind="model")))
        if ema_state is not None:
            ema_sd = _plain_state_dict(ema_state)
            write("ema", lambda p: save_file(ema_sd, str(p), metadata=dict(meta, kind="ema")))
        write("state", lambda p: torch.save(state, p))
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "seq": seq, "name": name,
                    "global_step": step, "epoch": int(train_state.get("epoch", 0)), "tags": list(tags),
                    "best": best, "token": token, "model": model_name, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        with open(tmp / "manifest.json", "rb") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _fault("manifest")
        os.replace(tmp, root / name)  # the commit
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    _fault("commit")
    folder = root / name
    for tag in TAGS:
        if tag in tags:
            _point_links(run_dir, tag, folder, manifest)
    for other, _ in existing:
        if other.name not in (name, best):
            _remove_folder(other)
    return folder


# -- reading ---------------------------------------------------------------------------------------------
def _load_folder(folder: Path) -> Checkpoint:
    """One committed checkpoint folder, checked: manifest, file sizes, tokens, finite weights."""
    manifest = _read_manifest(folder)
    for kind, size in manifest["files"].items():
        path = folder / FILES[kind]
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"checkpoint {folder}: {FILES[kind]} is missing or has the wrong size")
    return _load_files(folder, folder / FILES["model"], folder / FILES["ema"] if "ema" in manifest["files"] else None,
                       folder / FILES["state"], manifest["token"])


def _load_files(where: Path, weights: Path, ema: Path | None, state_file: Path, token: str | None) -> Checkpoint:
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {state_file}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_file} is not a moderncnn training state")
    token = token or state.get("token")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {state_file} has no weights file {weights.name} beside it")
    model_sd, meta = load_weights_file(weights)
    ema_sd = None
    if state.get("has_ema"):
        if ema is None or not ema.is_file():
            raise CheckpointError(f"checkpoint {where} keeps an EMA but its EMA weights file is missing")
        ema_sd, ema_meta = load_weights_file(ema)
        if ema_meta.get("token") != token:
            _torn(where)
    if meta.get("token") != token or state.get("token") != token:
        _torn(where)
    bad = non_finite(model_sd) + non_finite(ema_sd or {})
    if bad:
        raise CheckpointError(f"checkpoint {where} holds weights that are not finite ({', '.join(bad[:3])}); "
                              "it is not a good checkpoint")
    return Checkpoint(where, model_sd, ema_sd, state, meta)


def _torn(where: Path) -> None:
    raise CheckpointError(
        f"the files of checkpoint {where} come from different saves (a run stopped while replacing them); "
        f"resume from the run folder {where.parent}, which picks its newest complete checkpoint"
    )


def _load_old_layout(path: Path, tag: str) -> Checkpoint:
    weights, ema, state = checkpoint_paths(path, tag)
    return _load_files(state, weights, ema, state, None)


def latest_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest complete checkpoint of a run folder; damaged newer ones are skipped (``notes`` says why).

    A run folder of the older layout (no ``checkpoints/``) resolves to ``last``, else ``best``."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    root = run_dir / CHECKPOINTS
    candidates = []
    if root.is_dir():
        folders = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")]
        seqs = {f: m.get("seq", -1) for f, m in committed_checkpoints(run_dir)}
        candidates = sorted(folders, key=lambda f: seqs.get(f, -2), reverse=True)
    for folder in candidates:
        try:
            ck = _load_folder(folder)
        except CheckpointError as exc:
            notes.append(str(exc))
            continue
        ck.notes = notes
        return ck
    # the layout before checkpoints/: TAG.safetensors + TAG_ema.safetensors + TAG.state.pt
    for tag in TAGS if not candidates else ():
        if checkpoint_paths(run_dir, tag)[2].is_file():
            try:
                ck = _load_old_layout(run_dir, tag)
            except CheckpointError as exc:
                notes.append(str(exc))
                continue
            ck.notes = notes
            return ck
    if notes:
        raise CheckpointError(f"{run_dir} has no complete checkpoint: " + "; ".join(notes))
    raise CheckpointError(f"{run_dir} holds no checkpoint ({CHECKPOINTS}/ or last.state.pt); "
                          "is it a moderncnn run folder?")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely (``weights_only=True`` and safetensors) and check it is complete.

    ``path`` is a run folder (its newest complete checkpoint), a checkpoint folder, a file in one, or a
    run-folder link (``last.state.pt``, ``best.safetensors``, ``best_ema.safetensors``...)."""
    path = Path(path)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return _load_folder(path)
        return latest_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.name in FILES.values() and (path.parent / "manifest.json").is_file():
        return _load_folder(path.parent)
    for suffix in (".state.pt", "_ema.safetensors", ".safetensors"):
        if path.name.endswith(suffix):
            return _load_old_layout(path.parent, path.name[: -len(suffix)])
    raise CheckpointError(
        f"cannot resume from {path}: expected a run folder, a checkpoint folder, or a TAG.state.pt / "
        "TAG.safetensors file of a run"
    )


def clean_run_dir(run_dir: str | Path) -> list[str]:
    """Delete what a killed writer left and point the ``last``/``best`` links at the newest checkpoint and
    its best. Only the run that owns the folder (holds its lock) may call this. Returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    root = run_dir / CHECKPOINTS
    for parent in (root, run_dir):
        if not parent.is_dir():
            continue
        for p in parent.iterdir():
            if p.name.startswith((".tmp-", ".trash-")) or (p.name.startswith(".") and ".tmp-" in p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(str(p.relative_to(run_dir)))
    committed = committed_checkpoints(run_dir)
    if committed:
        newest, manifest = committed[0]
        _point_links(run_dir, "last", newest, manifest)
        best = manifest.get("best")
        for folder, m in committed:
            if folder.name == best:
                _point_links(run_dir, "best", folder, m)
    return removed


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
