"""`vlmedge parse`: print the tree a command parses to (torch-free, no model needed).

Follows the ``register(subparsers)`` convention of ``vlmedge.cli``; also runs alone as
``python -m vlmedge.language "the cup left of the plate"``.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "parse", help="parse a robot command and print its tree",
        description="Parse a command of the vlmedge command language (relations, ordinals, quantities, negation) "
                    "and print the tree, or its JSON form with --json. Exits 1 with a pointer at the word it "
                    "could not place.")
    p.add_argument("command", nargs="+", help="the command, e.g. the cup left of the red plate")
    p.add_argument("--taught", action="append", default=[], metavar="NAME",
                   help="a taught object name usable as a noun phrase; repeat for several")
    p.add_argument("--json", action="store_true", help="print the JSON form (as sent on the wire)")
    p.set_defaults(func=parse_command)


def parse_command(args: argparse.Namespace) -> int:
    from vlmedge.language import parse

    cmd = parse(" ".join(args.command), args.taught)
    print(json.dumps(cmd.to_dict(), indent=2) if args.json else cmd.tree_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    from vlmedge.errors import VlmEdgeError

    parser = argparse.ArgumentParser(prog="python -m vlmedge.language")
    register(parser.add_subparsers(dest="command_name", required=True))
    args = parser.parse_args(["parse", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except VlmEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
