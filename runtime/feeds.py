"""Frame feeds: where the run loop gets its next ``(Frame, Prepared)`` from.

One interface, three strategies, picked by ``feed_kind``:

* ``PrefetchFeed`` (``prefetch``, spare cores): a thread preprocesses the newest captured frame
  continuously, beside the encoder.
* ``NextFrameFeed`` (live sources and paced files): nothing runs beside the encoder; when it has
  finished a frame, a helper thread takes the newest captured frame and preprocesses it while the loop
  matches and publishes the current one.
* ``OnDemandFeed`` (files and synthetic scenes without real-time pacing): the same timing, but the
  reader thread itself reads and preprocesses the next frame when asked (one hand-off each way
  instead of two), so every frame is grounded, in order.

The loop, per frame::

    item = feed.next(last_id)          # None: no new frame within WAIT_S (check feed.ended)
    encoded = grounder.encode(item[1])
    feed.encoded(item[0].id)           # the cores are free: read/preprocess the next frame now
    ...                                # match, publish
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from vlmedge.errors import ConfigError
from vlmedge.runtime.io import sources
from vlmedge.runtime.io.capture import Capture
from vlmedge.runtime.io.frames import FINAL_STATES, Frame, FrameStream
from vlmedge.runtime.io.reader import OnDemandReader
from vlmedge.runtime.io.sources import FrameSource

log = logging.getLogger(__name__)

WAIT_S = 0.1  # next() waits this long for a frame, so the loop notices stop requests and the window promptly


class FeedKind(str, enum.Enum):
    PREFETCH = "prefetch"
    NEXT_FRAME = "next_frame"
    ON_DEMAND = "on_demand"


def reads_on_demand(source: FrameSource) -> bool:
    """Files and synthetic scenes without real-time pacing: every frame, each read when the loop asks."""
    return not source.is_live and not getattr(source, "realtime", True)


def want_prefetch(prefetch: bool | None, grounder) -> bool:
    """``RunConfig.prefetch`` resolved: None = when a GPU encodes, or when this machine has cores beyond
    the encoder's threads (on fewer, preprocessing beside the encoder slows it by more than it saves)."""
    if prefetch is not None:
        return prefetch
    threads = int(getattr(grounder.encoders, "threads", 0) or 1)
    gpu = any(p != "CPUExecutionProvider" for p in getattr(grounder.encoders, "providers", []))
    return gpu or (os.cpu_count() or 1) >= threads + 2


def feed_kind(source: FrameSource, prefetch: bool) -> FeedKind:
    if prefetch:
        return FeedKind.PREFETCH
    return FeedKind.ON_DEMAND if reads_on_demand(source) else FeedKind.NEXT_FRAME


