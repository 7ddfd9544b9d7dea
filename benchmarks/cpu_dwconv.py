"""CPU: large-kernel depthwise conv, ``depthwise_conv2d(impl="auto")`` vs plain ``F.conv2d`` on NCHW input.

    PYTHONPATH=src python benchmarks/cpu_dwconv.py --out docs/benchmarks-cpu-dwconv.md

On the CPU ``auto`` computes the output and all gradients with oneDNN's channels_last forward wherever
PyTorch's own kernels leave it (``moderncnn.kernels._cpu_onednn_path``, ``_dwconv_cpu.py``). This measures
what that buys, side by side in one run, median of interleaved repeats:

1. ops: RepLKNet-31B stage shapes at batch 1 (C@H²: 128@56², 256@28², 512@14², 1024@7²) with their kernel
   sizes (31, 29, 27, 13), k=5 (the parallel small kernel) and k=15/13 (the threshold), forward and
   forward+backward, float32;
2. the whole RepLKNet-31B: batch-1 inference at 224², training form and fused, and one training step
   (batch 2, 224², SGD), each with ``set_default_impl("torch")`` vs ``"auto"``.

3. small kernels and stride 2 (the families' 3×3, 5×5 and 7×7 depthwise convs, batch 16): ``F.conv2d`` as
   given against the oneDNN-forward path forced, in NCHW and channels_last, with the choice ``auto`` makes.

The thresholds in ``moderncnn/kernels/__init__.py`` (``_CPU_MIN_K``) were read from this script's op rows;
rerun it when torch changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from moderncnn import create_model, fuse, kernels
from moderncnn.deploy.bench import time_rotating
from moderncnn.kernels import depthwise_conv2d

OPS = [(128, 56, 31), (128, 56, 15), (128, 56, 13), (128, 56, 5), (256, 28, 29), (512, 14, 27), (512, 14, 5),
       (1024, 7, 13)]


def time_op(C: int, H: int, k: int, rounds: int) -> dict[str, float]:
    """Forward ("tf"/"af") and forward+backward ("tb"/"ab") ms with impl torch and auto, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, H, H, generator=g)
    w, b = torch.randn(C, 1, k, k, generator=g) / k, torch.randn(C, generator=g)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

    def fwd(impl):
        with torch.no_grad():
            depthwise_conv2d(x, w, b, impl=impl)

    def fwdbwd(impl):
        y = depthwise_conv2d(xg, wg, bg, impl=impl)
        torch.autograd.grad(y, (xg, wg, bg), torch.ones_like(y))

    return time_rotating({"tf": lambda: fwd("torch"), "af": lambda: fwd("auto"),
                        "tb": lambda: fwdbwd("torch"), "ab": lambda: fwdbwd("auto")}, rounds)


