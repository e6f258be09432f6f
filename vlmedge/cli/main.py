"""The ``vlmedge`` command: builds the parser from the command modules and runs the chosen handler.

Every command module has the same shape: ``register(subparsers)`` adds its sub-commands and sets ``func`` to a
handler ``cmd_<name>(args) -> exit status``. Their top level is light (argparse and small core modules only);
onnxruntime, OpenCV, zmq and torch are imported inside the handler that needs them, so ``vlmedge --help`` and
a mistyped option answer at once (tests/test_cli_run.py checks what ``--help`` loads).
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlmedge import __version__
from vlmedge.cli import bench, classify, evaluate, export, messaging, parse, run, train
from vlmedge.errors import VlmEdgeError

# In the order `vlmedge --help` lists them.
COMMAND_MODULES = (
    run,        # run (the default command)
    classify,   # classify
    bench,      # bench
    messaging,  # subscribe, send, keys
    parse,      # parse
    evaluate,   # eval-grounding
    export,     # export, verify, build-engine
    train,      # train-demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmedge", description="Language-grounded robot perception on edge devices.")
    parser.add_argument("--version", action="version", version=f"vlmedge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
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
