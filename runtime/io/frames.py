"""What the frame readers share: ``Frame``, the capture state names, the frame checksum, and
``FrameStream``, the newest-frame hand-off between a reader thread and its consumer.

Two readers build on ``FrameStream``: ``capture.Capture`` (a live source read continuously, with
watchdog and reconnect) and ``reader.OnDemandReader`` (a file or synthetic scene read one frame at a
time, when the consumer asks).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmedge.errors import ConfigError
from vlmedge.runtime.io.sources import FrameSource

log = logging.getLogger(__name__)


class CaptureState(str, enum.Enum):
    """A reader's state; the values are the wire format's ``vlmedge.protocol.CAPTURE_STATES``."""

    STARTING = "starting"
    RUNNING = "running"
    STALLED = "stalled"  # a live source stopped delivering new frames
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a finite source reached its end
    FAILED = "failed"
    STOPPED = "stopped"  # stop() was called

    def __str__(self) -> str:  # the wire name in messages and logs on every Python version
        return self.value


FINAL_STATES = frozenset({CaptureState.ENDED, CaptureState.FAILED, CaptureState.STOPPED})  # no frame comes after


@dataclass(frozen=True, eq=False)
class Frame:
    """One grabbed frame. ``t_capture_ns`` is ``time.monotonic_ns()`` at grab (for latency on this
    host); ``t_capture_unix_ns`` is ``time.time_ns()`` at the same moment (for messages)."""

    id: int
    image: np.ndarray
    t_capture_ns: int
    t_capture_unix_ns: int
    data: Any = None  # what OnDemandReader's ``process`` made of the image (e.g. the preprocessed pixels)

    @property
    def age_s(self) -> float:
        return (time.monotonic_ns() - self.t_capture_ns) / 1e9


def frame_checksum(image: np.ndarray) -> tuple:
    """Cheap identity of a frame: shape + CRC32 of a ~4k-pixel subsample."""
    h, w = image.shape[:2]
    step = max(1, int(((h * w) / 4096) ** 0.5))
    return image.shape, zlib.crc32(np.ascontiguousarray(image[::step, ::step]))


class FrameStream:
    """A reader thread publishes frames; ``latest()`` hands the newest one to the consumer.

    Subclasses start their threads in ``_begin()`` and call ``_publish`` for every new frame,
    ``_set_state`` on changes and, holding ``_close_lock``, ``_reader_exit_locked(source)`` when the
    reader thread returns.
    """

    reconnects = 0  # successful re-opens after a failure (only a live Capture reconnects)

    def __init__(self, source: FrameSource, what: str):
        if not isinstance(source, FrameSource):
            raise ConfigError(f"{what} needs a FrameSource (see open_source), got {type(source).__name__}")
        self.source = source
        # counters (read them any time)
        self.grabbed = 0  # new frames delivered by the source
        self.dropped = 0  # frames overwritten before latest() returned them
        self.last_error: str | None = None
        self._state = CaptureState.STARTING
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._consumed_id = -1
        self._next_id = 0
        self._times: deque[float] = deque(maxlen=120)
        self._reader: threading.Thread | None = None
        self._started = False
        self._close_lock = threading.Lock()
        self._reader_exited = False  # the current reader thread has finished
        self._reader_closes = False  # stop() timed out: the reader closes the source when it returns

    # ------------------------------------------------------------------------------------ public
    @property
    def state(self) -> CaptureState:
        return self._state

    @property
    def fps(self) -> float:
        """New frames per second over the last 2 s (0 when none arrive)."""
        now = time.monotonic()
        ts = [t for t in list(self._times) if now - t <= 2.0]
        if len(ts) < 2 or ts[-1] == ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0])

    @property
    def frame_age_s(self) -> float | None:
        f = self._latest
        return None if f is None else f.age_s

    def stats(self) -> dict:
        """Counters for status messages (``Capture`` adds ``camera_lag_ms`` and ``behind``)."""
        age = self.frame_age_s
        nominal = self.source.nominal_fps
        return {"source": self.source.describe(), "source_state": self._state.value,
                "capture_fps": round(self.fps, 3), "nominal_fps": None if nominal is None else round(nominal, 3),
                "grabbed": self.grabbed, "dropped": self.dropped, "skipped": self.source.skipped,
                "reconnects": self.reconnects, "frame_age_ms": None if age is None else round(age * 1000, 1),
                "source_error": self.last_error, "camera_lag_ms": None, "behind": False}

    def start(self, abort: threading.Event | None = None):
        """Open the source (raising SourceError if it cannot be opened now) and start the threads.
        (``abort`` is for readers whose open can be waited on, see ``Capture.start``.)"""
        if self._started:
            raise ConfigError(f"{type(self).__name__} already started")
        self.source.open()
        self._started = True
        self._begin()
        log.info("capturing from %s", self.source.describe())
        return self

    def latest(self, after_id: int | None = None, timeout: float | None = None) -> Frame | None:
        """The newest frame (with id > after_id when given), waiting up to ``timeout`` seconds (None:
        wait until one arrives or the stream ends). None on timeout or when the stream has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                f = self._latest
                if f is not None and (after_id is None or f.id > after_id):
                    if f.id > self._consumed_id:
                        self._consumed_id = f.id
                        self._cond.notify_all()
                    return f
                if self._state in FINAL_STATES or self._stop.is_set():
                    return None
                self._ask()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining if remaining is not None else 0.5)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the threads (joined within ``timeout``) and close the source. A read() that hangs
        inside the driver is left to finish in its daemon thread, which then closes its source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads():
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        try:
            with self._close_lock:
                if self._reader is not None and not self._reader_exited:
                    self._reader_closes = True
                    log.warning("capture: %s is stuck in read(); its daemon thread closes it when read() returns",
                                self.source.describe())
                elif self._started:
                    self.source.close()
        finally:  # stopped, even when the driver fails to release the source
            if self._state not in (CaptureState.ENDED, CaptureState.FAILED):
                self._set_state(CaptureState.STOPPED)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ for subclasses
    def _begin(self) -> None:
        raise NotImplementedError

    def _threads(self) -> tuple[threading.Thread | None, ...]:
        """The threads stop() joins."""
        return (self._reader,)

    def _ask(self) -> None:
        """Under the lock, when latest() has no new frame: ask the reader for one (on-demand readers)."""

    def _on_frame(self) -> None:
        """Under the lock, after a new frame was published."""

    def _end(self, error: str | None) -> None:
        """A finite source is done: "ended" at its end, "failed" (keeping the error) when a read failed."""
        if error is None:
            self._set_state(CaptureState.ENDED, "end of stream")
        else:
            self.last_error = error
            self._set_state(CaptureState.FAILED, error)

    def _set_state(self, state: CaptureState, why: str = "") -> None:
        with self._cond:
            if state == self._state:
                return
            old, self._state = self._state, state
            self._cond.notify_all()
        bad = (CaptureState.STALLED, CaptureState.RECONNECTING, CaptureState.FAILED)
        log.log(logging.WARNING if state in bad else logging.INFO, "capture %s: %s -> %s%s",
                self.source.describe(), old, state, f" ({why})" if why else "")

    def _publish(self, image: np.ndarray, stamp: tuple[int, int], data: Any = None) -> None:
        t_mono, t_unix = stamp
        with self._cond:
            if self._latest is not None and self._latest.id > self._consumed_id:
                self.dropped += 1
            frame = Frame(self._next_id, image, t_mono, t_unix, data)
            self._next_id += 1
            self._latest = frame
            self.grabbed += 1
            self._times.append(t_mono / 1e9)
            self.last_error = None
            self._on_frame()
            self._cond.notify_all()
        if self._state != CaptureState.RUNNING:
            self._set_state(CaptureState.RUNNING)

    def _reader_exit_locked(self, src: FrameSource) -> None:
        """The current reader thread returns (``_close_lock`` held): close its source if stop() gave up
        waiting for it."""
        self._reader_exited = True
        if self._reader_closes:
            src.close()
