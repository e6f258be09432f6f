"""Argument types and options that several ``vlmedge`` commands share: each defined, and its help written, once.

Light on purpose (argparse and small core modules only): every command module imports it while the parser is
built, and ``vlmedge --help`` must not pay for onnxruntime, OpenCV or torch.
"""

from __future__ import annotations

import argparse

from vlmedge.defaults import DEFAULT_QUERY
from vlmedge.validation import check_threshold

# ---------------------------------------------------------------------------------------------------- types
# argparse calls these on the option's text; an ArgumentTypeError becomes "argument --x: <message>" and exit 2.


def positive_int(text: str) -> int:
    """An integer >= 1 (frame counts: zero would mean "measure nothing")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (probability thresholds), by the one threshold rule of ``vlmedge.validation``."""
    return check_threshold(text, "value", error=argparse.ArgumentTypeError, text=True)


# -------------------------------------------------------------------------------------------------- options


def add_bundle_option(parser: argparse.ArgumentParser) -> None:
    """``--bundle/-b DIR``, None when not given: the handler resolves the embedded demo bundle then."""
    parser.add_argument("--bundle", "-b", default=None,
                        help="bundle directory (default: the embedded int8 tabletop demo bundle)")


def add_query_option(parser: argparse.ArgumentParser) -> None:
    """``--query/-q TEXT``, repeatable, into ``args.queries``; read it back with :func:`queries_from`."""
    parser.add_argument("--query", "-q", action="append", dest="queries", metavar="TEXT",
                        help=f"a command to ground; repeat for several (default: {DEFAULT_QUERY!r})")


def queries_from(args: argparse.Namespace) -> tuple[str, ...]:
    """The queries given with ``--query``, or the default one. The default is applied here rather than as the
    option's default because argparse appends to a list default instead of replacing it."""
    return tuple(args.queries or (DEFAULT_QUERY,))


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """How the image encoder runs: ``--providers``, ``--prefetch``, ``--ort-spinning`` (run and bench)."""
    g = parser.add_argument_group("encoder execution")
    g.add_argument("--providers", nargs="+", default=None, metavar="EP",
                   help="ONNX Runtime execution providers (default: best available for the bundle target)")
    g.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="preprocess the next frame in its own thread while the encoder runs "
                        "(default: when there are spare CPU cores or a GPU provider)")
    g.add_argument("--ort-spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime worker threads spin-wait while an encode runs and stop when it returns "
                        "(default: on: faster encodes; `vlmedge bench` measures both). --no-ort-spinning: they "
                        "sleep, leaving those cycles to other busy processes")


def providers_from(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--providers`` as a tuple, None for "best available"."""
    return tuple(args.providers) if args.providers else None
