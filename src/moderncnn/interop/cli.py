"""``moderncnn convert``: official or timm checkpoint -> our ``.safetensors`` (+ JSON description)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError
from ..validation import parse_kv
from . import load_weights
from .spec import ModelSpec, save_weights


def _convert(args: argparse.Namespace) -> int:
    overrides = dict(parse_kv(item, "--model-kwargs") for item in args.model_kwargs or [])
    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"DST must end in .safetensors, got {dst}")
    deploy = bool(overrides.pop("deploy", False))
    in_chans = overrides.pop("in_chans", 3)
    spec = ModelSpec(args.model, overrides, num_classes=args.num_classes, in_chans=in_chans,
                     form="reparameterized" if deploy else "train")
    model = spec.build()
    load_weights(model, args.src, layout=args.layout, use_ema=args.ema)
    save_weights(model, dst, spec)
    print(f"wrote {dst} and {dst.with_suffix('.json')} ({args.model}, read as layout {args.layout!r})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an official or timm checkpoint to our safetensors")
    p.add_argument("src", help="checkpoint file (.pth, .pt, .bin, .safetensors)")
    p.add_argument("dst", help="output .safetensors (a .json description is written beside it)")
    p.add_argument("--model", required=True, help="registered model name, e.g. repvgg_a0")
    p.add_argument("--layout", default="auto", choices=["auto", "official", "timm", "native"])
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. deploy=true")
    p.set_defaults(func=_convert)
