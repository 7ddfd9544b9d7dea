"""``moderncnn train | eval | demo``.

``train`` takes timm's flag names (``--model --epochs -b --lr --opt --sched --aa --mixup --cutmix
--smoothing --drop-path --model-ema ...``) over a YAML recipe (``--recipe convnext``), and
``torchrun --nproc_per_node=N -m moderncnn train ...`` runs it data-parallel. ``eval`` reports top-1/top-5
of a run folder's raw and EMA weights (or of any weights file it wrote). ``demo`` trains the
Fashion-MNIST recipe end to end on the CPU and fuses the result.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import CheckpointError, ConfigError
from .config import FIELDS, TrainConfig, from_dict, list_recipes, load_recipe, read_yaml

_BOOL = argparse.BooleanOptionalAction


class _StrictParser(argparse.ArgumentParser):
    """Unknown flags are an error naming the closest valid flags and listing them all."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        unknown = [a for a in extra if a.startswith("-")]
        if unknown:
            flags = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
            parts = []
            for flag in unknown:
                close = difflib.get_close_matches(flag.split("=")[0], flags, n=3)
                parts.append(flag + (f" (did you mean {', '.join(close)}?)" if close else ""))
            self.error(f"unknown option {', '.join(parts)}.\nValid options: {' '.join(flags)}")
        elif extra:
            self.error(f"unexpected argument(s): {' '.join(extra)}")
        return ns, extra


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


# (flags, config field, argparse options) in timm's order and spelling
_TRAIN_FLAGS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("--model",), "model", dict(help="registered model name (moderncnn list)")),
    (("--model-kwargs",), "model_kwargs", dict(nargs="*", type=_kv, metavar="K=V",
                                               help="model config overrides, e.g. width_multiplier=[0.5,0.5]")),
    (("--initial-checkpoint",), "initial_checkpoint", dict(help="start from these weights")),
    (("--num-classes",), "num_classes", dict(type=int)),
    (("--in-chans",), "in_chans", dict(type=int, help="model input channels (3 with gray data repeats it)")),
    (("--drop",), "drop", dict(type=float, help="dropout before the classifier")),
    (("--drop-path",), "drop_path", dict(type=float, help="stochastic depth rate")),
    (("--dataset",), "dataset", dict(help="fashion-mnist, imagefolder, cifar10, cifar100")),
    (("--data-dir", "--data"), "data_dir", dict()),
    (("--download",), "download", dict(action=_BOOL)),
    (("--img-size",), "img_size", dict(type=int)),
    (("--eval-img-size",), "eval_img_size", dict(type=int)),
    (("--train-crop",), "train_crop", dict(choices=["rrc", "pad"])),
    (("--scale",), "scale", dict(type=float, nargs=2)),
    (("--hflip",), "hflip", dict(type=float)),
    (("--aa",), "aa", dict(help="RandAugment, timm style: rand-m9-n2-mstd0.5")),
    (("--reprob",), "reprob", dict(type=float, help="random erasing probability")),
    (("--crop-pct",), "crop_pct", dict(type=float)),
    (("--mean",), "mean", dict(type=float, nargs="+")),
    (("--std",), "std", dict(type=float, nargs="+")),
    (("--train-samples",), "train_samples", dict(type=int, help="train on a random subset of this size")),
    (("--val-samples",), "val_samples", dict(type=int)),
    (("-j", "--workers"), "workers", dict(type=int)),
    (("--threads",), "threads", dict(type=int, help="torch threads per process")),
    (("--epochs",), "epochs", dict(type=int)),
    (("-b", "--batch-size"), "batch_size", dict(type=int, help="per process (global = b × processes × accum)")),
    (("--lr",), "lr", dict(type=float, help="absolute learning rate (default: lr-base × global batch / lr-base-size)")),
    (("--lr-base",), "lr_base", dict(type=float)),
    (("--lr-base-size",), "lr_base_size", dict(type=int)),
    (("--opt",), "opt", dict(help="sgd, momentum, rmsproptf, adamw, adam")),
    (("--opt-eps",), "opt_eps", dict(type=float)),
    (("--opt-betas",), "opt_betas", dict(type=float, nargs=2)),
    (("--momentum",), "momentum", dict(type=float)),
    (("--weight-decay", "--wd"), "weight_decay", dict(type=float)),
    (("--clip-grad",), "clip_grad", dict(type=float)),
    (("--grad-accum-steps",), "grad_accum_steps", dict(type=int)),
    (("--sched",), "sched", dict(help="cosine, step, exponential_staircase, constant")),
    (("--warmup-epochs",), "warmup_epochs", dict(type=float)),
    (("--warmup-lr",), "warmup_lr", dict(type=float)),
    (("--min-lr",), "min_lr", dict(type=float)),
    (("--decay-epochs",), "decay_epochs", dict(type=float)),
    (("--decay-rate",), "decay_rate", dict(type=float)),
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
    (("--amp",), "amp", dict(action=_BOOL, help="bfloat16 autocast")),
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
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        if (run_dir / "config.yaml").is_file():
            values.update(read_yaml(run_dir / "config.yaml"))
            values.pop("max_steps", None)  # the stop that ended the earlier run is not this run's
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
    return 130 if result.interrupted else 0


