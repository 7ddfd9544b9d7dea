"""``moderncnn convert``: official or timm checkpoint -> our ``.safetensors`` (+ JSON description), and with
``--to timm|official`` our weights back to those layouts."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..validation import parse_kv
from . import export_state_dict, load_weights
from .io import atomic_write_bytes
from .spec import ModelSpec, find_description, save_weights

# what each foreign layout's code base reads: timm reads safetensors (and .pth); the official code torch.load
EXPORT_SUFFIXES = {"timm": (".safetensors", ".pth", ".pt", ".bin"), "official": (".pth", ".pt", ".safetensors")}


def _convert(args: argparse.Namespace) -> int:
    overrides = dict(parse_kv(item, "--model-kwargs") for item in args.model_kwargs or [])
    if args.to != "native":
        return _export(args, overrides)
    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"DST must end in .safetensors, got {dst}")
    if not args.model:
        raise ConfigError("--model NAME is required: which registered model the checkpoint is for")
    deploy = bool(overrides.pop("deploy", False))
    in_chans = overrides.pop("in_chans", 3)
    spec = ModelSpec(args.model, overrides, num_classes=args.num_classes or 1000, in_chans=in_chans,
                     form="reparameterized" if deploy else "train")
    model = spec.build()
    load_weights(model, args.src, layout=args.layout, use_ema=args.ema)
    save_weights(model, dst, spec)
    print(f"wrote {dst} and {dst.with_suffix('.json')} ({args.model}, read as layout {args.layout!r})")
    return 0


def _export(args: argparse.Namespace, overrides: dict) -> int:
    """SRC (described by moderncnn, or any checkpoint of ``--model``) -> DST in ``--to``'s layout."""
    dst = Path(args.dst)
    if dst.suffix not in EXPORT_SUFFIXES[args.to]:
        raise CheckpointError(f"DST for --to {args.to} must end in {' or '.join(EXPORT_SUFFIXES[args.to])}, got {dst}")
    found = None if args.model else find_description(args.src)
    if found is None and not args.model:
        raise ConfigError(f"nothing describes {args.src}; pass --model NAME")
    spec = found[0] if found else ModelSpec.from_weights(args.model, args.src)
    if overrides or args.num_classes:
        spec = dataclasses.replace(spec, overrides={**spec.overrides, **overrides},
                                   num_classes=args.num_classes or spec.num_classes)
    model = spec.build()
    load_weights(model, args.src, layout="native" if found else args.layout, use_ema=args.ema)
    sd = {k: v.contiguous() for k, v in export_state_dict(model, args.to).items()}
    if dst.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write_bytes(dst, save(sd, metadata={"format": "pt"}))
    else:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(sd, buf)  # plain tensors only: loads with torch.load(weights_only=True)
        atomic_write_bytes(dst, buf.getvalue())
    print(f"wrote {dst} ({spec.name} in the {args.to} layout, {len(sd)} tensors)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an official or timm checkpoint to our safetensors (or back)")
    p.add_argument("src", help="checkpoint file (.pth, .pt, .bin, .safetensors)")
    p.add_argument("dst", help="output .safetensors (a .json description is written beside it); with --to timm "
                               ".safetensors (or .pth), with --to official .pth (or .safetensors)")
    p.add_argument("--model", help="registered model name, e.g. repvgg_a0 (with --to: only when nothing "
                                   "describes SRC)")
    p.add_argument("--layout", default="auto", choices=["auto", "official", "timm", "native"],
                   help="the layout of SRC")
    p.add_argument("--to", default="native", choices=["native", "timm", "official"],
                   help="the layout of DST: native (ours, default), timm, or official")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the checkpoint (default 1000)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. deploy=true")
    p.set_defaults(func=_convert)
