"""Image-plane geometry between detected instances: boxes ``(x0, y0, x1, y1)`` in frame pixels, x to the right,
y down, x1/y1 exclusive; centers ``(x, y)``.

Everything here is a 2-D proxy. There is no depth: "in front of" and "behind" compare where objects touch the
ground in the image (the bottom edge of the box; lower in the image is nearer the camera for objects standing on
one surface), and "on" means the bottom edge rests inside the other object's box. Pure Python on tuples: with
tens of instances this is faster than building numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vlmedge.geometry import iou  # noqa: F401  (one IoU for the tracker, the evaluation and relations)

Box = Sequence[float]
Point = Sequence[float]

# Tolerances are fractions of the anchor's own size, so they scale with distance to the camera.
DIRECTION_TOLERANCE = 0.1  # a center may lie this far inside the anchor's edge and still be "left of" it
ON_BAND_TOLERANCE = 0.1  # the bottom edge may miss the anchor's vertical extent by this much and still rest on it
ON_MIN_OVERLAP = 0.5  # share of the subject's width that must lie over the anchor for "on"
DEPTH_TOLERANCE = 0.05  # bottom edges closer than this are level: neither in front nor behind
NEAR_FRACTION = 0.5  # "next to" a set: box gap up to this share of the anchor's larger side
BETWEEN_LATERAL = 0.5  # "between": distance from the joining segment up to this share of its length
SAME_INSTANCE_IOU = 0.7  # boxes overlapping this much are one object seen by two phrases
COLOUR_MATCH_IOU = 0.5  # an instance this close to a coloured match is that coloured object


def width(b: Box) -> float:
    return b[2] - b[0]


def height(b: Box) -> float:
    return b[3] - b[1]


def gap(a: Box, b: Box) -> float:
    """Shortest distance between two boxes; 0 when they touch or overlap."""
    dx = max(0.0, b[0] - a[2], a[0] - b[2])
    dy = max(0.0, b[1] - a[3], a[1] - b[3])
    return math.hypot(dx, dy)


def distance(p: Point, q: Point) -> float:
    return math.hypot(p[0] - q[0], p[1] - q[1])


def x_overlap(a: Box, b: Box) -> float:
    """Length of the shared horizontal extent (0 when the boxes are side by side)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0]))


def same_instance(a: Box, b: Box) -> bool:
    """Whether two boxes are one object (identical, or overlapping by more than SAME_INSTANCE_IOU)."""
    return tuple(a) == tuple(b) or iou(a, b) > SAME_INSTANCE_IOU


def point_in_box(p: Point, b: Box) -> bool:
    return b[0] <= p[0] < b[2] and b[1] <= p[1] < b[3]


def point_in_mask(p: Point, mask: np.ndarray) -> bool:
    x, y = int(p[0]), int(p[1])
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])


def left_of(center: Point, anchor: Box) -> bool:
    """Center left of the anchor's left edge, with DIRECTION_TOLERANCE of its width."""
    return center[0] < anchor[0] + DIRECTION_TOLERANCE * width(anchor)


def right_of(center: Point, anchor: Box) -> bool:
    return center[0] > anchor[2] - DIRECTION_TOLERANCE * width(anchor)


def above(center: Point, anchor: Box) -> bool:
    """Higher in the image than the anchor's top edge (image plane, y down)."""
    return center[1] < anchor[1] + DIRECTION_TOLERANCE * height(anchor)


def below(center: Point, anchor: Box) -> bool:
    return center[1] > anchor[3] - DIRECTION_TOLERANCE * height(anchor)


def on(box: Box, anchor: Box) -> bool:
    """The subject's bottom edge rests within the anchor's vertical extent and it sits over the anchor.

    Image-plane proxy: an object standing on a table has its base inside the table's box.
    """
    band = ON_BAND_TOLERANCE * height(anchor)
    rests = anchor[1] - band <= box[3] <= anchor[3] + band
    return rests and x_overlap(box, anchor) >= ON_MIN_OVERLAP * width(box)


def in_front_of(box: Box, anchor: Box) -> bool:
    """Image-plane proxy for depth: bottom edge lower in the image than the anchor's, overlapping horizontally."""
    return box[3] > anchor[3] + DEPTH_TOLERANCE * height(anchor) and x_overlap(box, anchor) > 0


def behind(box: Box, anchor: Box) -> bool:
    """Image-plane proxy for depth: bottom edge higher than the anchor's, overlapping it horizontally (so the
    anchor is in the way)."""
    return box[3] < anchor[3] - DEPTH_TOLERANCE * height(anchor) and x_overlap(box, anchor) > 0


def near(box: Box, anchor: Box) -> bool:
    """Close enough to count as "next to" when several subjects are wanted."""
    return gap(box, anchor) <= NEAR_FRACTION * max(width(anchor), height(anchor))


def between(center: Point, p: Point, q: Point) -> tuple[float, float] | None:
    """``(lateral distance, |t - 1/2|)`` when ``center`` projects strictly inside the segment p-q and lies within
    BETWEEN_LATERAL of its length from it; None otherwise."""
    vx, vy = q[0] - p[0], q[1] - p[1]
    length2 = vx * vx + vy * vy
    if length2 <= 0:
        return None
    t = ((center[0] - p[0]) * vx + (center[1] - p[1]) * vy) / length2
    if not 0.0 < t < 1.0:
        return None
    lateral = abs((center[0] - p[0]) * vy - (center[1] - p[1]) * vx) / math.sqrt(length2)
    if lateral > BETWEEN_LATERAL * math.sqrt(length2):
        return None
    return lateral, abs(t - 0.5)


# Directional relations: name -> (test on the subject, what the test takes from the subject).
DIRECTIONAL = {
    "left_of": (left_of, "center"), "right_of": (right_of, "center"), "above": (above, "center"),
    "below": (below, "center"), "on": (on, "bbox"), "in_front_of": (in_front_of, "bbox"), "behind": (behind, "bbox"),
}
