"""``moderncnn train | eval | demo``.

``train`` takes timm's flag names (``--model --epochs -b --lr --opt --sched --aa --mixup --cutmix
--smoothing --drop-path --model-ema ...``) over a YAML recipe (``--recipe convnext``), and
``torchrun --nproc_per_node=N -m moderncnn train ...`` runs it data-parallel. ``eval`` reports top-1/top-5
of a run folder's raw and EMA weights (or of any weights file it wrote). ``demo`` trains the
Fashion-MNIST recipe end to end on the CPU and fuses the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..validation import parse_kv
from .config import TrainConfig, from_dict, list_recipes, load_recipe, read_yaml

_BOOL = argparse.BooleanOptionalAction


def _kv(text: str) -> tuple[str, Any]:
    try:
        return parse_kv(text, "--model-kwargs")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--model-kwargs: ").removeprefix("--model-kwargs ")
                                         ) from None


# (flags, config field, argparse options) in timm's order and spelling
_TRAIN_FLAGS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("--model",), "model", dict(help="registered model name (moderncnn list)")),
    (("--model-kwargs",), "model_kwargs", dict(nargs="*", type=_kv, metavar="K=V",
                                               help="model config overrides, e.g. width_multiplier=[0.5,0.5]")),
    (("--initial-checkpoint",), "initial_checkpoint", dict(help="start from these weights")),
    # -- fine-tuning (issue 12) --
    (("--pretrained",), "pretrained", dict(action=_BOOL, help="--initial-checkpoint holds pretrained weights: "
                                           "re-initialise a classifier for another class count, adapt the first "
                                           "conv to --in-chans (as timm)")),
    (("--pretrained-path",), "pretrained_path", dict(help="pretrained weights loaded as with --pretrained "
                                                     "(timm's flag); --initial-checkpoint then loads strictly")),
    (("--num-classes",), "num_classes", dict(type=int)),
    (("--in-chans",), "in_chans", dict(type=int, help="model input channels (3 with gray data repeats it)")),
    (("--drop",), "drop", dict(type=float, help="dropout before the classifier")),
    (("--drop-path",), "drop_path", dict(type=float, help="stochastic depth rate")),
    (("--dataset",), "dataset", dict(help="fashion-mnist, imagefolder, cifar10, cifar100, hfds/NAME, hfds, wds")),
    (("--data-dir", "--data"), "data_dir", dict()),
    (("--download",), "download", dict(action=_BOOL)),
    (("--img-size",), "img_size", dict(type=int)),
    (("--eval-img-size",), "eval_img_size", dict(type=int)),
    (("--train-crop",), "train_crop", dict(choices=["rrc", "pad"])),
    (("--scale",), "scale", dict(type=float, nargs=2)),
    (("--hflip",), "hflip", dict(type=float)),
    (("--aa",), "aa", dict(help="RandAugment rand-m9-n2-mstd0.5 or AutoAugment v0, v0r, original, originalr")),
    (("--reprob",), "reprob", dict(type=float, help="random erasing probability")),
    (("--crop-pct",), "crop_pct", dict(type=float)),
    (("--mean",), "mean", dict(type=float, nargs="+")),
    (("--std",), "std", dict(type=float, nargs="+")),
    (("--train-samples",), "train_samples", dict(type=int, help="train on a random subset of this size")),
    (("--val-samples",), "val_samples", dict(type=int)),
    (("-j", "--workers"), "workers", dict(type=int)),
    (("--threads",), "threads", dict(type=int, help="torch threads per process")),
    # -- data sets and transforms as timm (issue 12) --
    (("--train-split",), "train_split", dict(help="training split: sub-folder, hfds split or wds shard pattern "
                                                  "(default train)")),
    (("--val-split",), "val_split", dict(help="validation split (default validation; val/, test/... found too)")),
    (("--class-map",), "class_map", dict(help="text file of class names, one per line (index = line number)")),
    (("--input-key",), "input_key", dict(help="hfds image column (image) / wds image extensions (jpg;png)")),
    (("--target-key",), "target_key", dict(help="hfds label column (label) / wds label extension (cls)")),
    (("--interpolation",), "interpolation", dict(choices=["bilinear", "bicubic", "nearest"],
                                                 help="eval resize (default: the model's pretrained_cfg)")),
    (("--epochs",), "epochs", dict(type=int)),
    (("-b", "--batch-size"), "batch_size", dict(type=int, help="per process (global = b × processes × accum)")),
    (("--lr",), "lr", dict(type=float, help="absolute learning rate (default: lr-base × global batch / lr-base-size)")),
    (("--lr-base",), "lr_base", dict(type=float)),
    (("--lr-base-size",), "lr_base_size", dict(type=int)),
    (("--opt",), "opt", dict(help="sgd, momentum, rmsproptf, adamw, adam, lamb, lars, adamp, nadam, radam, "
                                         "rmsprop, adagrad")),
    (("--opt-eps",), "opt_eps", dict(type=float)),
    (("--opt-betas",), "opt_betas", dict(type=float, nargs=2)),
    (("--momentum",), "momentum", dict(type=float)),
    (("--weight-decay", "--wd"), "weight_decay", dict(type=float)),
    (("--clip-grad",), "clip_grad", dict(type=float)),
    (("--grad-accum-steps",), "grad_accum_steps", dict(type=int)),
    (("--sched",), "sched", dict(help="cosine, tanh, step, multistep, plateau, poly, exponential_staircase, "
                                             "constant")),
    (("--warmup-epochs",), "warmup_epochs", dict(type=float)),
    (("--warmup-lr",), "warmup_lr", dict(type=float)),
    (("--min-lr",), "min_lr", dict(type=float)),
    (("--decay-epochs",), "decay_epochs", dict(type=float)),
    (("--decay-rate",), "decay_rate", dict(type=float)),
    # -- timm training flags (issue 12) --
    (("--lr-base-scale",), "lr_base_scale", dict(choices=["", "linear", "sqrt"],
                                                  help="scale --lr-base with the global batch linearly or by its "
                                                       "square root (default: sqrt for Adam-family and LAMB, else "
                                                       "linear, as timm)")),
    (("--layer-decay",), "layer_decay", dict(type=float, help="layer-wise lr decay (model.group_matcher groups)")),
    (("--head-init-scale",), "head_init_scale", dict(type=float,
                                                      help="multiply the classifier weights after loading them")),
    (("--decay-milestones",), "decay_milestones", dict(type=int, nargs="+", metavar="EPOCH",
                                                        help="epochs of the multistep decays")),
    (("--patience-epochs",), "patience_epochs", dict(type=int, help="plateau: epochs without improvement")),
    (("--cooldown-epochs",), "cooldown_epochs", dict(type=int, help="epochs at min-lr after the schedule")),
    (("--amp-dtype",), "amp_dtype", dict(choices=["float16", "bfloat16"],
                                          help="autocast dtype of --amp (float16 uses a GradScaler)")),
    (("--bce-loss",), "bce_loss", dict(action=_BOOL, help="binary cross-entropy loss (timm's BinaryCrossEntropy)")),
    (("--bce-target-thresh",), "bce_target_thresh", dict(type=float, help="binarize BCE targets at this value")),
    (("--aug-repeats",), "aug_repeats", dict(type=int, help="repeated augmentation: each sample N times per epoch")),
    (("--dist-bn",), "dist_bn", dict(choices=["", "broadcast", "reduce"],
                                      help="share BatchNorm statistics across processes at each epoch end")),
    (("--log-tensorboard",), "log_tensorboard", dict(action=_BOOL, help="write TensorBoard events (run folder/tb)")),
    (("--log-wandb",), "log_wandb", dict(action=_BOOL, help="log to Weights & Biases (needs wandb)")),
    (("--mixup",), "mixup", dict(type=float)),
    (("--cutmix",), "cutmix", dict(type=float)),
    (("--mixup-prob",), "mixup_prob", dict(type=float)),
    (("--mixup-switch-prob",), "mixup_switch_prob", dict(type=float)),
    (("--smoothing",), "smoothing", dict(type=float)),
    (("--model-ema",), "model_ema", dict(action=_BOOL)),
    (("--model-ema-decay",), "model_ema_decay", dict(type=float)),
    (("--model-ema-warmup",), "model_ema_warmup", dict(action=_BOOL)),
    (("--progressive",), "progressive", dict(nargs="?", const="official", choices=["paper", "official"],
                                             help="EfficientNetV2 progressive learning (default mode: official)")),
    (("--prog-stages",), "prog_stages", dict(type=int)),
    (("--prog-size",), "prog_size", dict(type=int, nargs=2, metavar=("MIN", "MAX"))),
    (("--device",), "device", dict()),
    (("--amp",), "amp", dict(action=_BOOL, help="mixed precision autocast (--amp-dtype)")),
    (("--channels-last",), "channels_last", dict(action=_BOOL)),
    (("--compile",), "compile", dict(action=_BOOL, help="torch.compile the training model")),
    (("--sync-bn",), "sync_bn", dict(action=_BOOL)),
    (("--seed",), "seed", dict(type=int)),
    (("--output",), "output", dict(help="run folder (default runs/<model>-<time>)")),
    (("--resume",), "resume", dict(help="run folder or checkpoint to continue")),
    (("--log-interval",), "log_interval", dict(type=int)),
    (("--no-progress",), "no_progress", dict(action="store_true", help="plain log lines instead of a bar")),
    (("--max-steps",), "max_steps", dict(type=int, help="stop after this many optimizer steps")),
    (("--checkpoint-interval",), "checkpoint_interval", dict(type=int, help="also save every N steps")),
    (("--eval-interval",), "eval_interval", dict(type=int)),
    (("--plots",), "plots", dict(action=_BOOL, help="draw curves.png (default on)")),
    (("--fuse",), "fuse", dict(action=_BOOL, help="write the fused deploy model at the end (default on)")),
    (("--overwrite",), "overwrite", dict(action="store_true", help="replace the run already in --output")),
    (("--skip-bad-images",), "skip_bad_images", dict(action="store_true",
                                                     help="skip (and count) image files that cannot be decoded")),
]


# -- data sets and transforms as timm (issue 12): what `eval` may read differently from the run's config --
# (timm's validate.py calls the split --split; both spellings are taken)
_EVAL_DATA_FLAGS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("--val-split", "--split"), "val_split", dict(help="split to evaluate (default: the run's, else validation)")),
    (("--class-map",), "class_map", dict(help="text file of class names, one per line")),
    (("--input-key",), "input_key", dict()),
    (("--target-key",), "target_key", dict()),
    (("--interpolation",), "interpolation", dict(choices=["bilinear", "bicubic", "nearest"])),
    (("--crop-pct",), "crop_pct", dict(type=float)),
]


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", "-c", "--config", dest="recipe",
                   help=f"recipe name ({', '.join(list_recipes())}) or a YAML file")
    for flags, dest, kw in _TRAIN_FLAGS:
        p.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, **kw)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- recipe (or, resuming without one, the run's config.yaml) <- explicit flags."""
    values: dict[str, Any] = {}
    recipe = getattr(args, "recipe", None)
    resume = getattr(args, "resume", None)
    if recipe:
        values.update(load_recipe(recipe))
    elif resume:
        from .run_dir import resume_folder

        run_dir = resume_folder(resume)
        if (run_dir / "config.yaml").is_file():
            values.update(read_yaml(run_dir / "config.yaml"))
            values.pop("max_steps", None)  # the stop that ended the earlier run is not this run's
            values.pop("output", None)  # the folder resumed is the folder written (a copied run writes the copy)
    for _, dest, _ in _TRAIN_FLAGS:
        if hasattr(args, dest):
            v = getattr(args, dest)
            if dest == "model_kwargs":
                v = {**values.get("model_kwargs", {}), **dict(v)}
            values[dest] = v
    return from_dict(values)


