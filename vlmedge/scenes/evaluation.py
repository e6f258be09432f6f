"""Grounding benchmark on held-out synthetic tabletop scenes. Torch-free.

Per scene (seed ``seed + i``; the demo model trains on seeds < 1_000_000, so the default
``EVAL_SEED_BASE`` = 1_000_000 and up are unseen), each query grounded ALONE (one call per query):

* pointing: a present object ("the red cup"): the best target's ``peak`` lies in its visible mask;
* box hit: same query: IoU(best target ``bbox``, object bbox) >= 0.5;
* rejection: a (kind, colour) not in the scene, preferably a near miss (same kind other colour or
  same colour other kind): no target is ``found``;
* discrimination: scenes holding one kind in two colours: the query for one of them peaks inside
  that one's mask.

"Best target" = the found target with the highest score (several instances may be returned); a
query with nothing found counts as a miss for pointing, box hit and discrimination. Objects with
fewer than ``MIN_AREA`` visible pixels (at 480x640) are not queried.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlmedge.errors import ConfigError
from vlmedge.geometry import iou  # the same IoU the tracker uses
from vlmedge.scenes import render as syn

log = logging.getLogger(__name__)

EVAL_SEED_BASE = 1_000_000  # first held-out seed; training uses seeds below it
MIN_AREA = 2000  # px: smallest visible object queried
IOU_HIT = 0.5

GroundFn = Callable[[np.ndarray, Sequence[str]], Any]  # (frame_bgr, [query]) -> result with .targets


@dataclass(frozen=True)
class GroundingReport:
    """Benchmark figures (fractions in 0..1) and the trial counts behind them."""

    scenes: int
    seed: int
    pointing: float
    box_hit: float
    rejection: float
    discrimination: float
    n_present: int
    n_absent: int
    n_discrimination: int
    mean_ground_ms: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.scenes} scenes from seed {self.seed}: pointing {100 * self.pointing:.1f}% "
                f"box hit {100 * self.box_hit:.1f}% (n={self.n_present}), rejection {100 * self.rejection:.1f}% "
                f"(n={self.n_absent}), discrimination {100 * self.discrimination:.1f}% (n={self.n_discrimination}), "
                f"{self.mean_ground_ms:.1f} ms/ground")


def best_target(result: Any, query: str):
    """The found target of ``query`` with the highest score, or None."""
    found = [t for t in result.targets if t.query == query and t.found]
    return max(found, key=lambda t: t.score) if found else None


def peak_in(target, obj: syn.SceneObject) -> bool:
    if target is None or target.peak is None:
        return False
    h, w = obj.mask.shape
    x, y = int(round(target.peak[0])), int(round(target.peak[1]))
    return 0 <= x < w and 0 <= y < h and bool(obj.mask[y, x])


def evaluate(ground: GroundFn, scenes: int = 500, seed: int = EVAL_SEED_BASE,
             size: tuple[int, int] = (480, 640), progress: bool = False) -> GroundingReport:
    """Run the benchmark with ``ground`` (e.g. ``Grounder(bundle).ground``)."""
    if not isinstance(scenes, int) or scenes <= 0:
        raise ConfigError(f"scenes must be a positive int, got {scenes!r}")
    min_area = MIN_AREA * size[0] * size[1] / (480 * 640)
    point = box = rej = disc = 0
    n_pres = n_abs = n_disc = 0
    t_ground = 0.0
    n_calls = 0
    t0 = time.time()

    def run(frame, q):
        nonlocal t_ground, n_calls
        t = time.perf_counter()
        r = ground(frame, [q])
        t_ground += time.perf_counter() - t
        n_calls += 1
        return best_target(r, q)

    for i in range(scenes):
        s = int(seed) + i
        scene = syn.render_scene(s, size)
        rng = np.random.default_rng([s, 7])
        objs = [o for o in scene.objects if o.area >= min_area]
        if objs:
            o = objs[int(rng.integers(len(objs)))]
            t = run(scene.frame, o.caption())
            n_pres += 1
            point += peak_in(t, o)
            box += t is not None and iou(t.bbox, o.bbox) >= IOU_HIT
        kind, color = scene.absent(rng)
        n_abs += 1
        rej += run(scene.frame, syn.caption(kind, color)) is None
        pairs = [(a, b) for a in objs for b in objs if a is not b and a.kind == b.kind]
        if pairs:
            a, _ = pairs[int(rng.integers(len(pairs)))]
            n_disc += 1
            disc += peak_in(run(scene.frame, a.caption()), a)
        if progress and (i + 1) % 50 == 0:
            log.info("eval-grounding: %d/%d scenes (%.0f s)", i + 1, scenes, time.time() - t0)
    return GroundingReport(
        scenes=scenes, seed=int(seed),
        pointing=point / max(n_pres, 1), box_hit=box / max(n_pres, 1), rejection=rej / max(n_abs, 1),
        discrimination=disc / max(n_disc, 1), n_present=n_pres, n_absent=n_abs, n_discrimination=n_disc,
        mean_ground_ms=1000 * t_ground / max(n_calls, 1))


def write_json(report: GroundingReport, path, bundle: str | None = None) -> None:
    data = {"bundle": bundle, **report.to_dict()}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
