"""The ``vlmedge run`` application: capture -> grounder -> publisher, with control, display, recording.

    from vlmedge.runtime.app import RunConfig, run
    summary = run(RunConfig(source="file:///data/clip.mp4", bundle="bundles/tabletop", max_frames=100))

Loop: a frame feed (``runtime/feeds.py``) delivers each frame with its preprocessing: live sources are
read continuously, keeping only the newest frame; files without ``realtime`` are read frame by frame
when the loop asks. Each iteration serves pending control requests (a new query takes effect on the
next frame), runs the image encoder alone on the cores, then has the feed read and preprocess the next
frame while it matches this one to the queries, publishes its targets (and heatmaps when enabled), and
draws/records/prints (an overlay video, or a ROS 2 bag: ``runtime/recording``), and hands the frame to the
browser view (``runtime/web``: drawn and sent from its own thread, its requests answered here like the control
socket's). While paused nothing is grounded (a file resumes where it stopped). A status
heartbeat thread publishes once a second, also while the camera is down. SIGINT/SIGTERM set a stop
flag; the loop exits within one frame (or 0.1 s while waiting for frames), then every resource is
closed in reverse order of opening (sockets with LINGER 0, the reader thread joined).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlmedge.errors import ConfigError
from vlmedge.runtime.config import RunConfig
from vlmedge.runtime.feeds import FrameFeed, capture_options, open_feed, want_prefetch

log = logging.getLogger(__name__)


class StopReason(str, enum.Enum):
    """Why a run ended (``RunSummary.stop_reason`` holds the value)."""

    MAX_FRAMES = "max_frames"  # RunConfig.max_frames frames were grounded
    SIGNAL = "signal"  # SIGINT / SIGTERM
    SOURCE_END = "source_end"  # the source ended or failed for good
    WINDOW = "window"  # the user closed the window or pressed q/Esc
    STOP_EVENT = "stop_event"  # the caller's stop_event was set


STOP_REASONS = tuple(r.value for r in StopReason)


@dataclass(frozen=True)
class RunSummary:
    """What a run did. Latencies are capture-to-publish, milliseconds."""

    frames: int  # frames grounded and published
    seconds: float  # wall time of the loop, startup included
    fps: float  # steady rate: (frames - 1) / (last publish - first publish)
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    stop_reason: str  # one of STOP_REASONS (a StopReason is stored as its value)
    queries: tuple[str, ...]  # the queries active at the end
    publish_endpoint: str | None
    control_endpoint: str | None
    dropped_frames: int  # frames the capture thread replaced before they were processed
    source_state: str
    recorded: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "stop_reason", StopReason(self.stop_reason).value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _curve(keys_dir):
    if keys_dir is None:
        return None
    from vlmedge.runtime.messaging.sockets import CurveServerKeys

    d = Path(keys_dir)
    secret = d / "server.key_secret"
    if not secret.is_file():
        raise ConfigError(f"--curve-keys {str(d)!r}: no server.key_secret in it; make keys with `vlmedge keys DIR`")
    clients = d / "clients"
    return CurveServerKeys(secret, clients if clients.is_dir() else None)


FPS_WINDOW_S = 3.0  # status.fps counts the frames published in this many seconds before it
CONTROL_REQUESTS_PER_FRAME = 8  # control requests served per loop iteration at most (a flood waits its turn)


class _Stats:
    """Frame counters shared with the heartbeat thread."""

    def __init__(self, window_s: float = FPS_WINDOW_S):
        self.t0 = time.monotonic()
        self.window_s = float(window_s)
        self.frames = 0
        self.latency_ms: float | None = None
        self.latencies: list[float] = []
        self.first_publish: float | None = None
        self._last = None
        self._published: deque[float] = deque()  # publish times within the last window (appended by the loop)

    def frame_done(self, latency_ms: float) -> None:
        now = time.monotonic()
        self._last = now
        if self.first_publish is None:
            self.first_publish = now
        self._published.append(now)
        while self._published[0] <= now - self.window_s:
            self._published.popleft()
        self.frames += 1
        self.latency_ms = latency_ms
        if len(self.latencies) < 100_000:
            self.latencies.append(latency_ms)

    def current_fps(self) -> float:
        """Frames per wall second: the frames published in the last ``window_s`` seconds, divided by that
        window (by the time since the start while shorter). A moving average of 1/dt would over-report a
        bursty or freezing camera several times over; this is what a subscriber counts."""
        now = time.monotonic()
        published = list(self._published)  # a copy: the loop thread appends while this one reads
        first = self.first_publish
        if first is None or not published:
            return 0.0
        if now - self.t0 < self.window_s:  # the first seconds: frames after the first over the time since it
            # (the startup before it made a slow ramp); one frame has no rate yet
            return (len(published) - 1) / max(now - first, 1e-6)
        return sum(1 for t in published if t > now - self.window_s) / self.window_s

    @property
    def fps(self) -> float:
        return self.current_fps()

    def steady_fps(self) -> float:
        """Frames per second between the first and the last publish (startup excluded)."""
        if self.frames < 2 or self._last is None or self._last <= self.first_publish:
            return 0.0
        return (self.frames - 1) / (self._last - self.first_publish)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) if self.latencies else None


class _Signals:
    """SIGINT/SIGTERM set the stop flag instead of raising KeyboardInterrupt mid-frame. Python runs
    handlers in the main thread only, so a run in another thread leaves them alone."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.caught = False
        self._old: dict = {}

    def _on_signal(self, _signum, _frame) -> None:
        self.caught = True
        self.stop.set()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        while self._old:
            sig, old = self._old.popitem()
            signal.signal(sig, old)

    @property
    def reason(self) -> StopReason:
        """Why the stop flag is set."""
        return StopReason.SIGNAL if self.caught else StopReason.STOP_EVENT


