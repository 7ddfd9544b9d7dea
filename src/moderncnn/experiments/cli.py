"""``moderncnn experiment NAME``: train and measure the arms of one paper claim, resumably, and write its
report with a verdict (docs/experiments/README.md). ``moderncnn experiment --list`` lists them."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="reproduce one of the papers' findings at small scale, with a verdict",
                       description=__doc__)
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and their claims")
    p.add_argument("--quick", action="store_true", help="a few steps per arm, one seed: a smoke test, not a result")
    p.add_argument("--seeds", type=int, help="seeds per arm (default: the experiment's; 1 with --quick)")
    p.add_argument("--out", help="folder of the run's results (default: runs/experiments/NAME[-quick]); "
                                 "rerunning with the same folder resumes, finished arms are not rerun")
    p.add_argument("--report-dir", help="where NAME.md and NAME.png go (default: the --out folder)")
    p.add_argument("--dataset", help="any data set the trainer reads (default: fashion-mnist)")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training and timing)")
    p.add_argument("--threads", type=int, help="torch threads (default: the recipe's, 2)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import RunOptions, get_experiment, run_experiment
    from .catalog import EXPERIMENTS

    if args.list:
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:22s} {exp.title}  [{len(exp.arms)} arms; {exp.paper.split(',')[0]}]")
        return 0
    if not args.name:
        raise ConfigError("name an experiment (moderncnn experiment --list shows them)")
    exp = get_experiment(args.name)
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    command = "moderncnn experiment " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["experiment"] else sys.argv[1:])
    opts = RunOptions(quick=args.quick, seeds=args.seeds, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
                      device=args.device, threads=args.threads, report_dir=args.report_dir, command=command,
                      progress=not args.no_progress)
    summary = run_experiment(exp, opts)
    report = ", ".join(summary["report"])
    print(f"{exp.name}: {summary['verdict']} ({summary['wall_s'] / 60:.1f} min); report: {report}")
    for c in summary["claims"]:
        print(f"  {c['verdict']:>26s}: {c['claim']}")
    if args.quick and exp.needs_training:
        from .framework import estimate_full_seconds

        est = estimate_full_seconds(exp, opts.out_dir(exp))
        if est is not None:
            load = os.getloadavg()[0]
            print(f"estimated full run (from this quick run, load average {load:.1f} on {os.cpu_count()} CPUs): "
                  f"{est / 60:.0f} min for {exp.seeds} seed(s)")
    return 0
