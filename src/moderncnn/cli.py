"""``moderncnn <command>``: list, info, convert, train, eval, demo, fuse, export, bench, erf, search.

Each command lives beside the code it drives and is imported only when used, so ``moderncnn list``
stays fast. A command module exposes ``add_parser(subparsers)`` which sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ModernCNNError

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
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moderncnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModernCNNError as exc:
        print(f"moderncnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moderncnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
