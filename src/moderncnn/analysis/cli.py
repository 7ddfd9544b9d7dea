"""``moderncnn list`` and ``moderncnn info``."""

from __future__ import annotations

import argparse

from ..analysis.complexity import build_meta, count_gmacs, count_params
from ..registry import get_entry, list_models


def model_summary(name: str) -> dict:
    entry = get_entry(name)
    model = build_meta(name)
    size = entry.input_size
    return {
        "name": name,
        "family": entry.family,
        "params": count_params(model),
        "gmacs": count_gmacs(model, size),
        "input_size": size,
        "model": model,
    }


def _list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, family=args.family)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    if not args.details and not args.markdown:
        print("\n".join(names))
        return 0
    if args.markdown:
        print("| model | family | params (M) | GMACs | input |")
        print("|---|---|---:|---:|---:|")
        for name in names:
            s = model_summary(name)
            print(f"| `{name}` | {s['family']} | {s['params'] / 1e6:.2f} | {s['gmacs']:.3f} | {s['input_size']} |")
        return 0
    print(f"{'model':<40} {'family':<17} {'params (M)':>11} {'GMACs':>8} {'input':>6}")
    for name in names:
        s = model_summary(name)
        print(f"{name:<40} {s['family']:<17} {s['params'] / 1e6:>11.2f} {s['gmacs']:>8.3f} {s['input_size']:>6}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..layers.reparam import reparameterize_model

    s = model_summary(args.name)
    model = s["model"]
    print(f"{s['name']}  ({s['family']})")
    print(f"  params          {s['params']:,}")
    print(f"  GMACs @{s['input_size']:<4}     {s['gmacs']:.3f}")
    print(f"  input size      {s['input_size']}×{s['input_size']}  (min {model.min_input_size})")
    print(f"  num_features    {model.num_features}")
    print("  stages (channels, reduction):")
    for i, info in enumerate(model.feature_info):
        print(f"    {i}: {info['num_chs']:>5}  /{info['reduction']:<3} {info['module']}")
    if any(hasattr(m, "reparameterize") for m in model.modules()):
        deploy = reparameterize_model(model.eval())
        print(f"  deploy params   {count_params(deploy):,}")
        print(f"  deploy GMACs    {count_gmacs(deploy, s['input_size']):.3f}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default=None, help="shell pattern, e.g. 'repvgg_*'")
    p.add_argument("--family", default=None)
    p.add_argument("--details", action="store_true", help="params, GMACs and default input size")
    p.add_argument("--markdown", action="store_true", help="the details as a markdown table")
    p.set_defaults(func=_list)
    p = sub.add_parser("info", help="params, GMACs, stages and deploy form of one model")
    p.add_argument("name")
    p.set_defaults(func=_info)
