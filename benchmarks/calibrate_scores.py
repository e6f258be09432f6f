"""Fit the score temperature of a bundle on validation scenes and measure how well scores separate correct
targets from false positives on held-out scenes.

Every found target of every query is labelled: correct when its peak lies inside an object the query names
(colour and kind), else a false positive. Queries per scene: the caption of each visible object and one absent
near miss (same kind, another colour). The temperature minimises the log-loss of the scores over the
validation scenes (seeds 900_000+, used neither for training nor for the held-out evaluation); the AUROC and
the share of correct targets scoring above 0.99 ("saturated") are then measured on held-out seeds 1_000_000+.

    python benchmarks/calibrate_scores.py [BUNDLE] [--scenes 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np

from vlmedge.embedded import embedded_bundle
from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.scenes import render as syn

VAL_SEED, HELD_OUT_SEED = 900_000, 1_000_000
GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def _queries(scene) -> list[tuple[str, list]]:
    present = {(o.color, o.kind) for o in scene.objects}
    out = [(o.caption(), [p for p in scene.objects if (p.color, p.kind) == (o.color, o.kind)])
           for o in scene.objects if o.area >= 2000]
    for o in scene.objects[:2]:
        absent = next((c for c in syn.COLOR_NAMES if (c, o.kind) not in present), None)
        if absent:
            out.append((syn.caption(o.kind, absent), []))
    return list(dict((q, objs) for q, objs in out).items())


def _label(target, objects) -> int:
    x, y = (int(round(v)) for v in target.peak)
    return int(any(o.mask[min(max(y, 0), o.mask.shape[0] - 1), min(max(x, 0), o.mask.shape[1] - 1)]
                   for o in objects))


def collect(grounders: dict[float, Grounder], seed: int, scenes: int) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Per temperature: (scores, labels) of every found target."""
    out: dict[float, tuple[list, list]] = {t: ([], []) for t in grounders}
    first = next(iter(grounders.values()))
    for i in range(scenes):
        scene = syn.render_scene(seed + i)
        encoded = first.encode(first.prepare(scene.frame))
        for query, objects in _queries(scene):
            for t, g in grounders.items():
                for target in g.match(encoded, [query]).targets_for(query):
                    if target.found:
                        out[t][0].append(target.score)
                        out[t][1].append(_label(target, objects))
    return {t: (np.asarray(s, np.float64), np.asarray(y, np.int64)) for t, (s, y) in out.items()}


def log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a correct target outscores a false positive (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        idx = allv == v
        ranks[idx] = ranks[idx].mean()
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=None)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bundle = args.bundle or str(embedded_bundle("int8"))
    base = Grounder(bundle, smoothing=False)
    grounders = {t: Grounder(base.encoders, smoothing=False, score_temperature=t) for t in GRID}
    val = collect(grounders, VAL_SEED, args.scenes)
    losses = {t: log_loss(*val[t]) for t in GRID}
    best = min(losses, key=losses.get)
    stated = float(base.score_temperature)  # what the bundle's manifest says: the scores users get
    temps = tuple(dict.fromkeys((best, stated, 1.0)))
    held = collect({t: grounders.get(t) or Grounder(base.encoders, smoothing=False, score_temperature=t)
                    for t in temps}, HELD_OUT_SEED, args.scenes)
    report = {"bundle": bundle, "machine": platform.machine(), "scenes": args.scenes,
              "validation_log_loss": {str(t): round(v, 5) for t, v in losses.items()}, "temperature": best,
              "bundle_temperature": stated}
    for t in temps:
        s, y = held[t]
        report[f"held_out_T{t}"] = {"targets": int(len(y)), "correct": int(y.sum()), "auroc": round(auroc(s, y), 4),
                                    "correct_above_0.99": round(float((s[y == 1] > 0.99).mean()), 4),
                                    "correct_median": round(float(np.median(s[y == 1])), 4),
                                    "false_positive_median": round(float(np.median(s[y == 0])), 4)}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