def _close_later(stack: contextlib.ExitStack, what: str, close: Callable[[], Any]) -> None:
    """Have ``stack`` call ``close`` when the run ends. An error there is logged and goes no further,
    so it neither hides the run's own error nor keeps the resources opened before it open."""
    def closer() -> None:
        try:
            close()
        except Exception:
            log.exception("error while closing the %s", what)
    stack.callback(closer)


@dataclass
class _Session:
    """Everything one run holds open, and the loop's state."""

    cfg: RunConfig
    grounder: Any
    stats: _Stats
    state: Any  # ControlState: queries, thresholds, pause
    signals: _Signals
    stop: threading.Event
    window: Any = None
    feed: FrameFeed | None = None
    recorder: Any = None  # the overlay video (--record out.mp4)
    bag: Any = None  # the ROS 2 bag (--record out.mcap)
    web: Any = None  # the browser view (--web)
    publisher: Any = None
    control: Any = None
    endpoints: dict = field(default_factory=lambda: {"publish": None, "control": None})
    last_print: float = 0.0

    @property
    def model(self) -> str:
        return self.grounder.manifest.model_id

    def status(self) -> dict:
        """The status heartbeat (published from the publisher's thread)."""
        snap, stats = self.state.snapshot(), self.stats
        return {**self.feed.frames.stats(), "fps": stats.current_fps(), "fps_window_s": stats.window_s,
                "latency_ms": stats.latency_ms, "queries": list(snap.queries), "paused": snap.paused,
                "model": self.model, "frames": stats.frames, "uptime_s": time.monotonic() - stats.t0,
                "threshold": snap.threshold}

    def status_key(self) -> tuple:
        """What a status message is published for at once when it changes (cheap: polled every 20 ms)."""
        frames = self.feed.frames
        return frames.state, self.state.paused, getattr(frames, "behind", False)

    def final_status(self, reason: StopReason | None, error: BaseException | None = None) -> dict:
        """The last status, published before the sockets close: how the run ended. The source state is the
        reader's when it ended by itself (ended, failed), else "stopped"; an error in the loop is "failed"."""
        status = self.status()
        state = self.feed.frames.state.value
        if error is not None:
            status.update(source_state="failed", stop_reason="error", error=f"{type(error).__name__}: {error}"[:300])
        else:
            final = reason is StopReason.SOURCE_END and state in ("ended", "failed")
            status.update(source_state=state if final else "stopped", stop_reason=reason.value)
        status["fps"] = 0.0 if status["source_state"] != "running" else status["fps"]
        return status

    def answer(self, data: bytes) -> dict:
        """A control request typed in the browser view -> its reply, exactly as the control socket answers it."""
        from vlmedge.runtime.messaging.control import answer_request

        return answer_request(data, self.state.handle, rules=self.state.query_rules)


# ------------------------------------------------------------------------------------------ stages

