"""Run-folder logging: ``metrics.csv`` (timm's ``summary.csv`` columns), ``log.jsonl``, ``curves.png``.

timm writes ``epoch, train_loss, eval_loss, eval_top1, eval_top5, lr``; we keep those names first and add
the EMA metrics, the image size, batch size and wall time (docs/training.md, "Logs"). Plots use
matplotlib's headless Agg backend.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..interop.io import atomic_write, atomic_write_text
from ..plotting import pyplot

CSV_COLUMNS = [
    "epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr",
    "ema_eval_loss", "ema_eval_top1", "ema_eval_top5", "img_size", "batch_size", "stage", "steps", "epoch_time",
]


@torch.no_grad()
def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (N, maxk)
    hit = pred.eq(target.reshape(-1, 1))
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


class RunLog:
    """Appends epoch rows to ``metrics.csv`` and events to ``log.jsonl``; draws ``curves.png``.

    Only the primary process writes (``enabled=False`` elsewhere). On a resume, rows of epochs at or
    after the resumed one are dropped, so the CSV never holds an epoch twice.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, resume_epoch: int | None = None,
                 plots: bool = True, plot_every_s: float = 60.0) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        # drawing costs ~1 s: redraw at most every plot_every_s during the run, and once at the end
        self.plots, self.plot_every_s, self._last_plot = plots, plot_every_s, time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.csv_path, self.jsonl_path = self.run_dir / "metrics.csv", self.run_dir / "log.jsonl"
        if enabled and resume_epoch is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < resume_epoch]
            self._write_csv()

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), "event": kind, **fields}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append({k: row.get(k, "") for k in CSV_COLUMNS})
        self._write_csv()
        self.event("epoch", **row)
        if time.monotonic() - self._last_plot >= self.plot_every_s:
            self.finish()

    def finish(self) -> None:
        """Draw ``curves.png`` (a failing plot never ends a run)."""
        if not (self.enabled and self.plots):
            return
        try:
            self.plot()
        except Exception as exc:
            print(f"warning: could not draw curves.png: {exc}", file=sys.stderr)
        self._last_plot = time.monotonic()

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buf.getvalue())

    def plot(self) -> Path | None:
        """``curves.png``: loss, top-1, learning rate and image size per epoch."""
        plt = pyplot("curves.png")
        if not self.rows or plt is None:
            return None

        def col(name: str) -> list[float]:
            return [_num(r.get(name)) for r in self.rows]

        ep = col("epoch")
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        axes[0].plot(ep, col("train_loss"), "o-", label="train")
        axes[0].plot(ep, col("eval_loss"), "o-", label="eval")
        if any(not math.isnan(v) for v in col("ema_eval_loss")):
            axes[0].plot(ep, col("ema_eval_loss"), "o--", label="eval (EMA)")
        axes[0].set_title("loss")
        axes[1].plot(ep, col("eval_top1"), "o-", label="top-1")
        axes[1].plot(ep, col("eval_top5"), "o-", label="top-5")
        if any(not math.isnan(v) for v in col("ema_eval_top1")):
            axes[1].plot(ep, col("ema_eval_top1"), "o--", label="top-1 (EMA)")
        axes[1].set_title("eval accuracy (%)")
        axes[2].plot(ep, col("lr"), "o-")
        axes[2].set_title("learning rate (end of epoch)")
        axes[3].plot(ep, col("img_size"), "o-")
        axes[3].set_title("training image size")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend()
        axes[1].legend()
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.15, top=0.9, wspace=0.25)
        path = self.run_dir / "curves.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        plt.close(fig)
        return path


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _json_default(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)


class Progress:
    """A tqdm bar on a terminal, plain log lines every ``log_interval`` steps otherwise."""

    def __init__(self, total: int, *, desc: str, enabled: bool, use_bar: bool, log_interval: int) -> None:
        self.enabled, self.log_interval, self.desc, self.total = enabled, max(1, log_interval), desc, total
        self.bar = None
        if enabled and use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
        self.t0 = time.perf_counter()

    def update(self, i: int, **stats: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
        elif i % self.log_interval == 0 or i == self.total:
            rate = i / max(1e-9, time.perf_counter() - self.t0)
            text = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
            print(f"{self.desc} [{i}/{self.total}]  {text}  ({rate:.1f} it/s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def describe_run(t: Any) -> str:
    """The lines a run prints when it starts (``t`` is the :class:`~moderncnn.training.trainer.Trainer`)."""
    cfg, d = t.cfg, t.dist
    n_params = sum(p.numel() for p in t.model.parameters())
    lines = [
        f"moderncnn train: {cfg.model} ({n_params / 1e6:.3f} M params) on {t.run_data.dataset_name} "
        f"({len(t.data.train_set)} train / {len(t.data.val_set)} val images, {t.num_classes} classes), "
        f"{t.train_transform.img_size} px",
        f"  {cfg.epochs} epochs{f' + {t.total_epochs - cfg.epochs} cooldown' if t.total_epochs > cfg.epochs else ''}"
        f" × {t.steps_per_epoch} steps, batch {cfg.batch_size} per process × {d.world_size} "
        f"process(es) × {cfg.grad_accum_steps} accumulation = {t.global_batch}, {cfg.opt} lr {t.lr:.4g} ({cfg.sched}), "
        f"device {t.device}" + (f", {cfg.amp_dtype} autocast" if cfg.amp else "")
        + (f", EMA {cfg.model_ema_decay}" if t.ema else ""),
    ]
    if t.progressive is not None:
        lines.append(t.progressive.table())
    lines.append(f"  writing to {t.run_dir}")
    return "\n".join(lines)


def summarize_run(t: Any, deploy: dict[str, Any] | None) -> str:
    """The lines a finished run prints: best top-1, time, the files of its run folder, the deploy check."""
    lines = [(f"done: best top-1 {t.best_top1:.2f}% (epoch {t.best_epoch + 1})" if t.best_top1 is not None else "done")
             + f"; {t.train_time:.0f} s in training epochs (evaluation and export not counted)",
             f"  run folder      {t.run_dir}"]
    for name in ("config.yaml", "metrics.csv", "log.jsonl", "curves.png", "progressive.png",
                 "last.safetensors", "best.safetensors", "model_deploy.safetensors"):
        if (t.run_dir / name).exists():
            lines.append(f"    {name}")
    if deploy:
        line = (f"  deploy model: {deploy['form']}, max |Δlogit| {deploy['max_abs_err']:.3g} (relative "
                f"{deploy['rel_err']:.3g})")
        if deploy.get("speedup") is not None:
            line += (f"; batch {deploy['bench_batch']} forward on this machine: train form {deploy['train_ms']:.2f} ms,"
                     f" deploy form {deploy['deploy_ms']:.2f} ms ({deploy['speedup']:.2f}×)")
        lines.append(line)
    return "\n".join(lines)
