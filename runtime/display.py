"""Overlay drawing (similarity heatmap, boxes, labels, FPS, latency) and the live window."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from vlmedge.errors import BackendUnavailable
from vlmedge.runtime.grounding.results import GroundingResult

log = logging.getLogger(__name__)

# BGR colours, one per query in order.
PALETTE = ((0, 0, 255), (0, 200, 0), (255, 128, 0), (0, 200, 255), (255, 0, 255), (255, 255, 0), (128, 0, 255))
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc


def gui_backend() -> str:
    """The GUI backend OpenCV was built with ('GTK3', 'QT5', ...) or '' when none."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GUI":
            value = value.strip()
            return "" if value.upper() in ("", "NONE", "NO") else value
    return ""


def display_available() -> tuple[bool, str]:
    """(available, why not): a display server is set (DISPLAY/WAYLAND_DISPLAY) and OpenCV has a GUI."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    if not gui_backend():
        return False, ("this OpenCV build has no GUI backend (opencv-python-headless?); "
                       "install opencv-python to get windows")
    return True, ""


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], color=(255, 255, 255), scale: float = 0.5) -> None:
    """Text on a dark box (legible on any background, also after video compression)."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    x0, y0 = max(x - 2, 0), max(y - h - 3, 0)
    x1, y1 = min(x + w + 2, img.shape[1]), min(y + base + 1, img.shape[0])
    if x1 > x0 and y1 > y0:
        img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * 0.35).astype(np.uint8)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def heatmap_overlay(frame_bgr: np.ndarray, result: GroundingResult, alpha: float = 0.55) -> np.ndarray:
    """Blend a JET-coloured map of the highest query probability per pixel onto the frame."""
    if not result.queries:
        return frame_bgr.copy()
    prob = result.maps.max(axis=0)
    colour = cv2.applyColorMap(np.clip(prob * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    w = (alpha * prob)[..., None]
    return (frame_bgr * (1 - w) + colour * w).astype(np.uint8)


def draw_overlay(frame_bgr: np.ndarray, result: GroundingResult | None, *, heatmap: bool = True,
                 fps: float | None = None, latency_ms: float | None = None, note: str = "") -> np.ndarray:
    """The frame with heatmap, one box + label per found target, and an FPS/latency line."""
    img = heatmap_overlay(frame_bgr, result) if (heatmap and result is not None) else frame_bgr.copy()
    if result is not None:
        for t in result.targets:
            colour = PALETTE[result.queries.index(t.query) % len(PALETTE)]
            if not t.found:
                continue
            x0, y0, x1, y1 = t.bbox
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
            label = f"{t.query} #{t.track_id} {t.score:.2f}" if t.track_id is not None else f"{t.query} {t.score:.2f}"
            _put_text(img, label, (x0 + 2, max(y0 - 6, 14)), colour)
            if t.peak is not None:
                cv2.drawMarker(img, (int(t.peak[0]), int(t.peak[1])), colour, cv2.MARKER_CROSS, 12, 2)
        y = img.shape[0] - 10
        for i, q in enumerate(result.queries):
            found = any(t.found for t in result.targets_for(q))
            _put_text(img, f"{q}: {'found' if found else 'not found'}", (8, y - 18 * i),
                      PALETTE[i % len(PALETTE)])
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


class Window:
    """A HighGUI window; ``show(img)`` returns False once the user pressed q/Esc or closed it."""

    def __init__(self, title: str = "vlmedge"):
        ok, why = display_available()
        if not ok:
            raise BackendUnavailable("a display for --display", why + "; run with --no-display (headless)")
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise BackendUnavailable("a display for --display", f"OpenCV could not open a window ({e}); "
                                     "run with --no-display") from None
        self._open = True

    def show(self, img: np.ndarray) -> bool:
        if not self._open:
            return False
        cv2.imshow(self.title, img)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                return False
        except cv2.error:
            return False
        return True

    def show_idle(self) -> bool:
        """Keep the window responsive while no frame arrives; False once the user quit."""
        if not self._open:
            return False
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
