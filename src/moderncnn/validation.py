"""Checking values at the boundary (config, recipes, command line): each rule says what it accepts, so every
error names the option, the valid range and the value it got, before any work starts.

A rule is a small object with ``check(name, value) -> value`` (the value normalized: a number given as a
string in a YAML recipe becomes a number, a list becomes a tuple) and ``describe()``. The training
options are a table of rules (``training/config.py``), the other commands' options another
(``cli.ARGUMENTS``), so the same words reach the user either way; model configs are checked against their
registered defaults (:func:`check_model_options`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Number:
    """An int (``integer=True``) or a finite float in a range; ``None`` allowed when ``optional``."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        lo = None if self.lo is None else f"{_fmt(self.lo)}"
        hi = None if self.hi is None else f"{_fmt(self.hi)}"
        if lo is not None and hi is not None:
            text = f"{what} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif lo is not None:
            text = f"{what} {'>' if self.lo_open else '>='} {lo}"
        elif hi is not None:
            text = f"{what} {'<' if self.hi_open else '<='} {hi}"
        else:
            text = what
        return text + (" (or unset)" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        v = value
        if isinstance(v, str):  # YAML reads 1e-3 as a string; argparse would convert it, so do we
            try:
                v = int(v) if self.integer else float(v)
            except ValueError:
                pass
        ok_type = isinstance(v, int) if self.integer else isinstance(v, (int, float))
        if isinstance(v, float) and self.integer and v.is_integer():
            v, ok_type = int(v), True
        if isinstance(v, bool) or not ok_type or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
        too_low = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        too_high = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if too_low or too_high:
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
        return v if self.integer else float(v)


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]
    optional: bool = False
    aliases: tuple[tuple[str, str], ...] = ()  # (alias, canonical)

    def describe(self) -> str:
        return "one of " + ", ".join(self.values) + (" (or unset)" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        value = dict(self.aliases).get(value, value)
        if value not in self.values:
            import difflib

            close = difflib.get_close_matches(str(value), self.values, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}{hint}")
        return value


@dataclass(frozen=True)
class Flag:
    def describe(self) -> str:
        return "true or false"

    def check(self, name: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class Text:
    optional: bool = False

    def describe(self) -> str:
        return "a string" + (" (or unset)" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        return value


@dataclass(frozen=True)
class Tuple:
    """A list of ``item`` values: exactly ``length`` of them (or at least ``min_length``), optionally in
    non-decreasing order (a (min, max) range)."""

    item: Number
    length: int | None = None
    min_length: int = 1
    ordered: bool = False
    optional: bool = False

    def describe(self) -> str:
        count = f"{self.length}" if self.length else f"{self.min_length} or more"
        order = ", the first not above the second" if self.ordered else ""
        return f"{count} values, each {self.item.describe()}{order}" + (" (or unset)" if self.optional else "")

    def check(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
        n = len(value)
        if (self.length and n != self.length) or n < self.min_length:
            raise ConfigError(f"{name} must be {self.describe()}, got {n} value(s): {list(value)}")
        try:
            out = tuple(self.item.check(name, v) for v in value)
        except ConfigError:
            raise ConfigError(f"{name} must be {self.describe()}, got {list(value)}") from None
        if self.ordered and any(a > b for a, b in zip(out, out[1:])):
            raise ConfigError(f"{name} must be {self.describe()}, got {list(value)}")
        return out


# -- model configs -----------------------------------------------------------------------------------------
def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "true or false"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (tuple, list)):
        return "a list"
    return type(v).__name__


def _numbers(v: Any):
    if isinstance(v, (tuple, list)):
        for x in v:
            yield from _numbers(x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield v


def check_model_options(name: str, cfg: Any, base: Any) -> None:
    """A model config built from the registered ``base`` with overrides: every field has the kind of value
    its default has (an integer count is not ``5.0`` or ``"5"``), no number is negative (widths, depths,
    ratios), and the dropout and drop-path rates are in [0, 1)."""
    import dataclasses

    problems = []
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(base, f.name)
        kind, want = _kind(value), _kind(default)
        same = kind == want or (want == "a number" and kind == "an integer") or value is None or default is None
        if not same:
            problems.append(f"{f.name} must be {want} (default {default!r}), got {value!r}")
        elif f.name in ("drop_rate", "drop_path_rate"):
            try:
                Number(0.0, 1.0, hi_open=True).check(f.name, value)
            except ConfigError as exc:
                problems.append(str(exc))
        elif any(x < 0 or (isinstance(x, float) and not math.isfinite(x)) for x in _numbers(value)):
            problems.append(f"{f.name} must not be negative or infinite, got {value!r}")
    if problems:
        raise ConfigError(f"invalid options for {name}: " + "; ".join(problems))


# -- the environment ---------------------------------------------------------------------------------
def device_syntax(name: str, what: str = "--device") -> Any:
    """A ``torch.device`` for ``name`` when it names a CPU or CUDA device, whether or not this machine has it
    (a config may be written here for a GPU machine); ``what`` names the option in the error."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} must be cpu, cuda or cuda:N, got {name!r}")
    return dev


def check_device(name: str | None) -> Any:
    """A ``torch.device`` for ``name`` that exists on this machine (``None``: cuda if available, else cpu)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = device_syntax(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: this machine has no CUDA device "
                              "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def _writable_parent(path: Path, what: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is a file, so nothing can be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {parent} is not writable")


def check_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """A folder that exists and is writable, or can be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; expected a folder (or a path where one can be created)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {path} is not writable")
    else:
        _writable_parent(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """A file path that can be written: not a folder, not under a file, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; expected a file name (e.g. {path / 'model.onnx'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path} exists and is not writable")
    _writable_parent(path, what)
    return path


def parse_kv(text: str, flag: str = "--model-kwargs") -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (so JSON too): ``depths=[1,1]``, ``deploy=true``, ``act=gelu``."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag}: expected key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{flag} {text}: the value is not valid YAML/JSON ({reason})") from None


__all__ = ["Choice", "Flag", "Number", "Text", "Tuple", "check_device", "check_model_options", "check_output_dir",
           "check_output_file", "device_syntax", "parse_kv"]
