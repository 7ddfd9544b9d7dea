"""``moderncnn search``: a training-aware architecture search (EfficientNetV2 §3.3) on Optuna; docs/search.md."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..errors import ConfigError


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), yaml.safe_load(value)


# flags that set a TrainConfig field of the proxy training (over the --recipe)
_PROXY_FLAGS = [
    (("--dataset",), "dataset", dict(help="data set of the proxy training (default: the recipe's, fashion-mnist)")),
    (("--data-dir",), "data_dir", dict()),
    (("--device",), "device", dict(help="cpu or cuda (default: cuda if available); S is timed on it")),
    (("-b", "--batch-size"), "batch_size", dict(type=int)),
    (("--img-size",), "img_size", dict(type=int)),
    (("--val-samples",), "val_samples", dict(type=int, help="evaluate A on this many validation images")),
    (("--threads",), "threads", dict(type=int)),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .samplers import SAMPLERS

    p = sub.add_parser("search", help="training-aware architecture search (EfficientNetV2 §3.3) with Optuna",
                       description=__doc__)
    p.add_argument("--space", default="efficientnetv2",
                   help="efficientnetv2 (the paper's, B0 widths), efficientnetv2-nano (half widths, small CPUs), "
                        "or a YAML file of stage rows")
    p.add_argument("--trials", type=int, default=30, help="completed trials the study should hold (all workers)")
    p.add_argument("--sampler", choices=SAMPLERS, default="reinforce")
    p.add_argument("--storage", help="database URL (postgresql://, mysql://, sqlite:///) or journal file path "
                                     "shared by workers (default: sqlite in --out)")
    p.add_argument("--study-name", help="default: search-<space>")
    p.add_argument("--proxy-steps", type=int, default=200, help="training steps per trial")
    p.add_argument("--out", default="runs/search", help="run folder (study database, logs, report)")
    p.add_argument("--seed", type=int, help="sampler seed (give each worker its own)")
    p.add_argument("--recipe", "-c", default="fashion-mnist", help="training recipe of the proxy")
    for flags, dest, kw in _PROXY_FLAGS:
        p.add_argument(*flags, dest=dest, default=None, **kw)
    p.add_argument("--train-kwargs", nargs="*", type=_kv, default=[], metavar="K=V",
                   help="further TrainConfig options of the proxy, e.g. lr=0.1 opt=adamw")
    p.add_argument("--w", type=float, default=-0.07, help="step-time exponent of the reward")
    p.add_argument("--v", type=float, default=-0.05, help="parameter exponent of the reward")
    p.add_argument("--timing-rounds", type=int, default=5, help="rounds of 2 timed steps for S (median)")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also proxy-train EfficientNetV2-B0 compound-scaled to the best network's parameters")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .runner import SearchConfig, run_search

    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if args.timing_rounds < 1:
        raise ConfigError(f"--timing-rounds must be >= 1, got {args.timing_rounds}")
    if args.proxy_steps < 1:
        raise ConfigError(f"--proxy-steps must be >= 1, got {args.proxy_steps}")
    overrides = {dest: getattr(args, dest) for _, dest, _ in _PROXY_FLAGS if getattr(args, dest) is not None}
    overrides.update(dict(args.train_kwargs))
    cfg = SearchConfig(space=args.space, trials=args.trials, sampler=args.sampler, storage=args.storage,
                       study_name=args.study_name, out=args.out, seed=args.seed, proxy_steps=args.proxy_steps,
                       recipe=args.recipe, train_overrides=overrides, w=args.w, v=args.v,
                       timing_rounds=args.timing_rounds,
                       compare_baseline=args.compare_baseline, progress=not args.no_progress)
    run_search(cfg)
    return 0
