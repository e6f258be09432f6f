"""The ``vlmedge`` command line: every sub-command's argparse and handler, in one place.

Each module here registers its sub-commands with a torch-free ``register(subparsers)``; the heavy
modules (runtime, export, torch) are imported only inside the handler that needs them.
"""

from vlmedge.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
