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


GLOBAL_OPTIONS = ("-h", "--help", "--version", "-v", "-vv", "-vvv", "--verbose")
# What each command needs beyond the base install, named when it is missing.
EXTRA_MODULES = {"torch": "export", "onnx": "export", "safetensors": "export", "huggingface_hub": "export"}


def _route(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``vlmedge`` = ``vlmedge run``, also with options and no command (``vlmedge --query "the cup"``); a
    mistyped command gets a did-you-mean like a mistyped option."""
    from vlmedge.errors import did_you_mean

    commands = _commands(parser)
    for i, word in enumerate(argv):
        if word in GLOBAL_OPTIONS:
            continue
        if word.startswith("-"):
            return [*argv[:i], "run", *argv[i:]]
        if word not in commands:
            parser.error(f"unknown command {word!r}" + did_you_mean(word, commands)
                         + f"; commands: {', '.join(commands)}")
        return argv
    return argv if any(w in ("-h", "--help", "--version") for w in argv) else [*argv, "run"]


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # The default job (no command): synthetic source, embedded model, "the red cup".
    args = parser.parse_args(_route(parser, list(argv)))
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
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in EXTRA_MODULES:
            raise
        print(f"vlmedge {args.command}: error: this command needs the {EXTRA_MODULES[root]} extra (missing module "
              f"{root!r}): pip install \"vlmedge[{EXTRA_MODULES[root]}]\" (install the CPU build of torch first "
              "on a machine without an NVIDIA GPU, see the README)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
