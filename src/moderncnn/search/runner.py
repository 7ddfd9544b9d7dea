"""Run a training-aware architecture search as an Optuna study (EfficientNetV2 §3.3).

One trial: draw a point of the space, build it, count its parameters P, time its training step S on the
device, train it for ``proxy_steps`` steps with the project's trainer and read its accuracy A; the trial's
value is the reward A·S^w·P^v. The study lives in Optuna's storage: by default ``search.db`` (SQLite) in the
run folder, so running the same command again resumes (completed trials are kept, not rerun); a shared
database URL or a journal file on a shared filesystem lets any number of workers run one study.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import random
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from ..plotting import pyplot
from .reward import RewardWeights, measure_step_time, reward
from .samplers import SAMPLERS, make_sampler
from .space import SearchSpace, load_space


@dataclass
class SearchConfig:
    """Every option of ``moderncnn search``."""

    space: str = "efficientnetv2"  # a packaged space or a YAML file (search/space.py)
    trials: int = 30  # completed trials the study should hold (all workers together)
    sampler: str = "reinforce"
    storage: str | None = None  # None: sqlite:///<out>/search.db; a database URL; or a journal file path
    study_name: str | None = None  # None: "search-<space>"
    out: str = "runs/search"
    seed: int | None = None  # sampler seed; None: a fresh one per worker
    # -- proxy training (the project's trainer; a recipe's options, then these) ---------------------------
    proxy_steps: int = 200
    recipe: str = "fashion-mnist"
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the recipe
    # -- reward ------------------------------------------------------------------------------------------
    w: float = -0.07
    v: float = -0.05
    timing_rounds: int = 5
    # -- reporting ---------------------------------------------------------------------------------------
    compare_baseline: bool = False  # also proxy-train EfficientNetV2-B0 scaled to the best's parameters
    progress: bool = True
    top: int = 10


@dataclass
class SearchResult:
    out: Path
    study: optuna.Study
    best: FrozenTrial | None
    files: dict[str, Path]
    baseline: dict[str, Any] | None = None


# -- storage ---------------------------------------------------------------------------------------------
def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """SQLite in ``out`` (default), any SQLAlchemy URL (``postgresql://``, ``mysql://``, ``sqlite:///``), or a
    journal file (a plain path, or ``journal:PATH``) for workers sharing a filesystem."""
    if url is None:
        url = f"sqlite:///{(out / 'search.db').resolve()}"
    if "://" in url:
        kw: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # workers wait for the lock, not fail
        # a worker killed mid-trial stops its heartbeat; the trial is failed and its point retried once
        from sqlalchemy.exc import SQLAlchemyError

        for attempt in range(6):
            try:
                with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna 4-5
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                                      heartbeat_stale_trial_callback=retry, **kw)
            except SQLAlchemyError:
                # workers started together race to create the tables of a new database: the loser retries
                if attempt == 5:
                    raise
                time.sleep(0.2 + random.random())
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = Path(url.removeprefix("journal:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


# -- proxy training: the one place that calls the trainer ---------------------------------------------------
def proxy_train(config, train_dataset, val_dataset) -> float:
    """Top-1 accuracy (fraction) of ``moderncnn.training.trainer.train(config, ...)`` at its end."""
    from ..training.trainer import TrainingDivergedError, train

    try:
        result = train(config, train_dataset=train_dataset, val_dataset=val_dataset)
    except TrainingDivergedError:
        return 0.0
    if result.interrupted:  # Ctrl-C reached the trainer: stop the search (the trial is marked failed)
        raise KeyboardInterrupt
    top1 = result.last_metrics.get("eval_top1", result.best_top1)
    if top1 is None:
        raise ConfigError("the proxy training ended without an evaluation; check the proxy options")
    return float(top1) / 100.0


class Objective:
    """The trial function: point -> (A, S, P) -> reward; everything it measured goes to the trial's attributes."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace, out: Path) -> None:
        from ..training.config import from_dict, load_recipe

        self.cfg, self.space, self.out = cfg, space, out
        self.weights = RewardWeights(w=cfg.w, v=cfg.v)
        values = {**load_recipe(cfg.recipe), **cfg.train_overrides}
        values.update(model=space.model, model_kwargs={}, fuse=False, plots=False, no_progress=True)
        base = from_dict(values)
        self.device = base.device or ("cuda" if torch.cuda.is_available() else "cpu")
        from ..data.datasets import load_dataset

        self.train_set = load_dataset(base.dataset, data_dir=base.data_dir, split="train", download=base.download)
        self.val_set = load_dataset(base.dataset, data_dir=base.data_dir, split="val", download=base.download)
        k = cfg.proxy_steps
        n = min(len(self.train_set), base.train_samples or len(self.train_set), k * base.batch_size)
        if n < base.batch_size:
            raise ConfigError(f"the proxy needs at least one batch of {base.batch_size} images, the data has {n}")
        # one pass of the schedule spans the proxy's k steps (a full cosine), evaluated once at the end: more
        # steps than one pass over the data are whole epochs over an equal subset (the last one may stop up to
        # epochs - 1 steps short of its end)
        epochs = math.ceil(k / (n // base.batch_size))
        steps_per_epoch = math.ceil(k / epochs)
        n = min(n, steps_per_epoch * base.batch_size)
        self.base = base.replace(train_samples=n, epochs=epochs, max_steps=k, eval_interval=epochs,
                                 device=self.device)
        self.img_size = base.img_size or self.train_set.image_size
        self.in_chans = base.in_chans or self.train_set.in_chans
        self.num_classes = base.num_classes or self.train_set.num_classes

    def measure(self, model_kwargs: dict[str, Any], tag: str) -> dict[str, Any]:
        """A, S, P and the reward of one architecture (``tag`` names its log file)."""
        from ..analysis.complexity import count_params
        from ..factory import create_model

        model = create_model(self.space.model, num_classes=self.num_classes, in_chans=self.in_chans, **model_kwargs)
        params = count_params(model)
        if self.base.threads:
            torch.set_num_threads(self.base.threads)
        step_time = measure_step_time(copy.deepcopy(model), batch=self.base.batch_size, img_size=self.img_size,
                                      in_chans=self.in_chans, device=self.device,
                                      channels_last=self.base.channels_last, rounds=self.cfg.timing_rounds)
        logs = self.out / "trials"
        logs.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.out) as run_dir, contextlib.redirect_stdout(buf):
            tc = self.base.replace(model_kwargs=model_kwargs, output=run_dir)
            accuracy = proxy_train(tc, self.train_set, self.val_set)
        (logs / f"{tag}.log").write_text(buf.getvalue())
        return {"accuracy": accuracy, "step_time_s": step_time, "params": params,
                "train_time_s": time.perf_counter() - t0,
                "reward": reward(accuracy, step_time, params, self.weights)}

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == params and "accuracy" in t.user_attrs:  # the same network again: same seed, same result
                for k, val in t.user_attrs.items():
                    if k != "worker":
                        trial.set_user_attr(k, val)
                trial.set_user_attr("same_as", t.number)
                return float(t.value)
        kwargs = self.space.model_kwargs(params)
        m = self.measure(kwargs, f"trial-{trial.number:05d}")
        for k, val in m.items():
            trial.set_user_attr(k, val)
        trial.set_user_attr("stages", kwargs["stages"])
        return m["reward"]


# -- the search --------------------------------------------------------------------------------------------
def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "accuracy" in t.user_attrs]


def run_search(cfg: SearchConfig, objective: Callable[[optuna.Trial], float] | None = None) -> SearchResult:
    """Run (or resume, or join) the study until it holds ``cfg.trials`` completed trials, then report.

    ``objective`` replaces the proxy-training :class:`Objective` (tests, synthetic rewards); it must set the
    trial attributes ``accuracy``, ``step_time_s``, ``params`` and ``stages`` as :class:`Objective` does."""
    if cfg.trials < 1 or cfg.proxy_steps < 1:
        raise ConfigError(f"--trials and --proxy-steps must be >= 1, got {cfg.trials}, {cfg.proxy_steps}")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {cfg.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    t_start = time.perf_counter()
    space = load_space(cfg.space)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage, out)
    study = optuna.create_study(storage=storage, study_name=cfg.study_name or f"search-{space.name}",
                                direction="maximize", load_if_exists=True)
    # a resumed or joined study: offset the seed by the trials already there, so a fixed --seed does not
    # replay the draws of the first run (the REINFORCE sampler seeds each trial by its number anyway)
    seed = None if cfg.seed is None else cfg.seed + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(cfg.sampler, seed)
    proxy = objective is None
    if objective is None:
        objective = Objective(cfg, space, out)
    done = len(_complete(study))
    left = cfg.trials - done
    if done:
        print(f"study {study.study_name!r} holds {done} completed trial(s); running {max(0, left)} more",
              file=sys.stderr)
    if left > 0:
        bar = _progress(cfg.trials, done, cfg.progress)
        target = optuna.study.MaxTrialsCallback(cfg.trials, states=(TrialState.COMPLETE,))

        def tick(st: optuna.Study, t: FrozenTrial) -> None:
            if bar is not None and t.state == TrialState.COMPLETE:
                a = t.user_attrs
                bar.set_postfix_str(f"#{t.number} A {100 * a['accuracy']:.1f}% S {1e3 * a['step_time_s']:.0f} ms "
                                    f"P {a['params'] / 1e6:.2f}M R {t.value:.4f}; best {st.best_value:.4f}")
                bar.n = len(_complete(st))
                bar.refresh()

        try:
            study.optimize(objective, n_trials=left, callbacks=[target, tick], catch=())
        finally:
            if bar is not None:
                bar.close()
    trials = _complete(study)
    best = max(trials, key=lambda t: t.value) if trials else None
    baseline = None
    if cfg.compare_baseline and best is not None and proxy:
        baseline = compare_with_baseline(objective, best)
    command = "moderncnn " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).stem in ("moderncnn", "__main__") else None
    files = write_report(out, study, space, trials, best, cfg, baseline, command, time.perf_counter() - t_start)
    return SearchResult(out, study, best, files, baseline)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="search", unit="trial", dynamic_ncols=True)


