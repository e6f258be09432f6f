"""The grounding threshold of a bundle, weighed on what the runtime is asked: commands and noun phrases.

``vlmedge train-demo --bundles`` picks the threshold by the four noun-phrase figures alone (pointing, box hit,
rejection, colour discrimination; ``export/train_demo.calibrate_threshold``). A threshold low enough for the
best of those lets look-alike regions through, which relations and negations then resolve against. This
sweeps thresholds on VALIDATION seeds (900_000+, neither trained on nor the held-out 1_000_000+) through the
runtime ``Grounder``: the relation, negation, nested, counting, ordinal and unsatisfiable families of
``vlmedge.scenes.layouts`` and the noun-phrase benchmark, and prints one line per threshold.

    python benchmarks/calibrate_threshold_commands.py [BUNDLE] [--scenes 200] [--thresholds 0.3,0.4,0.5]
"""

from __future__ import annotations

import argparse
import json

from vlmedge.embedded import embedded_bundle
from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.scenes.command_eval import evaluate_commands
from vlmedge.scenes.evaluation import evaluate

VAL_SEED = 900_000
FAMILIES = ("relation", "negation", "nested", "counting", "ordinal", "unsatisfiable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=None, help="bundle directory (default: the embedded int8 bundle)")
    ap.add_argument("--scenes", type=int, default=200, help="validation scenes per family (default 200)")
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6", help="comma-separated (default 0.3,0.4,0.5,0.6)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bundle = args.bundle or str(embedded_bundle("int8"))
    base = Grounder(bundle, smoothing=False)
    out = {}
    for th in (float(t) for t in args.thresholds.split(",")):
        g = Grounder(base.encoders, smoothing=False, threshold=th)

        def ground(frame, command, g=g):
            return g.ground(frame, [command]).command(command)  # found, points, count

        commands = evaluate_commands(ground, g.teach, g.forget, families=FAMILIES, scenes=args.scenes, seed=VAL_SEED)
        phrases = evaluate(g.ground, scenes=args.scenes, seed=VAL_SEED)
        out[th] = {"commands": {f.family: f.accuracy for f in commands.families}, "phrases": phrases.summary()}
        print(f"threshold {th}: " + " ".join(f"{f.family} {100 * f.accuracy:.1f}%" for f in commands.families)
              + f" | {phrases.summary()}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"bundle": bundle, "scenes": args.scenes, "seed": VAL_SEED, "thresholds": out}, f, indent=2)


if __name__ == "__main__":
    main()
