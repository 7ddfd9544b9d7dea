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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..validation import Choice, Flag, Number, Text, Tuple, device_syntax


@dataclass
class TrainConfig:
    """Every option of ``moderncnn train``. ``-b/--batch-size`` is per process, like timm: the global
    batch is ``batch_size * world_size * grad_accum_steps``."""

    # -- model ---------------------------------------------------------------------------------------
    model: str = "convnext_atto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # config overrides (dataclasses.replace)
    initial_checkpoint: str | None = None  # weights to start from (any layout load_weights reads)
    # -- fine-tuning (issue 12) --
    # pretrained: initial_checkpoint holds pretrained weights, loaded as timm's --pretrained does
    # (interop.load_pretrained: a classifier for another class count is re-initialised, the first conv
    # adapted to in_chans); without it initial_checkpoint loads strictly
    pretrained: bool = False
    pretrained_path: str | None = None  # timm's --pretrained-path: pretrained weights, loaded as above
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
    aa: str | None = None  # as timm writes it: RandAugment "rand-m9-n2-mstd0.5", AutoAugment "v0", "original"
    reprob: float = 0.0  # random erasing probability
    crop_pct: float | None = None  # eval centre-crop fraction; None: the transform's default
    mean: tuple[float, ...] | None = None  # None: the data set's statistics
    std: tuple[float, ...] | None = None
    train_samples: int | None = None  # train on a fixed random subset (quick runs, tests)
    val_samples: int | None = None
    workers: int = 2
    threads: int | None = None  # torch intra-op threads of each process; None: torch's default
    # -- data sets and transforms as timm (issue 12) ---------------------------------------------------
    # (docs/training.md, "Data"; img_size/mean/std/crop_pct/interpolation left unset take the model's
    # pretrained_cfg for image-file data sets, as timm's resolve_data_config does)
    train_split: str = "train"  # timm's names: an image folder's sub-folder, an hfds split, wds shards
    val_split: str = "validation"  # also finds val/, valid/, eval/, test/ ... (timm's synonyms)
    class_map: str | None = None  # text file of class names, one per line (index = line number)
    input_key: str | None = None  # hfds image column (default "image"); wds image extensions ("jpg;png")
    target_key: str | None = None  # hfds label column (default "label"); wds label extension ("cls")
    interpolation: str | None = None  # eval resize: bilinear, bicubic, nearest; None: pretrained_cfg's
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
    # -- timm training flags (issue 12) ------------------------------------------------------------------
    lr_base_scale: str = ""  # how --lr-base scales with the global batch: "" (timm: sqrt for Adam-family/LAMB)
    layer_decay: float | None = None  # layer-wise lr decay: group i of n gets lr * layer_decay ** (n - 1 - i)
    head_init_scale: float | None = None  # multiply the classifier's weight and bias after loading weights
    decay_milestones: tuple[int, ...] = (90, 180, 270)  # epochs of the multistep decays
    patience_epochs: int = 10  # plateau: evaluations without improvement before a decay
    cooldown_epochs: int = 0  # epochs at min_lr after a cosine/tanh/poly schedule (added to --epochs)
    amp_dtype: str = "bfloat16"  # autocast dtype of --amp; float16 adds a GradScaler
    bce_loss: bool = False  # binary cross-entropy on (smoothed) one-hot targets instead of softmax CE
    bce_target_thresh: float | None = None  # BCE targets above this become 1, the rest 0
    aug_repeats: int = 0  # repeated augmentation: each sample N times per epoch, spread over processes
    dist_bn: str = ""  # at each epoch end under DDP: "" (nothing), "broadcast" rank 0's or "reduce" (mean) BN stats
    log_tensorboard: bool = False  # also write TensorBoard events into the run folder (needs tensorboard)
    log_wandb: bool = False  # also log to Weights & Biases (needs wandb)
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
    overwrite: bool = False  # start afresh in an --output folder that already holds a run
    skip_bad_images: bool = False  # skip (and count) image files that cannot be decoded

    def __post_init__(self) -> None:
        validate(self)

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


