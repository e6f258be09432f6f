"""Pick a bundle's ``grounding.count_min_score`` and ``instance_score_margin`` on validation command layouts.

A command that counts or orders ("how many red cups", "all red cups", "three red cups", "the leftmost bottle")
counts every instance whose calibrated score reaches the floor and lies within the margin of the best instance
of its phrase; one look-alike that passes changes the answer. This sweeps floor x margin over a grid on the
counting, quantity and ordinal families of ``vlmedge.scenes.layouts`` at VALIDATION seeds (900_000+: neither
trained on nor the held-out 1_000_000+ of ``vlmedge eval-grounding --suite commands``), each scene encoded once
and matched at every setting, and prints the accuracy per family and setting; the setting with the best mean
over the three families is the pick (on a tie: the lowest floor, then the widest margin).

    python benchmarks/calibrate_count_floor.py [BUNDLE] [--scenes 300] [--threshold TH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np

from vlmedge.embedded import embedded_bundle
from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.scenes.command_eval import score
from vlmedge.scenes.layouts import make_case

VAL_SEED = 900_000
FAMILIES = ("counting", "quantity", "ordinal")
FLOORS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85)
MARGINS = (0.06, 0.08, 0.1, 0.12, 0.15, None)  # None: no margin
GRID = tuple((f, m) for f in FLOORS for m in MARGINS)


def sweep(bundle: str, scenes: int, seed: int = VAL_SEED, grid=GRID, threshold: float | None = None
          ) -> dict[str, dict[tuple, float]]:
    """{family: {(floor, margin): accuracy}} on ``scenes`` validation layouts per family."""
    g = Grounder(bundle, smoothing=False, threshold=threshold)
    right = {f: dict.fromkeys(grid, 0) for f in FAMILIES}
    for family in FAMILIES:
        for i in range(scenes):
            case = make_case(family, seed + i)
            encoded = g.encode(g.prepare(case.frame))
            for setting in grid:
                g.count_min_score, g.instance_score_margin = setting
                right[family][setting] += bool(score(case, g.match(encoded, [case.command]).command(case.command)))
    return {f: {k: right[f][k] / scenes for k in grid} for f in FAMILIES}


def pick(acc: dict[str, dict[tuple, float]]) -> tuple:
    settings = next(iter(acc.values())).keys()
    return max(settings, key=lambda k: (round(float(np.mean([acc[f][k] for f in acc])), 6), -k[0],
                                        9.0 if k[1] is None else k[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=None, help="bundle directory (default: the embedded int8 bundle)")
    ap.add_argument("--scenes", type=int, default=300, help="validation layouts per family (default 300)")
    ap.add_argument("--threshold", type=float, default=None, help="grounding threshold (default: the manifest's)")
    ap.add_argument("--json", default=None, help="write the sweep here")
    args = ap.parse_args()
    bundle = args.bundle or str(embedded_bundle("int8"))
    acc = sweep(bundle, args.scenes, threshold=args.threshold)
    print(f"{'floor':>6} {'margin':>6} " + " ".join(f"{f:>9}" for f in FAMILIES) + "      mean")
    for k in GRID:
        row = [acc[f][k] for f in FAMILIES]
        margin = "none" if k[1] is None else f"{k[1]:.2f}"
        print(f"{k[0]:6.2f} {margin:>6} " + " ".join(f"{100 * a:8.1f}%" for a in row) + f" {100 * np.mean(row):8.1f}%")
    floor, margin = pick(acc)
    print(f"pick: count_min_score = {floor}, instance_score_margin = {margin} ({args.scenes} validation layouts per "
          f"family, seeds from {VAL_SEED})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            table = {fam: {f"floor {k[0]} margin {k[1]}": v for k, v in a.items()} for fam, a in acc.items()}
            json.dump({"bundle": bundle, "scenes_per_family": args.scenes, "seed": VAL_SEED,
                       "threshold": args.threshold, "machine": platform.node(), "accuracy": table,
                       "pick": {"count_min_score": floor, "instance_score_margin": margin}}, f, indent=2)


if __name__ == "__main__":
    main()
