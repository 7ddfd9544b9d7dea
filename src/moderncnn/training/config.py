"""Training configuration: one dataclass holding every option, YAML recipes, and timm-style flags.

Precedence (lowest to highest): the dataclass defaults, then a recipe (``--recipe NAME`` reads
``moderncnn/recipes/NAME.yaml``), then explicit command-line flags. Flag names follow timm's
``train.py`` (``--opt``, ``--sched``, ``--aa``, ``--mixup``, ``--smoothing``, ``--drop-path``, ...), and a
config field is the flag with ``-`` turned into ``_``, so a recipe key, a flag and a Python attribute
are the same word.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


@dataclass
class TrainConfig:
    """Every option of ``moderncnn train``. ``-b/--batch-size`` is per process, like timm: the global
    batch is ``batch_size * world_size * grad_accum_steps``."""

    # -- model ---------------------------------------------------------------------------------------
    model: str = "convnext_atto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # config overrides (dataclasses.replace)
    initial_checkpoint: str | None = None  # weights to start from (any layout load_weights reads)
    num_classes: int | None = None  # None: the data set's
    in_chans: int | None = None  # None: the data set's; 3 with a gray data set repeats the channel
    drop: float | None = None  # dropout before the classifier; None: the model's default
    drop_path: float | dict[str, float] | None = None  # a float, or {model name: rate} per size
    # -- data ----------------------------------------------------------------------------------------
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None  # training (and eval) size; None: the data set's native size
    eval_img_size: int | None = None  # None: img_size
    train_crop: str = "rrc"  # "rrc" (RandomResizedCrop) or "pad" (pad-and-crop, for tiny images)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.5
    aa: str | None = None  # RandAugment as timm writes it: "rand-m9-n2-mstd0.5"
    reprob: float = 0.0  # random erasing probability
    crop_pct: float | None = None  # eval centre-crop fraction; None: the transform's default
    mean: tuple[float, ...] | None = None  # None: the data set's statistics
    std: tuple[float, ...] | None = None
    train_samples: int | None = None  # train on a fixed random subset (quick runs, tests)
    val_samples: int | None = None
    workers: int = 2
    threads: int | None = None  # torch intra-op threads of each process; None: torch's default
    # -- optimization --------------------------------------------------------------------------------
    epochs: int = 10
    batch_size: int = 128  # per process
    lr: float | None = None  # absolute; None: lr_base * global_batch / lr_base_size
    lr_base: float = 0.1
    lr_base_size: int = 256
    opt: str = "sgd"
    opt_eps: float | None = None
    opt_betas: tuple[float, float] | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_grad: float | None = None  # max global gradient norm
    grad_accum_steps: int = 1
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    decay_epochs: float = 2.4
    decay_rate: float = 0.97
    # -- regularization ------------------------------------------------------------------------------
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_split_batch: bool = False  # both on: half the batch mixup, half cutmix (official EfficientNetV2)
    smoothing: float = 0.1
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    # -- progressive learning (EfficientNetV2 §4) ------------------------------------------------------
    progressive: str | None = None  # "paper" or "official"
    prog_stages: int = 4
    # (min, max) ranges; None: the EfficientNetV2 variant's table (required for other models)
    prog_size: tuple[int, int] | None = None
    prog_ra_magnitude: tuple[float, float] | None = None
    prog_mixup: tuple[float, float] | None = None
    prog_cutmix: tuple[float, float] | None = None
    prog_dropout: tuple[float, float] | None = None
    prog_batch_sizes: tuple[int, ...] | None = None  # one per stage (per process)
    # -- system --------------------------------------------------------------------------------------
    device: str | None = None  # None: cuda if available, else cpu
    amp: bool = False  # bfloat16 autocast
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    seed: int = 42
    # -- run folder, logging, checkpoints ------------------------------------------------------------
    output: str | None = None  # run folder; None: runs/<model>-<time>
    resume: str | None = None  # run folder or checkpoint to continue from
    log_interval: int = 50
    no_progress: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps (tests, smoke runs)
    checkpoint_interval: int | None = None  # also save `last` every N optimizer steps
    eval_interval: int = 1  # epochs
    fuse: bool = True  # write the fused deploy model at the end
    plots: bool = True  # curves.png (and progressive.png)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able values (tuples become lists)."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TUPLE_FIELDS = {"scale", "mean", "std", "opt_betas", "prog_size", "prog_ra_magnitude", "prog_mixup",
                 "prog_cutmix", "prog_dropout", "prog_batch_sizes"}


def _unknown(keys: list[str], where: str) -> ConfigError:
    msgs = []
    for key in keys:
        close = difflib.get_close_matches(key, list(FIELDS), n=3)
        msgs.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return ConfigError(f"{where}: unknown option {', '.join(msgs)}. Valid options: {', '.join(FIELDS)}")


def from_dict(values: dict[str, Any], *, where: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a mapping; unknown keys are an error listing the valid ones."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise _unknown(unknown, where)
    values = dict(values)
    for key in _TUPLE_FIELDS:
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    if values.get("model_kwargs") is None:
        values["model_kwargs"] = {}
    return TrainConfig(**values)


# -- recipes -----------------------------------------------------------------------------------------
def list_recipes() -> list[str]:
    files = resources.files("moderncnn") / "recipes"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path, *, where: str | None = None) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _unknown(unknown, where or str(path))
    return data


def load_recipe(name: str) -> dict[str, Any]:
    """The options of recipe ``name`` (a packaged recipe name, or a path to a YAML file)."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return read_yaml(name)
    valid = list_recipes()
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown recipe {name!r}.{hint} Valid recipes: {', '.join(valid)}")
    path = resources.files("moderncnn") / "recipes" / f"{name}.yaml"
    with resources.as_file(path) as p:
        return read_yaml(p, where=f"recipe {name}")


def resolve_drop_path(value: float | dict[str, float] | None, model: str) -> float | None:
    """A recipe may give drop path per model size (``{convnext_tiny: 0.1, convnext_small: 0.4}``)."""
    if isinstance(value, dict):
        if model not in value:
            raise ConfigError(
                f"drop_path is given per model ({', '.join(value)}) but not for {model!r}; "
                "pass --drop-path RATE"
            )
        return float(value[model])
    return value


# -- RandAugment strings -----------------------------------------------------------------------------
def parse_aa(aa: str | None) -> dict[str, float] | None:
    """timm's RandAugment string ``rand-m9-n2-mstd0.5-inc1`` as ``{m, n, mstd, inc, mmax}``."""
    if not aa or aa in ("none", "None"):
        return None
    parts = aa.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"--aa {aa!r}: only RandAugment is supported, written like timm: 'rand-m9-n2-mstd0.5'")
    out: dict[str, float] = {"m": 9.0, "n": 2.0, "mstd": 0.0, "inc": 0.0}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p|w)([0-9.]+)", part)
        if not match:
            raise ConfigError(f"--aa {aa!r}: cannot read section {part!r} (sections: m, n, mstd, mmax, inc, p)")
        out[match.group(1)] = float(match.group(2))
    return out
