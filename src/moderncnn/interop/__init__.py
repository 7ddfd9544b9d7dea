"""Reading weights from our files, timm and the official repositories into our models.

Each family module registers converters with :func:`register_layout`; a converter maps a foreign state
dict to our key names (``convert(state_dict, model) -> state_dict``). ``load_weights`` reads the file
safely (safetensors, or ``torch.load(weights_only=True)``), unwraps training checkpoints, strips
``module.``/``model.`` prefixes, converts, and loads with a report of every missing, unexpected or
mis-shaped key. :func:`export_state_dict` goes the other way (ours -> timm or official), where a family
registers the inverse.
"""

from __future__ import annotations

import pickle
import warnings
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


_EXPORTERS: dict[tuple[str, str], Converter] = {}


def register_layout(family: str, layout: str, convert: Converter, export: Converter | None = None) -> None:
    """``convert`` maps ``layout``'s keys to ours; ``export`` (optional) is its inverse, ours -> ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    _CONVERTERS[(family, layout)] = convert
    if export is not None:
        _EXPORTERS[(family, layout)] = export


def export_state_dict(model: nn.Module, layout: str) -> StateDict:
    """``model``'s weights in another layout's key names (``"timm"``, ``"official"``), the inverse of
    :func:`convert_state_dict`: what that code base's own model of the same configuration loads."""
    _ensure_loaded()
    family = getattr(model, "family", "")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if layout == "native":
        return sd
    if (family, layout) not in _EXPORTERS:
        have = sorted(lay for fam, lay in _EXPORTERS if fam == family)
        raise CheckpointError(f"no export to the {layout!r} layout for the {family or type(model).__name__} family "
                              f"(available: native{''.join(', ' + h for h in have)})")
    if getattr(model, "features_only", False) or getattr(model, "is_fused", False):
        raise CheckpointError(f"export to the {layout!r} layout takes a whole model in train or reparameterized "
                              "form, not a features-only or fused one")
    return _EXPORTERS[(family, layout)](sd, model)


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


def swap_prefix(key: str, pairs: tuple[tuple[str, str], ...] | dict[str, str], reverse: bool = False) -> str:
    """``key`` with its first matching prefix replaced, from a converter's ``(theirs, ours)`` table
    (``reverse`` reads the table ours -> theirs, for exports)."""
    for old, new in pairs.items() if isinstance(pairs, dict) else pairs:
        old, new = (new, old) if reverse else (old, new)
        if key.startswith(old):
            return new + key[len(old):]
    return key


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
    sd, used = convert_state_dict(read_state_dict(source, use_ema=use_ema), model, layout)
    return _load_converted(model, sd, used, strict)


def load_pretrained(
    model: nn.Module,
    source: str | Path | Mapping,
    layout: str = "auto",
    use_ema: bool = False,
) -> nn.Module:
    """Load pretrained weights into ``model``, adapting them as timm's ``load_pretrained`` does (in place).

    - a classifier (``pretrained_cfg["classifier"]``) whose shape does not fit the model's class count is
      left freshly initialised (fine-tuning to a new class count; ``num_classes=0`` drops it);
    - a first conv (``pretrained_cfg["first_conv"]``) made for another number of input channels is
      adapted by :func:`adapt_input_conv`;

    each with a one-line warning. Everything else must fit exactly, as in :func:`load_weights` with
    ``strict=True``.
    """
    sd, used = convert_state_dict(read_state_dict(source, use_ema=use_ema), model, layout)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    target = model.state_dict()
    name = getattr(model, "model_name", type(model).__name__)
    for conv in _names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in sd and key in target and sd[key].ndim == 4 and sd[key].shape != target[key].shape:
            have, want = sd[key].shape[1], target[key].shape[1]
            if sd[key].shape[0] == target[key].shape[0] and sd[key].shape[2:] == target[key].shape[2:]:
                sd[key] = adapt_input_conv(want, sd[key])
                warnings.warn(f"{name}: first conv {conv} adapted from {have} to {want} input channels "
                              f"({'sum over the channels' if want == 1 else 'repeated and rescaled'}, as timm)",
                              stacklevel=2)
    dropped = []
    for fc in _names(cfg.get("classifier")):
        key = f"{fc}.weight"
        if key in sd and (key not in target or sd[key].shape != target[key].shape):
            have = sd[key].shape[0]
            want = target[key].shape[0] if key in target else 0
            for part in (key, f"{fc}.bias"):
                if sd.pop(part, None) is not None and part in target:
                    dropped.append(part)
            warnings.warn(f"{name}: the checkpoint's classifier {fc} has {have} classes, the model {want}; "
                          + ("it is left freshly initialised" if want else "it is left out"), stacklevel=2)
    return _load_converted(model, sd, used, strict=True, allow_missing=dropped)


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A first-conv weight (O, I, kH, kW) for ``in_chans`` input channels instead of I, as timm adapts
    pretrained stems: one channel takes the sum over the I channels (a gray image seen as I equal
    channels gives the same response); more repeat the I channels cyclically and scale by I / in_chans
    (so the response to a constant image keeps its size)."""
    if weight.ndim != 4 or in_chans < 1:
        raise CheckpointError(f"cannot adapt a first-conv weight of shape {tuple(weight.shape)} to {in_chans} "
                              "input channels (expected a 4-D conv weight and in_chans >= 1)")
    base = weight.shape[1]
    if in_chans == base:
        return weight
    w = weight.float()  # half-precision sums on the CPU lose bits
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // base)
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (base / in_chans)
    return w.to(weight.dtype)


def _names(value: str | tuple | list | None) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def _load_converted(model: nn.Module, sd: StateDict, used: str, strict: bool,
                    allow_missing: list[str] | tuple = ()) -> nn.Module:
    """Load a state dict already in ``model``'s key names, naming every key that does not fit."""
    target = model.state_dict()
    if getattr(model, "features_only", False):  # the head was removed: ignore its weights
        sd = {k: v for k, v in sd.items() if k in target}
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked") and k not in allow_missing]
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
    model.load_state_dict(sd, strict=strict and not allow_missing)
    return model


__all__ = ["load_weights", "load_pretrained", "adapt_input_conv", "read_state_dict", "register_layout",
           "convert_state_dict", "export_state_dict", "strip_prefixes"]