def _open(stack: contextlib.ExitStack, cfg: RunConfig, grounder, stop_event: threading.Event | None) -> _Session:
    """Open the run's resources in order, each closed by ``stack`` in reverse order when the run ends:
    sockets and recorder, then the feed (its reader thread stopped before its helper, so a helper waiting
    for a frame returns at once), then the signal handlers (a second Ctrl-C while threads are joined
    only sets the flag again), then the window."""
    from vlmedge.runtime.display import Recorder
    from vlmedge.runtime.io.sources import open_source
    from vlmedge.runtime.messaging.control import ControlServer, ControlState, Teacher

    stats = _Stats()
    state = ControlState(queries=cfg.queries, threshold=grounder.threshold, teacher=Teacher(grounder),
                         query_rules=_wire_rules(grounder))
    curve = _curve(cfg.curve_keys)
    stop = stop_event or threading.Event()
    s = _Session(cfg, grounder, stats, state, _Signals(stop), stop)
    s.window = _open_window(cfg, s.model)  # BackendUnavailable here if --display has none
    if s.window is not None:
        _close_later(stack, "window", s.window.close)
    _close_later(stack, "signal handlers", s.signals.restore)
    s.signals.install()
    source = cfg.source if not isinstance(cfg.source, str) else \
        open_source(cfg.source, loop=cfg.loop, realtime=cfg.realtime, size=cfg.input_size, fps=cfg.input_rate,
                    flip=cfg.input_flip, codec=cfg.input_codec, latency_ms=cfg.rtsp_latency_ms)
    s.feed = open_feed(source, grounder, want_prefetch(cfg.prefetch, grounder), capture_options(cfg))
    _close_later(stack, "frame feed", s.feed.close)  # stops the reader thread, then the feed's helper
    if cfg.record is not None and Path(cfg.record).suffix.lower() == ".mcap":
        from vlmedge.runtime.recording.bag import BagRecorder

        s.bag = BagRecorder(cfg.record, model=s.model)
        _close_later(stack, "bag recorder", s.bag.close)
    elif cfg.record is not None:
        s.recorder = Recorder(cfg.record, fps=getattr(s.feed.frames.source, "nominal_fps", None) or 15.0)
        _close_later(stack, "recorder", s.recorder.close)
    state.status_fn = s.status
    if cfg.publish:
        from vlmedge.runtime.messaging.publisher import Publisher

        s.publisher = Publisher(cfg.publish, heatmaps=cfg.heatmaps, curve=curve, model=s.model)
        _close_later(stack, "publisher", s.publisher.close)
        s.publisher.start_heartbeat(s.status, cfg.status_interval_s, changed=s.status_key)
        s.endpoints["publish"] = s.publisher.endpoint
    if cfg.control:
        s.control = ControlServer(cfg.control, state.handle, curve=curve, query_rules=state.query_rules)
        _close_later(stack, "control server", s.control.close)
        s.endpoints["control"] = s.control.endpoint
    if cfg.web:
        from vlmedge.runtime.web.server import WebView

        s.web = WebView(cfg.web, status_fn=s.status, model=s.model)
        _close_later(stack, "browser view", s.web.close)
        s.endpoints["web"] = s.web.url
    # Started once the status heartbeat runs: a live source is opened in its reader thread and retried until
    # it answers (status says "starting"/"reconnecting" meanwhile); a file or fail_fast opens here.
    s.feed.start(abort=s.stop)
    from vlmedge.preprocess import kernels_backend

    log.info("running: source %s, model %s, queries %s, publish %s, control %s, preprocessing %s", cfg.source,
             s.model, list(cfg.queries), s.endpoints["publish"], s.endpoints["control"], kernels_backend())
    return s


def _open_window(cfg: RunConfig, model: str):
    from vlmedge.runtime.display import Window, display_available

    show = cfg.display
    if show is None:
        show, why = display_available()
        if not show:
            log.info("headless: %s", why)
    return Window(f"vlmedge - {model}") if show else None


