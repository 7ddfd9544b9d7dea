"""Model registry: name -> (model class, config, defaults).

Each family module registers its variants at import time with :func:`register_model`. Names follow timm
wherever timm has the model, so a timm user's names just work.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import ConfigError, UnknownModelError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    model_cls: type[nn.Module]
    cfg: Any  # a frozen dataclass of the family
    input_size: int = 224  # default (square) input size
    test_input_size: int | None = None  # size the papers evaluate at, if different
    in_timm: bool = False  # timm has a model of this exact name (numerical oracle in tests)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    model_cls: type[nn.Module],
    cfg: Any,
    *,
    input_size: int = 224,
    test_input_size: int | None = None,
    in_timm: bool = False,
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"the config of {name!r} must be a dataclass, got {type(cfg).__name__}")
    family = getattr(model_cls, "family", "")
    if not family:
        raise TypeError(f"{model_cls.__name__} must name its family (class attribute `family`)")
    _REGISTRY[name] = ModelEntry(name, family, model_cls, cfg, input_size, test_input_size, in_timm)


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing registers every family)


def list_models(pattern: str | None = None, *, family: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell pattern (``'convnext_*'``)."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if family:
        names = [n for n in names if _REGISTRY[n].family == family]
    return names


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `moderncnn list` shows all {len(_REGISTRY)} models."
        ) from None


def resolve_config(name: str, **overrides: Any) -> Any:
    """The variant's config with ``overrides`` applied; a misspelled option is an error."""
    entry = get_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        msgs = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            msgs.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"{name} has no option {', '.join(msgs)}; valid options: {', '.join(sorted(fields))}"
        )
    try:
        cfg = dataclasses.replace(entry.cfg, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options for {name}: {exc}") from exc
    from .validation import check_model_options

    check_model_options(name, cfg, entry.cfg)
    return cfg


def build_model(name: str, **options: Any) -> nn.Module:
    """The registered model ``name`` with config fields ``options`` (random weights, train form).

    The one place a model object is made from its registry entry: :func:`moderncnn.create_model` adds
    weights and features-only on top, and interop's official-config builders and model descriptions use
    it directly (so nothing below ``factory`` has to import it).
    """
    entry = get_entry(name)
    cfg = resolve_config(name, **options)
    model = entry.model_cls(cfg)
    model.model_name = name
    model.pretrained_cfg = _pretrained_cfg_base(entry, cfg.in_chans, cfg.num_classes)
    return model


def _pretrained_cfg_base(entry: ModelEntry, in_chans: int, num_classes: int) -> dict[str, Any]:
    test_size = entry.test_input_size or entry.input_size
    return {
        "architecture": entry.name,
        "family": entry.family,
        "input_size": (in_chans, entry.input_size, entry.input_size),
        "test_input_size": (in_chans, test_size, test_size),
        "num_classes": num_classes,
    }


def default_pretrained_cfg(name: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` a model ``name`` carries (3 input channels, its default class count), without
    building it: what the trainer's data transforms default to (docs/training.md, "Data")."""
    from .models.pretrained_cfgs import pretrained_cfg_for

    entry = get_entry(name)
    return pretrained_cfg_for(name, entry.family, _pretrained_cfg_base(entry, 3, entry.cfg.num_classes))
