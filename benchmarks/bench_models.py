"""The standard GPU comparison of moderncnn against timm, in one call (< 5 min on an H100).

    PYTHONPATH=src python benchmarks/bench_models.py --out docs/benchmarks-models.md

Everything runs at 224², bf16 autocast, channels_last, ``cudnn.benchmark``; ours and timm are timed in
alternating rounds in the same process (median of the rounds; CUDA events), so drift cancels.

1. Inference, eager, batch 256: our deploy form (``moderncnn.fuse``: Rep blocks merged, BN folded,
   ConvNeXt layer scale folded) and our train form vs timm (timm's deploy form via
   ``timm.utils.model.reparameterize_model`` for RepVGG), for convnext_tiny, repvgg_a2, efficientnetv2_s.
2. Training step (forward + backward + SGD), batch 128, train form, ours vs timm, the three models.
3. Inference, ours fused + ``torch.compile`` vs timm eager and timm compiled (convnext_tiny, repvgg_a2);
   last, because its four compilations take the longest.

Targets (docs/architectures.md, speed targets): eager ≥ 1.0× timm; fused+compiled ≥ 1.8× timm eager
(convnext_tiny) and ≥ 1.35× (repvgg_a2); training ≥ 1.0× timm. Results are written section by section,
so a run cut short still leaves its finished rows.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

from moderncnn.deploy.bench import Runner, build_ours, build_timm, environment, make_runner, time_interleaved
from moderncnn.registry import list_models

MODELS = ["convnext_tiny", "repvgg_a2", "efficientnetv2_s"]
TARGET_COMPILED = {"convnext_tiny": 1.8, "repvgg_a2": 1.35}


class Report:
    def __init__(self, path: Path, env: dict, command: str) -> None:
        self.path, self.rows, self.notes = path, [], []
        self.head = [
            "# moderncnn vs timm on GPU",
            "",
            f"- card: {env.get('gpu', 'cpu')}; date: {env['date']}",
            f"- torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
            f"Triton {env.get('triton')}, timm {env.get('timm')}",
            f"- {IMG_SIZE}², bf16 autocast (fp32 weights), channels_last, cudnn.benchmark; ours and timm timed in "
            "alternating rounds in one process, median of rounds (CUDA events)",
            f"- command: `{command}`",
            "",
            "| section | model | ours | baseline | batch | ours img/s | baseline img/s | ratio | target | met |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]

    def add(self, section, model, ours, base, batch, ours_ips, base_ips, target):
        ratio = ours_ips / base_ips
        met = "" if target is None else ("yes" if ratio >= target else "**no**")
        tgt = "" if target is None else f"≥ {target:.2f}×"
        self.rows.append(
            f"| {section} | {model} | {ours} | {base} | {batch} | {ours_ips:,.0f} | {base_ips:,.0f} | "
            f"{ratio:.2f}× | {tgt} | {met} |"
        )
        print(f"  {section:<10} {model:<18} {ours:<22} vs {base:<14} {ours_ips:>9.0f} / {base_ips:>9.0f} "
              f"= {ratio:.2f}x  {tgt} {met}", flush=True)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(self.head + self.rows + [""] + self.notes) + "\n"
        self.path.write_text(text)


IMG_SIZE = 224


def _runner(model, name, impl, form, mode, dev, batch, compile=False) -> Runner:
    return make_runner(model, name=name, impl=impl, form=form, mode=mode, dev=dev, batch=batch, img_size=IMG_SIZE,
                       precision="bf16", channels_last=True, compile=compile, complexity=False)


def _throughput(runners: list[Runner], dev, batch: int, timing: dict) -> list[float]:
    """Images per second of each runner, timed in alternating rounds."""
    return [batch / s for s in time_interleaved(runners, dev, **timing)]


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/benchmarks-models.md")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 5 steps (about half the time)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list (default: %(default)s)")
    ap.add_argument("--compiled-models", default=",".join(TARGET_COMPILED), help="comma list for the compiled section")
    ap.add_argument("--sections", default="eager,compiled,train", help="comma list of sections to run")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test of this script")
    ap.add_argument("--img-size", type=int, default=224)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.iters = min(args.rounds, 3), min(args.iters, 5)
    global IMG_SIZE
    IMG_SIZE = args.img_size
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_models.py needs a CUDA GPU; on CPU use benchmarks/cpu_latency.py", file=sys.stderr)
        return 2
    import timm  # noqa: F401  (fail early and clearly if absent)

    torch.backends.cudnn.benchmark = True
    dev = torch.device(args.device)
    env = environment()
    command = "PYTHONPATH=src python benchmarks/bench_models.py " + " ".join(sys.argv[1:])
    rep = Report(Path(args.out), env, command)
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    requested = args.models.split(",")
    compiled = args.compiled_models.split(",")
    unknown = sorted(set(requested + compiled) - set(list_models()))
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; see `moderncnn list`", file=sys.stderr)
        return 2
    models = requested
    t0 = time.time()
    timing = dict(warmup=10, iters=args.iters, rounds=args.rounds)
    sections = set(args.sections.split(","))

    if "eager" in sections:
        print("== inference, eager", flush=True)
        for name in models:
            runners = [
                _runner(build_ours(name, "deploy"), name, "moderncnn", "deploy", "infer", dev, args.batch),
                _runner(build_ours(name, "train"), name, "moderncnn", "train", "infer", dev, args.batch),
                _runner(build_timm(name, "deploy"), name, "timm", "deploy", "infer", dev, args.batch),
            ]
            ips = _throughput(runners, dev, args.batch, timing)
            rep.add("eager", name, "fused (deploy)", "timm eager, deploy form", args.batch, ips[0], ips[2], 1.0)
            rep.add("eager", name, "train form", "timm eager, deploy form", args.batch, ips[1], ips[2], None)
            del runners
            _free()
        print(f"   [{time.time() - t0:.0f} s]", flush=True)

    if "train" in sections:
        print("== training step (SGD), train form", flush=True)
        for name in models:
            runners = [
                _runner(build_ours(name, "train"), name, "moderncnn", "train", "train", dev, args.train_batch),
                _runner(build_timm(name, "train"), name, "timm", "train", "train", dev, args.train_batch),
            ]
            ips = _throughput(runners, dev, args.train_batch, timing)
            rep.add("train", name, "train form", "timm", args.train_batch, ips[0], ips[1], 1.0)
            mem = [r.peak_mem_mb for r in runners]
            if None not in mem:
                rep.notes.append(f"- train {name}: peak memory ours {mem[0]:,.0f} MB, timm {mem[1]:,.0f} MB")
            del runners
            _free()
        print(f"   [{time.time() - t0:.0f} s]", flush=True)

    if "compiled" in sections:
        print("== inference, ours fused + compiled", flush=True)
        for name in compiled:
            runners = [
                _runner(build_ours(name, "deploy"), name, "moderncnn", "deploy", "infer", dev, args.batch, True),
                _runner(build_timm(name, "deploy"), name, "timm", "deploy", "infer", dev, args.batch),
                _runner(build_timm(name, "deploy"), name, "timm", "deploy", "infer", dev, args.batch, True),
            ]
            ips = _throughput(runners, dev, args.batch, timing)
            rep.add("compiled", name, "fused + compile", "timm eager", args.batch, ips[0], ips[1],
                    TARGET_COMPILED.get(name))
            rep.add("compiled", name, "fused + compile", "timm compiled", args.batch, ips[0], ips[2], None)
            del runners
            _free()
            print(f"   [{time.time() - t0:.0f} s]", flush=True)

    if dev.type != "cuda" or IMG_SIZE != 224:
        rep.notes.append(f"- SMOKE TEST ({dev.type}, {IMG_SIZE}²): not a measurement")
    rep.notes.append(f"- total wall time {time.time() - t0:.0f} s")
    rep.write()
    print(f"wrote {rep.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
