"""Benchmark: large-kernel depthwise conv, our Triton kernels vs PyTorch (both layouts), and RepLKNet-31B.

Op rows: RepLKNet-31B stage shapes (batch 64: 128@56², 256@28², 512@14², 1024@7²) x k in
{3, 5, 7, 13, 27, 31} x {float32, bfloat16}. For each: PyTorch ``F.conv2d`` in NCHW and channels_last
(the faster one is the baseline), ours on NCHW and on channels_last input, forward and
forward+backward (grad input, weight, bias). "floor" is the arithmetic floor 2·B·C·H·W·k² operations
(x3 with backward) at the card's non-tensor rate (H100 SXM: 66.9 TFLOP/s float32, 133.8 bfloat16,
``docs/architectures.md``, hardware figures); "%floor" = floor / measured.

Model rows: one RepLKNet-31B training step (batch 64, 224², bf16 autocast, channels_last, SGD) with
``moderncnn.kernels`` set to "torch" (F.conv2d everywhere) and to "auto" (our dispatch).

    python benchmarks/large_kernel_dwconv.py                 # full run (~4 min on an H100)
    python benchmarks/large_kernel_dwconv.py --quick         # k in {7, 31}, stages 1, 3 and 4
    TRITON_INTERPRET=1 python benchmarks/large_kernel_dwconv.py --smoke   # tiny CPU check of the script

Timing: CUDA events around each call after warm-up, median over repeats. The table is printed and
appended to ``--out`` (default docs/benchmarks-dwconv.md) with card, date, versions and the command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time

import torch
import torch.nn.functional as F

from moderncnn.deploy.bench import time_rotating

STAGES = [(128, 56), (256, 28), (512, 14), (1024, 7)]
KERNELS = [3, 5, 7, 13, 27, 31]
DTYPES = [torch.float32, torch.bfloat16]
# non-tensor (CUDA-core) rates of an H100 SXM (docs/architectures.md, hardware figures)
PEAK_TFLOPS = {torch.float32: 66.9, torch.bfloat16: 133.8, torch.float16: 133.8}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, target_ms: float = 30.0, max_reps: int = 15) -> float:
    """Median milliseconds of ``fn()``: warm-up (compiles), a probe for the repeat count, then repeats, all
    timed by the package's one timer (``moderncnn.deploy.bench.time_rotating``)."""
    fn()
    _sync(device)
    probe = time_rotating({"probe": fn}, 1, warmup=0, device=device)["probe"]
    reps = int(max(3, min(max_reps, target_ms / max(probe, 1e-3))))
    return time_rotating({"fn": fn}, reps, warmup=0, device=device)["fn"]


def bench_op(B, C, H, k, dtype, device, with_ours=True) -> dict:
    from moderncnn.kernels import depthwise_conv2d

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, C, H, H, generator=g).to(device, dtype)
    w = (torch.randn(C, 1, k, k, generator=g) / k).to(device, dtype)
    b = torch.randn(C, generator=g).to(device, dtype)
    dy = torch.randn(B, C, H, H, generator=g).to(device, dtype)
    row = {}
    for layout in ("nchw", "cl"):
        mf = torch.channels_last if layout == "cl" else torch.contiguous_format
        xl, dyl = x.contiguous(memory_format=mf), dy.contiguous(memory_format=mf)
        xg = xl.clone().requires_grad_()
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        impls = ("torch", "triton") if with_ours else ("torch",)
        for impl in impls:
            def fwd(impl=impl, xl=xl):
                with torch.no_grad():
                    return depthwise_conv2d(xl, w, b, impl=impl)

            def fwdbwd(impl=impl, xg=xg, dyl=dyl, wg=wg, bg=bg):
                y = depthwise_conv2d(xg, wg, bg, impl=impl)
                torch.autograd.grad(y, (xg, wg, bg), dyl)

            row[f"{impl}_{layout}_fwd"] = time_ms(fwd, device)
            row[f"{impl}_{layout}_fwdbwd"] = time_ms(fwdbwd, device)
    return row


