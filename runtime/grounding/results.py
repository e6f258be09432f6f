"""Result types of grounding and classification: frozen dataclasses with numpy inside.

Coordinates are frame pixels, x to the right and y down; boxes are ``(x0, y0, x1, y1)`` with x1/y1
exclusive. ``frame_size`` is ``(height, width)`` like ``frame.shape[:2]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmedge.errors import InputError


def _finite(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise InputError(f"{name} must be finite, got {v!r}")
    return f


def _point(name: str, v: Any) -> tuple[float, float] | None:
    if v is None:
        return None
    try:
        x, y = v
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an (x, y) pair or None, got {v!r}") from None
    return (_finite(name, x), _finite(name, y))


@dataclass(frozen=True)
class Target:
    """One grounded instance of a query, or the statement that the query was not found.

    ``score`` is the highest per-patch probability inside the region (for a not-found target: the
    highest probability anywhere, which stayed below the threshold). ``center`` is the region's
    centroid, ``peak`` the location of its highest probability (refined below the patch size, see
    ``regions``), ``area`` its size in frame pixels.
    A not-found target has ``found=False``, ``bbox``/``center``/``peak`` None, ``area`` 0 and no track id.
    """

    query: str
    found: bool
    score: float
    bbox: tuple[int, int, int, int] | None = None
    center: tuple[float, float] | None = None
    peak: tuple[float, float] | None = None
    area: int = 0
    track_id: int | None = None

    def __post_init__(self):
        if not isinstance(self.query, str):
            raise InputError(f"Target.query must be a str, got {type(self.query).__name__}")
        object.__setattr__(self, "found", bool(self.found))
        object.__setattr__(self, "score", _finite("Target.score", self.score))
        object.__setattr__(self, "center", _point("Target.center", self.center))
        object.__setattr__(self, "peak", _point("Target.peak", self.peak))
        if self.bbox is not None:
            try:
                x0, y0, x1, y1 = (int(round(float(c))) for c in self.bbox)
            except (TypeError, ValueError):
                raise InputError(f"Target.bbox must be (x0, y0, x1, y1) or None, got {self.bbox!r}") from None
            if x1 < x0 or y1 < y0:
                raise InputError(f"Target.bbox must have x0 <= x1 and y0 <= y1, got {self.bbox!r}")
            object.__setattr__(self, "bbox", (x0, y0, x1, y1))
        if self.found and self.bbox is None:
            raise InputError(f"Target {self.query!r}: found=True needs a bbox")
        if not self.found and (self.bbox is not None or self.track_id is not None):
            raise InputError(f"Target {self.query!r}: found=False must have no bbox and no track_id")
        object.__setattr__(self, "area", int(self.area))
        if self.track_id is not None:
            object.__setattr__(self, "track_id", int(self.track_id))

    def to_dict(self) -> dict:
        """JSON-ready dict (lists instead of tuples)."""
        return {"query": self.query, "found": self.found, "score": round(self.score, 6),
                "bbox": list(self.bbox) if self.bbox else None,
                "center": [round(c, 2) for c in self.center] if self.center else None,
                "peak": [round(c, 2) for c in self.peak] if self.peak else None,
                "area": self.area, "track_id": self.track_id}


def upsample_map(patch_map: np.ndarray, frame_size: tuple[int, int],
                 crop_box: tuple[int, int, int, int]) -> np.ndarray:
    """Bilinear-upsample one [h, w] patch map onto the frame region it covers; 0 outside it."""
    import cv2

    height, width = frame_size
    x0, y0, x1, y1 = crop_box
    out = np.zeros((height, width), dtype=np.float32)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0 or cx1 <= cx0 or cy1 <= cy0:
        return out
    full = cv2.resize(np.ascontiguousarray(patch_map, dtype=np.float32), (x1 - x0, y1 - y0),
                      interpolation=cv2.INTER_LINEAR)
    out[cy0:cy1, cx0:cx1] = full[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out


@dataclass(frozen=True, eq=False)
class GroundingResult:
    """Everything one ``Grounder.ground`` call found.

    ``targets`` holds, per query in request order, every region above the threshold sorted by score
    (the first is the best), or a single not-found target. ``patch_maps`` [Q, h, w] are the per-patch
    probabilities; ``maps`` upsamples them to frame size on first access (zero outside ``crop_box``).
    ``timings`` are milliseconds: preprocess, encode, ground, total.
    """

    queries: tuple[str, ...]
    targets: tuple[Target, ...]
    patch_maps: np.ndarray  # float32 [Q, h, w]
    frame_size: tuple[int, int]  # (height, width)
    crop_box: tuple[int, int, int, int]  # frame region the model input covers
    timings: dict = field(default_factory=dict)
    image_embed: np.ndarray | None = None  # float32 [D], L2-normalized
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "queries", tuple(self.queries))
        object.__setattr__(self, "targets", tuple(self.targets))
        pm = np.asarray(self.patch_maps, dtype=np.float32)
        if pm.ndim != 3 or pm.shape[0] != len(self.queries):
            raise InputError(f"GroundingResult.patch_maps must be [Q={len(self.queries)}, h, w], got {pm.shape}")
        object.__setattr__(self, "patch_maps", pm)
        object.__setattr__(self, "frame_size", tuple(int(v) for v in self.frame_size))
        object.__setattr__(self, "crop_box", tuple(int(v) for v in self.crop_box))

    @property
    def maps(self) -> np.ndarray:
        """float32 [Q, H, W] per-query probability maps at frame size (computed once, on demand)."""
        if "maps" not in self._cache:
            h, w = self.frame_size
            maps = np.zeros((len(self.queries), h, w), dtype=np.float32)
            for i in range(len(self.queries)):
                maps[i] = upsample_map(self.patch_maps[i], self.frame_size, self.crop_box)
            self._cache["maps"] = maps
        return self._cache["maps"]

    def map_for(self, query: str) -> np.ndarray:
        """The frame-size probability map of one query."""
        return self.maps[self._index(query)]

    def _index(self, query: str) -> int:
        try:
            return self.queries.index(query)
        except ValueError:
            from vlmedge.errors import did_you_mean
            raise InputError(f"query {query!r} was not part of this result; queries: {list(self.queries)}"
                             + did_you_mean(query, self.queries)) from None

    def targets_for(self, query: str) -> tuple[Target, ...]:
        """All targets of one query, best first (a single not-found target when absent)."""
        self._index(query)
        return tuple(t for t in self.targets if t.query == query)

    def best(self, query: str | None = None) -> Target | None:
        """The best target of ``query`` (default: the first query); None when there are no queries."""
        if query is None:
            if not self.queries:
                return None
            query = self.queries[0]
        return self.targets_for(query)[0]

    @property
    def found(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.found)

    def to_dict(self) -> dict:
        return {"queries": list(self.queries), "targets": [t.to_dict() for t in self.targets],
                "frame_size": list(self.frame_size), "crop_box": list(self.crop_box),
                "timings": {k: round(float(v), 3) for k, v in self.timings.items()}}


@dataclass(frozen=True)
class Classification:
    """Zero-shot labels sorted by probability (highest first)."""

    labels: tuple[str, ...]
    probs: tuple[float, ...]
    prompt: str = "{}"

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "probs", tuple(float(p) for p in self.probs))
        if len(self.labels) != len(self.probs):
            raise InputError(f"Classification: {len(self.labels)} labels but {len(self.probs)} probabilities")
        if any(a < b for a, b in zip(self.probs, self.probs[1:])):
            raise InputError("Classification.probs must be sorted highest first")

    @property
    def top(self) -> tuple[str, float]:
        return self.labels[0], self.probs[0]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt,
                "labels": [{"label": lab, "prob": round(p, 6)} for lab, p in zip(self.labels, self.probs)]}
