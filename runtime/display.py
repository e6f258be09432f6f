"""Overlay drawing (similarity heatmap, boxes, labels, FPS, latency) and the live window.

A command resolved against anchors ("the cup left of the plate") shows how: its anchor boxes dashed, an arrow
from each anchor to the target. Counting and plural commands get a count badge in the legend, and a command
that was not found says why there. Labels are light text on a dark box, legible on any scene.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import cv2
import numpy as np

from vlmedge.errors import BackendUnavailable
from vlmedge.runtime.grounding.results import GroundingResult

log = logging.getLogger(__name__)

# BGR. A query that names a colour ("the blue ball", "the bottle left of ..." names its target's) is drawn in it;
# the others take one of PALETTE (hues none of the names has), by a hash of their text: a query keeps its colour
# from frame to frame and from run to run, whatever the other queries are (unless two hash alike).
NAMED_COLOURS = {
    "red": (0, 0, 255), "orange": (0, 140, 255), "yellow": (0, 230, 255), "green": (0, 200, 0),
    "blue": (255, 90, 0), "purple": (200, 40, 150), "pink": (203, 130, 255), "white": (255, 255, 255),
    "black": (60, 60, 60), "brown": (30, 80, 150), "gray": (160, 160, 160), "grey": (160, 160, 160),
}
PALETTE = ((255, 255, 0), (255, 0, 255), (0, 255, 128), (114, 128, 250), (250, 200, 210), (0, 150, 150))
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc
QUIT_HINT = "q / Esc to quit"
MAX_WINDOW = (1920, 1080)  # (w, h): the window opens 1:1 up to this, larger frames scaled down to fit


def gui_backend() -> str:
    """The GUI backend OpenCV was built with ('GTK3', 'QT5', ...) or '' when none."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GUI":
            value = value.strip()
            return "" if value.upper() in ("", "NONE", "NO") else value
    return ""


def _target_colour_name(query: str) -> str | None:
    """The colour word of the phrase ``query`` is about: "the blue ball" -> blue, "the bottle left of the purple
    bottle" -> None (its target, "the bottle", has none), "how many red cups" -> red."""
    try:
        from vlmedge.language import read_command

        node = read_command(query).root
    except Exception:  # any text is drawn, parsed or not
        return None
    for _ in range(16):
        nxt = getattr(node, "subject", None) or getattr(node, "of", None) or getattr(node, "base", None)
        if nxt is None:
            break
        node = nxt
    colour = getattr(node, "colour", None)
    return colour if colour in NAMED_COLOURS else None


_COLOUR_CACHE: dict[str, str | None] = {}


def query_colour(query: str, taken: tuple = ()) -> tuple[int, int, int]:
    """The BGR colour ``query`` is drawn in: the colour it names, else a palette colour picked by a hash of its
    text (the next free one when that is in ``taken``)."""
    if query not in _COLOUR_CACHE:
        if len(_COLOUR_CACHE) > 1024:  # queries come from the control socket: keep the cache bounded
            _COLOUR_CACHE.clear()
        _COLOUR_CACHE[query] = _target_colour_name(query)
    name = _COLOUR_CACHE[query]
    if name is not None:
        return NAMED_COLOURS[name]
    start = zlib.crc32(query.encode()) % len(PALETTE)
    for k in range(len(PALETTE)):
        colour = PALETTE[(start + k) % len(PALETTE)]
        if colour not in taken:
            return colour
    return PALETTE[start]


def query_colours(queries) -> list[tuple[int, int, int]]:
    """One colour per query, in order (see :func:`query_colour`); queries without a colour name avoid the
    colours of the queries before them."""
    out: list[tuple[int, int, int]] = []
    for q in queries:
        out.append(query_colour(q, tuple(out)))
    return out


