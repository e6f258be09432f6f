"""``vlmedge parse``: print the tree a command parses to, as the runtime reads it (torch-free, no model)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "parse", help="parse a robot command and print its tree",
        description="Parse a command of the vlmedge command language (noun phrases, relations, ordinals and "
                    "superlatives, quantities, colour negation, nesting to depth 2, taught names) and print the "
                    "tree, or its JSON form with --json. A text without any grammar word is an open-vocabulary "
                    "description, grounded as given. Exits 1 with a pointer at the word it could not place.",
        epilog='examples:\n  vlmedge parse "the cup next to the bottle left of the book"\n'
               '  vlmedge parse --json "how many red balls"\n  vlmedge parse --taught "my mug" "the cup near my mug"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="+", metavar="COMMAND", help="the command (quoted, or as separate words)")
    p.add_argument("--taught", action="append", default=[], metavar="NAME",
                   help="a taught object name usable as a noun phrase; repeat for several")
    p.add_argument("--json", action="store_true", help="print the JSON form (as sent on the wire)")
    p.set_defaults(func=cmd_parse)


def cmd_parse(args: argparse.Namespace) -> int:
    import json

    from vlmedge.language import read_command

    command = read_command(" ".join(args.text), args.taught)
    print(json.dumps(command.to_dict(), indent=2) if args.json else command.tree_text())
    return 0
