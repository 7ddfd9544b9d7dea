"""CPU: every family's representative against timm (RepLKNet against itself through ``F.conv2d``), one process.

    PYTHONPATH=src python benchmarks/cpu_models.py                # full run, writes docs/benchmarks-cpu-models.md
    PYTHONPATH=src python benchmarks/cpu_models.py --quick --out /tmp/x.md   # tiny sizes (the test suite)

Pairs (ours | baseline): convnext_tiny | timm convnext_tiny, efficientnetv2_s | timm efficientnetv2_s,
repvgg_a2 | timm repvgg_a2, mobilenext_100 | timm mobilenetv2_100 (the paper's comparison, Zhou et al.
ECCV 2020 Table 3), replknet_31b | replknet_31b with ``moderncnn.kernels.set_default_impl("torch")`` (every
depthwise conv through plain ``F.conv2d`` and no channels_last, i.e. plain PyTorch). "Ours" is the library
as a user gets it: every depthwise conv through ``moderncnn.kernels``, and on the CPU the model runs in
channels_last from its stem's output on (``moderncnn.kernels.preferred_layout``). Three measurements per
pair, fp32:

1. training step (forward, cross-entropy, backward, SGD step), both in their train form;
2. batch-32 inference (``torch.inference_mode``), both in their train form, eval mode;
3. batch-1 inference at 224²: our deploy form (``moderncnn.fuse``: BN folded, branches merged) against the
   baseline's best form, the fastest of its train form and timm's ``reparameterize_model`` form, each in
   NCHW and channels_last (the fastest is named in the table).

Columns marked "timm CL" time the same timm model in channels_last, so a reader sees how much of a ratio is
memory layout. All variants of one pair and one measurement run in interleaved rounds that rotate who goes
first (``moderncnn.deploy.bench.time_rotating``), median after warm-up, so load from other processes hits
them alike; ``--repeat`` repeats the whole measurement and reports every run's ratios (the spread).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moderncnn import create_model, fuse, kernels
from moderncnn.deploy.bench import time_rotating

CL = torch.channels_last


@dataclass(frozen=True)
class Pair:
    ours: str
    baseline: str  # a timm name, or "ours+F.conv2d" for our model with every depthwise conv through F.conv2d
    train_target: float | None  # training-step speed ratio the issue asks for (docs/benchmarks.md)
    # timm's RepVGG applies a 1×1 stride-2 conv to the 3-channel image; its weight gradient in channels_last
    # corrupts the heap in torch 2.14's CPU build (docs/kernels.md), so that one variant is not run
    timm_cl_train: bool = True


PAIRS = [
    Pair("convnext_tiny", "convnext_tiny", 1.3),
    Pair("efficientnetv2_s", "efficientnetv2_s", 1.15),
    Pair("repvgg_a2", "repvgg_a2", 1.0, timm_cl_train=False),
    Pair("mobilenext_100", "mobilenetv2_100", 1.0),
    Pair("replknet_31b", "ours+F.conv2d", None),
]
# (train batch, train size, batch-32 inference size); batch-1 inference is 224² for every pair. Chosen so a
# full run with --repeat 3 stays under ~10 minutes on 2 cores with 1 thread.
SIZES = {
    "convnext_tiny": (8, 128, 128),
    "efficientnetv2_s": (8, 128, 128),
    "repvgg_a2": (8, 128, 128),
    "mobilenext_100": (16, 128, 128),
    "replknet_31b": (2, 128, 64),
}
QUICK = dict(train=(2, 64), infer_size=64, b1_size=64, batch=4, shrink=True)


class _TorchDWConv(nn.Module):
    """Runs ``model`` with ``kernels.set_default_impl("torch")`` (every depthwise conv through F.conv2d)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        old = kernels.get_default_impl()
        kernels.set_default_impl("torch")
        try:
            return self.model(x)
        finally:
            kernels.set_default_impl(old)


def _ours(name: str, quick: bool) -> nn.Module:
    # the quick mode shrinks only the model that is compared with itself
    return create_model(name, **(dict(layers=(1, 1, 1, 1)) if quick and name == "replknet_31b" else {}))


def _baseline(pair: Pair, ours: nn.Module) -> nn.Module:
    if pair.baseline == "ours+F.conv2d":
        return _TorchDWConv(copy.deepcopy(ours))
    import timm

    return timm.create_model(pair.baseline, pretrained=False)


def _baseline_deploy(pair: Pair, model: nn.Module) -> nn.Module:
    if isinstance(model, _TorchDWConv):
        return _TorchDWConv(fuse(model.model.eval()))
    from timm.utils.model import reparameterize_model

    return reparameterize_model(copy.deepcopy(model).eval())


def _cl(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=CL)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _trainer(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.train()
    return partial(_train_step, model, x, y, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))