def display_available() -> tuple[bool, str]:
    """(available, why not): a display server is set (DISPLAY/WAYLAND_DISPLAY) and OpenCV has a GUI."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    if not gui_backend():
        return False, ("this OpenCV build has no GUI backend (opencv-python-headless?); "
                       "install opencv-python to get windows")
    return True, ""


FONT = cv2.FONT_HERSHEY_SIMPLEX
DASH, GAP = 8, 8  # pixels of an anchor box's dashes and of the gaps between them
MAX_ARROWS = 8  # per command: a plural command over many anchors would otherwise hide the scene


def _light(colour) -> tuple[int, int, int]:
    """The palette colour mixed with white: text in it keeps its query's hue and stays light on the dark box
    (pure red or blue text on a dark box is hard to read)."""
    return tuple(int(c * 0.45 + 255 * 0.55) for c in colour)


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], color=(255, 255, 255), scale: float = 0.5) -> None:
    """Light text on a dark box (legible on any background, also after video compression)."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    x, y = org
    x0, y0 = max(x - 2, 0), max(y - h - 3, 0)
    x1, y1 = min(x + w + 2, img.shape[1]), min(y + base + 1, img.shape[0])
    if x1 > x0 and y1 > y0:
        img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * 0.2).astype(np.uint8)
    cv2.putText(img, text, org, FONT, scale, _light(color), 1, cv2.LINE_AA)


def _fit(text: str, width: int, scale: float = 0.5) -> str:
    """``text`` cut (with "...") to fit ``width`` pixels: a long reason must not run off the frame."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", FONT, scale, 1)[0][0] > width:
        text = text[:-1]
    return text + "..."


def _dashed_line(img: np.ndarray, p0, p1, colour, thickness: int = 2) -> None:
    (x0, y0), (x1, y1) = p0, p1
    length = float(np.hypot(x1 - x0, y1 - y0))
    if length == 0:
        return
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    pos = 0.0
    while pos < length:
        end = min(pos + DASH, length)
        a = (int(round(x0 + ux * pos)), int(round(y0 + uy * pos)))
        b = (int(round(x0 + ux * end)), int(round(y0 + uy * end)))
        cv2.line(img, a, b, colour, thickness, cv2.LINE_8)
        pos += DASH + GAP


def dashed_rectangle(img: np.ndarray, bbox, colour, thickness: int = 2) -> None:
    """The outline of ``bbox`` (x0, y0, x1, y1; x1/y1 exclusive) in dashes, each edge starting with a dash."""
    x0, y0, x1, y1 = (int(v) for v in bbox)
    x1, y1 = x1 - 1, y1 - 1
    for p0, p1 in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        _dashed_line(img, p0, p1, colour, thickness)


def _center(bbox) -> tuple[float, float]:
    x0, y0, x1, y1 = bbox
    return (x0 + x1) / 2, (y0 + y1) / 2


def arrow_ends(anchor_box, target_box) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the arrow from an anchor to a target starts and ends: on the line between the box centres, from the
    anchor box's edge to the target box's edge (centre to centre when the boxes overlap along it)."""
    (ax, ay), (tx, ty) = _center(anchor_box), _center(target_box)
    dx, dy = tx - ax, ty - ay

    def leave(box) -> float:  # fraction of (dx, dy) from the box centre to its edge
        hw, hh = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        fx = hw / abs(dx) if dx else np.inf
        fy = hh / abs(dy) if dy else np.inf
        return min(fx, fy)

    if dx == 0 and dy == 0:
        return (int(ax), int(ay)), (int(tx), int(ty))
    fa, ft = leave(anchor_box), leave(target_box)
    if fa + ft >= 1:
        fa = ft = 0.0
    start = (int(round(ax + dx * fa)), int(round(ay + dy * fa)))
    end = (int(round(tx - dx * ft)), int(round(ty - dy * ft)))
    return start, end


def _arrow(img: np.ndarray, start, end, colour) -> None:
    length = float(np.hypot(end[0] - start[0], end[1] - start[1]))
    if length < 2:
        return
    # A head of about 14 px whatever the length (tipLength is a fraction of it).
    cv2.arrowedLine(img, start, end, colour, 2, cv2.LINE_AA, tipLength=min(0.5, 14.0 / length))