def _loop(s: _Session, on_result) -> StopReason:
    """Ground frames until a stop condition; returns why it stopped."""
    last_id = -1
    while not s.stop.is_set():
        if s.control is not None:
            # a bounded number per frame: a peer flooding the socket must not stall publishing (#14)
            if s.control.serve_pending(CONTROL_REQUESTS_PER_FRAME) and s.publisher is not None:
                s.publisher.status_changed()  # a pause or resume is announced at once
        if s.web is not None:  # requests typed in the browser view: the control socket's, answered alike
            if s.web.serve_requests(s.answer, CONTROL_REQUESTS_PER_FRAME) and s.publisher is not None:
                s.publisher.status_changed()
        if s.state.snapshot().paused:  # nothing is grounded while paused
            s.feed.pause()  # a live frame prepared before the pause would be stale after it
            if s.window is not None and not s.window.show_idle(paused=True):
                return StopReason.WINDOW
            s.stop.wait(0.02)
            continue
        item = s.feed.next(last_id)
        if item is None:
            if s.feed.ended:
                return StopReason.SOURCE_END
            if s.window is not None and not s.window.show_idle():
                return StopReason.WINDOW
            continue
        frame, prepared = item
        last_id = frame.id
        result = _ground(s, frame, prepared)
        if on_result is not None:
            on_result(result, frame)
        reason = _show(s, frame, result)
        if reason is not None:
            return reason
    return s.signals.reason


def _ground(s: _Session, frame, prepared):
    """Encode (alone on the cores), then match and publish while the feed prepares the next frame."""
    encoded = s.grounder.encode(prepared)
    s.feed.encoded(frame.id)
    # Control requests are served at the top of the loop only: one that arrives during this frame
    # is answered after its publish and applies from the next frame on (pause included).
    snap = s.state.snapshot()
    if snap.threshold != s.grounder.threshold:
        s.grounder.set_threshold(snap.threshold)
    result = s.grounder.match(encoded, snap.queries, thresholds=snap.thresholds or None)
    if s.publisher is not None:
        s.publisher.publish_result(result, frame)
    s.state.teacher.frame_grounded(frame.image, frame.id)  # a teach request's box refers to this frame
    s.stats.frame_done((time.monotonic_ns() - frame.t_capture_ns) / 1e6)
    return result


def _show(s: _Session, frame, result) -> StopReason | None:
    """Draw/record/show or print one grounded frame; a reason when the run should stop after it."""
    cfg = s.cfg
    overlay = None
    if s.window is not None or s.recorder is not None:
        from vlmedge.runtime.display import draw_overlay

        overlay = draw_overlay(frame.image, result, fps=s.stats.fps, latency_ms=s.stats.latency_ms)
        if s.recorder is not None:
            if not s.recorder.frames:  # the source is open now: its rate (measured when the stream has none)
                s.recorder.fps = s.feed.frames.source.nominal_fps or s.recorder.fps
            s.recorder.write(overlay)
    if s.bag is not None:
        s.bag.write(frame, result)  # encoded and written in the recorder's thread
    if s.web is not None:  # drawn and encoded in the server's thread, only when a viewer is ready for a frame
        s.web.offer(frame, result, overlay=overlay, fps=s.stats.fps, latency_ms=s.stats.latency_ms)
    if s.window is not None and not s.window.show(overlay):
        return StopReason.WINDOW
    if s.window is None and cfg.print_interval_s is not None:
        now = time.monotonic()
        if now - s.last_print >= cfg.print_interval_s:
            s.last_print = now
            print(_format_line(frame.id, result, s.stats), flush=True)
    if cfg.max_frames is not None and s.stats.frames >= cfg.max_frames:
        return StopReason.MAX_FRAMES
    return None


def _format_line(frame_id: int, result, stats: _Stats) -> str:
    parts = []
    for q in result.queries:
        best = result.best(q)
        command = result.command(q) if result.commands else None
        count = f" count={command.count}" if command is not None and command.count is not None else ""
        if best.found:
            extra = len(result.targets_for(q)) - 1
            parts.append(f"{q!r}: {best.score:.2f} bbox={list(best.bbox)} id={best.track_id}"
                         + (f" (+{extra} more)" if extra else "") + count)
        else:
            reason = f": {best.reason}" if best.reason and best.reason != "not found" else ""
            parts.append(f"{q!r}: not found ({best.score:.2f}){reason}{count}")
    lat = f"{stats.latency_ms:.0f} ms" if stats.latency_ms is not None else "-"
    fps = f"{stats.fps:.1f}" if stats.frames >= 2 else "-"  # one frame has no rate (it used to say 0.0)
    return f"frame {frame_id}: " + " | ".join(parts or ["no queries"]) + f"  [{fps} FPS, {lat}]"


