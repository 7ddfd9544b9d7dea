"""Throughput of our models (train form and fused deploy form), optionally side by side with timm.

Protocol (docs/ecosystem.md, "Timing"): warm-up, device sync, then several rounds of timed iterations and the
median per-batch time. With ``vs_timm`` our model and timm's implementation of the same model are timed
in alternating rounds in the same process, so clock and thermal drift hit both alike. Inference runs
under ``torch.inference_mode``; a training step is forward + backward + SGD step. ``precision`` bf16
or fp16 means autocast (weights stay fp32), as timm's ``benchmark.py --amp`` does.
"""

from __future__ import annotations

import contextlib
import csv
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..validation import check_device

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchResult:
    model: str
    impl: str  # "moderncnn" or "timm"
    form: str  # "train" (as trained) or "deploy" (fused / re-parameterized)
    mode: str  # "infer" or "train"
    device: str
    precision: str
    batch: int
    img_size: int
    channels_last: bool
    compiled: bool
    img_per_s: float
    ms_per_batch: float
    peak_mem_mb: float | None
    params_m: float
    gmacs: float
    vs_timm: float | None = None  # our img/s ÷ timm's img/s (on our rows)


def import_timm():
    try:
        import timm
    except ImportError as exc:
        raise ConfigError("--vs-timm needs timm, which is not installed: pip install timm") from exc
    return timm


def timm_name(name: str) -> str | None:
    """timm's name for our model, or None if timm does not have it."""
    return name if import_timm().is_model(name) else None


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _autocast(dev: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


@dataclass
class Runner:
    """One model ready to time: ``step()`` runs one batch (inference or a training step)."""

    name: str
    impl: str
    form: str
    mode: str
    step: Callable[[], None]
    params: int
    gmacs: float
    peak_mem_mb: float | None = None


def build_ours(name: str, form: str, num_classes: int = 1000) -> nn.Module:
    from ..factory import create_model
    from .fuse import fuse

    model = create_model(name, num_classes=num_classes)
    return fuse(model) if form == "deploy" else model


def build_timm(name: str, form: str, num_classes: int = 1000) -> nn.Module:
    timm = import_timm()
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if form == "deploy":
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model.eval())
    return model