def _badge(img: np.ndarray, text: str, org: tuple[int, int], colour, scale: float = 0.5) -> int:
    """A filled box in the command's colour with ``text`` (the count) on it; returns its width."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 2)
    x, y = org
    x0, y0, x1, y1 = x - 2, y - h - 4, x + w + 6, y + base + 1
    cv2.rectangle(img, (x0, y0), (x1, y1), colour, cv2.FILLED)
    luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]  # BGR
    ink = (0, 0, 0) if luminance > 110 else (255, 255, 255)
    cv2.putText(img, text, (x + 2, y), FONT, scale, ink, 2, cv2.LINE_AA)
    return x1 - x0


def command_label(command) -> str:
    """The legend text of one command (a ``CommandResult``): found, or not found and why. The count itself
    goes on the badge."""
    if command.found:
        n = sum(t.found for t in command.targets)
        if command.count is not None:
            return command.command
        return f"{command.command}: found" + (f" ({n})" if n > 1 else "")
    why = command.reason if command.reason and command.reason != "not found" else ""
    return f"{command.command}: not found" + (f" - {why}" if why else "")


def heatmap_overlay(frame_bgr: np.ndarray, result: GroundingResult, alpha: float = 0.55) -> np.ndarray:
    """Blend a JET-coloured map of the highest query probability per pixel onto the frame."""
    if not result.queries:
        return frame_bgr.copy()
    prob = result.maps.max(axis=0)
    colour = cv2.applyColorMap(np.clip(prob * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    # cv2.blendLinear: the same per-pixel blend in one pass (7.8 -> 1.0 ms for 640x480 on the 2-core Xeon of
    # 2026-11-30) instead of numpy's float temporaries; it rounds where astype truncated (at most 1 level apart).
    w = np.ascontiguousarray(alpha * prob, dtype=np.float32)
    return cv2.blendLinear(np.ascontiguousarray(frame_bgr), colour, 1.0 - w, w)


def _per_query(result: GroundingResult) -> list[tuple[str, tuple, object]]:
    """(query, found targets, CommandResult or None) per query, in order. The command's own targets when the
    result has commands (they are what it resolved to), else the query's regions (a result made without)."""
    commands = result.commands if len(result.commands) == len(result.queries) else (None,) * len(result.queries)
    out = []
    for q, c in zip(result.queries, commands):
        targets = c.targets if c is not None else tuple(t for t in result.targets if t.query == q)
        out.append((q, tuple(t for t in targets if t.found), c))
    return out


def _stack(seen: dict, bbox) -> int:
    """How many boxes were placed on ``bbox`` before this one."""
    key = tuple(int(v) for v in bbox)
    seen[key] = seen.get(key, -1) + 1
    return seen[key]


def _put_label(img: np.ndarray, text: str, x: int, y: int, colour, scale: float = 0.5) -> None:
    """A label kept inside the frame: moved left when it would run off the right edge, down below the top."""
    w = cv2.getTextSize(text, FONT, scale, 1)[0][0]
    x = max(2, min(int(x), img.shape[1] - w - 3))
    _put_text(img, text, (x, max(int(y), 14)), colour, scale)


def _draw_relations(img: np.ndarray, targets: tuple, command, colour) -> None:
    """Anchor boxes dashed, each labelled with its noun phrase, and an arrow from each anchor to each target."""
    anchors = tuple(getattr(command, "anchors", ()) or ())
    for a in anchors:
        dashed_rectangle(img, a.bbox, colour)
    arrows = [(a, t) for t in targets for a in anchors][:MAX_ARROWS]
    for a, t in arrows:
        _arrow(img, *arrow_ends(a.bbox, t.bbox), colour)
    for a in anchors:
        x0, _, _, y1 = (int(v) for v in a.bbox)
        # Under the box, where it covers neither the dashes nor the target labels above boxes.
        th = cv2.getTextSize(a.text, FONT, 0.45, 1)[0][1]
        y = y1 + th + 5 if y1 + th + 10 < img.shape[0] else y1 - 6
        _put_label(img, a.text, x0 + 2, y, colour, scale=0.45)


