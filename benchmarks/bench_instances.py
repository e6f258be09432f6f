"""Touching objects counted one by one: `how many C Ks` on rows of 1, 2 or 3 objects of one description that
touch or overlap a little (`vlmedge.scenes.layouts.row_scene`), with the Grounder's instance splitting on and off.

Exact-count rate per row size, plus the cost of a counting `match` with and without splitting (median ms). The
rows are drawn like render_scene (random table, light, shadows, noise) with seeds from 2_000_000, none of
which the demo model trained on.

    python benchmarks/bench_instances.py [BUNDLE] [--per-cell 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vlmedge.embedded import embedded_bundle
from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.scenes.layouts import row_scene
from vlmedge.scenes.render import COLOR_NAMES, KINDS

GAPS = (-10, 0, 10)  # pixels between neighbouring boxes (negative: overlap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=None)
    ap.add_argument("--per-cell", type=int, default=1, help="scenes per kind x row size x gap (default 1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bundle = args.bundle or str(embedded_bundle("int8"))
    on = Grounder(bundle, smoothing=False)
    off = Grounder(on.encoders, smoothing=False, split_instances=False)
    right = {(s, n): 0 for s in ("split", "whole") for n in (1, 2, 3)}
    total = {n: 0 for n in (1, 2, 3)}
    ms: dict[str, list[float]] = {"split": [], "whole": []}
    seed = 2_000_000
    for kind in KINDS:
        for n in (1, 2, 3):
            for gap in GAPS:
                for _ in range(args.per_cell):
                    color = COLOR_NAMES[seed % len(COLOR_NAMES)]
                    frame, _ = row_scene(seed, kind, color, n, gap)
                    seed += 1
                    query = f"how many {color} {kind}s"
                    encoded = on.encode(on.prepare(frame))
                    total[n] += 1
                    for name, g in (("split", on), ("whole", off)):
                        t = time.perf_counter()
                        count = g.match(encoded, [query]).count(query)
                        ms[name].append((time.perf_counter() - t) * 1e3)
                        right[(name, n)] += count == n
    report = {"bundle": bundle, "scenes": sum(total.values()), "gaps_px": list(GAPS),
              "exact_count": {name: {str(n): round(right[(name, n)] / total[n], 4) for n in (1, 2, 3)}
                              for name in ("split", "whole")},
              "match_ms_median": {name: round(float(np.median(v)), 3) for name, v in ms.items()}}
    for name in ("split", "whole"):
        rates = ", ".join(f"{n} object{'s' if n > 1 else ''} {100 * right[(name, n)] / total[n]:.1f}%"
                          for n in (1, 2, 3))
        print(f"{name:>5}: exact count {rates}; match {report['match_ms_median'][name]:.2f} ms (median)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