def _run_train(args: argparse.Namespace) -> int:
    from .trainer import train

    result = train(config_from_args(args))
    return 128 + (result.stop_signal or 2) if result.interrupted else 0  # 130 after Ctrl-C, 143 after SIGTERM


# -- eval --------------------------------------------------------------------------------------------
def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, img_size=args.img_size,
                        batch_size=args.batch_size, workers=args.workers, val_samples=args.val_samples,
                        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                        data_options={dest: getattr(args, dest) for _, dest, _ in _EVAL_DATA_FLAGS},
                        progress=not args.no_progress and sys.stderr.isatty(), model=args.model)
    return 0


# -- demo --------------------------------------------------------------------------------------------
def _run_demo(args: argparse.Namespace) -> int:
    from .trainer import train

    values = load_recipe("fashion-mnist")
    for key in ("epochs", "max_steps", "workers", "train_samples", "val_samples", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values["output"] = args.output or "runs/demo-fashion-mnist"
    values["overwrite"] = args.output is None  # `make demo` again replaces the demo's own run; --output DIR does not
    values["no_progress"] = args.no_progress
    cfg = from_dict(values)
    print(f"moderncnn demo: {cfg.model} on Fashion-MNIST ({cfg.epochs} epochs, recipe fashion-mnist)", flush=True)
    result = train(cfg)
    if result.interrupted:
        return 128 + (result.stop_signal or 2)
    deploy = Path(result.run_dir) / "model_deploy.safetensors"
    if deploy.is_file():
        from .evaluate import evaluate_checkpoint

        print("evaluating the fused deploy model on the Fashion-MNIST test set:", flush=True)
        evaluate_checkpoint(deploy, val_samples=cfg.val_samples, workers=0)
    print(f"everything is in {result.run_dir}/ (config.yaml, metrics.csv, log.jsonl, curves.png, "
          "last/best checkpoints, model_deploy.safetensors + model_deploy.json)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (timm-style flags over a YAML recipe)",
                              description=__doc__.splitlines()[0])
    add_train_flags(p)
    p.set_defaults(func=_run_train)

    e = subparsers.add_parser("eval", help="top-1/top-5 of a run folder's raw and EMA weights")
    e.add_argument("--checkpoint", required=True, help="run folder or weights file")
    e.add_argument("--model", default=None, help="registered name, for weights nothing describes (timm's, official)")
    e.add_argument("--dataset", default=None)
    e.add_argument("--data-dir", "--data", dest="data_dir", default=None)
    e.add_argument("--img-size", type=int, default=None)
    e.add_argument("-b", "--batch-size", type=int, default=256)
    e.add_argument("-j", "--workers", type=int, default=0)
    e.add_argument("--val-samples", type=int, default=None)
    e.add_argument("--device", default=None)
    for flags, dest, kw in _EVAL_DATA_FLAGS:
        e.add_argument(*flags, dest=dest, default=None, **kw)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_run_eval)

    d = subparsers.add_parser("demo", help="train a small RepVGG on Fashion-MNIST on the CPU, then fuse it")
    d.add_argument("--output", default=None, help="run folder (default runs/demo-fashion-mnist)")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--max-steps", type=int, default=None)
    d.add_argument("-j", "--workers", type=int, default=None)
    d.add_argument("--train-samples", type=int, default=None)
    d.add_argument("--val-samples", type=int, default=None)
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_run_demo)


__all__ = ["add_parser", "add_train_flags", "config_from_args"]
