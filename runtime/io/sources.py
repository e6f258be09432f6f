"""Frame sources: one ``--source`` string -> a FrameSource that yields BGR uint8 frames.

Forms (the conventions Jetson users know):

=================================  =========================================================
``0``, ``1``                       camera index (V4L2 on Linux)
``/dev/video0``, ``v4l2:///dev/video0``   V4L2 device
``csi://0``                        Jetson CSI camera via GStreamer ``nvarguscamerasrc``
                                   (``?width=1280&height=720&fps=30&flip=0``)
``rtsp://...``, ``http(s)://...``  network stream (RTSP: GStreamer when OpenCV has it, else FFMPEG)
``rtp://@:5000``, ``rtp://IP:PORT``  RTP over UDP (GStreamer; ``codec=`` says what it carries)
``file://clip.mp4``, ``clip.mp4``  video file
``cup.jpg``, ``frames/``           an image, or a directory of images (sorted by name)
``... ! appsink``                  a raw GStreamer pipeline (contains ``!``)
``synthetic://tabletop``           seeded synthetic tabletop scenes with a red cup always in view
                                   (``?seed=3&fps=15&width=640&height=480&featured=red+cup``;
                                   ``featured=none`` for none, ``featured=red+cup,blue+ball``)
=================================  =========================================================

Sizes are ``(height, width)`` like ``frame.shape[:2]``. ``open_source`` only parses and checks;
``open()`` acquires the device (the Capture thread does that, and reopens after failures).

A GStreamer capture is never ``set()``: OpenCV's GStreamer backend restarts the pipeline on any property
change and ``rtspsrc`` does not survive that. Latency, buffering, size, rate and flips of network streams
are written into the pipeline instead (``rtspsrc latency=``, ``appsink drop=true max-buffers=1``).

Each ``read()`` leaves the frame's stream timestamp in ``last_stream_s`` (seconds, None when the source has
none): ``Capture`` measures how far behind the camera it is from them, and files are paced by them (a
variable-frame-rate file plays at its own timing).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from vlmedge.errors import BackendUnavailable, ConfigError, SourceError, did_you_mean
from vlmedge.spec import hw_pair
from vlmedge.validation import check_camera_index, check_frame_size, check_path_name, check_positive, check_seed

log = logging.getLogger(__name__)

SCHEMES = ("v4l2", "csi", "rtsp", "rtsps", "rtp", "http", "https", "file", "synthetic")
SYNTHETIC_SCENES = ("tabletop",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
OPEN_TIMEOUT_MS = 5000  # network streams: give up opening / reading after this long
READ_TIMEOUT_MS = 5000
RTSP_LATENCY_MS = 200  # rtspsrc jitter buffer (jetson-utils' default is 2000; lower = fresher frames)
RATE_PROBE_S = (0.6, 1.5)  # a stream with no frame rate of its own is measured for this long (min, max)

# --input-flip: jetson-utils' names -> how the frame is turned (cv2 on the CPU; nvvidconv flip-method for CSI)
FLIPS = ("none", "counterclockwise", "rotate-180", "clockwise", "horizontal", "upper-right-diagonal", "vertical",
         "upper-left-diagonal")  # in nvvidconv flip-method order (0..7)
# --input-codec for rtp:// (and an explicit RTSP depayloader): RTP encoding name, depayloader (+ parser)
CODECS = {"h264": ("H264", "rtph264depay ! h264parse"), "h265": ("H265", "rtph265depay ! h265parse"),
          "vp8": ("VP8", "rtpvp8depay"), "vp9": ("VP9", "rtpvp9depay"), "mjpeg": ("JPEG", "rtpjpegdepay")}

_GST_HINT = ("this OpenCV ({ver}, from {where}) was built without GStreamer. On a Jetson use the JetPack "
             "OpenCV: `sudo apt install python3-opencv` and `pip uninstall opencv-python` so the pip wheel "
             "does not shadow it (check: python3 -c \"import cv2; print(cv2.getBuildInformation())\" | grep "
             "GStreamer), or build OpenCV with -DWITH_GSTREAMER=ON. A USB camera works without it: "
             "--source /dev/video0")


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a dependency
        raise BackendUnavailable("OpenCV (cv2)", f"pip install opencv-python ({e})") from None
    return cv2


@lru_cache(maxsize=1)
def gstreamer_available() -> bool:
    """True when this OpenCV was built with GStreamer (cv2.getBuildInformation says 'GStreamer: YES')."""
    info = _cv2().getBuildInformation()
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return bool(m and m.group(1).upper().startswith("YES"))


def _require_gstreamer(what: str) -> None:
    if not gstreamer_available():
        cv2 = _cv2()
        raise BackendUnavailable(f"GStreamer support in OpenCV (needed for {what})",
                                 _GST_HINT.format(ver=cv2.__version__, where=os.path.dirname(cv2.__file__)))


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' (width x height, how cameras are usually described) -> (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m[1]) <= 0 or int(m[2]) <= 0:
        raise ConfigError(f"size {text!r} must look like WIDTHxHEIGHT, e.g. 640x480")
    return int(m[2]), int(m[1])


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, str):
        return check_frame_size(parse_size(size), f"size {size!r}")
    return check_frame_size(hw_pair("size (height, width) or 'WIDTHxHEIGHT'", size), "size")  # #14: no 149 GiB frames


def _check_fps(fps: Any) -> float | None:
    return None if fps is None else check_positive(fps, "fps", upper=1000.0)


def check_flip(flip: Any) -> str | None:
    """``--input-flip`` name (jetson-utils' names) or None."""
    if flip is None or flip == "none":
        return None
    if flip not in FLIPS:
        raise ConfigError(f"flip {flip!r} must be one of {list(FLIPS)}" + did_you_mean(str(flip), FLIPS))
    return flip


def check_codec(codec: Any) -> str | None:
    if codec is None:
        return None
    if not isinstance(codec, str) or codec.lower() not in CODECS:
        raise ConfigError(f"codec {codec!r} must be one of {list(CODECS)}" + did_you_mean(str(codec), CODECS))
    return codec.lower()


def check_loop(loop: Any) -> int:
    """``loop`` -> how many times a file rewinds at its end: -1 forever (True), 0 never (False), N times."""
    if loop is True:
        return -1
    if loop is False or loop is None:
        return 0
    if isinstance(loop, int) and loop >= -1:
        return loop
    raise ConfigError(f"loop must be True (forever), False, -1 (forever), 0 or a number of rewinds N >= 1, "
                      f"got {loop!r}")


def check_latency(latency_ms: Any) -> int:
    if latency_ms is None:
        return RTSP_LATENCY_MS
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, int) or not 0 <= latency_ms <= 60_000:
        raise ConfigError(f"latency_ms must be an int in [0, 60000] milliseconds, got {latency_ms!r}")
    return latency_ms