# -- the one check of every option ----------------------------------------------------------------------
def _rules() -> dict[str, Any]:
    from .optim import OPTIMIZERS
    from .progressive import MODES
    from .scheduler import SCHEDULES

    prob = Number(0.0, 1.0)  # a probability
    rate = Number(0.0, 1.0, hi_open=True)  # dropout, drop path, smoothing, EMA decay: 1 would drop/keep all
    size = Number(1, 16384, integer=True, optional=True)
    count = Number(1, integer=True, optional=True)
    alpha = Number(0.0)
    lr_range = Number(0.0, MAX_LR, lo_open=True, optional=True)
    return {
        "model": Text(), "initial_checkpoint": Text(optional=True),
        "pretrained": Flag(), "pretrained_path": Text(optional=True),  # fine-tuning (issue 12)
        "num_classes": count, "in_chans": count, "drop": Number(0.0, 1.0, hi_open=True, optional=True),
        "dataset": Text(), "data_dir": Text(optional=True), "download": Flag(),
        "img_size": size, "eval_img_size": size, "train_crop": Choice(("rrc", "pad")),
        "scale": Tuple(Number(0.0, 1.0, lo_open=True), length=2, ordered=True), "hflip": prob,
        "aa": Text(optional=True), "reprob": prob, "crop_pct": Number(0.0, 1.0, lo_open=True, optional=True),
        "mean": Tuple(Number(), optional=True), "std": Tuple(Number(0.0, lo_open=True), optional=True),
        "train_samples": count, "val_samples": count, "workers": Number(0, integer=True),
        "threads": count, "epochs": Number(1, integer=True), "batch_size": Number(1, integer=True),
        "lr": lr_range, "lr_base": Number(0.0, MAX_LR, lo_open=True),
        "lr_base_size": Number(1, integer=True), "opt": Choice(OPTIMIZERS),
        "opt_eps": Number(0.0, lo_open=True, optional=True),
        "opt_betas": Tuple(Number(0.0, 1.0, hi_open=True), length=2, optional=True),
        "momentum": rate, "weight_decay": Number(0.0), "clip_grad": Number(0.0, lo_open=True, optional=True),
        "grad_accum_steps": Number(1, integer=True),
        "sched": Choice(SCHEDULES, aliases=(("exponential", "exponential_staircase"),)),
        "warmup_epochs": Number(0.0), "warmup_lr": Number(0.0, MAX_LR), "min_lr": Number(0.0, MAX_LR),
        "decay_epochs": Number(0.0, lo_open=True), "decay_rate": Number(0.0, 1.0, lo_open=True),
        "mixup": alpha, "cutmix": alpha, "mixup_prob": prob, "mixup_switch_prob": prob, "mixup_split_batch": Flag(),
        "smoothing": rate, "model_ema": Flag(), "model_ema_decay": rate, "model_ema_warmup": Flag(),
        "progressive": Choice(MODES, optional=True), "prog_stages": Number(1, integer=True),
        "prog_size": Tuple(Number(1, 16384, integer=True), length=2, ordered=True, optional=True),
        "prog_ra_magnitude": Tuple(Number(0.0, 30.0), length=2, optional=True),
        "prog_mixup": Tuple(alpha, length=2, optional=True), "prog_cutmix": Tuple(alpha, length=2, optional=True),
        "prog_dropout": Tuple(rate, length=2, optional=True),
        "prog_batch_sizes": Tuple(Number(1, integer=True), optional=True),
        "device": Text(optional=True), "amp": Flag(), "channels_last": Flag(), "compile": Flag(), "sync_bn": Flag(),
        "seed": Number(0, 2**63 - 1, integer=True), "output": Text(optional=True), "resume": Text(optional=True),
        "log_interval": Number(1, integer=True), "no_progress": Flag(), "max_steps": count,
        "checkpoint_interval": count, "eval_interval": Number(1, integer=True), "fuse": Flag(), "plots": Flag(),
        "overwrite": Flag(), "skip_bad_images": Flag(),
    }


# -- data sets and transforms as timm (issue 12) ------------------------------------------------------
def _timm_data_rules() -> dict[str, Any]:
    from ..data.transforms import INTERPOLATIONS

    return {"train_split": Text(), "val_split": Text(), "class_map": Text(optional=True),
            "input_key": Text(optional=True), "target_key": Text(optional=True),
            "interpolation": Choice(INTERPOLATIONS, optional=True)}


_RULES: dict[str, Any] = {}
# no optimizer here trains with a larger step; beyond float32's range (~3.4e38, e.g. --lr 1e38 with Adam's
# bias correction) the optimizer itself fails
MAX_LR = 1000.0
# model options that have their own flag: a --model-kwargs key for them would be a second, silent spelling
_OWN_FLAG = {"num_classes": "--num-classes", "in_chans": "--in-chans", "drop_rate": "--drop",
             "drop_path_rate": "--drop-path"}


def _flag(name: str) -> str:
    return f"{name} (--{name.replace('_', '-')})"


def validate(cfg: TrainConfig) -> None:
    """Check every option of ``cfg`` once (normalizing in place: numbers given as strings, lists to
    tuples); a :class:`ConfigError` names each bad option with its valid range."""
    if not _RULES:
        _RULES.update(_rules(), **_timm_data_rules(), **_timm_rules())
    problems = []
    for name, rule in _RULES.items():
        try:
            setattr(cfg, name, rule.check(_flag(name), getattr(cfg, name)))
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        _check_special(cfg)
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))


