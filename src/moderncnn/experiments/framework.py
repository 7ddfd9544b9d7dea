"""An experiment is data + a function: a table of arms, trained and measured by :func:`run_experiment`.

Work is split into *units*, each written atomically as one JSON file in the out folder when it finishes:

* ``arms/<arm>/seed<k>.json``: one training run of an arm with one seed (top-1, training wall time, ERF
  ratios when asked), through :func:`train_arm`, the one place that calls the project's trainer;
* ``arms/<arm>/custom.json``: the measurement of an arm of an experiment that does not train (its
  ``measure`` function, e.g. timing one operator);
* ``speed.json``: training-step and inference times of every arm, timed side by side in one phase by the
  benchmark timer (``deploy.bench.time_rotating``), repeated so each time has its own spread.

A rerun with the same out folder skips every unit whose file exists, so an interrupted experiment resumes
where it stopped (an arm interrupted mid-training restarts from its beginning). Parameters and GMACs are
counted each time (they cost nothing). The report (``report.py``) and the verdict (``verdict.py``) are
computed from the unit files alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..interop.io import atomic_write_text
from .verdict import INCONCLUSIVE, combine, compare

# metrics measured once per arm and exactly (no spread needed for a verdict)
DETERMINISTIC = ("params", "gmacs", "deploy_params", "full_params_M", "full_gmacs_224", "macs_M")


@dataclass(frozen=True)
class Arm:
    """One row of an experiment's table: a model, its config overrides, and training-option overrides."""

    name: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the experiment's
    params: dict[str, Any] = field(default_factory=dict)  # inputs of a custom ``measure`` function
    paper: float | None = None  # the paper's number for this arm (its metric named by Experiment.paper_metric)
    label: str = ""  # what the arm is, for the report

    def __post_init__(self) -> None:
        # the name is a folder of the results (arms/<name>/seed<k>.json): a "/" would nest one arm in another
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"arm name {self.name!r} must be a plain folder name (no '/', not hidden)")


@dataclass(frozen=True)
class Claim:
    """"``a`` <relation> ``b``" on ``metric`` (see ``verdict.compare``)."""

    text: str
    metric: str
    a: str
    relation: str
    b: str
    rel_tol: float = 0.0
    b_metric: str = ""  # arm b's metric, when it is not ``metric`` (two measurements of one arm)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper: str  # paper and where: "RepVGG (Ding et al., CVPR 2021), Table 6"
    claim: str  # the claim as the paper states it
    setup: str  # what we changed to fit a small CPU, and why
    arms: tuple[Arm, ...]
    claims: tuple[Claim, ...]
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the fashion-mnist recipe
    quick: dict[str, Any] = field(default_factory=dict)  # over ``train`` with --quick
    seeds: int = 3
    # side-by-side timing: "train_step" (forward+backward+SGD at speed_batch), "infer" (batch infer_batch),
    # "deploy_infer" (the fused form)
    speeds: tuple[str, ...] = ("train_step", "infer")
    speed_batch: int = 32
    infer_batch: int = 1
    speed_img_size: int | None = None  # None: the training image size
    timing_repeats: int = 5  # samples per time (each the median of timing_rounds rounds)
    timing_rounds: int = 5
    erf_images: int = 0  # > 0: the ERF area ratios of each trained arm, on this many test images
    measure: Callable[[Arm, RunOptions], dict[str, list[float]]] | None = None  # no training: time this
    paper_metric: str = ""  # the metric Arm.paper gives (e.g. "top1" on ImageNet), for the report
    plot_metrics: tuple[str, ...] = ("top1",)
    full_estimate: str = ""  # the full run's time, estimated from the quick run (docs/experiments/README.md)
    needs_training: bool = True

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)


