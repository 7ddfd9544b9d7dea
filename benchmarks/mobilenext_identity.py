"""MobileNeXt's identity tensor multiplier α on the CPU: inference latency of α = 1, 1/2, 1/3, 1/4 side by side.

    PYTHONPATH=src python benchmarks/mobilenext_identity.py --threads 1

The partial shortcut (Zhou et al., ECCV 2020, §3.3) adds the block input to the first ⌊αC⌋ channels only,
so there is less element-wise work and memory traffic; parameters and MAdds do not change. In inference
the sandglass block adds into those channels in place. The ``cat`` rows force the pure form (the one
autograd and export use: ``torch.cat`` of the added and the untouched channels) to show what the in-place
add saves. Every variant is the same network with the same weights; the variants run in interleaved rounds
that rotate who goes first (``moderncnn.deploy.bench.time_rotating``), after warm-up, and the median per
call is reported with the ratio to α = 1 (> 1: faster than α = 1). A second table times the shortcut
additions alone on the tensors of every shortcut block (taken from one forward pass), which is where α
acts. The load average before and after is printed beside the numbers. Speed is measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from moderncnn import create_model
from moderncnn.deploy.bench import time_rotating
from moderncnn.models import mobilenext

RATIOS = {"1": 1.0, "1/2": 1 / 2, "1/3": 1 / 3, "1/4": 1 / 4}


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _pure(fn):
    """``fn`` with the sandglass blocks forced onto the pure (torch.cat) partial shortcut."""

    def call():
        real = mobilenext._may_write_in_place
        mobilenext._may_write_in_place = lambda x, y: False
        try:
            return fn()
        finally:
            mobilenext._may_write_in_place = real

    return call


def shortcut_tensors(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(block input, block output before the shortcut) of every shortcut block, from one forward pass."""
    pairs, inputs = [], {}
    blocks = [b for b in model.modules() if isinstance(b, mobilenext.SandglassBlock) and b.has_shortcut]
    handles = [b.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].clone())) for b in blocks]
    handles += [b.dw2.register_forward_hook(lambda m, a, o, b=b: pairs.append((inputs[b], o.clone())))
                for b in blocks]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return pairs


def shortcut_ops(pairs, ratio: float, form: str):
    """The shortcut additions alone, over every shortcut block's tensors: ``form`` is "out" (y + x, the
    pure full shortcut), "inplace" (add into the first k channels) or "cat" (the pure partial form)."""
    work = [(x, y.clone(), mobilenext.identity_channels(y.shape[1], ratio)) for x, y in pairs]

    def run():
        with torch.inference_mode():
            for x, y, k in work:
                if form == "out":
                    y + x
                elif form == "inplace":
                    y[:, :k] += x[:, :k]
                else:
                    torch.cat([y[:, :k] + x[:, :k], y[:, k:]], dim=1)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenext_100")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=3, help="timed calls per variant per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-cat", action="store_true", help="skip the pure torch.cat rows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = create_model(args.model).eval()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    fns = {}
    for label, ratio in RATIOS.items():
        m = create_model(args.model, identity_ratio=ratio).eval()
        m.load_state_dict(base.state_dict())  # same weights: only the shortcut differs

        def run(m=m):
            with torch.inference_mode():
                return m(x)

        fns[f"α={label}"] = run
        if not args.no_cat and ratio < 1:
            fns[f"α={label} cat"] = _pure(run)
    pairs = shortcut_tensors(base, x)
    ops = {"y + x (pure, α=1)": shortcut_ops(pairs, 1.0, "out")}
    for label, ratio in RATIOS.items():
        ops[f"in place α={label}"] = shortcut_ops(pairs, ratio, "inplace")
        if ratio < 1:
            ops[f"cat α={label}"] = shortcut_ops(pairs, ratio, "cat")
    before = _loadavg()
    ms = time_rotating(fns, args.rounds, warmup=args.warmup, calls=args.calls, rewarm=True)
    op_ms = time_rotating(ops, args.rounds * 4, warmup=args.warmup, calls=args.calls)
    after = _loadavg()
    print(f"# {args.model}, batch {args.batch}, {args.img_size}², fp32, {args.threads} thread(s), "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average before {before}, after {after}")
    print(f"# median of {args.rounds} rounds × {args.calls} calls, rotating order, one untimed call per round")
    print("| variant | ms / call | speed vs α=1 |")
    print("|---|---:|---:|")
    ref = ms["α=1"]
    for k, v in ms.items():
        print(f"| {k} | {v:.2f} | {ref / v:.3f}× |")
    print(f"\n# the shortcut additions alone, summed over the {len(pairs)} shortcut blocks' tensors")
    print("| shortcut | µs / forward | speed vs y + x |")
    print("|---|---:|---:|")
    ref = op_ms["y + x (pure, α=1)"]
    for k, v in op_ms.items():
        print(f"| {k} | {v * 1e3:.1f} | {ref / v:.2f}× |")


if __name__ == "__main__":
    main()
