"""``moderncnn erf MODEL [MODEL ...]``: effective receptive fields side by side (RepLKNet's method)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .erf import ERFResult, erf, load_images, plot, write_ratios


def _build(name: str, checkpoint: str | None):
    from ..factory import create_model

    if checkpoint is None:
        return create_model(name)
    from ..deploy.export import load_checkpoint_model

    return load_checkpoint_model(checkpoint, name)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint and len(args.checkpoint) != len(args.models):
        raise ConfigError(
            f"--checkpoint needs one path per model: {len(args.models)} model(s), {len(args.checkpoint)} path(s)"
        )
    if args.images < 1 or args.img_size < 32:
        raise ConfigError(f"--images must be >= 1 and --img-size >= 32, got {args.images} and {args.img_size}")
    results: dict[str, ERFResult] = {}
    cache = {}
    for i, name in enumerate(args.models):
        model = _build(name, args.checkpoint[i] if args.checkpoint else None)
        chans = getattr(model, "in_chans", 3)
        if chans not in cache:
            cache[chans] = load_images(args.images, args.img_size, chans, dataset=args.dataset,
                                       data_dir=args.data_dir)
        label = name if name not in results else f"{name}#{i}"
        results[label] = erf(model, cache[chans], batch_size=args.batch_size, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = plot(results, out)  # None without matplotlib: the ratios are still written
    written = ([figure] if figure is not None else []) + write_ratios(results, out)
    thresholds = sorted(next(iter(results.values())).ratios)
    print(f"{'model':<32}" + "".join(f"{f'ratio@{t:g}':>12}" for t in thresholds))
    for name, r in results.items():
        print(f"{name:<32}" + "".join(f"{r.ratios[t]:>12.4f}" for t in thresholds))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("erf", help="effective receptive fields of one or more models, side by side")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names")
    p.add_argument("--checkpoint", nargs="+", default=None, help="one weights file or run folder per model")
    p.add_argument("--images", type=int, default=50, help="number of images to average over (default 50)")
    p.add_argument("--img-size", type=int, default=224, help="images are resized to this size (default 224)")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default, embedded), imagefolder, ...")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", required=True, help="figure path (.png); the ratios go beside it as .csv and .json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
