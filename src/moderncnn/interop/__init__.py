"""Reading weights from our files, timm and the official repositories into our models.

Each family module registers converters with :func:`register_layout`; a converter maps a foreign state
dict to our key names (``convert(state_dict, model) -> state_dict``). ``load_weights`` reads the file
safely (safetensors, or ``torch.load(weights_only=True)``), unwraps training checkpoints, strips
``module.``/``model.`` prefixes, converts, and loads with a report of every missing, unexpected or
mis-shaped key.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict, nn.Module], StateDict]

_CONVERTERS: dict[tuple[str, str], Converter] = {}
LAYOUTS = ("native", "timm", "official")
_CONTAINER_KEYS = ("state_dict", "model", "module", "net")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.")


def register_layout(family: str, layout: str, convert: Converter) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    _CONVERTERS[(family, layout)] = convert


def _ensure_loaded() -> None:
    from . import convnext, efficientnetv2, mobilenetv2, mobilenext, replknet, repvgg  # noqa: F401


def read_state_dict(source: str | Path | Mapping, use_ema: bool = False) -> StateDict:
    """A flat ``{key: tensor}`` from a file or mapping, without executing pickled code."""
    if isinstance(source, Mapping):
        obj = source
    else:
        path = Path(source)
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder; expected one checkpoint file (.pth, .pt, .bin, .safetensors)")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                obj = load_file(str(path))
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only refused a pickled object that is not a tensor
            raise CheckpointError(
                f"{path} holds pickled Python objects besides tensors: code that would run when the file is "
                "loaded. moderncnn never runs code from a checkpoint. Ask for .safetensors weights, or, only if "
                "you trust where the file comes from, save its tensors yourself (torch.load(path, "
                "weights_only=False) in a separate Python session, then safetensors.torch.save_file) and "
                "load that file"
            ) from None
        except Exception as exc:  # corrupt or truncated
            raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if use_ema and not _has_ema(obj):
        where = "the state dict" if isinstance(source, Mapping) else str(source)
        raise CheckpointError(f"{where} holds no EMA weights (looked for {', '.join(_EMA_KEYS)}); "
                              "leave out use_ema / --ema to use the weights it has")
    sd = _unwrap(obj, use_ema)
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"no tensors found in {source if not isinstance(source, Mapping) else 'state dict'}")
    return strip_prefixes(sd)


def _has_ema(obj: object) -> bool:
    """Whether a checkpoint (at any container depth) holds EMA weights under one of :data:`_EMA_KEYS`."""
    if not isinstance(obj, Mapping):
        return False
    return any(isinstance(obj.get(k), Mapping) for k in _EMA_KEYS) or any(
        _has_ema(obj.get(k)) for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping))


def _unwrap(obj: Mapping, use_ema: bool) -> Mapping:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict, got {type(obj).__name__}")
    if any(isinstance(v, torch.Tensor) for v in obj.values()) and not any(k in obj for k in _EMA_KEYS):
        return obj
    keys = (_EMA_KEYS + _CONTAINER_KEYS) if use_ema else (_CONTAINER_KEYS + _EMA_KEYS)
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return _unwrap(obj[key], use_ema)
    return obj


def strip_prefixes(sd: StateDict) -> StateDict:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _match_score(sd: StateDict, target: StateDict) -> float:
    hits = sum(1 for k, v in target.items() if k in sd and tuple(sd[k].shape) == tuple(v.shape))
    return hits / max(1, len(target))


def convert_state_dict(sd: StateDict, model: nn.Module, layout: str = "auto") -> tuple[StateDict, str]:
    """``sd`` mapped to ``model``'s key names, and the layout it was read as."""
    _ensure_loaded()
    family = getattr(model, "family", "")
    if layout == "native":
        return sd, layout
    if layout != "auto":
        if layout not in LAYOUTS:
            raise CheckpointError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
        if (family, layout) not in _CONVERTERS:
            have = sorted(lay for fam, lay in _CONVERTERS if fam == family)
            raise CheckpointError(f"no {layout!r} layout for the {family} family (available: native, {have})")
        return _CONVERTERS[(family, layout)](sd, model), layout
    target = model.state_dict()
    best, best_layout, best_score = sd, "native", _match_score(sd, target)
    for (fam, lay), convert in _CONVERTERS.items():
        if fam != family or best_score == 1.0:
            continue
        try:
            cand = convert(dict(sd), model)
        except Exception:  # a converter may choke on a foreign layout; that just means "not this one"
            continue
        score = _match_score(cand, target)
        if score > best_score:
            best, best_layout, best_score = cand, lay, score
    return best, best_layout


def load_weights(
    model: nn.Module,
    source: str | Path | Mapping,
    layout: str = "auto",
    strict: bool = True,
    use_ema: bool = False,
) -> nn.Module:
    """Load our ``.safetensors``, a timm or an official checkpoint into ``model`` (in place).

    ``layout`` is ``"auto"`` (detect), ``"native"``, ``"timm"`` or ``"official"``. Training checkpoints
    are unwrapped (``state_dict``/``model``, or ``state_dict_ema``/``model_ema`` with ``use_ema=True``).
    With ``strict`` any missing, unexpected or mis-shaped key is an error naming them.
    """
    sd = read_state_dict(source, use_ema=use_ema)
    sd, used = convert_state_dict(sd, model, layout)
    target = model.state_dict()
    if getattr(model, "features_only", False):  # the head was removed: ignore its weights
        sd = {k: v for k, v in sd.items() if k in target}
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if shapes or (strict and (missing or unexpected)):
        name = getattr(model, "model_name", type(model).__name__)
        parts = [f"weights (read as layout {used!r}) do not fit {name}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
                parts.append(f"  {len(items)} {title}: {', '.join(items[:8])}{more}")
        parts.append("  Is this checkpoint for another model or variant? Pass strict=False to load what fits.")
        raise CheckpointError("\n".join(parts))
    for k in target:  # BN counters absent from some layouts
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = target[k]
    sd = {k: v.to(dtype=target[k].dtype) if k in target and v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=strict)
    return model


__all__ = ["load_weights", "read_state_dict", "register_layout", "convert_state_dict", "strip_prefixes"]