def compare_with_baseline(objective: Objective, best: FrozenTrial) -> dict[str, Any]:
    """EfficientNetV2-B0's base compound-scaled (width β^φ, depth α^φ, later stages first) to the parameter
    count of the best found network, measured under the same proxy training and timing."""
    from ..analysis.complexity import count_params
    from ..factory import create_model
    from ..registry import get_entry
    from .scaling import compound

    b0 = get_entry("efficientnetv2_b0").cfg
    target = best.user_attrs["params"]
    nc, ic = objective.num_classes, objective.in_chans

    def params_at(phi: float) -> int:
        kw = compound(b0, phi).model_kwargs()
        return count_params(create_model("efficientnetv2_custom", num_classes=nc, in_chans=ic, **kw))

    lo, hi = -20.0, 6.0  # bisection on φ (parameters grow with φ); φ = -20 is ~28 k parameters
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params_at(mid) < target else (lo, mid)
    phi = (lo + hi) / 2
    kwargs = compound(b0, phi).model_kwargs()
    m = objective.measure(kwargs, "baseline-b0-scaled")
    return {"phi": phi, "model_kwargs": kwargs, **m}


# -- report ------------------------------------------------------------------------------------------------
def describe(stages: list[list[Any]]) -> str:
    """Compact stage string: ``F1k3x2 M4k5x3se ...`` (block, expansion, kernel, layers, SE)."""
    return " ".join(f"{'F' if b == 'fused' else 'M'}{e}k{k}x{n}{'se' if se else ''}"
                    for b, e, k, _s, _c, n, se in stages)