def draw_overlay(frame_bgr: np.ndarray, result: GroundingResult | None, *, heatmap: bool = True,
                 fps: float | None = None, latency_ms: float | None = None, note: str = "") -> np.ndarray:
    """The frame with heatmap, one box + label per found target, the relations of commands resolved against
    anchors (dashed anchor boxes, arrows to the target), a legend with count badges and not-found reasons, and
    an FPS/latency line."""
    img = heatmap_overlay(frame_bgr, result) if (heatmap and result is not None) else frame_bgr.copy()
    if result is not None:
        rows = _per_query(result)
        # Commands often resolve to the same object ("the bottle left of ..." and "how many bottles"): each
        # further box on it is drawn a little inside the previous one and its label above the previous label,
        # so neither hides the other.
        stacked: dict[tuple, int] = {}
        placed = [[(t, _stack(stacked, t.bbox)) for t in targets] for _, targets, _ in rows]
        colours = query_colours(q for q, _, _ in rows)
        # Shapes first, then text on top of them: a label is never crossed by another command's line.
        for i, row in enumerate(placed):
            colour = colours[i]
            for t, k in row:
                x0, y0, x1, y1 = t.bbox
                cv2.rectangle(img, (x0 + 3 * k, y0 + 3 * k), (x1 - 1 - 3 * k, y1 - 1 - 3 * k), colour, 2)
                if t.peak is not None:
                    cv2.drawMarker(img, (int(t.peak[0]), int(t.peak[1])), colour, cv2.MARKER_CROSS, 12, 2)
        for i, (_, targets, command) in enumerate(rows):
            if command is not None:
                _draw_relations(img, targets, command, colours[i])
        for i, ((q, _, _), row) in enumerate(zip(rows, placed)):
            for t, k in row:
                label = f"{q} #{t.track_id} {t.score:.2f}" if t.track_id is not None else f"{q} {t.score:.2f}"
                _put_label(img, label, t.bbox[0] + 2, t.bbox[1] - 6 - 20 * k, colours[i])
        y = img.shape[0] - 10
        for i, (q, targets, command) in enumerate(rows):
            colour, org = colours[i], (8, y - 20 * i)
            if command is None:
                _put_text(img, f"{q}: {'found' if targets else 'not found'}", org, colour)
                continue
            x = org[0]
            if command.count is not None:
                x += _badge(img, str(command.count), org, colour) + 6
            _put_text(img, _fit(command_label(command), img.shape[1] - x - 8), (x, org[1]), colour)
    parts = []
    if fps is not None:
        parts.append(f"{fps:.1f} FPS")
    if latency_ms is not None:
        parts.append(f"latency {latency_ms:.0f} ms")
    if note:
        parts.append(note)
    if parts:
        _put_text(img, "  ".join(parts), (8, 20))
    return img


def window_view(img: np.ndarray, paused: bool = False) -> np.ndarray:
    """What the live window shows of an overlay frame: the quit hint in the top right corner and, while paused,
    a PAUSED mark in the middle (neither goes into a recording)."""
    out = img.copy()
    w = cv2.getTextSize(QUIT_HINT, FONT, 0.5, 1)[0][0]
    _put_text(out, QUIT_HINT, (max(2, out.shape[1] - w - 8), 20), (200, 200, 200))
    if paused:
        _paused_mark(out)
    return out