def check_source_options(cfg) -> dict[str, Any]:
    """The source fields of a RunConfig, checked (ConfigError naming the field) and normalized."""
    checks = {"loop": sources.check_loop, "input_size": sources._check_size, "input_rate": sources._check_fps,
              "input_flip": sources.check_flip, "input_codec": sources.check_codec,
              "rtsp_latency_ms": lambda v: None if v is None else sources.check_latency(v)}
    out = {}
    for name, check in checks.items():
        try:
            out[name] = check(getattr(cfg, name))
        except ConfigError as e:
            raise ConfigError(f"RunConfig.{name}: {e}") from None
    for name in ("stall_timeout_s", "open_timeout_s", "behind_s"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            raise ConfigError(f"RunConfig.{name} must be a number of seconds in (0, 3600], got {value!r}")
    try:
        b0, b1 = (float(b) for b in cfg.reconnect_backoff_s)
    except (TypeError, ValueError):
        raise ConfigError(f"RunConfig.reconnect_backoff_s must be (first_s, max_s), got "
                          f"{cfg.reconnect_backoff_s!r}") from None
    if not 0 < b0 <= b1 <= 3600:
        raise ConfigError(f"RunConfig.reconnect_backoff_s must satisfy 0 < first <= max <= 3600 s, got "
                          f"{cfg.reconnect_backoff_s!r}")
    out["reconnect_backoff_s"] = (b0, b1)
    m = cfg.max_reconnects
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        raise ConfigError(f"RunConfig.max_reconnects must be a positive int or None (never give up), got {m!r}")
    if not isinstance(cfg.fail_fast, bool):
        raise ConfigError(f"RunConfig.fail_fast must be True or False, got {cfg.fail_fast!r}")
    return out


def capture_options(cfg) -> dict[str, Any]:
    """``Capture`` keyword arguments from a RunConfig (stall, reconnect, open and staleness settings)."""
    return {"stall_timeout": cfg.stall_timeout_s, "backoff": tuple(cfg.reconnect_backoff_s),
            "max_attempts": cfg.max_reconnects, "open_timeout": cfg.open_timeout_s, "fail_fast": cfg.fail_fast,
            "behind_s": cfg.behind_s}


def open_feed(source: FrameSource, grounder, prefetch: bool, capture: dict[str, Any] | None = None) -> FrameFeed:
    """The feed for ``source`` (unstarted): its reader (``feed.frames``) and its preprocessing thread.
    ``capture``: keyword arguments for a live source's ``Capture`` (see ``capture_options``)."""
    kind = feed_kind(source, prefetch)
    if kind is FeedKind.ON_DEMAND:
        return OnDemandFeed(OnDemandReader(source, process=grounder.prepare))
    frames = OnDemandReader(source) if reads_on_demand(source) else Capture(source, **(capture or {}))
    if kind is FeedKind.PREFETCH:
        return PrefetchFeed(frames, grounder)
    return NextFrameFeed(frames, grounder)


class FrameFeed:
    """``(Frame, Prepared)`` pairs for the run loop. Owns its reader ``frames``: ``start()`` opens the
    source, ``close()`` stops the reader first (so a helper waiting on it returns at once), then the
    helper. An error in a helper thread is re-raised by ``next()``."""

    kind: FeedKind

    def __init__(self, frames: FrameStream):
        self.frames = frames

    @property
    def ended(self) -> bool:
        """No frame will come any more (end of file, failed source, stopped)."""
        return self.frames.state in FINAL_STATES

    def start(self, abort: threading.Event | None = None) -> FrameFeed:
        """Start the reader (a live one opens its source in its thread; ``abort`` cuts a fail-fast open short)."""
        self.frames.start(abort)
        return self

    def next(self, after_id: int) -> tuple[Frame, object] | None:
        """The next frame newer than ``after_id`` and its preprocessing; None when none came within WAIT_S."""
        raise NotImplementedError

    def encoded(self, frame_id: int) -> None:
        """The encoder has finished ``frame_id``: start on the next frame now (if this feed waits for that)."""

    def pause(self) -> None:
        """The loop paused: forget a frame that would be stale after the pause."""

    def close(self) -> None:
        try:
            self.frames.stop()
        finally:
            self._close_helper()

    def _close_helper(self) -> None:
        pass

    def __enter__(self) -> FrameFeed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class PrefetchFeed(FrameFeed):
    """Preprocesses the newest captured frame in a thread, so preprocessing overlaps the encoder."""

    kind = FeedKind.PREFETCH

    def __init__(self, frames: FrameStream, grounder):
        super().__init__(frames)
        self.grounder = grounder
        self._cond = threading.Condition()
        self._item = None
        self._error: BaseException | None = None
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlmedge-preprocess", daemon=True)

    def start(self, abort: threading.Event | None = None) -> PrefetchFeed:
        super().start(abort)
        self._thread.start()
        log.info("preprocessing runs in its own thread (prefetch)")
        return self

    def _run(self) -> None:
        last = -1
        try:
            while not self._stop.is_set():
                frame = self.frames.latest(after_id=last, timeout=WAIT_S)
                if frame is None:
                    if self.ended:
                        break
                    continue
                last = frame.id
                prepared = self.grounder.prepare(frame.image)
                with self._cond:
                    self._item = (frame, prepared)
                    self._cond.notify_all()
        except BaseException as e:  # handed to the loop
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def next(self, after_id: int):
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                item = self._item
                if item is not None and item[0].id > after_id:
                    return item
                remaining = deadline - time.monotonic()
                if self._done or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _close_helper(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)


class NextFrameFeed(FrameFeed):
    """For a live source: a helper thread preprocesses the newest frame while the loop matches the
    current one and publishes it. Nothing runs beside the encoder itself: on a machine with no core to
    spare, any work next to the encoder (even a frame read shortly before it ends) slows it by more
    than the work takes. So the next frame is fetched only after ``encoded()`` (or by ``next()`` itself
    when no fetch is under way)."""

    kind = FeedKind.NEXT_FRAME

    def __init__(self, frames: FrameStream, grounder):
        super().__init__(frames)
        self.grounder = grounder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlmedge-next-frame")
        self._job: tuple[int, Future] | None = None  # (after_id, fetch)

    def _fetch(self, after_id: int):
        frame = self.frames.latest(after_id=after_id, timeout=WAIT_S)
        return None if frame is None else (frame, self.grounder.prepare(frame.image))

    def _start(self, after_id: int) -> None:
        if self._job is None:
            self._job = (after_id, self._pool.submit(self._fetch, after_id))

    def encoded(self, frame_id: int) -> None:
        self._start(frame_id)

    def next(self, after_id: int):
        if self._job is not None and self._job[0] != after_id:
            self._job[1].result()  # a stale request (the loop skipped a frame): finish and drop it
            self._job = None
        self._start(after_id)
        job, self._job = self._job[1], None
        return job.result()

    def pause(self) -> None:
        if self._job is not None:
            try:
                self._job[1].result()
            finally:
                self._job = None

    def _close_helper(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class OnDemandFeed(FrameFeed):
    """For an on-demand reader that preprocesses in its own thread: ``encoded()`` asks it for the next
    frame (read and preprocessed while the loop matches and publishes), ``next()`` collects it."""

    kind = FeedKind.ON_DEMAND
    frames: OnDemandReader

    def encoded(self, frame_id: int) -> None:
        self.frames.request()

    def next(self, after_id: int):
        frame = self.frames.latest(after_id=after_id, timeout=WAIT_S)
        if frame is None:
            return None
        if isinstance(frame.data, BaseException):
            raise frame.data
        return frame, frame.data

    # pause(): nothing to forget, a file's next frame stays next (the file pauses with the loop)


__all__ = ["FeedKind", "FrameFeed", "NextFrameFeed", "OnDemandFeed", "PrefetchFeed", "capture_options",
           "check_source_options", "feed_kind", "open_feed", "reads_on_demand", "want_prefetch"]