def make_runner(
    model: nn.Module,
    *,
    name: str,
    impl: str,
    form: str,
    mode: str,
    dev: torch.device,
    batch: int,
    img_size: int,
    precision: str,
    channels_last: bool,
    compile: bool,
    in_chans: int = 3,
    complexity: bool = True,
) -> Runner:
    """Move ``model`` to ``dev`` and wrap it into a ``step`` closure; count params and GMACs first."""
    from ..analysis.complexity import count_gmacs, count_params

    params = count_params(model)
    gmacs = count_gmacs(model, img_size, in_chans) if complexity else float("nan")
    model = model.to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, in_chans, img_size, img_size, device=dev).contiguous(memory_format=fmt)
    if mode == "infer":
        model.eval()
        fn = torch.compile(model) if compile else model

        def step() -> None:
            with torch.inference_mode(), _autocast(dev, precision):
                fn(x)
    else:
        model.train()
        fn = torch.compile(model) if compile else model
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        target = torch.randint(0, 10, (batch,), device=dev)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> None:
            with _autocast(dev, precision):
                loss = loss_fn(fn(x), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return Runner(name, impl, form, mode, step, params, gmacs)


def _elapsed_ms(fn: Callable[[], object], calls: int, dev: torch.device) -> float:
    """Milliseconds for ``calls`` back-to-back calls of ``fn`` (CUDA events on a GPU, else wall clock)."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3


def time_rotating(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    calls: int = 1,
    rewarm: bool = False,
    together: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Median milliseconds per call of each function, in rounds that rotate who goes first.

    The one timer of the package: ``moderncnn bench``, the deploy report (:func:`moderncnn.deploy.deploy_model`)
    and the scripts in ``benchmarks/`` all time through it. After ``warmup`` untimed calls each, every round
    gives each function ``calls`` timed calls, preceded, with ``rewarm``, by one untimed call that brings its
    data back into the caches the others used. Each call is one sample, or with ``together`` the ``calls``
    run back to back as one sample (their mean), which lets a GPU queue them as a training loop would.
    On CUDA the time is read from CUDA events. Drift and load from other processes hit all functions alike.
    """
    dev = torch.device(device)
    keys = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        for k in keys[i % len(keys):] + keys[: i % len(keys)]:
            if rewarm:
                fns[k]()
            if together:
                times[k].append(_elapsed_ms(fns[k], calls, dev) / calls)
            else:
                times[k] += [_elapsed_ms(fns[k], 1, dev) for _ in range(calls)]
    return {k: statistics.median(v) for k, v in times.items()}


def time_interleaved(
    runners: list[Runner], dev: torch.device, *, warmup: int = 5, iters: int = 10, rounds: int = 5
) -> list[float]:
    """Median seconds per batch of each runner: ``warmup`` steps each (peak memory read after them), then
    :func:`time_rotating` rounds of ``iters`` back-to-back steps."""
    for r in runners:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(warmup):
            r.step()
        _sync(dev)
        if dev.type == "cuda":
            r.peak_mem_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    steps = {str(i): r.step for i, r in enumerate(runners)}
    ms = time_rotating(steps, rounds, warmup=0, calls=iters, together=True, device=dev)
    return [ms[str(i)] / 1e3 for i in range(len(runners))]


def _combos(mode: str, form: str) -> Iterator[tuple[str, str]]:
    modes = ("infer", "train") if mode == "both" else (mode,)
    forms = ("train", "deploy") if form == "both" else (form,)
    for m in modes:
        for f in forms:
            if m == "train" and f == "deploy":
                continue  # a deploy-form model is for inference; training it means training another net
            yield m, f


def benchmark(
    models: list[str],
    *,
    device: str = "cpu",
    batch: int = 32,
    img_size: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    mode: str = "infer",
    form: str = "train",
    vs_timm: bool = False,
    warmup: int = 5,
    iters: int = 10,
    rounds: int = 5,
    num_classes: int = 1000,
    log: Callable[[str], None] | None = print,
) -> list[BenchResult]:
    """Time every model in ``models`` for each (mode, form); returns one row per (impl, mode, form)."""
    from ..registry import get_entry

    dev = check_device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if vs_timm:
        import_timm()
    say = log or (lambda _m: None)
    rows: list[BenchResult] = []
    for name in models:
        entry = get_entry(name)
        size = img_size or entry.input_size
        tname = timm_name(name) if vs_timm else None
        if vs_timm and tname is None:
            say(f"note: timm has no {name}; timing ours alone")
        for m, f in _combos(mode, form):
            kw = dict(mode=m, form=f, dev=dev, batch=batch, img_size=size, precision=precision,
                      channels_last=channels_last, compile=compile)
            runners = [make_runner(build_ours(name, f, num_classes), name=name, impl="moderncnn", **kw)]
            if tname is not None:
                runners.append(make_runner(build_timm(tname, f, num_classes), name=tname, impl="timm", **kw))
            secs = time_interleaved(runners, dev, warmup=warmup, iters=iters, rounds=rounds)
            group = [
                BenchResult(
                    model=r.name, impl=r.impl, form=f, mode=m, device=str(dev), precision=precision,
                    batch=batch, img_size=size, channels_last=channels_last, compiled=compile,
                    img_per_s=batch / s, ms_per_batch=s * 1e3, peak_mem_mb=r.peak_mem_mb,
                    params_m=r.params / 1e6, gmacs=r.gmacs,
                )
                for r, s in zip(runners, secs)
            ]
            if len(group) == 2:
                group[0].vs_timm = group[0].img_per_s / group[1].img_per_s
            rows += group
            for row in group:
                say(format_row(row))
            del runners
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


RUNTIMES = ("eager", "compile", "onnxruntime")


@dataclass
class RuntimeResult:
    model: str
    runtime: str  # "eager" (PyTorch), "compile" (torch.compile), "onnxruntime" (the exported ONNX file)
    batch: int
    img_size: int
    threads: int
    ms_per_batch: float
    img_per_s: float
    vs_eager: float  # eager ms ÷ this runtime's ms (> 1: faster than PyTorch eager)


def _onnx_runner(model: nn.Module, x: torch.Tensor, folder: Path) -> Callable[[], object]:
    """Export ``model`` (already fused) to ONNX in ``folder``; a closure running it once in onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError("--runtime onnxruntime needs onnxruntime: pip install 'moderncnn[export]'") from exc
    from .export import output_errors, write_format

    path = folder / "model.onnx"
    write_format(model, "onnx", path, x if x.shape[0] >= 2 else x.expand(2, *x.shape[1:]).clone(), [])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the same CPU budget as PyTorch
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        ref = model(x)
    err = output_errors(torch.from_numpy(session.run(None, feed)[0]), ref)[1]
    if not err <= 1e-4:  # timing a file that computes something else would be meaningless
        raise ConfigError(f"the ONNX export of {getattr(model, 'model_name', 'the model')} differs from PyTorch "
                          f"by {err:.2e} (relative); not timing it")
    return lambda: session.run(None, feed)


def benchmark_runtimes(
    models: list[str],
    runtimes: tuple[str, ...] = RUNTIMES,
    *,
    batch: int = 1,
    img_size: int | None = None,
    warmup: int = 5,
    iters: int = 10,
    rounds: int = 5,
    num_classes: int = 1000,
    log: Callable[[str], None] | None = print,
) -> list[RuntimeResult]:
    """Deploy form of each model on the CPU (fp32 inference) in PyTorch eager and each of ``runtimes``.

    The same fused model and the same input go to every runtime (the ONNX file is exported from it with
    dynamic batch); the runtimes are timed in interleaved rounds that rotate who goes first
    (:func:`time_rotating`, ``iters`` calls per round, median), onnxruntime with as many threads as torch.
    """
    import tempfile

    from ..registry import get_entry

    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise ConfigError(f"--runtime {', '.join(bad)}: choose from {', '.join(RUNTIMES)}")
    runtimes = ("eager", *[r for r in dict.fromkeys(runtimes) if r != "eager"])  # eager is the reference
    say = log or (lambda _m: None)
    rows: list[RuntimeResult] = []
    for name in models:
        size = img_size or get_entry(name).input_size
        model = build_ours(name, "deploy", num_classes).eval()
        x = torch.randn(batch, 3, size, size)
        with tempfile.TemporaryDirectory() as tmp:
            fns: dict[str, Callable[[], object]] = {}
            for rt in runtimes:
                if rt == "onnxruntime":
                    fns[rt] = _onnx_runner(model, x, Path(tmp))
                else:
                    fn = torch.compile(model) if rt == "compile" else model
                    fns[rt] = partial(_run_inference, fn, x)
            ms = time_rotating(fns, rounds, warmup=warmup, calls=iters)
        for rt in runtimes:
            row = RuntimeResult(name, rt, batch, size, torch.get_num_threads(), ms[rt], batch / ms[rt] * 1e3,
                                ms["eager"] / ms[rt])
            rows.append(row)
            say(f"{name:<22} {rt:<12} {row.ms_per_batch:>9.2f} ms {row.img_per_s:>9.1f} img/s "
                f"{row.vs_eager:>6.2f}x vs eager")
    return rows


def _run_inference(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> None:
    with torch.inference_mode():
        fn(x)


HEADER = (
    f"{'model':<22} {'impl':<9} {'form':<6} {'mode':<5} {'img/s':>10} {'ms/batch':>9} "
    f"{'peak MB':>8} {'params M':>9} {'GMACs':>7} {'vs timm':>8}"
)


def format_row(r: BenchResult) -> str:
    mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-"
    ratio = f"{r.vs_timm:.2f}x" if r.vs_timm is not None else ""
    return (
        f"{r.model:<22} {r.impl:<9} {r.form:<6} {r.mode:<5} {r.img_per_s:>10.1f} {r.ms_per_batch:>9.2f} "
        f"{mem:>8} {r.params_m:>9.2f} {r.gmacs:>7.3f} {ratio:>8}"
    )


def write_results(rows: list, out: str | Path, meta: dict[str, Any] | None = None) -> list[Path]:
    """Write ``rows`` as ``<out>.csv`` and ``<out>.json`` (a suffix on ``out`` is replaced)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".csv", ".json") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = Path(str(base) + ".csv"), Path(str(base) + ".json")
    names = [f.name for f in fields(rows[0] if rows else BenchResult)]  # BenchResult or RuntimeResult rows
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    json_path.write_text(json.dumps({"meta": meta or {}, "results": [asdict(r) for r in rows]}, indent=2) + "\n")
    return [csv_path, json_path]


def environment() -> dict[str, Any]:
    """Versions and card, for the header of every results file."""
    env: dict[str, Any] = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["cpu_threads"] = torch.get_num_threads()
    with contextlib.suppress(ImportError):
        import timm

        env["timm"] = timm.__version__
    with contextlib.suppress(ImportError):
        import triton

        env["triton"] = triton.__version__
    return env


__all__ = [
    "BenchResult",
    "RuntimeResult",
    "time_rotating",
    "benchmark",
    "benchmark_runtimes",
    "check_device",
    "environment",
    "format_row",
    "make_runner",
    "time_interleaved",
    "write_results",
]