def _summary(s: _Session, reason: StopReason) -> RunSummary:
    stats, frames = s.stats, s.feed.frames
    summary = RunSummary(
        frames=stats.frames, seconds=round(time.monotonic() - stats.t0, 3), fps=round(stats.steady_fps(), 3),
        latency_p50_ms=stats.percentile(50), latency_p99_ms=stats.percentile(99), stop_reason=reason,
        queries=tuple(s.state.snapshot().queries), publish_endpoint=s.endpoints["publish"],
        control_endpoint=s.endpoints["control"], dropped_frames=int(frames.dropped),
        source_state=frames.state.value, recorded=_recorded(s), extra=_extra(s))
    p50, p99 = summary.latency_p50_ms, summary.latency_p99_ms
    log.info("run finished (%s): %d frames in %.1f s (%.1f FPS), latency p50 %s ms p99 %s ms", summary.stop_reason,
             summary.frames, summary.seconds, summary.fps, f"{p50:.1f}" if p50 is not None else "-",
             f"{p99:.1f}" if p99 is not None else "-")
    return summary


def _recorded(s: _Session) -> int:
    return s.recorder.frames if s.recorder is not None else s.bag.frames if s.bag is not None else 0


def _extra(s: _Session) -> dict:
    """What the optional parts did: the bag's frames left out, the browser view's address and frames sent."""
    extra: dict = {}
    if s.feed.frames.state.value == "failed":
        extra["source_error"] = s.feed.frames.last_error  # the CLI exits non-zero with it
    if s.bag is not None:
        extra["bag"] = {"path": str(s.bag.path), "frames": s.bag.frames, "dropped": s.bag.dropped}
    if s.web is not None:
        extra["web"] = {"url": s.web.url, "frames_sent": s.web.frames_sent, "max_viewers": s.web.max_viewers}
    return extra


def _make_grounder(cfg: RunConfig, grounder):
    if grounder is None:
        from vlmedge.embedded import resolve_bundle
        from vlmedge.runtime.grounding.encoders import BundleEncoders
        from vlmedge.runtime.grounding.grounder import Grounder

        encoders = BundleEncoders(resolve_bundle(cfg.bundle), providers=list(cfg.providers) if cfg.providers else None,
                                  spinning=cfg.ort_spinning, backend=cfg.backend, text_idle_s=cfg.text_idle_s,
                                  memory_budget_mb=cfg.memory_budget_mb)
        return Grounder(encoders, threshold=cfg.threshold, smoothing=cfg.smoothing, taught=cfg.taught)
    if cfg.threshold is not None:
        grounder.set_threshold(cfg.threshold)
    return grounder


def run(config: RunConfig | dict | None = None, *, stop_event: threading.Event | None = None, grounder=None,
        on_ready=None, on_result=None) -> RunSummary:
    """Run the perception loop until max_frames, the end of the source, a signal, q/Esc, or ``stop_event``.

    ``grounder``: an existing Grounder to reuse (else one is built from ``config.bundle``).
    ``on_ready(endpoints: dict)`` is called once the sockets are bound (for tests and tools).
    ``on_result(result, frame)`` is called for every frame right after its targets were published.
    """
    if config is None:
        config = RunConfig()
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    elif not isinstance(config, RunConfig):
        raise ConfigError(f"run() needs a RunConfig (or a dict of its options), got {type(config).__name__}")
    grounder = _make_grounder(config, grounder)
    with contextlib.ExitStack() as stack:
        session = _open(stack, config, grounder, stop_event)
        if on_ready is not None:
            on_ready(dict(session.endpoints))
        try:
            reason = _loop(session, on_result)
        except BaseException as e:
            _publish_final(session, None, e)
            raise
        _publish_final(session, reason)
    return _summary(session, reason)


def _publish_final(s: _Session, reason: StopReason | None, error: BaseException | None = None) -> None:
    """The last status (with the reason), before the sockets close: a clean end of file must not look like a
    crash to a subscriber."""
    if s.publisher is None:
        return
    try:
        s.publisher.publish_final(s.final_status(reason, error))
    except Exception:  # never hide the run's own error or end behind this one
        log.exception("the final status was not published")


def _wire_rules(grounder):
    """The control socket's query rules: the wire's (normalized text) with the grounder's limits."""
    from vlmedge import protocol

    rules = getattr(grounder, "query_rules", None)
    if rules is None:
        return protocol.QUERY_RULES
    return protocol.QUERY_RULES.limited(max_count=rules.max_count, max_chars=rules.max_chars)


__all__ = ["RunConfig", "RunSummary", "STOP_REASONS", "StopReason", "run"]