def _paused_mark(img: np.ndarray) -> None:
    big, small = ("PAUSED", 1.2, 2), ("vlmedge send resume", 0.5, 1)
    (bw, bh), _ = cv2.getTextSize(big[0], FONT, big[1], big[2])
    (sw, sh), _ = cv2.getTextSize(small[0], FONT, small[1], small[2])
    cx, cy = img.shape[1] // 2, img.shape[0] // 2
    x0, y0 = max(0, cx - max(bw, sw) // 2 - 14), max(0, cy - bh - 14)
    x1, y1 = min(img.shape[1], cx + max(bw, sw) // 2 + 14), min(img.shape[0], cy + sh + 22)
    img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * 0.2).astype(np.uint8)
    cv2.putText(img, big[0], (cx - bw // 2, cy), FONT, big[1], (255, 255, 255), big[2], cv2.LINE_AA)
    cv2.putText(img, small[0], (cx - sw // 2, cy + sh + 12), FONT, small[1], (220, 220, 220), small[2], cv2.LINE_AA)


# Where fonts usually are: the OpenCV wheels' Qt looks in cv2/qt/fonts, which they no longer ship.
SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts",
                    "/usr/local/share/fonts")


def _qt_font_dir() -> None:
    """Point Qt at the system fonts when the OpenCV wheel pointed it at a folder that does not exist.

    ``import cv2`` (opencv-python wheels, Qt backend) sets QT_QPA_FONTDIR to ``cv2/qt/fonts``, which those wheels
    no longer contain, so Qt printed "QFontDatabase: Cannot find font directory ..." five times per window. Qt
    reads the variable when the first window opens, so this runs just before that."""
    current = os.environ.get("QT_QPA_FONTDIR")
    if not current or Path(current).is_dir() or not gui_backend().upper().startswith("QT"):
        return
    for d in SYSTEM_FONT_DIRS:
        if Path(d).is_dir():
            os.environ["QT_QPA_FONTDIR"] = d
            return


def window_size(frame_w: int, frame_h: int, limit: tuple[int, int] = MAX_WINDOW) -> tuple[int, int]:
    """The (w, h) the window opens at: the frame's own size (1:1), a frame larger than ``limit`` scaled down to
    fit it, keeping its aspect ratio."""
    f = min(1.0, limit[0] / frame_w, limit[1] / frame_h)
    return max(1, round(frame_w * f)), max(1, round(frame_h * f))


class Window:
    """A HighGUI window; ``show(img)`` returns False once the user pressed q/Esc or closed it.

    It opens at the frame's size (1:1; resizable, keeping the aspect ratio), without HighGUI's toolbar, with a
    "q / Esc to quit" hint; ``show_idle(paused=True)`` marks the last frame PAUSED."""

    def __init__(self, title: str = "vlmedge"):
        ok, why = display_available()
        if not ok:
            raise BackendUnavailable("a display for --display", why + "; run with --no-display (headless)")
        self.title = title
        _qt_font_dir()
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as e:
            raise BackendUnavailable("a display for --display", f"OpenCV could not open a window ({e}); "
                                     "run with --no-display") from None
        self._open = True
        self._size: tuple[int, int] | None = None  # the frame size the window was sized for
        self._last: np.ndarray | None = None
        self._paused = False

    def _display(self, view: np.ndarray) -> None:
        size = (view.shape[1], view.shape[0])
        if size != self._size:  # the first frame, or the source changed size: 1:1 again
            self._size = size
            cv2.resizeWindow(self.title, *window_size(*size))
        cv2.imshow(self.title, view)

    def _alive(self) -> bool:
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def show(self, img: np.ndarray) -> bool:
        if not self._open:
            return False
        self._last, self._paused = img, False
        self._display(window_view(img))
        return self._alive()

    def show_idle(self, paused: bool = False) -> bool:
        """Keep the window responsive while no frame arrives; with ``paused`` the last frame is shown marked
        PAUSED. False once the user quit."""
        if not self._open:
            return False
        if paused and not self._paused and self._last is not None:
            self._paused = True
            self._display(window_view(self._last, paused=True))
        return (cv2.waitKey(1) & 0xFF) not in QUIT_KEYS

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass


class Recorder:
    """Writes overlay frames to a video file with cv2.VideoWriter (opened on the first frame)."""

    def __init__(self, path, fps: float = 15.0):
        self.path = str(path)
        self.fps = float(fps)
        self._writer = None
        self.frames = 0

    def write(self, img: np.ndarray) -> None:
        from vlmedge.errors import ConfigError

        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.lower().endswith((".mp4", ".m4v", ".mov"))
                                              else "MJPG"))
            self._writer = cv2.VideoWriter(self.path, fourcc, self.fps, (img.shape[1], img.shape[0]))
            if not self._writer.isOpened():
                self._writer = None
                raise ConfigError(f"--record {self.path!r}: OpenCV cannot write this file "
                                  "(check the folder exists and the extension is .mp4 or .avi)")
        self._writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            log.info("recorded %d frames to %s", self.frames, self.path)