def op_rows(rounds: int, smoke: bool) -> list[str]:
    lines = ["| C@H², k | torch fwd ms | auto fwd ms | fwd speed-up | torch f+b ms | auto f+b ms | f+b speed-up |",
             "|---|---|---|---|---|---|---|"]
    for C, H, k in OPS[:2] if smoke else OPS:
        C, H = (C // 16, H // 4) if smoke else (C, H)
        r = time_op(C, H, k, rounds)
        lines.append(f"| {C}@{H}², {k} | {r['tf']:.2f} | {r['af']:.2f} | {r['tf'] / r['af']:.1f}× "
                     f"| {r['tb']:.2f} | {r['ab']:.2f} | {r['tb'] / r['ab']:.1f}× |")
        print(lines[-1], flush=True)
    return lines


# small kernels and stride 2 (the families' depthwise convs at batch 16): MobileNeXt/EfficientNetV2 3×3 (stride
# 1 and 2), RepLKNet's 5×5, ConvNeXt's 7×7, and k=7/15 at stride 2 (the stride-2 rows of the table)
SMALL = [(144, 32, 3, 1), (192, 32, 3, 2), (384, 8, 3, 1), (128, 32, 5, 1), (128, 32, 5, 2), (96, 32, 7, 1),
         (768, 4, 7, 1), (96, 32, 7, 2), (128, 32, 15, 2)]


def time_small(N: int, C: int, H: int, k: int, s: int, cl: bool, rounds: int) -> dict[str, float]:
    """Forward ("tf"/"pf") and forward+backward ("tb"/"pb") ms of F.conv2d as given and the forced oneDNN path."""
    from moderncnn.kernels._dwconv_cpu import DepthwiseConv2dCPU, same_dwconv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, H, generator=g).contiguous(memory_format=torch.channels_last if cl else
                                                        torch.contiguous_format)
    w = torch.randn(C, 1, k, k, generator=g) / k
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    dy = F.conv2d(x, w, stride=s, padding=k // 2, groups=C).normal_(generator=g)

    def tf():
        with torch.no_grad():
            F.conv2d(x, w, stride=s, padding=k // 2, groups=C)

    def pf():
        with torch.no_grad():
            same_dwconv(x, w, None, stride=s)

    def tb():
        torch.autograd.grad(F.conv2d(xg, wg, stride=s, padding=k // 2, groups=C), (xg, wg), dy)

    def pb():
        torch.autograd.grad(DepthwiseConv2dCPU.apply(xg, wg, None, s), (xg, wg), dy)

    return time_rotating({"tf": tf, "pf": pf, "tb": tb, "pb": pb}, rounds)


def small_rows(rounds: int, smoke: bool) -> list[str]:
    """F.conv2d as given vs the oneDNN-forward path, both layouts, forward and forward+backward, batch 16."""
    lines = ["| C@H², k, stride, layout | torch fwd ms | oneDNN-fwd path fwd ms | ratio | torch f+b ms "
             "| path f+b ms | ratio | `auto` (inference / training) |", "|---|---|---|---|---|---|---|---|"]
    for C, H, k, s in SMALL[:2] if smoke else SMALL:
        N, C, H = (2, C // 16, max(H // 4, 4)) if smoke else (16, C, H)
        for cl in (False, True):
            r = time_small(N, C, H, k, s, cl, rounds)
            pick = " / ".join("path" if k >= kernels._CPU_MIN_K[(s, train, cl)] else "torch"
                              for train in (False, True))
            lines.append(f"| {C}@{H}², {k}, {s}, {'CL' if cl else 'NCHW'} | {r['tf']:.2f} | {r['pf']:.2f} "
                         f"| {r['tf'] / r['pf']:.1f}× | {r['tb']:.2f} | {r['pb']:.2f} | {r['tb'] / r['pb']:.1f}× "
                         f"| {pick} |")
            print(lines[-1], flush=True)
    return lines


def model_rows(rounds: int, smoke: bool) -> list[str]:
    size, kw = (64, dict(layers=(1, 1, 1, 1))) if smoke else (224, {})
    model = create_model("replknet_31b", **kw).eval()
    fused = fuse(model)
    x = torch.randn(1, 3, size, size)
    xb, yb = torch.randn(2, 3, size, size), torch.tensor([1, 2])
    trainee = create_model("replknet_31b", **kw).train()
    opt = torch.optim.SGD(trainee.parameters(), lr=1e-3)

    def infer(m):
        with torch.inference_mode():
            m(x)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(trainee(xb), yb).backward()
        opt.step()

    def timed(fn, impl):
        def run():
            kernels.set_default_impl(impl)
            fn()
        return run

    old = kernels.get_default_impl()
    try:
        r = time_rotating({f"{name} {impl}": timed(fn, impl) for name, fn in
                         (("train", lambda: infer(model)), ("fused", lambda: infer(fused)), ("step", step))
                         for impl in ("torch", "auto")}, rounds)
    finally:
        kernels.set_default_impl(old)
    lines = ["| RepLKNet-31B | F.conv2d as given (`torch`) ms | `auto` ms | speed-up |", "|---|---|---|---|"]
    for name, what in (("train", f"inference, training form, batch 1, {size}²"),
                       ("fused", f"inference, fused, batch 1, {size}²"),
                       ("step", f"training step, batch 2, {size}², SGD")):
        t, a = r[f"{name} torch"], r[f"{name} auto"]
        lines.append(f"| {what} | {t:.0f} | {a:.0f} | {t / a:.1f}× |")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (tests)")
    ap.add_argument("--sections", default="ops,small,model", help="comma-separated: ops, small, model")
    ap.add_argument("--out", default="docs/benchmarks-cpu-dwconv.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    sections = args.sections.split(",")
    lines = []
    if "ops" in sections:
        lines += op_rows(args.rounds, args.smoke) + [""]
    if "small" in sections:
        lines += small_rows(args.rounds, args.smoke) + [""]
    if "model" in sections:
        lines += model_rows(max(2, args.rounds // 2), args.smoke)
    command = "PYTHONPATH=src python benchmarks/cpu_dwconv.py " + " ".join(sys.argv[1:])
    head = [
        "# Large-kernel depthwise conv on the CPU: layout choice of `impl=\"auto\"`",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}; {args.threads} thread(s) on a "
        f"{os.cpu_count()}-core machine; float32; interleaved rounds, median",
        f"- command: `{command}` ({time.time() - t0:.0f} s)",
        "- `torch`: `F.conv2d` and its autograd on the NCHW input as given; `auto`: output and gradients from "
        "oneDNN's channels_last forward where that is faster, results converted back to NCHW (included)",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
