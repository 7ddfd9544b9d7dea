"""Batch-1 CPU latency: RepVGG deploy (fused) vs train form, and ours vs timm, interleaved.

    PYTHONPATH=src python benchmarks/cpu_latency.py --threads 1 --out docs/benchmarks-cpu.md

224², fp32, ``torch.inference_mode``. The four variants of each model (ours train / ours fused / timm
train / timm reparameterized) run in interleaved rounds, rotating who goes first; in each round every
variant makes one untimed call (its weights back in cache) and then ``--calls`` timed ones. The median
of each is reported, so load from other processes hits all four alike. The load average before and
after is written beside the numbers.

Targets: RepVGG fused ≥ 1.3× faster than its train form (RepVGG paper §4, Table 4 reports the
deploy speed; the goal is in docs/architectures.md, speed targets); ours no slower than timm (ratio ≥ 1.0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

from moderncnn.deploy.bench import build_ours, build_timm, time_rotating
from moderncnn.registry import list_models


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def measure(name: str, size: int, rounds: int, warmup: int, calls: int) -> dict[str, float]:
    """Median batch-1 latency (ms) of ours/timm in train and deploy form, in interleaved rounds.

    Each round gives every variant (rotating who goes first) one untimed call, which brings its weights
    back into the caches the other variants used, then ``calls`` timed calls; the median over all timed
    calls is reported.
    """
    models = {
        "ours train": build_ours(name, "train").eval(),
        "ours fused": build_ours(name, "deploy"),
        "timm train": build_timm(name, "train").eval(),
        "timm fused": build_timm(name, "deploy"),
    }
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        return time_rotating({k: partial(m, x) for k, m in models.items()}, rounds, warmup=warmup, calls=calls,
                             rewarm=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["repvgg_a0"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=40, help="interleaved rounds")
    ap.add_argument("--calls", type=int, default=1, help="timed calls per variant and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default="docs/benchmarks-cpu.md")
    args = ap.parse_args()
    import timm

    torch.set_num_threads(args.threads)
    have = set(list_models())
    missing = [m for m in args.models if m not in have]
    if missing:
        print(f"not registered in moderncnn: {', '.join(missing)}", file=sys.stderr)
        return 2
    load_before = _loadavg()
    rows = []
    for name in args.models:
        ms = measure(name, args.img_size, args.runs, args.warmup, args.calls)
        rows.append((name, ms))
        print(name, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    load_after = _loadavg()
    command = "PYTHONPATH=src python benchmarks/cpu_latency.py " + " ".join(sys.argv[1:])
    lines = [
        "# Batch-1 CPU latency (fp32, 224²)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}, timm {timm.__version__}; "
        f"{args.threads} thread(s) on a {os.cpu_count()}-core machine",
        f"- load average (1/5/15 min) before {load_before}, after {load_after}; the four variants run in "
        f"{args.runs} interleaved rounds (rotating order; per round one untimed call, then {args.calls} timed "
        "calls each; median of all timed calls), so drift and other load hit all four alike",
        f"- command: `{command}`",
        "",
        "| model | ours train ms | ours fused ms | fused speed-up (target ≥ 1.3×) | timm train ms | timm fused ms "
        "| ours/timm train | ours/timm fused (target ≥ 1.0×) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ms in rows:
        up = ms["ours train"] / ms["ours fused"]
        r_train = ms["timm train"] / ms["ours train"]
        r_fused = ms["timm fused"] / ms["ours fused"]
        lines.append(
            f"| {name} | {ms['ours train']:.2f} | {ms['ours fused']:.2f} | {up:.2f}× | {ms['timm train']:.2f} "
            f"| {ms['timm fused']:.2f} | {r_train:.2f}× | {r_fused:.2f}× |"
        )
    lines += ["", "Ratios are speed ratios (> 1 means ours / the fused form is faster)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
