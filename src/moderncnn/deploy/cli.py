"""``moderncnn fuse``, ``moderncnn export`` and ``moderncnn bench``."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError

# timm benchmark.py's --precision names for autocast (its pure float16/bfloat16 casts are not offered here)
_TIMM_PRECISION = {"float32": "fp32", "amp": "fp16", "amp_float16": "fp16", "amp_bfloat16": "bf16"}


def _fuse(args: argparse.Namespace) -> int:
    import torch

    from .export import input_size, load_checkpoint_model
    from .pipeline import deploy_model

    model = load_checkpoint_model(args.checkpoint, args.model, num_classes=args.num_classes, use_ema=args.ema)
    size = input_size(model, args.img_size)
    sample = torch.randn(2, model.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    report = deploy_model(model, args.out, sample, form="fused", rounds=args.bench_rounds)
    print(report)
    print(f"wrote {report.path} and {report.path.with_suffix('.json')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_model

    result = export_model(
        args.source, args.format, args.out, img_size=args.img_size, batch=args.batch,
        model_name=args.model, num_classes=args.num_classes, check=not args.no_check,
    )
    worst = max(result.errors.values(), default=0.0)
    if worst > args.tolerance:
        print(f"moderncnn export: the exported file differs from PyTorch by {worst:.2e} "
              f"(> --tolerance {args.tolerance:g})", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..registry import list_models
    from .bench import HEADER, benchmark, check_device, environment, write_results

    check_device(args.device)  # before anything is printed or built
    models = args.models or ["convnext_atto"]
    names = []
    for pattern in models:  # shell patterns allowed: 'repvgg_a*'
        found = list_models(pattern) if any(c in pattern for c in "*?[") else [pattern]
        if not found:
            raise ConfigError(f"no model matches {pattern!r}; `moderncnn list` shows the names")
        names += found
    _check_batch_fits(args.batch, args.img_size or 224)
    env = environment()
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    if args.runtime:
        rows = _bench_runtimes(args, names)
    else:
        print(HEADER)
        rows = benchmark(
            names, device=args.device, batch=args.batch, img_size=args.img_size, precision=args.precision,
            channels_last=args.channels_last, compile=args.compile, mode=args.mode, form=args.form,
            vs_timm=args.vs_timm, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
        )
    if args.out:
        meta = {**env, "command": "moderncnn " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])}
        paths = write_results(rows, args.out, meta)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _check_batch_fits(batch: int, size: int) -> None:
    """Refuse a batch whose input tensor alone does not fit in this machine's memory (the activations need
    many times more); a CUDA out-of-memory error is answered by ``moderncnn``'s error path."""
    import os

    need = batch * 3 * size * size * 4
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every system reports it
        return
    if need > have:
        raise ConfigError(f"-b {batch} at {size} px does not fit in memory: the input batch alone needs "
                          f"{need / 2**30:.1f} GiB and this machine has {have / 2**30:.1f} GiB; lower -b")


def _bench_runtimes(args: argparse.Namespace, names: list[str]) -> list:
    """``bench --runtime ...``: the deploy form in PyTorch eager beside torch.compile and/or onnxruntime."""
    from .bench import benchmark_runtimes

    clash = [flag for flag, on in (("--device cuda", args.device != "cpu"), ("--precision", args.precision != "fp32"),
                                   ("--channels-last", args.channels_last), ("--compile", args.compile),
                                   ("--vs-timm", args.vs_timm), ("--mode train/both", args.mode != "infer"))
             if on]
    if clash:
        raise ConfigError(f"--runtime compares CPU fp32 inference of the deploy form; drop {', '.join(clash)} "
                          "(name the runtimes instead: --runtime eager compile onnxruntime)")
    return benchmark_runtimes(names, tuple(args.runtime), batch=args.batch, img_size=args.img_size,
                              warmup=args.warmup, iters=args.iters, rounds=args.rounds)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuse", help="write the deploy form (re-parameterized, BN folded) of a checkpoint")
    p.add_argument("checkpoint", help="our .safetensors, or a training checkpoint file or folder")
    p.add_argument("--model", default=None, help="model name (default: from the JSON config beside it)")
    p.add_argument("--out", required=True, help="output .safetensors (a .json config is written beside)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--img-size", type=int, default=None, help="size of the check/timing batch (default: the "
                   "model's input size)")
    p.add_argument("--bench-rounds", type=int, default=3, help="timed rounds of train vs deploy form (0: none)")
    p.set_defaults(func=_fuse)

    p = sub.add_parser("export", help="fuse, export to onnx / torch-export / safetensors, and verify")
    p.add_argument("source", metavar="MODEL_OR_CHECKPOINT", help="a model name (random weights) or checkpoint")
    p.add_argument("--format", choices=("onnx", "torch-export", "safetensors"), default="onnx")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="model name when the checkpoint has no JSON config")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--img-size", type=int, default=None, help="default: the model's input size")
    p.add_argument("--batch", type=int, default=2, help="trace batch (at least 2; the batch is dynamic)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative error accepted")
    p.add_argument("--no-check", action="store_true", help="skip reloading and comparing the file")
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="throughput of train and deploy forms, optionally vs timm")
    p.add_argument("models", nargs="*", help="model names or patterns (default: convnext_atto)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("-b", "--batch", type=int, default=32)
    p.add_argument("--img-size", type=int, default=None)
    # timm's benchmark.py spellings are accepted too: --bench inference, --precision bfloat16, --torchcompile
    p.add_argument("--precision", type=lambda v: _TIMM_PRECISION.get(v, v), choices=("fp32", "bf16", "fp16"),
                   default="fp32", help="bf16/fp16 = autocast (timm's amp_bfloat16, amp_float16, amp also work)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", "--torchcompile", action="store_true", help="torch.compile (after fusing)")
    p.add_argument("--mode", "--bench", type=lambda v: "infer" if v == "inference" else v,
                   choices=("infer", "train", "both"), default="infer", help="infer (or inference), train, both")
    p.add_argument("--form", choices=("train", "deploy", "both"), default="train",
                   help="deploy = fused (timm: timm.utils.model.reparameterize_model)")
    p.add_argument("--vs-timm", action="store_true", help="time timm's model too, interleaved, and the ratio")
    p.add_argument("--runtime", nargs="+", choices=("eager", "compile", "onnxruntime"), default=None,
                   help="time the deploy form (CPU, fp32 inference) in these runtimes beside PyTorch eager, "
                        "interleaved: compile = torch.compile, onnxruntime = the exported ONNX file")
    p.add_argument("--warmup", "--num-warm-iter", type=int, default=5)
    p.add_argument("--iters", "--num-bench-iter", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is reported)")
    p.add_argument("--out", default=None, help="write <out>.csv and <out>.json")
    p.set_defaults(func=_bench)