def _rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    return [{"trial": t.number, "reward": round(t.value, 6), "accuracy": round(t.user_attrs["accuracy"], 4),
             "step_ms": round(1e3 * t.user_attrs["step_time_s"], 2), "params_m": round(t.user_attrs["params"] / 1e6, 4),
             "arch": describe(t.user_attrs["stages"]), "same_as": t.user_attrs.get("same_as", "")}
            for t in trials]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (accuracy, step time) points no other point beats in both (higher A, lower S)."""
    front = []
    for i, (a, s) in enumerate(points):
        if not any((a2 >= a and s2 <= s) and (a2 > a or s2 < s) for a2, s2 in points):
            front.append(i)
    return front


def plot_pareto(rows: list[dict[str, Any]], path: Path, baseline: dict[str, Any] | None = None) -> Path | None:
    """Accuracy vs step time, marker area ∝ parameters, the Pareto front joined; None without matplotlib."""
    plt = pyplot("the Pareto plot")
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    acc = [100 * r["accuracy"] for r in rows]
    ms = [r["step_ms"] for r in rows]
    pmax = max(max(r["params_m"] for r in rows), baseline["params"] / 1e6 if baseline else 0.0)
    size = [30 + 300 * r["params_m"] / pmax for r in rows]
    sc = ax.scatter(ms, acc, s=size, c=[r["reward"] for r in rows], cmap="viridis", alpha=0.7, edgecolors="k")
    fig.colorbar(sc, ax=ax, label="reward A·S^w·P^v")
    front = sorted(pareto_front(list(zip(acc, ms))), key=lambda i: ms[i])
    ax.plot([ms[i] for i in front], [acc[i] for i in front], "r--", lw=1, label="Pareto front")
    best = max(range(len(rows)), key=lambda i: rows[i]["reward"])
    ax.annotate(f"best #{rows[best]['trial']}", (ms[best], acc[best]), textcoords="offset points", xytext=(6, 6))
    if baseline is not None:
        ax.scatter([1e3 * baseline["step_time_s"]], [100 * baseline["accuracy"]],
                   s=30 + 300 * baseline["params"] / 1e6 / pmax, marker="*", c="red",
                   label="B0 scaled to the same params")
    ax.set_xlabel("training step time S (ms)")
    ax.set_ylabel("proxy top-1 accuracy A (%)")
    ax.set_title("architecture search: accuracy vs step time (marker area ∝ parameters)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, study: optuna.Study, space: SearchSpace, trials: list[FrozenTrial],
                 best: FrozenTrial | None, cfg: SearchConfig, baseline: dict[str, Any] | None,
                 command: str | None = None, wall: float = 0.0) -> dict[str, Path]:
    """``trials.csv``, ``best.yaml`` (a recipe for ``moderncnn train -c``), ``pareto.png``, ``report.md``; prints
    the table of the best trials."""
    files: dict[str, Path] = {}
    rows = _rows(trials)
    if rows:
        files["csv"] = out / "trials.csv"
        with open(files["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    top = sorted(rows, key=lambda r: -r["reward"])[: cfg.top]
    table = ["| trial | reward | top-1 % | step ms | params M | architecture (block·expansion·kernel·layers) |",
             "|---:|---:|---:|---:|---:|---|"]
    table += [f"| {r['trial']} | {r['reward']:.4f} | {100 * r['accuracy']:.2f} | {r['step_ms']:.1f} | "
              f"{r['params_m']:.3f} | {r['arch']} |" for r in top]
    if best is not None:
        a = best.user_attrs
        files["best"] = out / "best.yaml"
        header = (f"# best of {len(trials)} trials of study {study.study_name!r}: trial {best.number}, reward "
                  f"{best.value:.5f} (top-1 {100 * a['accuracy']:.2f}% after {cfg.proxy_steps} proxy steps, step "
                  f"{1e3 * a['step_time_s']:.1f} ms, {a['params'] / 1e6:.3f} M params)\n"
                  f"# train it: moderncnn train -c {files['best']} --epochs ...   (a recipe: model + model_kwargs)\n"
                  f"# or: create_model('{space.model}', **yaml.safe_load(open(...))['model_kwargs'])\n")
        body = {"model": space.model, "model_kwargs": {"stages": a["stages"], **space.extra}}
        files["best"].write_text(header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None))
    if rows:
        png = plot_pareto(rows, out / "pareto.png", baseline)
        if png is not None:
            files["plot"] = png
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
             if t.datetime_start and t.datetime_complete]
    t_all = [t for t in trials if t.datetime_start and t.datetime_complete]
    span = ((max(t.datetime_complete for t in t_all) - min(t.datetime_start for t in t_all)).total_seconds()
            if t_all else 0.0)
    trained = sum("same_as" not in t.user_attrs for t in trials)
    lines = [f"# Architecture search: {study.study_name}", "",
             f"{len(trials)} completed trials ({trained} trained, {len(trials) - trained} repeats of earlier points), "
             f"sampler {cfg.sampler}, "
             f"space {space.name} ({space.size():.3g} points), proxy {cfg.proxy_steps} steps of recipe {cfg.recipe} "
             f"{cfg.train_overrides or ''}, reward A·S^{cfg.w}·P^{cfg.v} (S in s, P in millions).", "",
             f"Command: `{command or 'run_search(...)'}`  ",
             f"Wall time: this command {wall / 60:.1f} min; {span / 60:.1f} min from the first trial's start to the "
             f"last one's end, trials took {sum(spans) / 60:.1f} min in all ({torch.get_num_threads()} torch "
             f"threads, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__}, optuna {optuna.__version__}, {time.strftime('%Y-%m-%d')}).", "",
             "## Best trials", "", *table, ""]
    if "plot" in files:
        lines += ["![accuracy vs step time](pareto.png)", ""]
    if baseline is not None and best is not None:
        a = best.user_attrs
        lines += ["## Against EfficientNetV2-B0 scaled to the same parameters", "",
                  "| network | top-1 % | step ms | params M | reward |", "|---|---:|---:|---:|---:|",
                  f"| best found (trial {best.number}) | {100 * a['accuracy']:.2f} | {1e3 * a['step_time_s']:.1f} | "
                  f"{a['params'] / 1e6:.3f} | {best.value:.4f} |",
                  f"| B0 compound-scaled, φ = {baseline['phi']:.2f} | {100 * baseline['accuracy']:.2f} | "
                  f"{1e3 * baseline['step_time_s']:.1f} | {baseline['params'] / 1e6:.3f} | {baseline['reward']:.4f} |",
                  "", f"Both under the same proxy ({cfg.proxy_steps} steps, same recipe and seed) and step timing; "
                  f"the baseline's stage table (width β^φ, depth α^φ, later stages first; search/scaling.py): "
                  f"`{describe(baseline['model_kwargs']['stages'])}` at width "
                  f"{baseline['model_kwargs']['width_mult']:.3f}.",
                  ""]
    files["report"] = out / "report.md"
    files["report"].write_text("\n".join(lines))
    print("\n".join([f"best {min(cfg.top, len(rows))} of {len(rows)} trials:", *table]))
    for k in ("best", "plot", "report"):
        if k in files:
            print(f"{k}: {files[k]}")
    return files


__all__ = ["Objective", "SearchConfig", "SearchResult", "describe", "open_storage", "pareto_front", "proxy_train",
           "run_search"]
