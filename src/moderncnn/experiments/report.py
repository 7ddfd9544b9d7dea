"""The report of an experiment: ``<NAME>.md`` and ``<NAME>.png``, generated from its summary alone."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .framework import Experiment, RunOptions

# known metrics: (column header, scale, format); others are shown as they are
METRICS = {
    "top1": ("top-1 %", 1.0, "{:.2f}"),
    "params": ("params (M)", 1e-6, "{:.3f}"),
    "deploy_params": ("deploy params (M)", 1e-6, "{:.3f}"),
    "gmacs": ("GMACs", 1.0, "{:.4f}"),
    "train_step_ms": ("train step ms", 1.0, "{:.1f}"),
    "infer_ms": ("inference ms", 1.0, "{:.2f}"),
    "deploy_infer_ms": ("deploy inference ms", 1.0, "{:.2f}"),
    "train_time_s": ("training wall s", 1.0, "{:.0f}"),
    "erf20": ("ERF area @20% (%)", 1.0, "{:.1f}"),
    "erf30": ("ERF area @30% (%)", 1.0, "{:.1f}"),
    "erf50": ("ERF area @50% (%)", 1.0, "{:.1f}"),
    "erf99": ("ERF area @99% (%)", 1.0, "{:.1f}"),
    "full_params_M": ("full-size params (M)", 1.0, "{:.2f}"),
    "full_gmacs_224": ("full-size GMACs @224", 1.0, "{:.3f}"),
    "macs_M": ("MMACs", 1.0, "{:.1f}"),
    "ours_ms": ("ours ms", 1.0, "{:.3g}"),
    "torch_ms": ("PyTorch ms", 1.0, "{:.3g}"),
    "ours_growth_over_macs": ("ours: time growth ÷ MAC growth", 1.0, "{:.3g}"),
    "torch_growth_over_macs": ("PyTorch: time growth ÷ MAC growth", 1.0, "{:.3g}"),
}
HIDDEN = ("wall_s",)


def cell(xs: list[float], scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    """``mean`` for one sample; ``mean [min–max] (n)`` for several: the range is the spread the verdict uses."""
    if not xs:
        return "–"
    xs = [x * scale for x in xs]
    m = fmt.format(statistics.fmean(xs))
    if len(xs) == 1:
        return m
    return f"{m} [{fmt.format(min(xs))}–{fmt.format(max(xs))}] (n={len(xs)})"


def metric_order(arms: dict[str, dict[str, list[float]]]) -> list[str]:
    present = {k for s in arms.values() for k in s if k not in HIDDEN}
    return [k for k in METRICS if k in present] + sorted(present - set(METRICS))


def markdown(exp: Experiment, summary: dict[str, Any]) -> str:
    arms, info = summary["arms"], summary["info"]
    metrics = metric_order(arms)
    wall = summary["wall_s"]
    lines = [
        f"# {exp.title}",
        "",
        f"**Verdict: {summary['verdict']}**" + (" (a `--quick` run: a smoke test, not a result)" if summary["quick"]
                                                 else ""),
        "",
        "## The claim",
        "",
        f"{exp.paper}: {exp.claim}",
        "",
        "## Setup",
        "",
        exp.setup,
        "",
        f"Data: {_data(exp, summary)}; {summary['seeds']} seed(s) per arm; image size {info['img_size']} px, "
        f"{info['in_chans']} input channel(s), {info['num_classes']} classes." if exp.needs_training else
        f"{summary['seeds']} repeat set(s).",
        "",
        "## Results",
        "",
        "Every cell is the mean; with several samples (seeds, or timing repeats for times) `[min–max] (n)` "
        "follows: that range is the spread the verdict compares."
        + (" The step and inference times of all arms were measured side by side in one phase (rotating rounds "
           "of `deploy.bench.time_rotating`, each sample ≥ 50 ms of back-to-back calls)." if exp.speeds else ""),
        "",
    ]
    head = ["arm", "what"] + [METRICS.get(m, (m,))[0] for m in metrics]
    if exp.paper_metric:
        head.append(f"paper: {exp.paper_metric}")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in exp.arms:
        s = arms.get(arm.name, {})
        row = [f"`{arm.name}`", arm.label or ""]
        for m in metrics:
            _, scale, fmt = METRICS.get(m, (m, 1.0, "{:.3g}"))
            row.append(cell(s.get(m, []), scale, fmt))
        if exp.paper_metric:
            row.append("–" if arm.paper is None else f"{arm.paper:g}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Verdict, claim by claim", "", "| claim | metric | ours | verdict |", "|---|---|---|---|"]
    for c in summary["claims"]:
        a, b = c["a_mean"], c["b_mean"]
        ours = f"{c['a']} {_num(a)} {c['relation']} {c['b']} {_num(b)}?"
        lines.append(f"| {c['claim']} | {c['metric']} | {ours} | {c['verdict']} |")
    lines += [
        "",
        "The rule (`moderncnn/experiments/verdict.py`): a claim \"a > b\" is *reproduced* when the two arms' "
        "ranges over seeds (or timing repeats) are separated in the claimed direction, *not reproduced* when "
        "they are separated the other way, *inconclusive at this scale* when they overlap or an arm has a "
        "single sample; \"a == b\" is reproduced when the ranges overlap and the means differ by at most the "
        "claim's tolerance. Parameter and MAC counts are exact and need no spread. One claim not reproduced "
        "makes the experiment not reproduced; all reproduced make it reproduced.",
        "",
        "## Run",
        "",
        f"- command: `{summary['command']}`",
        f"- wall time: {wall / 60:.1f} min (all sessions of the run, resumes included)",
        f"- machine: {summary['machine']}",
        f"- date: {summary['date']}",
        "",
        f"![{exp.name}]({exp.name}.png)",
        "",
    ]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _data(exp: Experiment, summary: dict[str, Any]) -> str:
    from .framework import train_values

    v = train_values(exp, exp.arms[0], RunOptions(quick=summary["quick"]), 0)
    n = v.get("train_samples") or "all"
    return (f"{v['dataset']}, {n} training images, {v.get('val_samples') or 'all'} test images, {v['epochs']} "
            f"epoch(s) at batch {v['batch_size']}, {v['opt']} lr_base {v.get('lr_base')}")


def plot(exp: Experiment, summary: dict[str, Any], path: Path) -> Path | None:
    """One panel per plotted metric: a bar per arm with its seed range, the paper's number beside it."""
    from ..plotting import pyplot

    plt = pyplot(f"the {exp.name} figure")
    if plt is None:
        return None
    arms = summary["arms"]
    metrics = [m for m in exp.plot_metrics if any(arms.get(a.name, {}).get(m) for a in exp.arms)]
    if not metrics:
        return None
    names = [a.name for a in exp.arms]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics) + 1, 0.45 * len(names) + 1.8),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        label, scale, _ = METRICS.get(m, (m, 1.0, ""))
        ys = list(range(len(names)))
        means, lo, hi = [], [], []
        for a in names:
            xs = [x * scale for x in arms.get(a, {}).get(m, [])] or [float("nan")]
            mu = statistics.fmean(xs)
            means.append(mu)
            lo.append(mu - min(xs))
            hi.append(max(xs) - mu)
        ax.barh(ys, means, xerr=[lo, hi], color="tab:blue", alpha=0.8, label="ours")
        ax.set_yticks(ys, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        if exp.paper_metric and m == exp.plot_metrics[0]:
            paper = [a.paper for a in exp.arms]
            if any(p is not None for p in paper):
                twin = ax.twiny()
                twin.plot([p if p is not None else float("nan") for p in paper], ys, "o", color="tab:red",
                          label=f"paper: {exp.paper_metric}")
                twin.set_xlabel(f"paper: {exp.paper_metric}", color="tab:red")
        finite = [x for x in means if x == x]
        if finite and m == "top1":
            ax.set_xlim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 2))
    fig.suptitle(f"{exp.title}: {summary['verdict']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(exp: Experiment, summary: dict[str, Any], opts: RunOptions) -> list[Path]:
    folder = Path(opts.report_dir) if opts.report_dir else opts.out_dir(exp)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{exp.name}.md"
    md.write_text(markdown(exp, summary))
    png = plot(exp, summary, folder / f"{exp.name}.png")
    return [md] + ([png] if png else [])
