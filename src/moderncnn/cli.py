"""``moderncnn <command>``: list, info, convert, train, eval, demo, fuse, export, bench, erf, search, experiment.

Each command lives beside the code it drives and is imported only when used, so ``moderncnn list``
stays fast. A command module exposes ``add_parser(subparsers)`` which sets ``func`` on its parser.

One error path: every mistake (a bad flag, a value out of range, a missing file, an error the library
raises) is one line ``moderncnn <command>: error: ...`` on stderr and exit code 2, before any work starts
where it can be checked early. Numbers are checked once: the training options by ``TrainConfig``'s
table (``training/config.py``), the other commands' options by :data:`ARGUMENTS` below. No traceback
reaches the user; an exception moderncnn did not expect is one line too (exit 1), and
``MODERNCNN_DEBUG=1`` shows its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import warnings
from typing import Any

from .errors import ModernCNNError
from .validation import Number, check_device, check_output_dir, check_output_file

# command -> module that defines add_parser(subparsers) for it
COMMANDS = {
    "list": "moderncnn.analysis.cli",
    "info": "moderncnn.analysis.cli",
    "convert": "moderncnn.interop.cli",
    "train": "moderncnn.training.cli",
    "eval": "moderncnn.training.cli",
    "demo": "moderncnn.training.cli",
    "fuse": "moderncnn.deploy.cli",
    "export": "moderncnn.deploy.cli",
    "bench": "moderncnn.deploy.cli",
    "erf": "moderncnn.analysis.erf_cli",
    "search": "moderncnn.search.cli",
    "experiment": "moderncnn.experiments.cli",
}


# options of the commands other than `train` (whose options TrainConfig checks), by argparse dest;
# (command, dest) rows win over dest rows; None is an option left out
ARGUMENTS: dict[Any, Number] = {
    "batch_size": Number(1, integer=True), "batch": Number(1, integer=True),
    ("export", "batch"): Number(2, integer=True),  # the exported batch dimension is dynamic: trace with 2+
    "img_size": Number(1, 16384, integer=True), "workers": Number(0, integer=True),
    "val_samples": Number(1, integer=True), "train_samples": Number(1, integer=True),
    "epochs": Number(1, integer=True), "max_steps": Number(1, integer=True),
    "seed": Number(0, 2**63 - 1, integer=True), "num_classes": Number(1, integer=True),
    "warmup": Number(0, integer=True), "iters": Number(1, integer=True), "rounds": Number(1, integer=True),
    "tolerance": Number(0.0, lo_open=True), "bench_rounds": Number(0, integer=True),
}
# paths checked writable before any work: a file to write, a run folder to write into
OUTPUT_FILES = {"fuse": "out", "export": "out", "bench": "out", "convert": "dst"}
OUTPUT_DIRS = {"train": "output", "demo": "output"}


class UsageError(ModernCNNError):
    """A command line argparse (or :data:`ARGUMENTS`) refused."""


class StrictParser(argparse.ArgumentParser):
    """Argparse, with every error as one line (:class:`UsageError`) and unknown flags answered with the
    closest valid ones."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        unknown = [a for a in extra if a.startswith("-")]
        if unknown:
            flags = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
            parts = []
            for flag in unknown:
                close = difflib.get_close_matches(flag.split("=")[0], flags, n=3)
                parts.append(flag + (f" (did you mean {', '.join(close)}?)" if close else ""))
            self.error(f"unknown option {', '.join(parts)}. Valid options: {' '.join(flags)}")
        elif extra:
            self.error(f"unexpected argument(s): {' '.join(extra)}")
        return ns, extra

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = StrictParser(prog="moderncnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=StrictParser)
    sub.required = True
    seen = set()
    for command, module in COMMANDS.items():
        if (only and command != only) or module in seen:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if only:
                raise SystemExit(f"moderncnn {command} is not available: {exc}") from exc
            continue
        if hasattr(mod, "add_parser"):
            mod.add_parser(sub)
            seen.add(module)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Check the parsed options of a command against :data:`ARGUMENTS` (not ``train``'s: ``TrainConfig``
    checks those) and its output path."""
    command = args.command
    out = getattr(args, OUTPUT_DIRS.get(command, ""), None)
    if out:
        check_output_dir(out)
    if command == "train":
        return
    problems = []
    for dest, value in vars(args).items():
        rule = ARGUMENTS.get((command, dest)) or ARGUMENTS.get(dest)
        if rule is not None and value is not None:
            try:
                rule.check(f"--{dest.replace('_', '-')}", value)
            except ModernCNNError as exc:
                problems.append(str(exc))
    if problems:
        raise UsageError("; ".join(problems))
    if getattr(args, "device", None):
        check_device(args.device)
    out = getattr(args, OUTPUT_FILES.get(command, ""), None)
    if out:
        check_output_file(out, f"--{OUTPUT_FILES[command]}" if command != "convert" else "DST")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line. PyTorch re-raises an exception of a DataLoader worker with the
    worker's traceback in the message; its last line is the original message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        last = lines[-1]
        head, sep, tail = last.partition(": ")
        return tail if sep and head.rsplit(".", 1)[-1] == type(exc).__name__ else last
    return " ".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    prog = f"moderncnn {only}" if only else "moderncnn"

    def say(kind: str, text: str) -> None:
        print(f"{prog}: {kind}: {text}", file=sys.stderr, flush=True)

    show = warnings.showwarning
    warnings.showwarning = lambda message, *a, **k: say("warning", one_line(message))  # type: ignore[assignment]
    try:
        parser = build_parser(only)
        try:
            args = parser.parse_args(argv)
            check_arguments(args)
        except UsageError as exc:
            say("error", one_line(exc))
            raise SystemExit(2) from None
        return int(args.func(args) or 0)
    except ModernCNNError as exc:
        say("error", one_line(exc))
        return 2
    except OSError as exc:  # a file that cannot be read or written, a full disk
        say("error", one_line(exc) if exc.filename is None else f"{exc.strerror}: {exc.filename}")
        return 2
    except KeyboardInterrupt:
        say("error", "interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("MODERNCNN_DEBUG"):
            raise
        torch = sys.modules.get("torch")
        if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
            say("error", f"out of memory: {one_line(exc)}; lower the batch size (-b) or the image size")
            return 2
        say("error", f"{type(exc).__name__}: {one_line(exc)} (moderncnn did not expect this: it is a bug or an "
                     "input it does not check yet; MODERNCNN_DEBUG=1 shows the traceback)")
        return 1
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    raise SystemExit(main())
