"""Live capture: reads a FrameSource continuously in a thread and keeps only the newest frame.

A watchdog notices a camera that stops delivering NEW frames: ``read()`` returning None/raising,
``read()`` returning the same image over and over (OpenCV can keep returning True with a stale
buffer; detected by a checksum over a pixel subsample, live sources only), or ``read()`` blocking
for longer than ``stall_timeout`` (the stuck read is abandoned and a fresh ``source.clone()`` takes
over). It then reconnects with exponential backoff, for as long as it takes, without restarting
the process. The source is opened the same way: in the reader thread, under the watchdog (an ``open()``
that hangs past ``open_timeout`` is abandoned like a hung read), retried with the same backoff when the
camera is not up yet (PoE cameras often boot after the computer); ``fail_fast`` opens it in ``start()``
instead and raises. A finite file ends with state "ended" (unless the source loops).

Staleness: when the source gives stream timestamps (``FrameSource.last_stream_s``), ``lag_s`` is how much
later than the camera's own clock a frame was grabbed, beyond the least delay seen since the source was
opened: it grows when decoding cannot keep up and frames queue in front of the decoder. ``behind`` is
True when it exceeds ``behind_s`` (or, without timestamps, when the capture rate stays under 3/4 of the
source's nominal rate). To read a file one
frame at a time, when the consumer is ready for it, use ``reader.OnDemandReader``.

    with Capture(open_source("/dev/video0")) as cap:
        last = None
        while True:
            frame = cap.latest(after_id=last, timeout=0.5)
            if frame is None:
                if cap.state in FINAL_STATES: break
                continue                      # camera down: keep publishing status
            last = frame.id
            ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from vlmedge.errors import ConfigError, SourceError
from vlmedge.runtime.io.frames import FINAL_STATES, CaptureState, Frame, FrameStream, frame_checksum
from vlmedge.runtime.io.sources import FrameSource

log = logging.getLogger(__name__)

NONE_TOLERANCE = 3  # consecutive failed reads of a live source before it counts as stalled
MAX_ABANDONED_READS = 2  # hung read()/open() threads tolerated before the watchdog stops replacing sources
DEFAULT_BACKOFF = (0.25, 2.0)  # first and longest wait between reconnect attempts, seconds
RATE_WARMUP_S = 3.0  # the capture rate is compared with the nominal one only after this long running


class Capture(FrameStream):
    """Runs ``source`` in a thread; ``latest()`` returns the newest frame.

    stall_timeout: seconds without a new frame (or inside one read()) before the source counts as
    stalled and is reconnected. backoff: (first, max) delay in seconds between reconnect attempts,
    doubling after every failed attempt, reset by a new frame. max_attempts: consecutive failed
    (re)connects before giving up with state "failed" (None: never). detect_repeats: treat identical
    consecutive frames as no frame (default: for live sources). open_timeout: seconds one ``open()``
    may take before it is abandoned (and retried). fail_fast: ``start()`` opens the source itself and
    raises SourceError when it cannot (no retry at start-up). behind_s: ``lag_s`` above this is
    ``behind``.
    """

    def __init__(self, source: FrameSource, *, stall_timeout: float = 2.0,
                 backoff: tuple[float, float] = DEFAULT_BACKOFF, max_attempts: int | None = None,
                 detect_repeats: bool | None = None, open_timeout: float = 10.0, fail_fast: bool = False,
                 behind_s: float = 1.0):
        super().__init__(source, "Capture")
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
        for name, value in (("open_timeout", open_timeout), ("behind_s", behind_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
        self.open_timeout = float(open_timeout)
        self.fail_fast = bool(fail_fast)
        self.behind_s = float(behind_s)
        self.stall_timeout = float(stall_timeout)
        self.backoff = (b0, b1)
        self.max_attempts = max_attempts
        self.detect_repeats = source.is_live if detect_repeats is None else bool(detect_repeats)
        # counters (read them any time)
        self.repeats = 0  # identical consecutive frames ignored
        self.reconnects = 0
        self.reconnect_attempts = 0
        self.reconnect_delays: deque[float] = deque(maxlen=64)  # backoff delays used, oldest first
        self._failures = 0  # consecutive, sets the backoff
        self._gen = 0  # bumped when the watchdog replaces a hung reader
        self._read_started: tuple[int, float, str] | None = None  # (generation, since, "read" or "open")
        self._last_new = time.monotonic()
        self._running_since = time.monotonic()
        self._offset_min: float | None = None  # least (grab time - stream time) since the source was opened
        self._last_stream_s: float | None = None
        self.lag_s: float | None = None  # camera-to-grab staleness of the newest frame (None: no timestamps)
        self._abandoned: list[threading.Thread] = []
        self._watchdog: threading.Thread | None = None

    @property
    def behind(self) -> bool:
        """The frames handed out are older than the camera's present by more than ``behind_s`` (or, without
        stream timestamps, the capture rate has stayed under 3/4 of the nominal rate)."""
        if self._state != CaptureState.RUNNING or not self.source.is_live:
            return False
        lag = self.lag_s
        if lag is not None:
            return lag > self.behind_s
        nominal = self.source.nominal_fps
        return bool(nominal and time.monotonic() - self._running_since > RATE_WARMUP_S and self.fps < 0.75 * nominal)

    def start(self, abort: threading.Event | None = None):
        """Start the reader thread, which opens a live source (retrying with backoff while it cannot). A file,
        or any source with ``fail_fast``: opened here first, raising SourceError when it cannot be opened within
        ``open_timeout`` (returns at once, not started, when ``abort`` is set meanwhile)."""
        if self._started:
            raise ConfigError(f"{type(self).__name__} already started")
        self._started = True
        now = self.fail_fast or not self.source.is_live  # a file that cannot be opened is an error, not a wait
        if now and not self._open_now(abort):
            return self
        self._begin(opened=now)
        log.info("capturing from %s", self.source.describe())
        return self

    # ---------------------------------------------------------------------------------- internals
    def _open_now(self, abort: threading.Event | None) -> bool:
        """open() in a helper thread, waited for up to open_timeout: True when open, False when aborted."""
        src, done, errors = self.source, threading.Event(), []
        abandoned = threading.Event()

        def target():
            try:
                src.open()
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()
                if abandoned.is_set():
                    src.close()
        threading.Thread(target=target, name="vlmedge-capture-open", daemon=True).start()
        deadline = time.monotonic() + self.open_timeout
        while not done.wait(0.05):
            if (abort is not None and abort.is_set()) or time.monotonic() > deadline:
                abandoned.set()
                if abort is not None and abort.is_set():
                    self._stop.set()
                    return False
                self.last_error = f"no answer from open() within {self.open_timeout:.1f} s"
                self._set_state(CaptureState.FAILED, self.last_error)
                raise SourceError(f"cannot open {src.describe()}: {self.last_error}")
        if errors:
            self.last_error = str(errors[0])
            self._set_state(CaptureState.FAILED, self.last_error)
            raise errors[0]
        return True

    def _begin(self, opened: bool = True) -> None:
        self._last_new = time.monotonic()
        self._spawn_reader(self.source, opened=opened)
        self._watchdog = threading.Thread(target=self._watch, name="vlmedge-capture-watchdog", daemon=True)
        self._watchdog.start()

    def _threads(self) -> tuple[threading.Thread | None, ...]:
        return self._reader, self._watchdog

    def _on_frame(self) -> None:
        self._last_new = time.monotonic()
        self._failures = 0

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

    def _stalled(self, src: FrameSource, why: str) -> None:
        self._fail(why)
        self._set_state(CaptureState.STALLED, why)
        src.close()

    def _reopen(self, gen: int, src: FrameSource) -> bool | None:
        """Open ``src`` (after the backoff when the last attempt failed): True when open, False to try again,
        None to give up."""
        if self.max_attempts is not None and self._failures > self.max_attempts:
            self.last_error = f"gave up after {self.max_attempts} attempts: {self.last_error}"
            self._set_state(CaptureState.FAILED, self.last_error)
            return None
        retry = self._failures > 0
        if retry:
            delay = self._next_delay()
            self._set_state(CaptureState.RECONNECTING, f"attempt {self.reconnect_attempts + 1} in {delay:.2f} s")
            if self._stop.wait(delay) or not self._current(gen):
                return None
            self.reconnect_attempts += 1
        self._read_started = (gen, time.monotonic(), "open")
        try:
            src.open()
        except Exception as e:  # SourceError, or a driver error
            if not self._current(gen):
                return None
            self._fail(f"{'reopen' if retry else 'open'} failed: {e}")
            log.warning("capture: cannot open %s: %s", src.describe(), e)
            return False
        finally:
            if self._read_started is not None and self._read_started[0] == gen:
                self._read_started = None
        if not self._current(gen):
            return None  # abandoned by the watchdog while open() hung; the reader's exit closes src
        self._offset_min = self._last_stream_s = None  # a new connection: a new stream clock
        if retry:
            self.reconnects += 1
            log.info("capture: reopened %s", src.describe())
        return True

    def _read(self, gen: int, src: FrameSource):
        """One read() under the watchdog's eye: (image or None, error text or None)."""
        self._read_started = (gen, time.monotonic(), "read")
        try:
            return src.read(), None
        except Exception as e:
            return None, f"read() raised {type(e).__name__}: {e}"
        finally:
            if self._read_started is not None and self._read_started[0] == gen:
                self._read_started = None

    def _read_loop(self, gen: int, src: FrameSource, opened: bool) -> None:
        last_sum = None  # kept across a reopen: the same stale image after it is no news
        nones = 0
        try:
            while self._current(gen):
                if not opened:
                    opened = self._reopen(gen, src)
                    if opened is None:
                        return
                    continue
                image, err = self._read(gen, src)
                if not self._current(gen):
                    return  # stopped, or abandoned by the watchdog while read() hung
                if image is None:
                    if not src.is_live:
                        self._end(err)
                        return
                    nones += 1
                    if nones < NONE_TOLERANCE and time.monotonic() - self._last_new < self.stall_timeout:
                        self._stop.wait(0.01)  # a one-off glitch (e.g. a corrupt packet): just read again
                        continue
                    nones = 0
                    self._stalled(src, err or f"read() returned no frame {NONE_TOLERANCE} times")
                    opened = False
                    continue
                nones = 0
                if self.detect_repeats:
                    s = frame_checksum(image)
                    if s == last_sum:
                        self.repeats += 1
                        stale_for = time.monotonic() - self._last_new
                        if stale_for > self.stall_timeout:
                            self._stalled(src, f"the same image repeated for {stale_for:.1f} s")
                            opened = False
                        continue
                    last_sum = s
                stamp = time.monotonic_ns(), time.time_ns()
                self._track_lag(src.last_stream_s, stamp[0] / 1e9)
                self._publish(image, stamp)
        except Exception as e:  # a bug, not a camera fault: fail loudly instead of leaving "running" forever
            log.exception("capture: reader thread crashed")
            if gen == self._gen:
                self.last_error = f"reader thread crashed: {type(e).__name__}: {e}"
                self._set_state(CaptureState.FAILED, self.last_error)
        finally:
            with self._close_lock:  # the watchdog replaces readers under this lock: _gen is settled here
                if gen != self._gen:
                    src.close()  # abandoned by the watchdog: close our own source once read() returned
                else:
                    self._reader_exit_locked(src)

    def _track_lag(self, stream_s: float | None, grabbed_s: float) -> None:
        if stream_s is None:
            self.lag_s = None
            return
        if self._last_stream_s is not None and stream_s < self._last_stream_s:
            self._offset_min = None  # the stream clock went back (a restarted stream): measure afresh
        self._last_stream_s = stream_s
        offset = grabbed_s - stream_s
        if self._offset_min is None or offset < self._offset_min:
            self._offset_min = offset
        self.lag_s = offset - self._offset_min

    def _set_state(self, state: CaptureState, why: str = "") -> None:
        if state == CaptureState.RUNNING and self._state != CaptureState.RUNNING:
            self._running_since = time.monotonic()
        super()._set_state(state, why)

    def stats(self) -> dict:
        lag = self.lag_s
        return {**super().stats(), "camera_lag_ms": None if lag is None else round(lag * 1000, 1),
                "behind": self.behind}

    def _watch(self) -> None:
        period = min(0.1, self.stall_timeout / 4, self.open_timeout / 4)
        while not self._stop.wait(period):
            started = self._read_started
            if started is None or started[0] != self._gen:
                continue
            hung = time.monotonic() - started[1]
            limit = self.open_timeout if started[2] == "open" else self.stall_timeout
            if hung <= limit:
                continue
            what = "open()" if started[2] == "open" else "read()"
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            if len(self._abandoned) >= MAX_ABANDONED_READS:
                self._set_state(CaptureState.STALLED, f"{what} blocked for {hung:.1f} s; too many hung calls "
                                                      "to replace")
                continue
            try:
                fresh = self.source.clone()
            except NotImplementedError:
                self._set_state(CaptureState.STALLED, f"{what} blocked for {hung:.1f} s and the source cannot "
                                                      "be cloned")
                continue
            why = (f"no answer from open() within {self.open_timeout:.1f} s" if started[2] == "open"
                   else f"read() blocked for {hung:.1f} s")
            self._fail(why)
            self._set_state(CaptureState.STALLED, why + "; replacing the source")
            with self._close_lock:
                if self._reader is not None:
                    self._abandoned.append(self._reader)
                self._gen += 1
                self._reader_exited = False
                self.source = fresh
                self._spawn_reader(fresh, opened=False)


__all__ = ["Capture", "CaptureState", "FINAL_STATES", "Frame", "frame_checksum", "SourceError"]
