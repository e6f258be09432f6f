"""The live window's overlay of commands, checked on the pixels of a real rendered scene grounded with the shipped
int8 bundle: anchor boxes dashed, an arrow from the anchor to the target, a count badge, the not-found reason,
light labels on dark boxes. Each check also draws the same result without the feature and sees the pixels go."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from vlmedge.embedded import embedded_bundle  # noqa: E402
from vlmedge.runtime.display import DASH, FONT, GAP, PALETTE, arrow_ends, command_label, draw_overlay  # noqa: E402
from vlmedge.runtime.grounding.grounder import Grounder  # noqa: E402
from vlmedge.scenes.render import render_scene  # noqa: E402

RELATION, COUNT = "the bottle left of the purple bottle", "how many bottles"
NOT_FOUND = "the purple bottle left of the orange bottle"  # the purple bottle is the rightmost one


@pytest.fixture(scope="module")
def scene():
    frame = render_scene(7340013).frame
    grounder = Grounder(embedded_bundle("int8"))
    result = grounder.ground(frame, [RELATION, COUNT])
    # What the drawing is about, so that a grounder change fails here and not as a puzzling pixel count below.
    rel, cnt = result.command(RELATION), result.command(COUNT)
    assert rel.found and len(rel.targets) == 1 and [a.text for a in rel.anchors] == ["the purple bottle"]
    assert cnt.found and cnt.count == 2 and not cnt.anchors
    return frame, result, grounder


def _is(img: np.ndarray, colour) -> np.ndarray:
    return np.all(img == np.array(colour, np.uint8), axis=-1)


def _runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    return [(bool(k), len(list(g))) for k, g in itertools.groupby(mask)]


def _without(result, query, **changes):
    """The same result with one command changed (e.g. no anchors): what the overlay draws without the feature."""
    commands = tuple(replace(c, **changes) if c.command == query else c for c in result.commands)
    return replace(result, commands=commands)


def test_anchor_box_is_dashed(scene):
    frame, result, _ = scene
    img = draw_overlay(frame, result, heatmap=False)
    colour = PALETTE[0]
    rel = result.command(RELATION)
    x0, y0, x1, y1 = rel.anchors[0].bbox
    arrow_y = arrow_ends(rel.anchors[0].bbox, rel.targets[0].bbox)[0][1]  # the arrow leaves the left edge here
    edges = {"top": img[y0, x0:x1], "bottom": img[y1 - 1, x0:x1], "right": img[y0:y1, x1 - 1],
             "left above the arrow": img[y0:arrow_y - 8, x0], "left below the arrow": img[arrow_y + 8:y1, x0]}
    for name, pixels in edges.items():
        runs = _runs(_is(pixels, colour))
        inner = runs[1:-1]  # the first and last dash may be cut by the corner
        dashes = [n for on, n in inner if on]
        gaps = [n for on, n in inner if not on]
        assert len(dashes) >= len(pixels) // (DASH + GAP) - 2 and len(dashes) >= 2, (name, runs)
        # thickness-2 dashes have round caps: a dash is DASH plus up to 3 pixels, its gap that much shorter
        assert all(DASH <= n <= DASH + 4 for n in dashes), (name, runs)
        assert all(GAP - 4 <= n <= GAP for n in gaps) and gaps, (name, runs)
    # the pattern is the anchor's: without anchors the same edge shows no dash of the relation's colour
    plain = draw_overlay(frame, _without(result, RELATION, anchors=()), heatmap=False)
    assert not _is(plain[y0, x0:x1], colour).any()


def test_arrow_runs_from_the_anchor_to_the_target(scene):
    frame, result, _ = scene
    rel = result.command(RELATION)
    anchor, target = rel.anchors[0].bbox, rel.targets[0].bbox
    start, end = arrow_ends(anchor, target)
    # the anchor (the purple bottle) is right of the target: the arrow leaves its left edge, reaches the
    # target's right edge
    assert abs(start[0] - anchor[0]) <= 1 and anchor[1] <= start[1] <= anchor[3]
    assert abs(end[0] - target[2]) <= 1 and target[1] <= end[1] <= target[3]
    img = draw_overlay(frame, result, heatmap=False)
    plain = draw_overlay(frame, _without(result, RELATION, anchors=()), heatmap=False)
    colour = PALETTE[0]

    def near(image, p, r=1) -> int:
        x, y = int(round(p[0])), int(round(p[1]))
        return int(_is(image[y - r:y + r + 1, x - r:x + r + 1], colour).sum())

    between = [np.add(start, f * np.subtract(end, start)) for f in np.linspace(0.1, 0.7, 13)]
    assert sum(near(img, p) > 0 for p in between) == len(between)  # an unbroken line between the boxes
    assert sum(near(plain, p) > 0 for p in between) == 0  # drawn for the relation, not by anything else
    # the head is at the target: far more of the colour around the end than around the start
    assert near(img, end, 8) > 2 * near(img, start, 8) > 0


def test_count_badge(scene):
    frame, result, _ = scene
    h = frame.shape[0]
    legend = (slice(h - 60, h), slice(0, 60))
    img = draw_overlay(frame, result, heatmap=False)
    badge = _is(img[legend], PALETTE[1])  # the count command's colour, filled
    assert badge.sum() >= 100
    ys, xs = np.nonzero(badge)
    inside = img[legend][ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ink = np.all(inside < 60, axis=-1)  # the digit, dark on the light green
    assert 10 <= ink.sum() <= 0.6 * inside.shape[0] * inside.shape[1]
    # a command without a count has no badge
    none = draw_overlay(frame, _without(result, COUNT, count=None), heatmap=False)
    assert not _is(none[legend], PALETTE[1]).any()


def test_not_found_reason_in_the_legend_and_labels_are_light_on_dark(scene):
    frame, _, grounder = scene
    result = grounder.ground(frame, [NOT_FOUND])
    cmd = result.command(NOT_FOUND)
    assert not cmd.found and cmd.reason and cmd.reason in command_label(cmd)
    label = command_label(cmd)
    (w, th), _ = cv2.getTextSize(label, FONT, 0.5, 1)
    assert w < frame.shape[1] - 16  # fits: the reason is drawn whole, not cut
    img = draw_overlay(frame, result, heatmap=False)
    y = frame.shape[0] - 10
    band = np.any(img[y - th:y + 2] != frame[y - th:y + 2], axis=-1)
    cols = np.nonzero(band.any(axis=0))[0]
    assert cols.min() <= 8 and abs(cols.max() - (8 + w + 1)) <= 3, (cols.min(), cols.max(), 8 + w)
    # light text on a dark box: most of the label box is dark, its text is bright
    box = img[y - th:y + 1, 8:8 + w].max(axis=-1)  # the brightest channel: light red text is (140, 140, 255)
    assert np.median(box) < 60 and box.max() > 200
    # without a reason the row is shorter: the reason text is what made it long
    short = draw_overlay(frame, _without(result, NOT_FOUND, reason="not found"), heatmap=False)
    band = np.any(short[y - th:y + 2] != frame[y - th:y + 2], axis=-1)
    assert np.nonzero(band.any(axis=0))[0].max() < cols.max() - 100


def test_overlay_with_heatmap_leaves_the_frame_alone(scene):
    frame, result, _ = scene
    before = frame.copy()
    img = draw_overlay(frame, result, fps=10.0, latency_ms=50.0)
    assert img.shape == frame.shape and img.dtype == np.uint8 and not np.array_equal(img, frame)
    assert np.array_equal(frame, before)


def test_arrow_ends_geometry():
    # side by side: edge to edge on the line between the centres
    assert arrow_ends((100, 0, 120, 20), (0, 0, 20, 20)) == ((100, 10), (20, 10))
    assert arrow_ends((0, 100, 20, 120), (0, 0, 20, 20)) == ((10, 100), (10, 20))
    # overlapping boxes ("the cup on the plate"): centre to centre
    assert arrow_ends((0, 0, 100, 100), (40, 40, 60, 60)) == ((50, 50), (50, 50))
    assert arrow_ends((0, 0, 100, 40), (0, 30, 100, 100)) == ((50, 20), (50, 65))