def op_table(args, device) -> list[str]:
    if args.smoke:
        B, stages, ks, dtypes = 1, [(4, 12), (2, 7)], [3, 13], [torch.float32]
    elif args.quick:
        B, stages, ks, dtypes = 64, [STAGES[0], STAGES[2], STAGES[3]], [7, 31], DTYPES
    else:
        B, stages, ks, dtypes = 64, STAGES, KERNELS, DTYPES
    lines = [
        "| C@H² | k | dtype | torch NCHW fwd | torch CL fwd | ours fwd (NCHW / CL) | fwd speed-up | fwd %floor "
        "| torch NCHW f+b | torch CL f+b | ours f+b (NCHW / CL) | f+b speed-up | f+b %floor | auto picks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    from moderncnn import kernels

    for C, H in stages:
        for k in ks:
            for dtype in dtypes:
                r = bench_op(B, C, H, k, dtype, device)
                floor_fwd = 2 * B * C * H * H * k * k / (PEAK_TFLOPS[dtype] * 1e9)  # ms
                base_f = min(r["torch_nchw_fwd"], r["torch_cl_fwd"])
                base_fb = min(r["torch_nchw_fwdbwd"], r["torch_cl_fwdbwd"])
                ours_f = min(r["triton_nchw_fwd"], r["triton_cl_fwd"])
                ours_fb = min(r["triton_nchw_fwdbwd"], r["triton_cl_fwdbwd"])
                picks = []
                for cl in (False, True):
                    for bwd in (False, True):
                        t = kernels._TRITON_MIN_K[(cl, bwd, dtype == torch.float32)]
                        if H * H <= kernels._SMALL_MAP_HW:
                            t = max(t, kernels._SMALL_MAP_MIN_K)
                        small = not cl and not bwd and H * H <= kernels._TORCH_NCHW_INFERENCE_MAX_HW
                        picks.append("T" if k >= t and not small else "t")
                lines.append(
                    f"| {C}@{H}² | {k} | {str(dtype).replace('torch.', '')} "
                    f"| {r['torch_nchw_fwd']:.3f} | {r['torch_cl_fwd']:.3f} "
                    f"| {r['triton_nchw_fwd']:.3f} / {r['triton_cl_fwd']:.3f} | {base_f / ours_f:.2f}× "
                    f"| {100 * floor_fwd / ours_f:.0f}% "
                    f"| {r['torch_nchw_fwdbwd']:.3f} | {r['torch_cl_fwdbwd']:.3f} "
                    f"| {r['triton_nchw_fwdbwd']:.3f} / {r['triton_cl_fwdbwd']:.3f} | {base_fb / ours_fb:.2f}× "
                    f"| {100 * 3 * floor_fwd / ours_fb:.0f}% | {''.join(picks)} |"
                )
                print(lines[-1], flush=True)
    lines.append("")
    lines.append(
        "Times in ms (median). speed-up = faster PyTorch layout / faster of ours. %floor: arithmetic floor "
        "(2·B·C·H·W·k² FLOP, ×3 with backward, at the non-tensor rate) / our time. auto picks: "
        "NCHW-fwd, NCHW-train, CL-fwd, CL-train; T = triton, t = torch."
    )
    return lines


def model_table(args, device) -> list[str]:
    import moderncnn
    from moderncnn import kernels

    if "replknet_31b" not in moderncnn.list_models("replknet*"):
        return ["(RepLKNet-31B is not registered yet: model rows skipped)"]
    B, size = (2, 64) if args.smoke else (64, 224)
    model = moderncnn.create_model("replknet_31b", num_classes=1000).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(B, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (B,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = {}
    old = kernels.get_default_impl()
    try:
        for impl in ("torch", "auto"):
            kernels.set_default_impl(impl)
            ms = time_ms(step, device, target_ms=1500 if not args.smoke else 1, max_reps=5)
            rows.setdefault(impl, []).append(ms)
    finally:
        kernels.set_default_impl(old)
    t, a = min(rows["torch"]), min(rows["auto"])
    return [
        f"| RepLKNet-31B train step (batch {B}, {size}², bf16 autocast, channels_last) | ms | img/s |",
        "|---|---|---|",
        f"| F.conv2d everywhere (`set_default_impl('torch')`) | {t:.1f} | {B * 1e3 / t:.0f} |",
        f"| moderncnn.kernels auto | {a:.1f} | {B * 1e3 / a:.0f} |",
        f"| speed-up | {t / a:.2f}× | |",
    ]


def sweep(device) -> list[str]:
    """Tuning aid: time kernel configurations of ours on a few key shapes (fwd and wgrad separately)."""
    from moderncnn.kernels import _dwconv_triton as K

    lines = ["| shape | dtype | what | config | ms |", "|---|---|---|---|---|"]
    shapes = [(64, 128, 56, 31), (64, 128, 56, 7), (64, 512, 14, 27), (64, 1024, 7, 13)]
    fwd_cfgs = [
        {}, dict(BM=64, num_warps=4), dict(BM=128, num_warps=4), dict(BM=128, num_warps=8),
        dict(BM=256, num_warps=8), dict(num_stages=2), dict(num_stages=4), dict(BW=32), dict(BW=16),
    ]
    wg_cfgs = [{}, dict(num_warps=8), dict(QK=128), dict(QK=128, num_warps=8), dict(waves=2), dict(waves=32),
               dict(num_stages=2)]
    for B, C, H, k in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(B, C, H, H, device=device, dtype=dtype)
            w = torch.randn(C, 1, k, k, device=device, dtype=dtype)
            for cfg in fwd_cfgs:
                K.FWD_OVERRIDE.clear()
                K.FWD_OVERRIDE.update(cfg)
                try:
                    ms = time_ms(lambda x=x, w=w: K.conv_forward(x, w, None), device)
                except Exception as e:  # noqa: BLE001 - a config that does not compile is a result too
                    ms = float("nan")
                    print("fwd", cfg, type(e).__name__, str(e)[:200])
                lines.append(f"| {C}@{H}² k{k} | {dtype} | fwd | {cfg} | {ms:.3f} |")
                print(lines[-1], flush=True)
            K.FWD_OVERRIDE.clear()
            for cfg in wg_cfgs:
                K.WGRAD_OVERRIDE.clear()
                K.WGRAD_OVERRIDE.update(cfg)
                try:
                    ms = time_ms(lambda x=x, k=k: K.conv_wgrad(x, x, k), device)
                except Exception as e:  # noqa: BLE001
                    ms = float("nan")
                    print("wgrad", cfg, type(e).__name__, str(e)[:200])
                lines.append(f"| {C}@{H}² k{k} | {dtype} | wgrad | {cfg} | {ms:.3f} |")
                print(lines[-1], flush=True)
            K.WGRAD_OVERRIDE.clear()
            # channels_last handled in place (strided loads) vs converted to NCHW
            xcl = x.contiguous(memory_format=torch.channels_last)
            for convert in (True, False):
                K.CONVERT_CHANNELS_LAST = convert
                from moderncnn.kernels import depthwise_conv2d

                ms = time_ms(lambda xcl=xcl, w=w: depthwise_conv2d(xcl, w, impl="triton"), device)
                lines.append(f"| {C}@{H}² k{k} | {dtype} | CL fwd | convert={convert} | {ms:.3f} |")
                print(lines[-1], flush=True)
            K.CONVERT_CHANNELS_LAST = True
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="subset: k in {7, 31}, stages 1, 3 and 4")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, runs on CPU under TRITON_INTERPRET=1")
    p.add_argument("--no-model", action="store_true", help="skip the RepLKNet-31B training-step rows")
    p.add_argument("--model-only", action="store_true", help="only the RepLKNet-31B training-step rows")
    p.add_argument("--sweep", action="store_true", help="tuning aid: time kernel configs on key shapes")
    p.add_argument("--out", default="docs/benchmarks-dwconv.md", help="markdown file to append the table to")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        sys.exit("no CUDA device: run on a GPU, or `TRITON_INTERPRET=1 ... --smoke` for a CPU check of the script")
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    import triton

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor()})"
    t0 = time.perf_counter()
    if args.sweep:
        print("\n".join(sweep(device)))
        return
    lines = [] if args.model_only else op_table(args, device)
    if not args.no_model:
        lines += [""] + model_table(args, device)
    header = [
        f"## Large-kernel depthwise conv — {card}, {datetime.date.today().isoformat()}",
        "",
        f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}. Command: "
        f"`{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}` ({time.perf_counter() - t0:.0f} s)",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
