"""Temporal smoothing and stable track ids for grounded targets.

Per query, the found targets of a frame are matched greedily to that query's live tracks: first by box
IoU (>= ``iou_match``), then by centroid distance (<= ``center_match`` x the larger box diagonal).
A matched target keeps the track's id and its box/centre are smoothed with an exponential moving
average (``alpha`` = weight of the new observation; 1.0 disables smoothing). Unmatched targets open
new tracks with new ids. A track survives ``max_misses`` frames without a match (short occlusions,
detector flicker) and is then forgotten, so an object that comes back later gets a new id.
Tracks of queries that are no longer asked for are dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from vlmedge.errors import ConfigError
from vlmedge.geometry import iou
from vlmedge.runtime.grounding.results import Target


@dataclass
class _Track:
    track_id: int
    query: str
    box: np.ndarray  # float [4] smoothed x0, y0, x1, y1
    center: np.ndarray  # float [2] smoothed
    misses: int = 0
    hits: int = 1


def _diag(box: Sequence[float]) -> float:
    return float(np.hypot(box[2] - box[0], box[3] - box[1]))


class Tracker:
    """Assigns stable ``track_id`` s to targets frame after frame and smooths their boxes."""

    def __init__(self, *, alpha: float = 0.6, max_misses: int = 10, iou_match: float = 0.1,
                 center_match: float = 0.5):
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"Tracker.alpha must be in (0, 1], got {alpha!r}")
        if max_misses < 0:
            raise ConfigError(f"Tracker.max_misses must be >= 0, got {max_misses!r}")
        self.alpha = float(alpha)
        self.max_misses = int(max_misses)
        self.iou_match = float(iou_match)
        self.center_match = float(center_match)
        self._tracks: dict[str, list[_Track]] = {}
        self._ids = itertools.count(1)

    def reset(self) -> None:
        self._tracks.clear()

    @property
    def live_ids(self) -> dict[str, list[int]]:
        return {q: [t.track_id for t in ts] for q, ts in self._tracks.items()}

    def update(self, targets: Sequence[Target]) -> list[Target]:
        """Return ``targets`` (same order) with track ids and smoothed boxes/centres."""
        queries = list(dict.fromkeys(t.query for t in targets))
        for q in list(self._tracks):
            if q not in queries:
                del self._tracks[q]
        out: dict[int, Target] = {}
        for q in queries:
            idx = [i for i, t in enumerate(targets) if t.query == q and t.found]
            for i, t in self._update_query(q, [targets[i] for i in idx]):
                out[idx[i]] = t
        return [out.get(i, t) for i, t in enumerate(targets)]

    def _update_query(self, query: str, found: list[Target]) -> list[tuple[int, Target]]:
        tracks = self._tracks.setdefault(query, [])
        pairs: list[tuple[float, int, int]] = []  # (cost, det, track); lower cost is better
        for d, t in enumerate(found):
            for k, tr in enumerate(tracks):
                overlap = iou(t.bbox, tr.box)
                if overlap >= self.iou_match:
                    pairs.append((1.0 - overlap, d, k))
                    continue
                dist = float(np.hypot(*(np.asarray(t.center) - tr.center)))
                scale = max(_diag(t.bbox), _diag(tr.box), 1.0)
                if dist <= self.center_match * scale:
                    pairs.append((1.0 + dist / scale, d, k))
        pairs.sort()
        det_to_track: dict[int, int] = {}
        used: set[int] = set()
        for _, d, k in pairs:
            if d not in det_to_track and k not in used:
                det_to_track[d] = k
                used.add(k)
        result = []
        a = self.alpha
        for d, t in enumerate(found):
            box = np.asarray(t.bbox, dtype=np.float64)
            center = np.asarray(t.center, dtype=np.float64)
            if d in det_to_track:
                tr = tracks[det_to_track[d]]
                tr.box = a * box + (1 - a) * tr.box
                tr.center = a * center + (1 - a) * tr.center
                tr.misses = 0
                tr.hits += 1
            else:
                tr = _Track(next(self._ids), query, box, center)
                tracks.append(tr)
                used.add(len(tracks) - 1)
            # Python ints and floats: Target does not convert, and the wire writes what it holds.
            result.append((d, replace(t, bbox=tuple(int(v) for v in np.round(tr.box)),
                                      center=(float(tr.center[0]), float(tr.center[1])),
                                      track_id=tr.track_id)))
        survivors = []
        for k, tr in enumerate(tracks):
            if k not in used:
                tr.misses += 1
                if tr.misses > self.max_misses:
                    continue
            survivors.append(tr)
        self._tracks[query] = survivors
        return result
