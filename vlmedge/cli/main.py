"""The `vlmedge` command. Each sub-command lives in a module with a torch-free
``register(subparsers)``; heavy imports happen only inside the chosen handler."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vlmedge import __version__
from vlmedge.errors import VlmEdgeError

# Modules that contribute sub-commands. Each defines register(subparsers) and sets
# `func` (args -> int exit code) with set_defaults. Keep their top level torch-free.
COMMAND_MODULES = (
    "vlmedge.cli.run",      # run, classify, bench
    "vlmedge.cli.messaging",   # subscribe, send (control requests)
    "vlmedge.cli.evaluate",  # eval-grounding
    "vlmedge.cli.export",       # export, build-engine, verify
    "vlmedge.cli.train",  # train-demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmedge", description="Language-grounded robot perception on edge devices.")
    parser.add_argument("--version", action="version", version=f"vlmedge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue  # that part of vlmedge is not present in this install
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["run"]  # the default job: synthetic source, embedded model, "the red cup"
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose + 1, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VlmEdgeError as e:
        print(f"vlmedge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
