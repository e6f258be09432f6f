"""Result types of grounding and classification: frozen dataclasses with numpy inside.

Coordinates are frame pixels, x to the right and y down; boxes are ``(x0, y0, x1, y1)`` with x1/y1
exclusive. ``frame_size`` is ``(height, width)`` like ``frame.shape[:2]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from vlmedge.errors import InputError


@dataclass(frozen=True)
class Target:
    """One grounded instance of a query, or the statement that the query was not found.

    ``score`` is the highest per-patch probability inside the region (for a not-found target: the
    highest probability anywhere, which stayed below the threshold). ``center`` is the region's
    centroid, ``peak`` the location of its highest probability (refined below the patch size, see
    ``regions``), ``area`` its size in frame pixels.
    A not-found target has ``found=False``, ``bbox``/``center``/``peak`` None, ``area`` 0 and no track id.

    A plain value, not validated here: the runtime builds targets from checked inputs, with Python ints,
    floats and tuples, on every frame. A target made elsewhere is checked where it leaves the process
    (``protocol.build_targets`` validates every target it publishes).
    """

    query: str
    found: bool
    score: float
    bbox: tuple[int, int, int, int] | None = None
    center: tuple[float, float] | None = None
    peak: tuple[float, float] | None = None
    area: int = 0
    track_id: int | None = None
    # What a command's target was resolved against ("the cup next to the plate": the plate's box), and why a
    # command was not found ("no 'the ball' in view"); the plain noun-phrase path leaves both empty.
    anchors: tuple[Any, ...] = ()  # vlmedge.language.Anchor(text, bbox)
    reason: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (lists instead of tuples): the v1 wire fields of a target (anchors and reasons
        travel per command, see ``CommandResult.to_dict``)."""
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
class CommandResult:
    """One command resolved in one frame.

    ``targets``: the resolved target (singular commands), every instance (plural, ``all``, ``two``...), or
    a single not-found target carrying the ``reason``. ``anchors``: the instances the targets were
    resolved against, with their noun phrase. ``count``: for ``how many`` and plural commands (0 included).
    """

    command: str
    parsed: Any  # vlmedge.language.Command
    found: bool
    targets: tuple[Target, ...]
    anchors: tuple[Any, ...] = ()  # vlmedge.language.Anchor
    count: int | None = None
    reason: str | None = None

    @property
    def points(self) -> tuple[tuple[float, float], ...]:
        """The peak of each found target, best first (what ``scenes.command_eval`` scores)."""
        return tuple(t.peak for t in self.targets if t.found)

    def to_dict(self) -> dict:
        return {"command": self.command, "parsed": self.parsed.to_dict(), "found": self.found,
                "count": self.count, "reason": self.reason,
                "targets": [t.to_dict() for t in self.targets if t.found],
                "anchors": [{"text": a.text, "bbox": [int(v) for v in a.bbox]} for a in self.anchors]}


@dataclass(frozen=True, eq=False)
class GroundingResult:
    """Everything one ``Grounder.ground`` (or ``match``) call found.

    ``targets`` holds, per query in request order, every region above the threshold sorted by score
    (the first is the best), or a single not-found target. ``patch_maps`` [Q, h, w] are the per-patch
    probabilities; ``maps`` upsamples them to frame size on first access (zero outside ``crop_box``).
    ``timings`` are milliseconds: preprocess, encode, ground, total; complete when the result is built.
    Built by the grounder from checked inputs, so the fields are not re-validated here.
    """

    queries: tuple[str, ...]
    targets: tuple[Target, ...]
    patch_maps: np.ndarray  # float32 [Q, h, w]
    frame_size: tuple[int, int]  # (height, width)
    crop_box: tuple[int, int, int, int]  # frame region the model input covers
    timings: dict[str, float] = field(default_factory=dict)
    image_embed: np.ndarray | None = None  # float32 [D], L2-normalized
    commands: tuple[CommandResult, ...] = ()  # per query, in request order

    # A pure function of the frozen fields, made on first use: the wire carries patch maps, so only a
    # display or a caller that asks needs frame-size maps. cached_property stores the array in the
    # instance __dict__ directly (not through the frozen __setattr__), so the class stays frozen and
    # has no cache field for callers to see or change; the array is computed once per result.
    @cached_property
    def maps(self) -> np.ndarray:
        """float32 [Q, H, W] per-query probability maps at frame size (computed once, on demand)."""
        h, w = self.frame_size
        maps = np.zeros((len(self.queries), h, w), dtype=np.float32)
        for i in range(len(self.queries)):
            maps[i] = upsample_map(self.patch_maps[i], self.frame_size, self.crop_box)
        return maps

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

    def command(self, query: str) -> CommandResult:
        """How one command was resolved: parsed form, targets, anchors, count, reason."""
        return self.commands[self._index(query)]

    def count(self, query: str) -> int:
        """``how many`` commands and plural noun phrases: the count (0 included); otherwise the number of
        found targets."""
        c = self.command(query) if self.commands else None
        if c is not None and c.count is not None:
            return c.count
        return sum(t.found for t in self.targets_for(query))

    @property
    def found(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.found)

    def to_dict(self) -> dict:
        return {"queries": list(self.queries), "targets": [t.to_dict() for t in self.targets],
                "frame_size": list(self.frame_size), "crop_box": list(self.crop_box),
                "timings": {k: round(float(v), 3) for k, v in self.timings.items()}}


@dataclass(frozen=True)
class Classification:
    """Zero-shot labels sorted by probability (highest first), as ``classify.zero_shot`` builds them."""

    labels: tuple[str, ...]
    probs: tuple[float, ...]
    prompt: str = "{}"

    @property
    def top(self) -> tuple[str, float]:
        return self.labels[0], self.probs[0]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt,
                "labels": [{"label": lab, "prob": round(p, 6)} for lab, p in zip(self.labels, self.probs)]}
