"""``vlmedge eval-grounding``: the grounding benchmarks on held-out synthetic scenes (torch-free): noun phrases
(``--suite phrases``, the default) and compositional commands (``--suite commands``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval-grounding", help="grounding benchmark on held-out synthetic tabletop scenes",
        description="Ground queries in held-out synthetic scenes with the runtime Grounder. --suite phrases "
                    "(default): pointing accuracy, box hit rate (IoU >= 0.5), absent-object rejection and colour "
                    "discrimination of noun phrases. --suite commands: accuracy per command family (plain, "
                    "relation, ordinal, counting, quantity, negation, nested, taught, unsatisfiable) on layouts "
                    "that need the command's structure to pick the right object.")
    p.add_argument("bundle", nargs="?", default=None,
                   help="bundle directory (default: the embedded int8 demo bundle)")
    # Checked in the handler (ConfigError: exit status 1) rather than by args.positive_int (argparse: exit
    # status 2), as it always was: the exit status is part of the public CLI.
    p.add_argument("--scenes", type=int, default=500, help="number of scenes (default 500)")
    p.add_argument("--seed", type=int, default=None,
                   help="first scene seed (default 1000000: seeds the demo model never trained on)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the figures as JSON to OUT")
    p.add_argument("--suite", choices=("phrases", "commands"), default="phrases",
                   help="which benchmark (default: phrases)")
    p.add_argument("--family", action="append", dest="families", metavar="NAME", default=None,
                   help="--suite commands: only this family; repeat for several (default: all)")
    p.set_defaults(func=cmd_eval_grounding)


def cmd_eval_grounding(args: argparse.Namespace) -> int:
    from vlmedge.embedded import embedded_bundle
    from vlmedge.errors import ConfigError
    from vlmedge.scenes.evaluation import EVAL_SEED_BASE, write_json

    if args.scenes <= 0:
        raise ConfigError(f"--scenes must be positive, got {args.scenes}")
    bundle = args.bundle or str(embedded_bundle("int8"))
    seed = EVAL_SEED_BASE if args.seed is None else args.seed
    if args.suite == "commands":
        from vlmedge.scenes.command_eval import write_json as write_commands

        commands = evaluate_bundle_commands(bundle, scenes=args.scenes, seed=seed, families=args.families,
                                            progress=True)
        print(f"{bundle}:")
        for line in commands.summary():
            print(f"  {line}")
        if args.json:
            write_commands(commands, args.json, bundle=str(bundle))
        return 0
    if args.families:
        raise ConfigError("--family needs --suite commands")
    report = evaluate_bundle(bundle, scenes=args.scenes, seed=seed, progress=True)
    print(f"{bundle}: {report.summary()}")
    if args.json:
        write_json(report, args.json, bundle=str(bundle))
    return 0


def evaluate_bundle(bundle, scenes: int = 500, seed: int | None = None, progress: bool = False):
    """The held-out scene benchmark through the runtime's ``Grounder`` (no tracking: scenes are independent).

    Here and not in ``vlmedge.scenes.evaluation`` because it needs the runtime, which the core must not import."""
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.evaluation import EVAL_SEED_BASE, evaluate

    g = Grounder(bundle, smoothing=False)
    return evaluate(g.ground, scenes=scenes, seed=EVAL_SEED_BASE if seed is None else seed, progress=progress)


def evaluate_bundle_commands(bundle, scenes: int = 500, seed: int | None = None, families=None,
                             progress: bool = False):
    """The command benchmark (``vlmedge.scenes.command_eval``) through the runtime's ``Grounder``: one command
    per scene, taught names taught with ``Grounder.teach`` and forgotten after their case."""
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.command_eval import evaluate_commands
    from vlmedge.scenes.evaluation import EVAL_SEED_BASE

    g = Grounder(bundle, smoothing=False)

    def ground(frame, command):
        return g.ground(frame, [command]).command(command)  # found, points, count

    return evaluate_commands(ground, g.teach, g.forget, families=families, scenes=scenes,
                             seed=EVAL_SEED_BASE if seed is None else seed, progress=progress)