class _Pacer:
    """Sleeps so that successive ``wait()`` calls are 1/fps apart (never catches up a backlog), or, given
    the frames' stream timestamps, as far apart as those (a variable-frame-rate file keeps its timing)."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else 0.0
        self.next_t: float | None = None
        self._anchor: tuple[float, float] | None = None  # (monotonic, stream time) of a frame on schedule

    def wait(self, stream_s: float | None = None) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if stream_s is not None:
            a = self._anchor
            due = None if a is None or stream_s < a[1] else a[0] + (stream_s - a[1])
            if due is None or now - due > max(0.25, 2 * self.period):  # first frame, rewound, or far behind
                self._anchor = (now, stream_s)
            elif due > now:
                time.sleep(due - now)
            self.next_t = None
            return
        self._anchor = None
        if self.next_t is None or now - self.next_t > self.period:
            self.next_t = now
        elif self.next_t > now:
            time.sleep(self.next_t - now)
        self.next_t += self.period


def _resize(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or frame.shape[:2] == size:
        return frame
    return _cv2().resize(frame, (size[1], size[0]), interpolation=_cv2().INTER_AREA)


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return _cv2().cvtColor(frame, _cv2().COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return _cv2().cvtColor(frame, _cv2().COLOR_BGRA2BGR)
    return frame


def _flip(frame: np.ndarray, flip: str | None) -> np.ndarray:
    if flip is None:
        return frame
    cv2 = _cv2()
    if flip == "horizontal":
        return cv2.flip(frame, 1)
    if flip == "vertical":
        return cv2.flip(frame, 0)
    if flip == "upper-left-diagonal":
        return cv2.transpose(frame)
    if flip == "upper-right-diagonal":
        return cv2.flip(cv2.transpose(frame), -1)
    return cv2.rotate(frame, {"clockwise": cv2.ROTATE_90_CLOCKWISE, "rotate-180": cv2.ROTATE_180,
                              "counterclockwise": cv2.ROTATE_90_COUNTERCLOCKWISE}[flip])


class FrameSource:
    """Base class. ``read()`` returns a BGR uint8 [H, W, 3] frame, or None at end of stream / failure."""

    spec: str = ""
    is_live: bool = False  # a camera or network stream (may stall; never ends on its own)
    nominal_fps: float | None = None  # what the device/file says, or what was asked for, or measured
    last_stream_s: float | None = None  # stream timestamp of the last frame read (seconds), None: unknown
    skipped = 0  # frames that could not be decoded and were skipped (image folders)

    def open(self) -> None:
        """Acquire the device/file. Raises SourceError when it cannot be opened."""

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device/file (safe to call twice)."""

    def describe(self) -> str:
        return self.spec

    def clone(self) -> FrameSource:
        """A new, unopened source with the same settings (Capture uses it to replace a source whose
        read() hangs)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be cloned")

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class OpenCVSource(FrameSource):
    """A cv2.VideoCapture: cameras, network streams, GStreamer pipelines and video files.

    ``open_args`` is exactly what ``open()`` passes to ``cv2.VideoCapture`` (inspectable without
    connecting). ``realtime`` paces a file by its timestamps (or at ``fps`` when one was asked for);
    ``loop`` rewinds it at the end: -1 forever, 0 never, N times. ``fps`` on a network stream is the
    most frames per second it delivers (``--input-rate``); ``flip`` turns every frame (``--input-flip``).
    """

    def __init__(self, spec: str, target: int | str, api: int, *, kind: str, is_live: bool,
                 params: tuple[int, ...] = (), size: tuple[int, int] | None = None, fps: float | None = None,
                 loop: bool | int = False, realtime: bool = False, flip: str | None = None):
        self.spec = spec
        self.kind = kind
        self.is_live = is_live
        self.open_args: tuple[Any, ...] = (target, api, list(params)) if params else (target, api)
        self.size = size
        self.requested_fps = fps
        self.nominal_fps = fps
        self.loop = check_loop(loop)
        self.realtime = realtime
        self.flip = check_flip(flip)
        self.frame_count: int | None = None
        self.fps_measured = False  # nominal_fps was measured at open (the stream does not say its rate)
        self._measured_fps: float | None = None
        self.timestamps = True  # the backend's frame timestamps are the stream's (False: made up from a guess)
        self.last_stream_s: float | None = None
        self._cap = None
        self._pacer = _Pacer(None)
        self._read_since_rewind = 0
        self._rewinds = 0
        self._pending: np.ndarray | None = None  # a frame read while measuring the rate, handed out first
        self._last_out = 0.0  # monotonic time of the last delivered frame (input-rate limit)
        self._size_logged = False

    @property
    def gstreamer(self) -> bool:
        return self.open_args[1] == _cv2().CAP_GSTREAMER

    def clone(self) -> OpenCVSource:
        target, api, *rest = self.open_args
        return OpenCVSource(self.spec, target, api, kind=self.kind, is_live=self.is_live,
                            params=tuple(rest[0]) if rest else (), size=self.size, fps=self.requested_fps,
                            loop=self.loop, realtime=self.realtime, flip=self.flip)

    def open(self) -> None:
        cv2 = _cv2()
        self.close()
        target = self.open_args[0]
        if self.kind == "v4l2" and isinstance(target, str) and not os.path.exists(target):
            raise SourceError(f"cannot open V4L2 device {target}: no such device (is the camera plugged in? "
                              "list devices with `ls /dev/video*`)")
        if self.kind == "rtsp":
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        cap = cv2.VideoCapture(*self.open_args)
        if not cap.isOpened():
            cap.release()
            hint = {"camera": " (no camera with that index? is it used by another process? on Linux check "
                              "`ls /dev/video*` and that you are in the 'video' group)",
                    "v4l2": " (in use by another process? are you in the 'video' group?)",
                    "rtsp": f" (wrong URL or credentials, or unreachable within {OPEN_TIMEOUT_MS} ms)",
                    "http": f" (wrong URL, or unreachable within {OPEN_TIMEOUT_MS} ms)",
                    "rtp": " (nothing arriving on that port? is --input-codec right?)",
                    "file": " (not a video OpenCV/FFMPEG can decode?)"}.get(self.kind, "")
            raise SourceError(f"cannot open {self.kind} source {self.spec!r}{hint}")
        # Never set() a GStreamer capture: the backend restarts the pipeline on any property change and
        # rtspsrc does not survive it (no frame, then SIGABRT). Its buffering is in the pipeline text.
        if self.is_live and not self.gstreamer:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver queue short: we want the newest frame
            if self.size and self.kind in ("camera", "v4l2"):
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[1])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[0])
            if self.requested_fps and self.kind in ("camera", "v4l2"):
                cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        fps = cap.get(cv2.CAP_PROP_FPS)
        if self.requested_fps is None and fps and np.isfinite(fps) and 0 < fps <= 1000:
            self.nominal_fps = float(fps)
        if not self.is_live:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.frame_count = n if n > 0 else None
        self._cap = cap
        self._pacer = _Pacer((self.nominal_fps or 30.0) if self.realtime and not self.is_live else None)
        self._read_since_rewind = self._rewinds = 0
        self._pending, self.last_stream_s, self._last_out = None, None, 0.0
        if self.kind == "http" and int(cap.get(cv2.CAP_PROP_FOURCC) or 0).to_bytes(4, "little") == b"MJPG":
            # MJPEG over HTTP carries no rate and no timestamps (FFmpeg guesses 25 fps and makes them up from
            # that): measured at the first open; a reconnect keeps that rate and delivers at once
            self.timestamps = False
            if self.fps_measured:
                self.nominal_fps = self._measured_fps
            else:
                self._measure_rate()

    def _measure_rate(self) -> None:
        """Read for RATE_PROBE_S and take the median frame interval (a burst at connect counts little); the
        newest frame is kept for the first read()."""
        stamps: list[float] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < RATE_PROBE_S[1]:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                break
            stamps.append(time.monotonic())
            self._pending = frame
            if time.monotonic() - t0 >= RATE_PROBE_S[0] and len(stamps) >= 8:
                break
        gaps = np.diff(stamps)
        if len(gaps) < 4 or float(np.median(gaps)) <= 0:
            log.warning("%s: the stream does not say its frame rate and too few frames came to measure it",
                        self.spec)
            self.nominal_fps = self.requested_fps
            return
        measured = 1.0 / float(np.median(gaps))
        self.nominal_fps = self._measured_fps = min(measured, self.requested_fps) if self.requested_fps else measured
        self.fps_measured = True
        log.info("%s: measured %.1f fps (the stream does not say its rate)", self.spec, measured)

    def _grab(self) -> tuple[bool, np.ndarray | None]:
        """The next frame; a network stream with an --input-rate delivers at most that many per second (the
        frames between are decoded but not converted)."""
        cap = self._cap
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return True, frame
        if not (self.is_live and self.requested_fps and self.kind in ("rtsp", "http")) or self.gstreamer:
            return cap.read()
        gap = 0.95 / self.requested_fps
        while True:
            if not cap.grab():
                return False, None
            if time.monotonic() - self._last_out >= gap:
                return cap.retrieve()

    def _ended_early(self) -> str | None:
        """Why a file that stopped delivering did not reach its end (truncated or damaged), or None."""
        n, fps = self.frame_count, self.nominal_fps
        if not n or self._read_since_rewind >= n - 1:
            return None
        if self.last_stream_s is not None and fps and self.last_stream_s + max(0.5, 3 / fps) >= n / fps:
            return None  # the frame count was an estimate; the timestamps reached the end
        return (f"{self.spec}: the video ends after {self._read_since_rewind} of {n} frames (truncated, or "
                "damaged where reading stopped)")

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, frame = self._grab()
        if (not ok or frame is None) and not self.is_live:
            early = self._ended_early()
            if early and not (self.loop and self._read_since_rewind > 0):
                raise SourceError(early)
            if early:
                log.warning("%s; rewinding", early)
            if (self.loop == -1 or self._rewinds < self.loop) and self._read_since_rewind > 0:
                ok, frame = self._rewind()
        if not ok or frame is None:
            return None
        self._read_since_rewind += 1
        self._last_out = time.monotonic()
        pos = self._cap.get(_cv2().CAP_PROP_POS_MSEC) if self.timestamps else -1.0
        self.last_stream_s = pos / 1000.0 if pos is not None and np.isfinite(pos) and pos >= 0 else None
        if not self.is_live:
            self._pacer.wait(self.last_stream_s if self.requested_fps is None else None)
        frame = _flip(_to_bgr(frame), self.flip)
        if self.size is not None and frame.shape[:2] != self.size and not self._size_logged:
            log.info("%s delivers %dx%d; resizing to %dx%d", self.spec, frame.shape[1], frame.shape[0],
                     self.size[1], self.size[0])
            self._size_logged = True
        return _resize(frame, self.size)

    def _rewind(self) -> tuple[bool, np.ndarray | None]:
        """Back to the first frame, and read it."""
        rewinds = self._rewinds + 1
        self._cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)
        ok, frame = self._cap.read()
        if not ok:  # some containers cannot seek: reopen
            self.open()
            ok, frame = self._cap.read()
        self._rewinds, self._read_since_rewind = rewinds, 0
        return ok, frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        extra = []
        if self.frame_count:
            extra.append(f"{self.frame_count} frames")
        if self.nominal_fps:
            extra.append(f"{self.nominal_fps:.3g} fps" + (" measured" if self.fps_measured else ""))
        if self.loop:
            extra.append("loop" if self.loop == -1 else f"loop {self.loop}x")
        if self.flip:
            extra.append(f"flip {self.flip}")
        return f"{self.kind} {self.spec}" + (f" ({', '.join(extra)})" if extra else "")


def _undecodable(path: Path) -> str:
    """Why cv2.imread returned nothing for ``path``, in words."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    return f"not an image OpenCV can decode ({size} bytes starting {head!r})"