def _infer(model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def measure(pair: Pair, *, rounds: int, warmup: int, quick: bool) -> dict[str, dict[str, float]]:
    """Median ms of every variant of one pair for the three measurements (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    tb, ts, isz = (QUICK["train"][0], QUICK["train"][1], QUICK["infer_size"]) if quick else SIZES[pair.ours]
    b32 = QUICK["batch"] if quick else 32
    b1_size = QUICK["b1_size"] if quick else 224
    ours = _ours(pair.ours, quick)
    base = _baseline(pair, ours)
    is_timm = not isinstance(base, _TorchDWConv)
    out: dict[str, dict[str, float]] = {}

    x = torch.randn(tb, 3, ts, ts, generator=g)
    y = torch.randint(0, 1000, (tb,), generator=g)
    fns = {"ours": _trainer(copy.deepcopy(ours), x, y), "base": _trainer(copy.deepcopy(base), x, y)}
    if is_timm and pair.timm_cl_train:
        fns["base CL"] = _trainer(_cl(base), x.contiguous(memory_format=CL), y)
    out["train"] = time_rotating(fns, rounds, warmup=warmup)

    ours.eval(), base.eval()
    x = torch.randn(b32, 3, isz, isz, generator=g)
    fns = {"ours": partial(_infer, ours, x), "base": partial(_infer, base, x)}
    if is_timm:
        fns["base CL"] = partial(_infer, _cl(base), x.contiguous(memory_format=CL))
    out["b32"] = time_rotating(fns, rounds, warmup=warmup)

    x = torch.randn(1, 3, b1_size, b1_size, generator=g)
    base_deploy = _baseline_deploy(pair, base)
    fns = {"ours deploy": partial(_infer, fuse(ours), x), "base": partial(_infer, base, x),
           "base deploy": partial(_infer, base_deploy, x)}
    if is_timm:
        xc = x.contiguous(memory_format=CL)
        fns["base CL"] = partial(_infer, _cl(base), xc)
        fns["base deploy CL"] = partial(_infer, _cl(base_deploy), xc)
    out["b1"] = time_rotating(fns, rounds * 2, warmup=warmup, rewarm=True)
    return out


def _loadavg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _best(ms: dict[str, float]) -> tuple[str, float]:
    k = min((k for k in ms if k.startswith("base")), key=ms.__getitem__)
    return k, ms[k]


def rows(pair: Pair, runs: list[dict[str, dict[str, float]]]) -> list[str]:
    """One table row per pair: the last run's times, every run's ratios (speed ratio, > 1: ours faster)."""
    r = runs[-1]
    spread = lambda f: " / ".join(f"{f(m):.2f}" for m in runs)  # noqa: E731
    tr, b32, b1 = r["train"], r["b32"], r["b1"]
    best_name, best_ms = _best(b1)
    cl = lambda d: f"{d['base CL']:.1f}" if "base CL" in d else "–"  # noqa: E731
    cl_ratio = lambda key: spread(lambda m: m[key]["base CL"] / m[key]["ours"]) if "base CL" in r[key] else "–"  # noqa: E731
    return [
        f"| {pair.ours} | {pair.baseline} | {tr['ours']:.1f} | {tr['base']:.1f} | {cl(tr)} "
        f"| **{spread(lambda m: m['train']['base'] / m['train']['ours'])}** | {cl_ratio('train')} "
        f"| {pair.train_target or '–'} "
        f"| {b32['ours']:.1f} | {b32['base']:.1f} | {cl(b32)} "
        f"| **{spread(lambda m: m['b32']['base'] / m['b32']['ours'])}** | {cl_ratio('b32')} "
        f"| {b1['ours deploy']:.1f} | {best_ms:.1f} ({best_name.replace('base', 'baseline')}) "
        f"| **{spread(lambda m: _best(m['b1'])[1] / m['b1']['ours deploy'])}** |"
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(p.ours for p in PAIRS), help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (batch-1: twice this)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="whole measurement repeated; every run's ratios shown")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and models, for the test suite (no numbers)")
    ap.add_argument("--out", default="docs/benchmarks-cpu-models.md")
    args = ap.parse_args()
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - {p.ours for p in PAIRS})
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; choose from {', '.join(p.ours for p in PAIRS)}",
              file=sys.stderr)
        return 2
    import timm

    torch.set_num_threads(args.threads)
    t0, load_before = time.time(), _loadavg()
    results: dict[str, list] = {}
    chosen = [next(p for p in PAIRS if p.ours == name) for name in dict.fromkeys(wanted)]  # in the given order
    for rep in range(args.repeat):
        for pair in chosen:
            m = measure(pair, rounds=args.rounds, warmup=args.warmup, quick=args.quick)
            results.setdefault(pair.ours, []).append(m)
            print(f"run {rep + 1} {pair.ours}: " + "; ".join(
                f"{k} " + " ".join(f"{v}={ms:.1f}" for v, ms in d.items()) for k, d in m.items()), flush=True)
    wall, load_after = time.time() - t0, _loadavg()
    command = "PYTHONPATH=src python benchmarks/cpu_models.py " + " ".join(sys.argv[1:])
    sizes = ", ".join(f"{n} train {b}×{s}², batch-32 at {i}²" for n, (b, s, i) in SIZES.items() if n in wanted)
    lines = [
        "# CPU: each family's representative vs timm (RepLKNet vs itself through F.conv2d)",
        "",
        f"- machine: {_cpu_name()}, {os.cpu_count()} cores, {args.threads} thread(s); torch {torch.__version__}, "
        f"timm {timm.__version__}; fp32",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; wall time {wall:.0f} s; load average (1/5/15 min) "
        f"before {load_before}, after {load_after} (the machine is shared: ratios from interleaved rounds are "
        "robust to that load, absolute times are not)",
        f"- command: `{command}`",
        f"- sizes: {'QUICK (not a measurement)' if args.quick else sizes}; batch-1 inference at "
        f"{QUICK['b1_size'] if args.quick else 224}²; {args.rounds} interleaved rounds after {args.warmup} "
        f"warm-ups (batch-1: {2 * args.rounds} rounds, one untimed call before each timed one), median",
        f"- ratios are speed ratios (> 1: ours faster), one per run ({args.repeat} runs, run 1 / run 2 / ...); "
        "times (ms) are the last run's",
        "",
        "| ours | baseline | train ours | train baseline | train timm CL | **train ratio** | vs timm CL "
        "| target | b32 ours | b32 baseline | b32 timm CL | **b32 ratio** | vs timm CL "
        "| b1 ours deploy | b1 baseline best form | **b1 ratio** |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in chosen:
        lines += rows(pair, results[pair.ours])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
