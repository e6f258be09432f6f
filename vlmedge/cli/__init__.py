"""The ``vlmedge`` command line: every sub-command's argparse and handler, in one place.

One module per command family (``run``, ``classify``, ``bench``, ``messaging``, ``evaluate``, ``export``,
``train``), each with a light ``register(subparsers)`` and ``cmd_<name>`` handlers; the argument types and
options several commands share live in ``args``; ``main`` builds the parser. Heavy modules (runtime, export,
torch) are imported only inside the handler that needs them.
"""

from vlmedge.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