class ImageSource(FrameSource):
    """One image or a directory of images, read in name order; ``loop`` cycles (-1 forever, N times).

    An image in a folder that cannot be decoded is skipped with a warning and counted in ``skipped`` (a
    folder is a set of independent pictures: one damaged file does not spoil the others); a single image
    that cannot be decoded, or a folder where none can, is a SourceError."""

    def __init__(self, spec: str, paths: list[Path], *, loop: bool | int = False,
                 size: tuple[int, int] | None = None, fps: float | None = None, realtime: bool = False,
                 flip: str | None = None):
        if not paths:
            raise SourceError(f"source {spec!r}: no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.spec = spec
        self.paths = list(paths)
        self.loop = check_loop(loop)
        self.size = size
        self.requested_fps = fps
        self.nominal_fps = fps
        self.realtime = realtime
        self.flip = check_flip(flip)
        self.skipped = 0
        self._i = 0
        self._rewinds = 0
        self._decoded_any = False
        self._bad: set[int] = set()
        self._cache: dict[int, np.ndarray] = {}
        self._pacer = _Pacer(None)

    def clone(self) -> ImageSource:
        return ImageSource(self.spec, self.paths, loop=self.loop, size=self.size, fps=self.requested_fps,
                           realtime=self.realtime, flip=self.flip)

    def open(self) -> None:
        self._i = self._rewinds = 0
        self._pacer = _Pacer((self.nominal_fps or 30.0) if self.realtime else None)
        if len(self.paths) == 1 and self._load(0) is None:
            raise SourceError(f"cannot decode image {str(self.paths[0])!r}: {_undecodable(self.paths[0])}")

    def _load(self, i: int) -> np.ndarray | None:
        if i in self._cache:
            return self._cache[i]
        frame = _cv2().imread(str(self.paths[i]), _cv2().IMREAD_COLOR)
        if frame is None:
            return None
        frame = _resize(_flip(frame, self.flip), self.size)
        if len(self.paths) <= 64:  # a small set is looped from memory
            self._cache[i] = frame
        return frame

    def read(self) -> np.ndarray | None:
        while True:
            if self._i >= len(self.paths):
                if not self._decoded_any:
                    raise SourceError(f"source {self.spec!r}: none of its {len(self.paths)} images can be "
                                      f"decoded (first: {str(self.paths[0])!r}: {_undecodable(self.paths[0])})")
                if not (self.loop == -1 or self._rewinds < self.loop):
                    return None
                self._i = 0
                self._rewinds += 1
            i = self._i
            self._i += 1
            if i in self._bad:
                continue
            frame = self._load(i)
            if frame is not None:
                break
            self._bad.add(i)
            self.skipped += 1
            log.warning("skipping image %s: %s (%d skipped so far)", self.paths[i], _undecodable(self.paths[i]),
                        self.skipped)
        self._decoded_any = True
        self._pacer.wait()
        return frame.copy()

    def describe(self) -> str:
        what = f"image {self.paths[0]}" if len(self.paths) == 1 else f"{len(self.paths)} images in {self.spec}"
        return what + ("" if not self.loop else " (loop)" if self.loop == -1 else f" (loop {self.loop}x)")


class _PlaceholderScene:
    """Stand-in when vlmedge.scenes.render is not installed: a moving red disc on a table."""

    def __init__(self, seed: int, size: tuple[int, int], fps: float):
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.t = 0

    def read(self):
        cv2 = _cv2()
        h, w = self.size
        img = np.full((h, w, 3), (60, 110, 150), np.uint8)  # wooden table (BGR)
        cx = int(w * (0.5 + 0.3 * np.sin(self.t / 30.0)))
        cv2.circle(img, (cx, h // 2), max(4, min(h, w) // 10), (30, 30, 220), -1)
        noise = self.rng.integers(-6, 7, size=img.shape, dtype=np.int16)
        self.t += 1
        return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8), None


# Every object the README, docs and examples name, left to right (the default query "the red cup", "the blue
# ball", "the bottle left of the purple bottle", "how many bottles"); tests/test_docs_commands.py checks them.
DEFAULT_FEATURED: tuple[tuple[str, str], ...] = (("red", "cup"), ("green", "bottle"), ("blue", "ball"),
                                                 ("purple", "bottle"))


class SyntheticSource(FrameSource):
    """Seeded synthetic scenes (``vlmedge.scenes.render.TabletopStream``). ``last_scene`` holds the
    ground truth of the last frame. Paced at ``fps`` only with ``realtime=True``. ``featured``:
    ``(colour, kind)`` pairs always in view (default: ``DEFAULT_FEATURED``)."""

    def __init__(self, spec: str, scene: str = "tabletop", *, seed: int = 0, size: tuple[int, int] = (480, 640),
                 fps: float = 30.0, realtime: bool = False,
                 featured: tuple[tuple[str, str], ...] = DEFAULT_FEATURED):
        self.spec = spec
        self.scene = scene
        self.seed = seed
        self.featured = tuple(tuple(p) for p in featured)
        self.size = size
        self.nominal_fps = fps
        self.realtime = realtime
        self.placeholder = False
        self.last_scene: Any = None
        self._stream = None
        self._pacer = _Pacer(None)

    def clone(self) -> SyntheticSource:
        return SyntheticSource(self.spec, self.scene, seed=self.seed, size=self.size, fps=self.nominal_fps,
                               realtime=self.realtime, featured=self.featured)

    def open(self) -> None:
        try:
            from vlmedge.scenes.render import TabletopStream
        except ImportError as e:
            if getattr(e, "name", None) != "vlmedge.scenes.render":  # render itself missing, not a module it imports
                raise
            log.warning("vlmedge.scenes.render is not available; %s uses a placeholder scene", self.spec)
            self.placeholder = True
            self._stream = _PlaceholderScene(self.seed, self.size, self.nominal_fps)
        else:
            self._stream = TabletopStream(seed=self.seed, size=self.size, fps=self.nominal_fps,
                                          featured=self.featured)
        self._pacer = _Pacer(self.nominal_fps if self.realtime else None)

    def read(self) -> np.ndarray | None:
        if self._stream is None:
            return None
        out = self._stream.read()
        if out is None:
            return None
        frame, self.last_scene = out if isinstance(out, tuple) else (out, None)
        if frame is None:
            return None
        self._pacer.wait()
        return frame

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if callable(close):
            close()
        self._stream = None

    def describe(self) -> str:
        h, w = self.size
        feat = ", ".join(f"{c} {k}" for c, k in self.featured) or "none"
        return (f"synthetic {self.scene} (seed {self.seed}, {w}x{h} @ {self.nominal_fps:g} fps, featured {feat}"
                + (", placeholder" if self.placeholder else "") + ")")


# ------------------------------------------------------------------------------------------ parsing

def csi_pipeline(sensor_id: int = 0, *, width: int = 1280, height: int = 720, fps: float = 30.0,
                 flip: int = 0, out_size: tuple[int, int] | None = None) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) ending in a BGR appsink."""
    oh, ow = out_size or (height, width)
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={int(round(fps))}/1, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, width={ow}, height={oh}, format=BGRx ! "
            "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def _gst_tail(size: tuple[int, int] | None = None, fps: float | None = None) -> str:
    """Decoded video -> BGR appsink that keeps only the newest frame; size and rate reduced before the colour
    conversion (decode-side reduction: --input-size, --input-rate)."""
    rate = f"videorate drop-only=true max-rate={max(1, int(round(fps)))} ! " if fps else ""
    scale = f"videoscale ! video/x-raw, width={size[1]}, height={size[0]} ! " if size else ""
    return f"{rate}{scale}videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"


def rtsp_pipeline(url: str, latency_ms: int = RTSP_LATENCY_MS, *, size: tuple[int, int] | None = None,
                  fps: float | None = None, codec: str | None = None) -> str:
    """GStreamer pipeline for an RTSP stream (decodebin picks the hardware decoder on Jetson). rtspsrc's TCP
    timeout (20 s by default) is cut to OPEN_TIMEOUT_MS; ``codec`` names the depayloader instead of letting
    decodebin find it."""
    depay = f"{CODECS[codec][1]} ! " if codec else ""
    return (f"rtspsrc location={url} latency={latency_ms} tcp-timeout={OPEN_TIMEOUT_MS * 1000} ! {depay}"
            f"decodebin ! {_gst_tail(size, fps)}")


def rtp_pipeline(host: str, port: int, codec: str = "h264", latency_ms: int = RTSP_LATENCY_MS, *,
                 size: tuple[int, int] | None = None, fps: float | None = None) -> str:
    """GStreamer pipeline for RTP over UDP on ``host:port`` (``0.0.0.0`` for ``rtp://@:PORT``)."""
    name, depay = CODECS[codec]
    caps = f"application/x-rtp, media=video, clock-rate=90000, encoding-name={name}"
    return (f'udpsrc address={host} port={port} caps="{caps}" ! rtpjitterbuffer latency={latency_ms} ! {depay} ! '
            f"decodebin ! {_gst_tail(size, fps)}")


def _query_params(spec: str, query: str, allowed: dict[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise ConfigError(f"source {spec!r}: unknown parameter {key!r}; expected one of {sorted(allowed)}"
                              + did_you_mean(key, allowed))
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ConfigError(f"source {spec!r}: parameter {key}={value!r} must be "
                              f"{allowed[key].__name__}") from None
    return out


def _camera_api() -> int:
    cv2 = _cv2()
    return cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _path_source(spec: str, path_text: str, *, loop, size, fps, realtime: bool, flip) -> FrameSource:
    path = Path(check_path_name(path_text, f"source {spec[:60]!r}")).expanduser()
    if not path.exists():
        near = ""
        if path.parent.is_dir():
            near = did_you_mean(path.name, [p.name for p in path.parent.iterdir()])
        raise SourceError(f"source {spec!r}: no such file or directory {str(path)!r}{near}; expected a camera "
                          "index (0), /dev/videoN, csi://N, rtsp://..., a video/image file, a folder of images "
                          "or synthetic://tabletop")
    if path.is_dir():
        images = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                        key=_natural_key)
        if not images:
            raise SourceError(f"source {spec!r}: directory {str(path)!r} holds no images "
                              f"({', '.join(IMAGE_EXTENSIONS)})")
        return ImageSource(spec, images, loop=loop, size=size, fps=fps, realtime=realtime, flip=flip)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(spec, [path], loop=loop, size=size, fps=fps, realtime=realtime, flip=flip)
    return OpenCVSource(spec, str(path), _cv2().CAP_ANY, kind="file", is_live=False, size=size, fps=fps,
                        loop=loop, realtime=realtime, flip=flip)


def open_source(spec: str, *, loop: bool | int = False, size: tuple[int, int] | str | None = None,
                fps: float | None = None, realtime: bool = False, flip: str | None = None,
                codec: str | None = None, latency_ms: int | None = None) -> FrameSource:
    """Parse one ``--source`` string into an unopened FrameSource (see the module docstring).

    size: (height, width) or 'WIDTHxHEIGHT' wanted from the source (cameras are asked for it, GStreamer
    network streams scale before the colour conversion, everything else is resized to it). fps: camera frame
    rate to request / pacing rate of files / the most frames per second a network stream delivers.
    loop: rewind files and image folders at the end (True or -1: forever, N: N times). realtime: pace files
    and synthetic scenes like a camera (by their timestamps; default: as fast as they decode, for
    benchmarks). flip: one of FLIPS (jetson-utils' --input-flip). codec: what an rtp:// stream carries (one of
    CODECS; default h264), or the RTSP depayloader. latency_ms: the RTSP/RTP jitter buffer (GStreamer).
    Raises ConfigError (malformed spec), SourceError (missing file), BackendUnavailable (GStreamer).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"source must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    size = _check_size(size)
    fps = _check_fps(fps)
    loop = check_loop(loop)
    flip = check_flip(flip)
    codec = check_codec(codec)
    latency = check_latency(latency_ms)
    cv2 = _cv2()
    live = {"size": size, "fps": fps, "flip": flip}
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if codec and scheme not in ("rtp", "rtsp", "rtsps"):
        raise ConfigError(f"source {spec!r}: codec={codec!r} applies to rtp:// and rtsp:// sources only "
                          "(others say what they carry)")
    if "!" in spec:  # a raw GStreamer pipeline
        _require_gstreamer("a GStreamer pipeline source")
        return OpenCVSource(spec, spec, cv2.CAP_GSTREAMER, kind="gstreamer", is_live=True, **live)
    if spec.isdigit():
        return OpenCVSource(spec, check_camera_index(spec, f"source {spec[:30]!r}"), _camera_api(), kind="camera",
                            is_live=True, **live)
    if "://" not in spec:
        if re.fullmatch(r"/dev/video\d+", spec):
            return OpenCVSource(spec, spec, cv2.CAP_V4L2, kind="v4l2", is_live=True, **live)
        return _path_source(spec, spec, loop=loop, size=size, fps=fps, realtime=realtime, flip=flip)

    scheme, rest = spec.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"source {spec!r}: unknown scheme {scheme + '://'!r}; expected one of "
                          f"{', '.join(s + '://' for s in SCHEMES)}, a camera index, or a path"
                          + did_you_mean(scheme, [c for c in SCHEMES if sorted(c) == sorted(scheme)] or SCHEMES))
    if scheme == "v4l2":
        dev = rest if rest.startswith("/") else "/" + rest
        if not re.fullmatch(r"/dev/video\d+", dev):
            raise ConfigError(f"source {spec!r}: expected v4l2:///dev/videoN")
        return OpenCVSource(spec, dev, cv2.CAP_V4L2, kind="v4l2", is_live=True, **live)
    if scheme == "csi":
        sensor, _, query = rest.partition("?")
        if not sensor.isdigit():
            raise ConfigError(f"source {spec!r}: expected csi://SENSOR_ID, e.g. csi://0")
        params = _query_params(spec, query, {"width": int, "height": int, "fps": float, "flip": int})
        _require_gstreamer(f"CSI camera {spec}")
        cam_fps = params.get("fps", fps or 30.0)
        method = params.get("flip", FLIPS.index(flip) if flip else 0)
        pipe = csi_pipeline(int(sensor), width=params.get("width", 1280), height=params.get("height", 720),
                            fps=cam_fps, flip=method, out_size=size)
        return OpenCVSource(spec, pipe, cv2.CAP_GSTREAMER, kind="csi", is_live=True, fps=cam_fps)
    if scheme == "rtp":
        m = re.fullmatch(r"(@|[\w.-]*):(\d+)/?", rest)
        if not m or not 0 < int(m[2]) < 65536:
            raise ConfigError(f"source {spec!r}: expected rtp://@:PORT (any interface) or rtp://IP:PORT "
                              "(a local or multicast address)")
        _require_gstreamer(f"RTP source {spec}")
        host = "0.0.0.0" if m[1] in ("@", "") else m[1]
        pipe = rtp_pipeline(host, int(m[2]), codec or "h264", latency, size=size, fps=fps)
        return OpenCVSource(spec, pipe, cv2.CAP_GSTREAMER, kind="rtp", is_live=True, fps=fps, flip=flip)
    if scheme in ("rtsp", "rtsps", "http", "https"):
        if not rest or rest.startswith("/"):
            raise ConfigError(f"source {spec!r}: expected {scheme}://HOST[:PORT]/PATH")
        if scheme.startswith("rtsp") and gstreamer_available():
            pipe = rtsp_pipeline(spec, latency, size=size, fps=fps, codec=codec)
            return OpenCVSource(spec, pipe, cv2.CAP_GSTREAMER, kind="rtsp", is_live=True, fps=fps, flip=flip)
        params = (cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS)
        return OpenCVSource(spec, spec, cv2.CAP_FFMPEG, kind="rtsp" if scheme.startswith("rtsp") else "http",
                            is_live=True, params=params, **live)
    if scheme == "file":
        if not rest:
            raise ConfigError(f"source {spec!r}: expected file://PATH")
        return _path_source(spec, rest, loop=loop, size=size, fps=fps, realtime=realtime, flip=flip)
    # synthetic
    name, _, query = rest.partition("?")
    if name not in SYNTHETIC_SCENES:
        raise ConfigError(f"source {spec!r}: unknown synthetic scene {name!r}; expected one of "
                          f"{list(SYNTHETIC_SCENES)}" + did_you_mean(name, SYNTHETIC_SCENES))
    params = _query_params(spec, query, {"seed": int, "fps": float, "width": int, "height": int, "featured": str})
    h, w = size or (480, 640)
    syn_size = _check_size((params.get("height", h), params.get("width", w)))
    syn_fps = _check_fps(params.get("fps", fps or 30.0))
    featured = _parse_featured(spec, params["featured"]) if "featured" in params else DEFAULT_FEATURED
    seed = check_seed(params.get("seed", 0), f"source {spec!r}: seed")
    return SyntheticSource(spec, name, seed=seed, size=syn_size, fps=syn_fps, realtime=realtime,
                           featured=featured)


def _parse_featured(spec: str, text: str) -> tuple[tuple[str, str], ...]:
    """``featured=red cup,blue ball`` / ``none`` -> (colour, kind) pairs, checked when synthetic is installed."""
    try:
        from vlmedge.scenes.render import parse_featured
    except ImportError as e:
        if getattr(e, "name", None) != "vlmedge.scenes.render":  # render itself missing, not a module it imports
            raise
        text = text.strip().lower()
        return () if text in ("", "none") else tuple(tuple(p.split()[:2]) for p in text.split(","))  # type: ignore
    try:
        return parse_featured(text)
    except ConfigError as e:
        raise ConfigError(f"source {spec!r}: parameter featured={text!r}: {e}; expected 'COLOUR KIND' pairs "
                          "separated by commas (e.g. featured=red+cup) or featured=none") from None