# -- eval --------------------------------------------------------------------------------------------
def _build_from_weights(meta: dict[str, str], path: Path):
    from .. import create_model

    if meta.get("format") == "moderncnn-deploy":
        info = json.loads(meta["config"])
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in info["model_kwargs"].items()}
        model = create_model(info["model"], num_classes=info["num_classes"], in_chans=info["in_chans"], **kwargs)
        if info["fused_with"] == "fuse":
            from ..deploy.fuse import fuse

            model = fuse(model.eval())
        elif "deploy" not in kwargs:
            from ..layers.reparam import reparameterize_model

            model = reparameterize_model(model.eval())
        return model
    if "model" not in meta or "model_config" not in meta:
        raise CheckpointError(f"{path} carries no model description (not written by moderncnn train); "
                              "evaluate a run folder instead")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta["model_config"]).items()}
    name = meta["model"]
    return create_model(name, **cfg)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    img_size: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
    val_samples: int | None = None,
    device: str = "cpu",
    verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 (and loss) of a run folder's weights (``best``, else ``last``; raw and EMA), or of one
    weights file written by ``moderncnn train``. Returns ``{"raw": {...}, "ema": {...}}``."""
    from ..data.datasets import load_dataset
    from ..data.transforms import build_eval_transform, resolve_mean_std
    from .checkpoint import load_weights_file
    from .metrics import accuracy
    from .trainer import AugmentedDataset, _subset

    path = Path(checkpoint)
    if path.is_dir():
        tag = "best" if (path / "best.safetensors").is_file() else "last"
        files = {"raw": path / f"{tag}.safetensors", "ema": path / f"{tag}_ema.safetensors"}
        run_dir = path
        if not files["raw"].is_file():
            raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors; is it a run folder?")
    elif path.is_file():
        files, run_dir = {"raw": path}, path.parent
    else:
        raise CheckpointError(f"checkpoint {path} does not exist")
    cfg = from_dict(read_yaml(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() else TrainConfig()
    dataset = dataset or cfg.dataset
    data_dir = data_dir if data_dir is not None else cfg.data_dir
    ds = load_dataset(dataset, data_dir=data_dir, split="val")
    results: dict[str, dict[str, float]] = {}
    for which, f in files.items():
        if not f.is_file():
            continue
        sd, meta = load_weights_file(f)
        model = _build_from_weights(meta, f)
        model.load_state_dict(sd)
        model.to(device).eval()
        if meta.get("format") == "moderncnn-deploy":
            info = json.loads(meta["config"])
            size, mean, std, crop = img_size or info["img_size"], info["mean"], info["std"], cfg.crop_pct
        else:
            size = img_size or cfg.eval_img_size or cfg.img_size or ds.image_size
            mean, std = (cfg.mean, cfg.std) if cfg.mean and cfg.std else resolve_mean_std(dataset)
            crop = cfg.crop_pct
        kw = dict(in_chans=model.in_chans, source_chans=ds.in_chans, mean=mean, std=std)
        if crop is not None:
            kw["crop_pct"] = crop
        val = AugmentedDataset(ds, _subset(len(ds), val_samples, cfg.seed + 1), build_eval_transform(size, **kw),
                               0, seeded=False)
        loader = torch.utils.data.DataLoader(val, batch_size=batch_size, num_workers=workers)
        n, c1, c5, loss = 0, 0, 0, 0.0
        with torch.no_grad():
            for x, y in loader:
                out = model(x.to(device)).float()
                y = y.to(device)
                a1, a5 = accuracy(out, y, (1, 5))
                n, c1, c5 = n + len(y), c1 + int(a1), c5 + int(a5)
                loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
        results[which] = {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n, "images": n}
        if verbose:
            print(f"{which:>4} {f.name}: top-1 {results[which]['top1']:.2f}%  top-5 {results[which]['top5']:.2f}%"
                  f"  loss {results[which]['loss']:.4f}  ({n} {dataset} val images at {size} px)")
    return results


def _run_eval(args: argparse.Namespace) -> int:
    evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, img_size=args.img_size,
                        batch_size=args.batch_size, workers=args.workers, val_samples=args.val_samples,
                        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return 0


# -- demo --------------------------------------------------------------------------------------------
def _run_demo(args: argparse.Namespace) -> int:
    from .trainer import train

    values = load_recipe("fashion-mnist")
    for key in ("epochs", "max_steps", "workers", "train_samples", "val_samples", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values["output"] = args.output or "runs/demo-fashion-mnist"
    values["no_progress"] = args.no_progress
    cfg = from_dict(values)
    print(f"moderncnn demo: {cfg.model} on Fashion-MNIST ({cfg.epochs} epochs, recipe fashion-mnist)", flush=True)
    result = train(cfg)
    if result.interrupted:
        return 130
    deploy = Path(result.run_dir) / "model_deploy.safetensors"
    if deploy.is_file():
        print("evaluating the fused deploy model on the Fashion-MNIST test set:", flush=True)
        evaluate_checkpoint(deploy, val_samples=cfg.val_samples, workers=0)
    print(f"everything is in {result.run_dir}/ (config.yaml, metrics.csv, log.jsonl, curves.png, "
          "last/best checkpoints, model_deploy.safetensors + model_deploy.json)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (timm-style flags over a YAML recipe)",
                              description=__doc__.splitlines()[0])
    p.__class__ = _StrictParser
    add_train_flags(p)
    p.set_defaults(func=_run_train)

    e = subparsers.add_parser("eval", help="top-1/top-5 of a run folder's raw and EMA weights")
    e.__class__ = _StrictParser
    e.add_argument("--checkpoint", required=True, help="run folder or weights file")
    e.add_argument("--dataset", default=None)
    e.add_argument("--data-dir", "--data", dest="data_dir", default=None)
    e.add_argument("--img-size", type=int, default=None)
    e.add_argument("-b", "--batch-size", type=int, default=256)
    e.add_argument("-j", "--workers", type=int, default=0)
    e.add_argument("--val-samples", type=int, default=None)
    e.add_argument("--device", default=None)
    e.set_defaults(func=_run_eval)

    d = subparsers.add_parser("demo", help="train a small RepVGG on Fashion-MNIST on the CPU, then fuse it")
    d.__class__ = _StrictParser
    d.add_argument("--output", default=None, help="run folder (default runs/demo-fashion-mnist)")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--max-steps", type=int, default=None)
    d.add_argument("-j", "--workers", type=int, default=None)
    d.add_argument("--train-samples", type=int, default=None)
    d.add_argument("--val-samples", type=int, default=None)
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_run_demo)


def main(argv: list[str] | None = None) -> int:  # `python -m moderncnn.training.cli train ...`
    from ..cli import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["add_parser", "config_from_args", "evaluate_checkpoint", "FIELDS", "ConfigError"]
