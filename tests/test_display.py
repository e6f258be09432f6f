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
from vlmedge.runtime.display import (  # noqa: E402
    DASH,
    FONT,
    GAP,
    arrow_ends,
    command_label,
    draw_overlay,
    heatmap_overlay,
    query_colours,
)
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
    colour = query_colours([RELATION, COUNT])[0]
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
    colour = query_colours([RELATION, COUNT])[0]

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
    count_colour = query_colours([RELATION, COUNT])[1]
    badge = _is(img[legend], count_colour)  # the count command's colour, filled
    assert badge.sum() >= 100
    ys, xs = np.nonzero(badge)
    inside = img[legend][ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ink = np.all(inside < 60, axis=-1)  # the digit, dark on the light colour
    assert 10 <= ink.sum() <= 0.6 * inside.shape[0] * inside.shape[1]
    # a command without a count has no badge
    none = draw_overlay(frame, _without(result, COUNT, count=None), heatmap=False)
    assert not _is(none[legend], count_colour).any()


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


def test_heatmap_is_the_per_pixel_blend_of_frame_and_jet(scene):
    frame, result, _ = scene
    prob = result.maps.max(axis=0)
    jet = cv2.applyColorMap(np.clip(prob * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float64)
    w = (0.55 * prob.astype(np.float64))[..., None]
    expected = frame * (1 - w) + jet * w
    img = heatmap_overlay(frame, result, alpha=0.55)
    assert img.shape == frame.shape and img.dtype == np.uint8
    assert np.abs(img - expected).max() <= 1.0  # rounding only
    assert (prob > 0.5).any() and not np.array_equal(img, frame)  # the map is not empty: the blend shows


def test_arrow_ends_geometry():
    # side by side: edge to edge on the line between the centres
    assert arrow_ends((100, 0, 120, 20), (0, 0, 20, 20)) == ((100, 10), (20, 10))
    assert arrow_ends((0, 100, 20, 120), (0, 0, 20, 20)) == ((10, 100), (10, 20))
    # overlapping boxes ("the cup on the plate"): centre to centre
    assert arrow_ends((0, 0, 100, 100), (40, 40, 60, 60)) == ((50, 50), (50, 50))
    assert arrow_ends((0, 0, 100, 40), (0, 30, 100, 100)) == ((50, 20), (50, 65))


# ------------------------------------------------------------------------------ the live window, on a real X server

_WINDOW_CHILD = r"""
import json, os, struct, sys
import numpy as np
from vlmedge.runtime.display import Window

def screen():
    # Xvfb -fbdir keeps the screen in an XWD file: a header, a colour map, then 32-bit pixels (B, G, R, x)
    data = open(os.environ["FB"], "rb").read()
    head = struct.unpack(">25I", data[:100])
    w, h, bpl, ncolours = head[4], head[5], head[12], head[19]
    px = np.frombuffer(data, np.uint8, count=h * bpl, offset=head[0] + 12 * ncolours)
    return px.reshape(h, bpl // 4, 4)[:, :w, :3].copy()

import time
import cv2
from vlmedge.runtime.display import window_view

def settle(step, expected, seconds=10.0):
    # the window is painted asynchronously: keep the event loop running until the screen shows the expected
    # pixels (a scaled window never does: the test then sees what it shows)
    deadline = time.monotonic() + seconds
    while True:
        assert step()
        x, y, w, h = cv2.getWindowImageRect("vlmedge test")
        shot = screen()
        if np.array_equal(shot[y:y + expected.shape[0], x:x + expected.shape[1]], expected) \
                or time.monotonic() > deadline:
            return shot, [x, y, w, h]
        time.sleep(0.05)

img = np.load(sys.argv[1])
win = Window("vlmedge test")
live, rect = settle(lambda: win.show(img), window_view(img))
np.save(sys.argv[2], live)
paused, _ = settle(lambda: win.show_idle(paused=True), window_view(img, paused=True))
np.save(sys.argv[3], paused)
win.close()
x, y, w, h = rect
print(json.dumps({"rect": [x, y, w, h]}))
"""


@pytest.fixture
def xserver(tmp_path):
    """A virtual X server of our own whose screen can be read back (Xvfb -fbdir)."""
    import os
    import shutil
    import subprocess

    from vlmedge.runtime.display import gui_backend

    if shutil.which("Xvfb") is None:
        pytest.skip("needs Xvfb (apt install xvfb) for a virtual display")
    if not gui_backend():
        pytest.skip("this OpenCV build has no GUI backend (opencv-python-headless?)")
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-fbdir", str(tmp_path),
                             "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        display = f.readline().strip()  # written once the server accepts clients
    try:
        assert display, "Xvfb did not start"
        yield f":{display}", tmp_path / "Xvfb_screen0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _luminance(bgr: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of BGR uint8 pixels."""
    c = bgr[..., ::-1].astype(np.float64) / 255
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c @ np.array([0.2126, 0.7152, 0.0722])


def _contrast(box: np.ndarray) -> float:
    """Contrast ratio of a label's text (its brightest pixels) to its box (the median)."""
    lum = _luminance(box).ravel()
    return (np.percentile(lum, 97) + 0.05) / (np.median(lum) + 0.05)


@pytest.mark.slow
def test_live_window_screenshot(xserver, tmp_path):
    """The window as a user sees it, read back from the X server's screen: 1:1 with the frame, the query in the
    colour it names, labels readable (WCAG contrast), the quit hint, the PAUSED mark, no Qt font warnings."""
    import json
    import os
    import subprocess
    import sys

    from vlmedge.runtime.display import NAMED_COLOURS, QUIT_HINT, query_colours, window_view
    from vlmedge.runtime.io.sources import open_source

    display, fb = xserver
    source = open_source("synthetic://tabletop", realtime=False)  # the default stream: the blue ball is in it
    source.open()
    frame = source.read()
    source.close()
    queries = ["the blue ball", "a bottle"]
    result = Grounder(embedded_bundle("int8")).ground(frame, queries)
    ball = result.command("the blue ball")
    assert ball.found
    overlay = draw_overlay(frame, result, fps=29.5, latency_ms=40)
    np.save(tmp_path / "overlay.npy", overlay)
    env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
    for _attempt in range(3):
        child = subprocess.run([sys.executable, "-c", _WINDOW_CHILD, str(tmp_path / "overlay.npy"),
                                str(tmp_path / "live.npy"), str(tmp_path / "paused.npy")],
                               env={**env, "DISPLAY": display, "FB": str(fb)}, capture_output=True, text=True,
                               timeout=120)
        assert child.returncode == 0, child.stderr[-2000:]
        # While other X servers start and stop on a loaded machine (other tests), Qt's window now and then never
        # reaches the screen at all (an all-black screen for the whole wait, about 1 run in 8 with two servers
        # running): another process then shows the window. A window that shows anything is judged below.
        if np.load(tmp_path / "live.npy").any():
            break
    assert "QFontDatabase" not in child.stderr, child.stderr  # the wheel's missing font folder is worked around
    x, y, w, h = json.loads(child.stdout.strip().splitlines()[-1])["rect"]
    H, W = frame.shape[:2]
    # 1:1: the window's image area is the frame's size, and the screen shows the frame's pixels unscaled
    assert (w, h) == (W, H)
    live, paused = np.load(tmp_path / "live.npy"), np.load(tmp_path / "paused.npy")
    shown = live[y:y + H, x:x + W]
    np.testing.assert_array_equal(shown, window_view(overlay))
    # the query names its colour: the ball's box is drawn in blue
    colours = query_colours(queries)
    assert colours[0] == NAMED_COLOURS["blue"] and colours[1] != colours[0]
    x0, y0, x1, y1 = ball.targets[0].bbox
    top_edge = shown[y0, x0 + 20:x1 - 20]
    assert (np.all(top_edge == NAMED_COLOURS["blue"], axis=-1)).mean() > 0.8
    # readable: each legend label's text against its box passes WCAG AA (4.5:1) on the screen
    for i, q in enumerate(queries):
        label = command_label(result.command(q))
        (tw, th), base = cv2.getTextSize(label, FONT, 0.5, 1)
        ly = H - 10 - 20 * i
        ratio = _contrast(shown[ly - th - 2:ly + base, 8:8 + tw])
        assert ratio >= 4.5, (q, ratio)
    # the quit hint, top right, light on dark; not part of the overlay (nor of a recording)
    changed = np.nonzero(np.any(shown != overlay, axis=-1))
    (hw, hh), _ = cv2.getTextSize(QUIT_HINT, FONT, 0.5, 1)
    assert changed[1].min() >= W - hw - 12 and changed[0].max() <= 26
    assert _contrast(shown[20 - hh - 2:22, W - hw - 8:W - 8]) >= 4.5
    # paused: the last frame, marked PAUSED in the middle
    marked = paused[y:y + H, x:x + W]
    np.testing.assert_array_equal(marked, window_view(overlay, paused=True))
    diff = np.nonzero(np.any(marked != shown, axis=-1))
    assert abs((diff[1].min() + diff[1].max()) / 2 - W / 2) < 10 and abs(diff[0].mean() - H / 2) < 30
    assert _contrast(marked[H // 2 - 30:H // 2 + 2, W // 2 - 60:W // 2 + 60]) >= 4.5


def test_query_colours_are_named_or_stable():
    from vlmedge.runtime.display import NAMED_COLOURS, PALETTE, query_colour

    # the colour the query names, for the phrase the command is about
    assert query_colours(["the blue ball", "the red cup", "how many green bottles"]) == [
        NAMED_COLOURS["blue"], NAMED_COLOURS["red"], NAMED_COLOURS["green"]]
    assert query_colour("the bottle left of the purple bottle") in PALETTE  # its target has no colour
    assert query_colour("the purple bottle right of the bottle") == NAMED_COLOURS["purple"]
    # stable: the same colour in any order and next to other queries, and distinct from the others shown
    a, b = "a bottle", "person wearing a hat"
    assert query_colours([a, "the red cup"])[0] == query_colours(["the red cup", a])[1] == query_colour(a)
    assert len(set(query_colours([a, b, "a can", "a plate", "the red cup"]))) == 5
