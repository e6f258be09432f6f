"""Capture thread: reads a FrameSource continuously and keeps only the newest frame.

A watchdog notices a camera that stops delivering NEW frames: ``read()`` returning None/raising,
``read()`` returning the same image over and over (OpenCV can keep returning True with a stale
buffer; detected by a checksum over a pixel subsample, live sources only), or ``read()`` blocking
for longer than ``stall_timeout`` (the stuck read is abandoned and a fresh ``source.clone()`` takes
over). It then reconnects with exponential backoff, for as long as it takes, without restarting
the process. A finite file ends with state "ended" (unless the source loops).

    with Capture(open_source("/dev/video0")) as cap:
        last = None
        while True:
            frame = cap.latest(after_id=last, timeout=0.5)
            if frame is None:
                if cap.state in ("ended", "failed"): break
                continue                      # camera down: keep publishing status
            last = frame.id
            ...
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vlmedge.errors import ConfigError, SourceError

from vlmedge.runtime.io.sources import FrameSource

log = logging.getLogger(__name__)

STATES = ("starting", "running", "stalled", "reconnecting", "ended", "failed", "stopped")
_FINAL = ("ended", "failed", "stopped")
NONE_TOLERANCE = 3  # consecutive failed reads of a live source before it counts as stalled
MAX_ABANDONED_READS = 2  # hung read() threads tolerated before the watchdog stops replacing sources


@dataclass(frozen=True, eq=False)
class Frame:
    """One grabbed frame. ``t_capture_ns`` is ``time.monotonic_ns()`` at grab (for latency on this
    host); ``t_capture_unix_ns`` is ``time.time_ns()`` at the same moment (for messages)."""

    id: int
    image: np.ndarray
    t_capture_ns: int
    t_capture_unix_ns: int
    data: Any = None  # what Capture's ``process`` made of the image (e.g. the preprocessed pixels)

    @property
    def age_s(self) -> float:
        return (time.monotonic_ns() - self.t_capture_ns) / 1e9


def frame_checksum(image: np.ndarray) -> tuple:
    """Cheap identity of a frame: shape + CRC32 of a ~4k-pixel subsample."""
    h, w = image.shape[:2]
    step = max(1, int(((h * w) / 4096) ** 0.5))
    return image.shape, zlib.crc32(np.ascontiguousarray(image[::step, ::step]))


class Capture:
    """Runs ``source`` in a thread; ``latest()`` returns the newest frame.

    stall_timeout: seconds without a new frame (or inside one read()) before the source counts as
    stalled and is reconnected. backoff: (first, max) delay in seconds between reconnect attempts,
    doubling after every failed attempt, reset by a new frame. max_attempts: consecutive failed
    reconnects before giving up with state "failed" (None: never). detect_repeats: treat identical
    consecutive frames as no frame (default: for live sources). on_demand: read a frame only when
    ``latest()`` or ``request()`` asks for one (files and synthetic scenes without real-time pacing:
    every frame, in order, none decoded in vain, ``t_capture_ns`` stamped at the read rather than a
    frame before the consumer wanted it). Not for live sources, which must be drained continuously.
    process: with on_demand, a function applied to each image in the reader thread before the frame
    is handed over (``Frame.data``; the exception when it raises), e.g. the model's preprocessing:
    the consumer calls ``request()``, does other work, and ``latest()`` then returns a frame that was
    read and processed without another thread in between.
    """

    def __init__(self, source: FrameSource, *, stall_timeout: float = 2.0, backoff: tuple[float, float] = (0.5, 8.0),
                 max_attempts: int | None = None, detect_repeats: bool | None = None, on_demand: bool = False,
                 process: Callable[[np.ndarray], Any] | None = None):
        if not isinstance(source, FrameSource):
            raise ConfigError(f"Capture needs a FrameSource (see open_source), got {type(source).__name__}")
        if not stall_timeout > 0:
            raise ConfigError(f"stall_timeout must be > 0 seconds, got {stall_timeout!r}")
        try:
            b0, b1 = (float(b) for b in backoff)
        except (TypeError, ValueError):
            raise ConfigError(f"backoff must be (first_s, max_s), got {backoff!r}") from None
        if not 0 < b0 <= b1:
            raise ConfigError(f"backoff must satisfy 0 < first <= max, got {backoff!r}")
        if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
            raise ConfigError(f"max_attempts must be a positive int or None, got {max_attempts!r}")
        self.source = source
        self.stall_timeout = float(stall_timeout)
        self.backoff = (b0, b1)
        self.max_attempts = max_attempts
        self.detect_repeats = source.is_live if detect_repeats is None else bool(detect_repeats)
        self.on_demand = bool(on_demand)
        if self.on_demand and source.is_live:
            raise ConfigError(f"on_demand capture needs a file, image or synthetic source; {source.describe()} is "
                              "live and must be read continuously")
        if process is not None and not self.on_demand:
            raise ConfigError("Capture(process=...) needs on_demand=True (a live capture would process every "
                              "frame it reads, most of them never used)")
        self.process = process
        self._demand = False  # on_demand: the consumer waits for a new frame
        self._reading = False  # on_demand: the requested read is under way
        # counters (read them any time)
        self.grabbed = 0  # new frames delivered by the source
        self.dropped = 0  # frames overwritten before latest() returned them
        self.repeats = 0  # identical consecutive frames ignored
        self.reconnects = 0  # successful re-opens after a failure
        self.reconnect_attempts = 0
        self.reconnect_delays: deque[float] = deque(maxlen=64)  # backoff delays used, oldest first
        self.last_error: str | None = None
        self._state = "starting"
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._consumed_id = -1
        self._next_id = 0
        self._times: deque[float] = deque(maxlen=120)
        self._failures = 0  # consecutive, sets the backoff
        self._gen = 0
        self._read_started: tuple[int, float] | None = None
        self._last_new = time.monotonic()
        self._reader: threading.Thread | None = None
        self._abandoned: list[threading.Thread] = []
        self._watchdog: threading.Thread | None = None
        self._started = False
        self._close_lock = threading.Lock()
        self._reader_exited = False  # the current reader thread has finished
        self._reader_closes = False  # stop() timed out: the reader closes the source when it returns

    # ------------------------------------------------------------------------------------ public
    @property
    def state(self) -> str:
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
        """Counters for status messages."""
        age = self.frame_age_s
        return {"source": self.source.describe(), "source_state": self._state, "capture_fps": round(self.fps, 3),
                "grabbed": self.grabbed, "dropped": self.dropped, "reconnects": self.reconnects,
                "frame_age_ms": None if age is None else round(age * 1000, 1)}

    def start(self) -> Capture:
        """Open the source (raising SourceError if it cannot be opened now) and start the threads."""
        if self._started:
            raise ConfigError("Capture already started")
        self.source.open()
        self._started = True
        self._last_new = time.monotonic()
        self._spawn_reader(self.source, opened=True)
        self._watchdog = threading.Thread(target=self._watch, name="vlmedge-capture-watchdog", daemon=True)
        self._watchdog.start()
        log.info("capturing from %s", self.source.describe())
        return self

    def latest(self, after_id: int | None = None, timeout: float | None = None) -> Frame | None:
        """The newest frame (with id > after_id when given), waiting up to ``timeout`` seconds (None:
        wait until one arrives or the capture ends). None on timeout or when the stream has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                f = self._latest
                if f is not None and (after_id is None or f.id > after_id):
                    if f.id > self._consumed_id:
                        self._consumed_id = f.id
                        self._cond.notify_all()
                    return f
                if self._state in _FINAL or self._stop.is_set():
                    return None
                self._ask()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining if remaining is not None else 0.5)

    def request(self) -> None:
        """on_demand: start reading (and processing) the next frame now, without waiting for it; the
        next ``latest()`` returns it. No effect on other captures or while a frame is unread."""
        if not self.on_demand:
            return
        with self._cond:
            if self._latest is None or self._latest.id <= self._consumed_id:  # not while a frame is unread
                self._ask()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the threads (joined within ``timeout``) and close the source. A read() that hangs
        inside the driver is left to finish in its daemon thread, which then closes its source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in (self._reader, self._watchdog):
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        with self._close_lock:
            if self._reader is not None and not self._reader_exited:
                self._reader_closes = True
                log.warning("capture: %s is stuck in read(); its daemon thread closes it when read() returns",
                            self.source.describe())
            elif self._started:
                self.source.close()
        if self._state not in ("ended", "failed"):
            self._set_state("stopped")

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- internals
    def _set_state(self, state: str, why: str = "") -> None:
        with self._cond:
            if state == self._state:
                return
            old, self._state = self._state, state
            self._cond.notify_all()
        level = logging.WARNING if state in ("stalled", "reconnecting", "failed") else logging.INFO
        log.log(level, "capture %s: %s -> %s%s", self.source.describe(), old, state, f" ({why})" if why else "")

    def _spawn_reader(self, src: FrameSource, opened: bool) -> None:
        gen = self._gen
        self._reader = threading.Thread(target=self._read_loop, args=(gen, src, opened),
                                        name=f"vlmedge-capture-{gen}", daemon=True)
        self._reader.start()

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._stop.is_set()

    def _next_delay(self) -> float:
        delay = min(self.backoff[0] * (2 ** max(0, self._failures - 1)), self.backoff[1])
        self.reconnect_delays.append(delay)
        return delay

    def _fail(self, why: str) -> None:
        self.last_error = why
        self._failures += 1

    def _read_loop(self, gen: int, src: FrameSource, opened: bool) -> None:
        last_sum = None
        nones = 0
        try:
            while self._current(gen):
                if not opened:
                    if self.max_attempts is not None and self._failures > self.max_attempts:
                        self._set_state("failed", f"gave up after {self.max_attempts} reconnect attempts: "
                                                  f"{self.last_error}")
                        return
                    delay = self._next_delay()
                    self._set_state("reconnecting", f"attempt {self.reconnect_attempts + 1} in {delay:.2f} s")
                    if self._stop.wait(delay) or not self._current(gen):
                        return
                    self.reconnect_attempts += 1
                    try:
                        src.open()
                    except Exception as e:  # SourceError, or a driver error
                        self._fail(f"reopen failed: {e}")
                        log.warning("capture: cannot reopen %s: %s", src.describe(), e)
                        continue
                    opened = True
                    self.reconnects += 1  # last_sum is kept: the same stale image after a reopen is no news
                    log.info("capture: reopened %s", src.describe())
                if self.on_demand and not self._wait_for_demand(gen):
                    return
                self._read_started = (gen, time.monotonic())
                err = None
                try:
                    image = src.read()
                except Exception as e:
                    image = None
                    err = f"read() raised {type(e).__name__}: {e}"
                finally:
                    if self._read_started is not None and self._read_started[0] == gen:
                        self._read_started = None
                if not self._current(gen):
                    return  # stopped, or abandoned by the watchdog while read() hung
                if image is None:
                    if not src.is_live:
                        if err is None:
                            self._set_state("ended", "end of stream")
                        else:
                            self.last_error = err
                            self._set_state("failed", err)
                        return
                    nones += 1
                    if nones < NONE_TOLERANCE and time.monotonic() - self._last_new < self.stall_timeout:
                        self._stop.wait(0.01)  # a one-off glitch (e.g. a corrupt packet): just read again
                        continue
                    nones = 0
                    why = err or f"read() returned no frame {NONE_TOLERANCE} times"
                    self._fail(why)
                    self._set_state("stalled", why)
                    src.close()
                    opened = False
                    continue
                nones = 0
                if self.detect_repeats:
                    s = frame_checksum(image)
                    if s == last_sum:
                        self.repeats += 1
                        stale_for = time.monotonic() - self._last_new
                        if stale_for > self.stall_timeout:
                            why = f"the same image repeated for {stale_for:.1f} s"
                            self._fail(why)
                            self._set_state("stalled", why)
                            src.close()
                            opened = False
                        continue
                    last_sum = s
                stamp = time.monotonic_ns(), time.time_ns()  # at grab, before any processing
                data = None
                if self.process is not None:
                    try:
                        data = self.process(image)
                    except Exception as e:  # handed to the consumer, which decides (app.run re-raises it)
                        data = e
                self._publish(image, stamp, data)
        except Exception as e:  # a bug, not a camera fault: fail loudly instead of leaving "running" forever
            log.exception("capture: reader thread crashed")
            if gen == self._gen:
                self.last_error = f"reader thread crashed: {type(e).__name__}: {e}"
                self._set_state("failed", self.last_error)
        finally:
            with self._close_lock:
                if gen != self._gen:
                    src.close()  # abandoned by the watchdog: close our own source once read() returned
                else:
                    self._reader_exited = True
                    if self._reader_closes:
                        src.close()

    def _ask(self) -> None:
        """on_demand, under the lock: ask the reader for one more frame (a request while one is asked
        for or being read is the same request)."""
        if self.on_demand and not self._demand and not self._reading:
            self._demand = True
            self._cond.notify_all()

    def _wait_for_demand(self, gen: int) -> bool:
        """on_demand: block until latest() asks for a frame; False when stopped or replaced."""
        with self._cond:
            self._reading = False  # the previous read is over, whatever it returned
            while not self._demand:
                if not self._current(gen):
                    return False
                self._cond.wait(0.1)
            self._demand, self._reading = False, True
        return self._current(gen)

    def _publish(self, image: np.ndarray, stamp: tuple[int, int], data: Any = None) -> None:
        t_mono, t_unix = stamp
        with self._cond:
            if self._latest is not None and self._latest.id > self._consumed_id:
                self.dropped += 1
            frame = Frame(self._next_id, image, t_mono, t_unix, data)
            self._next_id += 1
            self._latest = frame
            self._reading = False
            self.grabbed += 1
            self._times.append(t_mono / 1e9)
            self._last_new = time.monotonic()
            self._failures = 0
            self.last_error = None
            self._cond.notify_all()
        if self._state != "running":
            self._set_state("running")

    def _watch(self) -> None:
        period = min(0.1, self.stall_timeout / 4)
        while not self._stop.wait(period):
            started = self._read_started
            if started is None or started[0] != self._gen:
                continue
            hung = time.monotonic() - started[1]
            if hung <= self.stall_timeout:
                continue
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            if len(self._abandoned) >= MAX_ABANDONED_READS:
                self._set_state("stalled", f"read() blocked for {hung:.1f} s; too many hung reads to replace")
                continue
            try:
                fresh = self.source.clone()
            except NotImplementedError:
                self._set_state("stalled", f"read() blocked for {hung:.1f} s and the source cannot be cloned")
                continue
            why = f"read() blocked for {hung:.1f} s"
            self._fail(why)
            self._set_state("stalled", why + "; replacing the source")
            with self._close_lock:
                if self._reader is not None:
                    self._abandoned.append(self._reader)
                self._gen += 1
                self._reader_exited = False
                self.source = fresh
                self._spawn_reader(fresh, opened=False)


__all__ = ["Capture", "Frame", "STATES", "frame_checksum", "SourceError"]