@dataclass
class RunOptions:
    quick: bool = False
    seeds: int | None = None  # None: the experiment's (1 with --quick)
    out: str | None = None  # None: runs/experiments/<name>[-quick]
    dataset: str | None = None
    data_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    report_dir: str | None = None  # None: <out>; the committed reports go to docs/experiments
    command: str = ""
    progress: bool = True
    # called after each finished unit with its file (tests interrupt a run here)
    on_unit: Callable[[Path], None] | None = None

    def n_seeds(self, exp: Experiment) -> int:
        return self.seeds if self.seeds is not None else (1 if self.quick else exp.seeds)

    def out_dir(self, exp: Experiment) -> Path:
        return Path(self.out or f"runs/experiments/{exp.name}{'-quick' if self.quick else ''}")


# -- atomic unit files -------------------------------------------------------------------------------------
def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` whole or not at all (the trainer's atomic write: temp file, fsync, rename)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


# -- the training configuration of one unit -----------------------------------------------------------------
def train_values(exp: Experiment, arm: Arm, opts: RunOptions, seed: int) -> dict[str, Any]:
    """The TrainConfig fields of one run: the fashion-mnist recipe, the experiment's, the arm's, --quick's,
    then the command line's data set; the arm's model and model kwargs replace the recipe's."""
    from ..training.config import load_recipe

    values = {**load_recipe("fashion-mnist"), **exp.train, **arm.train}
    if opts.quick:
        values.update(exp.quick)
    if opts.dataset:
        values["dataset"] = opts.dataset
        values["data_dir"] = opts.data_dir
    elif opts.data_dir:
        values["data_dir"] = opts.data_dir
    if opts.threads:
        values["threads"] = opts.threads
    kwargs = dict(arm.model_kwargs)
    for key, flag in _OWN_FLAG.items():  # options the trainer sets through its own flag
        if key in kwargs:
            values[flag] = kwargs.pop(key)
    values.update(model=arm.model, model_kwargs=kwargs, seed=seed, device=opts.device,
                  fuse=False, plots=False, no_progress=True, overwrite=True)
    return values


# model config fields that TrainConfig sets with a flag of its own (training/config.py refuses them in
# model_kwargs); an arm may still write them as model kwargs, so that its counts and timings see them too
_OWN_FLAG = {"drop_path_rate": "drop_path", "drop_rate": "drop"}


def _keep_model():
    """A trainer callback that keeps a handle on the trained model (for the ERF after training)."""
    from ..training.trainer import Callback

    class KeepModel(Callback):
        model: torch.nn.Module | None = None

        def on_epoch_end(self, trainer, row) -> None:
            self.model = trainer.model

    return KeepModel()


def train_arm(values: dict[str, Any], datasets: tuple[Any, Any], keep: Any = None) -> dict[str, Any]:
    """Train one arm with ``moderncnn.training.trainer.train`` (the project's public entry): the one call of
    the trainer in this package. Returns top-1 (%), training wall time (s) and the optimizer steps."""
    from ..training.config import from_dict
    from ..training.trainer import TrainingDivergedError, train

    cfg = from_dict(values, where="experiment arm")
    try:
        result = train(cfg, train_dataset=datasets[0], val_dataset=datasets[1], callbacks=[keep] if keep else [])
    except TrainingDivergedError as exc:  # a diverged arm is a result (accuracy of chance), not a crash
        return {"top1": None, "diverged": str(exc), "train_time_s": None, "steps": None}
    if result.interrupted:
        raise KeyboardInterrupt
    top1 = result.last_metrics.get("eval_top1", result.best_top1)
    return {"top1": None if top1 is None else float(top1), "train_time_s": float(result.train_time),
            "steps": int(result.global_step)}


# -- measurements ------------------------------------------------------------------------------------------
def build_arm_model(arm: Arm, num_classes: int, in_chans: int) -> torch.nn.Module:
    from ..factory import create_model

    return create_model(arm.model, num_classes=num_classes, in_chans=in_chans, **arm.model_kwargs)


def complexity(arm: Arm, num_classes: int, in_chans: int, img_size: int, deploy: bool) -> dict[str, float]:
    """Parameters and GMACs of the arm's model (training form) at ``img_size``; with ``deploy`` also the
    parameters of its fused form."""
    from ..analysis.complexity import count_gmacs, count_params

    torch.manual_seed(0)
    model = build_arm_model(arm, num_classes, in_chans)
    out = {"params": float(count_params(model)), "gmacs": count_gmacs(model, img_size, in_chans)}
    if deploy:
        from ..deploy.fuse import fuse

        out["deploy_params"] = float(count_params(fuse(model.eval())))
    return out


def measure_speeds(exp: Experiment, num_classes: int, in_chans: int, img_size: int, opts: RunOptions,
                   say: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per training step and per inference batch of every arm, timed side by side: all arms'
    steps in rotating rounds of the benchmark timer, ``timing_repeats`` times (one median per repeat)."""
    from ..deploy.bench import check_device, make_runner
    from ..deploy.fuse import fuse

    dev = check_device(opts.device)
    fns: dict[str, Callable[[], None]] = {}
    size = exp.speed_img_size or img_size
    for arm in exp.arms:
        for what in exp.speeds:
            torch.manual_seed(0)
            model = build_arm_model(arm, max(num_classes, 10), in_chans)
            form, mode = ("deploy", "infer") if what == "deploy_infer" else ("train", "train" if what == "train_step"
                                                                            else "infer")
            if form == "deploy":
                model = fuse(model.eval())
            runner = make_runner(model, name=arm.name, impl="moderncnn", form=form, mode=mode, dev=dev,
                                 batch=exp.speed_batch if mode == "train" else exp.infer_batch, img_size=size,
                                 precision="fp32", channels_last=False, compile=False, in_chans=in_chans,
                                 complexity=False)
            fns[f"{arm.name}|{what}"] = runner.step
    repeats, rounds = (2, 2) if opts.quick else (exp.timing_repeats, exp.timing_rounds)
    say(f"timing {len(fns)} steps side by side, {repeats} repeats")
    samples = time_side_by_side(fns, repeats, rounds, target_s=0.005 if opts.quick else 0.05, device=dev)
    out: dict[str, dict[str, list[float]]] = {}
    for key, vals in samples.items():
        arm_name, what = key.split("|")
        out.setdefault(arm_name, {})[f"{what}_ms"] = vals
    return out


def time_side_by_side(fns: dict[str, Callable[[], object]], repeats: int, rounds: int, *, target_s: float,
                      device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Milliseconds per call of each function, ``repeats`` samples each (the median of ``rounds`` rotating
    rounds of the benchmark timer, ``deploy.bench.time_rotating``). Each timed sample runs its function back
    to back for at least ``target_s`` seconds, so that time slices lost to other processes average out
    instead of landing on single short calls."""
    from ..deploy.bench import time_rotating

    reps = {}
    for key, fn in fns.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        reps[key] = max(1, min(200, math.ceil(target_s / max(time.perf_counter() - t0, 1e-6))))
    looped = {key: (lambda fn=fn, r=reps[key]: [fn() for _ in range(r)]) for key, fn in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, ms in time_rotating(looped, rounds, warmup=0, device=device).items():
            samples[key].append(ms / reps[key])
    return samples


def measure_erf(model: torch.nn.Module, n: int, img_size: int, in_chans: int,
                values: dict[str, Any]) -> dict[str, float]:
    from ..analysis.erf import erf, load_images

    images = load_images(n, img_size, in_chans, dataset=values["dataset"], data_dir=values.get("data_dir"))
    result = erf(model, images)
    return {f"erf{round(100 * t)}": 100 * r for t, r in result.ratios.items()}


# -- the run -----------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        desc += f"; GPU {torch.cuda.get_device_name()}"
    with contextlib.suppress(OSError):  # other processes' load shows in every time measured here
        desc += f"; load average {os.getloadavg()[0]:.1f} at the end of the run"
    return desc


def run_experiment(exp: Experiment, opts: RunOptions) -> dict[str, Any]:
    """Run (or resume) every unit of ``exp`` not yet in the out folder, then summarize and write the report.
    Returns the summary (also written to ``<out>/summary.json``)."""
    from .report import write_report

    out = opts.out_dir(exp)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    state = read_json(out / "state.json") or {"wall_s": 0.0}
    seeds = opts.n_seeds(exp)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")

    def say(msg: str) -> None:
        if opts.progress:
            print(f"[{exp.name}] {msg}", file=sys.stderr, flush=True)

    def done(path: Path, data: dict[str, Any]) -> None:
        write_json(path, data)
        write_json(out / "state.json", {"wall_s": state["wall_s"] + time.perf_counter() - t_start})
        if opts.on_unit is not None:
            opts.on_unit(path)

    info: dict[str, Any] = {"num_classes": 10, "in_chans": 1, "img_size": 32}
    if exp.needs_training:
        from ..data.datasets import load_dataset

        first = train_values(exp, exp.arms[0], opts, 0)
        datasets = tuple(load_dataset(first["dataset"], data_dir=first.get("data_dir"), split=split)
                         for split in ("train", "val"))
        info = {"num_classes": datasets[0].num_classes, "in_chans": datasets[0].in_chans,
                "img_size": first.get("img_size") or datasets[0].image_size}
        for arm in exp.arms:
            for seed in range(seeds):
                path = out / "arms" / arm.name / f"seed{seed}.json"
                if path.exists():
                    say(f"{arm.name} seed {seed}: done before, skipped")
                    continue
                values = train_values(exp, arm, opts, seed)
                keep = _keep_model() if exp.erf_images else None
                say(f"{arm.name} seed {seed}: training")
                t0 = time.perf_counter()
                log = io.StringIO()
                with tempfile.TemporaryDirectory(dir=out) as run_dir, contextlib.redirect_stdout(log):
                    values["output"] = run_dir
                    result = train_arm(values, datasets, keep)
                    if keep is not None and keep.model is not None and result["top1"] is not None:
                        n = min(exp.erf_images, 8) if opts.quick else exp.erf_images
                        result.update(measure_erf(keep.model, n, values.get("img_size") or info["img_size"],
                                                  info["in_chans"], values))
                (out / "arms" / arm.name).mkdir(parents=True, exist_ok=True)
                (out / "arms" / arm.name / f"seed{seed}.log").write_text(log.getvalue())
                result.update(wall_s=time.perf_counter() - t0, seed=seed,
                              train_samples=values.get("train_samples"), val_samples=values.get("val_samples"),
                              epochs=values["epochs"], batch_size=values["batch_size"])
                say(f"{arm.name} seed {seed}: top-1 {result['top1']}, {result['wall_s']:.0f} s")
                done(path, result)
    if exp.measure is not None:
        for arm in exp.arms:
            path = out / "arms" / arm.name / "custom.json"
            if path.exists():
                say(f"{arm.name}: done before, skipped")
                continue
            say(f"{arm.name}: measuring")
            done(path, exp.measure(arm, opts))
    if exp.speeds:
        path = out / "speed.json"
        if path.exists():
            say("speeds: done before, skipped")
        else:
            done(path, measure_speeds(exp, info["num_classes"], info["in_chans"], info["img_size"], opts, say))
    summary = summarize(exp, opts, info)
    summary["wall_s"] = state["wall_s"] + time.perf_counter() - t_start
    write_json(out / "state.json", {"wall_s": summary["wall_s"]})
    summary["report"] = [str(p) for p in write_report(exp, summary, opts)]
    write_json(out / "summary.json", summary)
    return summary


def summarize(exp: Experiment, opts: RunOptions, info: dict[str, Any]) -> dict[str, Any]:
    """Every arm's samples per metric (from the unit files), its complexity, and the verdicts."""
    out = opts.out_dir(exp)
    speed = read_json(out / "speed.json") or {}
    arms: dict[str, dict[str, list[float]]] = {}
    for arm in exp.arms:
        samples: dict[str, list[float]] = {}
        folder = out / "arms" / arm.name
        for path in sorted(folder.glob("seed*.json")) + [folder / "custom.json"]:
            data = read_json(path)
            for k, v in (data or {}).items():
                if k in ("seed", "train_samples", "val_samples", "epochs", "batch_size", "diverged", "steps"):
                    continue
                if isinstance(v, list):
                    samples.setdefault(k, []).extend(float(x) for x in v)
                elif isinstance(v, (int, float)):
                    samples.setdefault(k, []).append(float(v))
                elif v is None and k == "top1":  # diverged: chance accuracy
                    samples.setdefault(k, []).append(100.0 / info["num_classes"])
        for k, v in speed.get(arm.name, {}).items():
            samples[k] = [float(x) for x in v]
        if exp.needs_training or exp.speeds:
            for k, v in complexity(arm, info["num_classes"], info["in_chans"], info["img_size"],
                                   "deploy_infer" in exp.speeds).items():
                samples[k] = [v]
        arms[arm.name] = samples
    verdicts = []
    for c in exp.claims:
        a, b = arms.get(c.a, {}).get(c.metric, []), arms.get(c.b, {}).get(c.b_metric or c.metric, [])
        v = compare(a, b, c.relation, deterministic=c.metric in DETERMINISTIC, rel_tol=c.rel_tol) if a and b \
            else INCONCLUSIVE
        b_name = c.b if not c.b_metric else f"{c.b} ({c.b_metric})"
        verdicts.append({"claim": c.text, "metric": c.metric, "a": c.a, "relation": c.relation, "b": b_name,
                         "a_mean": mean(a), "b_mean": mean(b), "verdict": v})
    return {"experiment": exp.name, "quick": opts.quick, "seeds": opts.n_seeds(exp), "info": info,
            "arms": arms, "claims": verdicts, "verdict": combine([v["verdict"] for v in verdicts]),
            "machine": machine(), "command": opts.command, "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else None


def estimate_full_seconds(exp: Experiment, quick_out: Path, full_seeds: int | None = None) -> float | None:
    """The full run's time, extrapolated from a quick run: per arm, seconds per training image from the
    timing phase (the median training step after warm-up, ``speed.json``) or, without one, from the quick
    training itself (which includes the first steps' warm-up, so it overestimates); evaluation at a third
    of that per image (a forward pass); the quick run's set-up time once per run. A rough guide: it ignores
    the image-size changes of progressive runs (it counts the final size throughout), scales the quick run's
    per-image cost by the pixel count when the full run trains on larger images, and scales with the load of
    the machine at the quick run."""
    from ..data.datasets import load_dataset

    total, seeds = 0.0, full_seeds or exp.seeds
    n_train: int | None = None
    speed = read_json(quick_out / "speed.json") or {}
    for arm in exp.arms:
        q = read_json(quick_out / "arms" / arm.name / "seed0.json")
        if q is None or not q.get("steps"):
            return None
        full = train_values(exp, arm, RunOptions(), 0)
        if n_train is None:
            n_train = len(load_dataset(full["dataset"], data_dir=full.get("data_dir"), split="train"))
        step_ms = speed.get(arm.name, {}).get("train_step_ms")
        per_image = (statistics.median(step_ms) / 1e3 / exp.speed_batch if step_ms
                     else q["train_time_s"] / (q["steps"] * q["batch_size"]))
        quick_images = q["steps"] * q["batch_size"] + (q.get("val_samples") or 10000) / 3
        setup = max(0.0, q["wall_s"] - per_image * quick_images)
        quick_px = train_values(exp, arm, RunOptions(quick=True), 0).get("img_size")
        full_px = full.get("img_size")
        if quick_px and full_px:  # a conv network's work grows with the pixel count
            per_image *= (full_px / quick_px) ** 2
        images = full["epochs"] * min(full.get("train_samples") or n_train, n_train)
        evals = full["epochs"] // full.get("eval_interval", 1) * (full.get("val_samples") or 10000)
        total += seeds * (per_image * (images + evals / 3) + min(setup, 30.0))
    return total