def _check_special(cfg: TrainConfig) -> None:
    """Options whose rule is more than a range: per-model drop path, model kwargs, pairs that must agree."""
    if isinstance(cfg.drop_path, dict):
        cfg.drop_path = {str(k): Number(0.0, 1.0, hi_open=True).check(f"drop_path[{k}]", v)
                         for k, v in cfg.drop_path.items()}
    else:
        cfg.drop_path = Number(0.0, 1.0, hi_open=True, optional=True).check(_flag("drop_path"), cfg.drop_path)
    if not isinstance(cfg.model_kwargs, dict) or not all(isinstance(k, str) for k in cfg.model_kwargs):
        raise ConfigError(f"model_kwargs (--model-kwargs) must be a mapping of config field: value, "
                          f"got {cfg.model_kwargs!r}")
    taken = [k for k in cfg.model_kwargs if k in _OWN_FLAG]
    if taken:
        raise ConfigError("--model-kwargs " + ", ".join(f"{k}=... duplicates {_OWN_FLAG[k]}" for k in taken)
                          + "; set it with that flag instead")
    if (cfg.mean is None) != (cfg.std is None):
        raise ConfigError("mean (--mean) and std (--std) go together: give both or neither")
    if cfg.mean is not None and len(cfg.mean) != len(cfg.std):
        raise ConfigError(f"--mean has {len(cfg.mean)} values but --std has {len(cfg.std)}; give one per "
                          "input channel (or one for all)")
    if cfg.prog_batch_sizes is not None and len(cfg.prog_batch_sizes) != cfg.prog_stages:
        raise ConfigError(f"prog_batch_sizes has {len(cfg.prog_batch_sizes)} values for {cfg.prog_stages} "
                          "progressive stages (prog_stages); give one per stage")
    from ..data.datasets import dataset_key

    dataset_key(cfg.dataset)
    if cfg.device is not None:
        device_syntax(cfg.device, _flag("device"))
    if cfg.aa and cfg.aa.lower() != "none":
        from ..data.transforms import parse_aa

        parse_aa(cfg.aa)  # RandAugment or AutoAugment, every section honoured or a ConfigError naming it
    _check_timm_flags(cfg)


# -- timm training flags (issue 12) ---------------------------------------------------------------------
# names of the schedules that timm extends by --cooldown-epochs (its cycle schedules)
COOLDOWN_SCHEDULES = ("cosine", "tanh", "poly")


def _timm_rules() -> dict[str, Any]:
    return {
        "lr_base_scale": Choice(("", "linear", "sqrt")),
        "layer_decay": Number(0.0, 1.0, lo_open=True, optional=True),
        "head_init_scale": Number(0.0, lo_open=True, optional=True),
        "decay_milestones": Tuple(Number(1, integer=True), ordered=True),
        "patience_epochs": Number(0, integer=True), "cooldown_epochs": Number(0, integer=True),
        "amp_dtype": Choice(("float16", "bfloat16")), "bce_loss": Flag(),
        "bce_target_thresh": Number(0.0, 1.0, optional=True), "aug_repeats": Number(0, integer=True),
        "dist_bn": Choice(("", "broadcast", "reduce")), "log_tensorboard": Flag(), "log_wandb": Flag(),
    }


def _check_timm_flags(cfg: TrainConfig) -> None:
    """Pairs of the issue-12 flags that must agree."""
    if cfg.cooldown_epochs and cfg.sched not in COOLDOWN_SCHEDULES:
        raise ConfigError(f"--cooldown-epochs extends the {', '.join(COOLDOWN_SCHEDULES)} schedules (as in timm), "
                          f"not --sched {cfg.sched}; drop it or pick one of those schedules")
    if cfg.bce_target_thresh is not None and not cfg.bce_loss:
        raise ConfigError("--bce-target-thresh applies to the binary cross-entropy loss; add --bce-loss")
    import importlib.util

    # optional loggers: a missing package is this one-line error before the run, not an ImportError mid-run
    if cfg.log_wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--log-wandb needs the wandb package, which is not installed: pip install wandb "
                          "(or leave out --log-wandb)")
    if cfg.log_tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--log-tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'moderncnn[tensorboard]' (or leave out --log-tensorboard)")


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
    if name.endswith((".yaml", ".yml")) or "/" in name:  # a path, not a packaged recipe name
        if not Path(name).is_file():
            raise ConfigError(f"recipe file {name} does not exist (a path ending in .yaml is read as a file; "
                              f"packaged recipes are named without it: {', '.join(list_recipes())})")
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
