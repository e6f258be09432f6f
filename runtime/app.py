"""The ``vlmedge run`` application: capture -> grounder -> publisher, with control, display, recording.

    from vlmedge.runtime.app import RunConfig, run
    summary = run(RunConfig(source="file:///data/clip.mp4", bundle="bundles/tabletop", max_frames=100))

Loop: the capture thread keeps only the newest frame (files without ``realtime``: reads every frame when
the loop asks); each iteration serves pending control requests (a new query takes effect on the next
frame), runs the image encoder alone on the cores, then has the next frame read and preprocessed (by the
capture thread for files, a helper thread for live sources) while it matches this one to the queries,
publishes its targets (and heatmaps when enabled), and draws/records/prints. While paused nothing is read
or preprocessed (a file resumes where it stopped). A status heartbeat thread publishes once a second,
also while the camera is down. SIGINT/SIGTERM set a stop flag; the loop exits within one frame (or
0.1 s while waiting for frames), joins the capture thread and closes sockets with LINGER 0.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge import protocol
from vlmedge.defaults import DEFAULT_QUERY, DEFAULT_SOURCE
from vlmedge.errors import ConfigError, ProtocolError, did_you_mean

log = logging.getLogger(__name__)

STOP_REASONS = ("max_frames", "signal", "source_end", "window", "stop_event")


def _address(name: str, value: Any) -> str | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "off")):
        return None
    from vlmedge.runtime.messaging.sockets import check_address

    return check_address(str(value), purpose=name)


@dataclass(frozen=True)
class RunConfig:
    """Options of one ``run``. Validated on construction (ConfigError naming the field)."""

    source: Any = DEFAULT_SOURCE  # source spec (synthetic://tabletop, file://clip.mp4, 0, csi://0...) or a FrameSource
    bundle: str | Path | None = None  # bundle directory; None = the embedded int8 demo bundle
    queries: tuple[str, ...] = (DEFAULT_QUERY,)  # initial commands (changeable over the control socket)
    display: bool | None = None  # live window: None = when a display exists, True = required, False = headless
    record: str | Path | None = None  # write the overlay video here (.mp4 / .avi)
    publish: str | None = protocol.DEFAULT_PUB_ADDRESS  # PUB address; None disables publishing
    control: str | None = protocol.DEFAULT_CONTROL_ADDRESS  # REP address; None disables control
    heatmaps: bool = False  # also publish per-query heatmaps
    max_frames: int | None = None  # stop after this many processed frames
    threshold: float | None = None  # override the manifest's grounding threshold
    loop: bool = False  # restart file sources at their end
    realtime: bool = True  # pace files and synthetic scenes at their fps, like a camera; False: every
    # frame, each read when the loop is ready for it
    curve_keys: str | Path | None = None  # folder from `vlmedge keys DIR`: CURVE-encrypt both sockets
    providers: tuple[str, ...] | None = None  # ONNX Runtime providers; None = best for the bundle target
    ort_spinning: bool = True  # ONNX Runtime workers spin-wait during each encode (False: sleep; busy machines)
    print_interval_s: float | None = 0.5  # headless: print targets at most this often (0: every frame, None: never)
    status_interval_s: float = 1.0  # status heartbeat period
    smoothing: bool = True  # temporal smoothing + stable track ids
    # Preprocess the newest frame in its own thread while the encoder runs (throughput = max of the two
    # stages instead of their sum). None = when this machine has CPU cores beyond the encoder's threads.
    prefetch: bool | None = None

    def __post_init__(self):
        from vlmedge.runtime.io.sources import FrameSource
        if not isinstance(self.source, FrameSource) and (not isinstance(self.source, str) or not self.source.strip()):
            raise ConfigError(f"RunConfig.source must be a source spec like 'synthetic://tabletop', '0' or "
                              f"'file://clip.mp4' (or a FrameSource), got {self.source!r}")
        qs = (self.queries,) if isinstance(self.queries, str) else self.queries
        try:
            object.__setattr__(self, "queries", tuple(protocol.normalize_queries(list(qs or ()), "RunConfig.queries")))
        except ProtocolError as e:
            raise ConfigError(str(e)) from None
        if self.prefetch not in (None, True, False):
            raise ConfigError(f"RunConfig.prefetch must be None (auto), True or False, got {self.prefetch!r}")
        if self.ort_spinning not in (True, False):
            raise ConfigError(f"RunConfig.ort_spinning must be True or False, got {self.ort_spinning!r}")
        if self.display not in (None, True, False):
            raise ConfigError(f"RunConfig.display must be None (auto), True or False, got {self.display!r}")
        object.__setattr__(self, "publish", _address("RunConfig.publish", self.publish))
        object.__setattr__(self, "control", _address("RunConfig.control", self.control))
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or isinstance(self.max_frames, bool)
                                            or self.max_frames < 1):
            raise ConfigError(f"RunConfig.max_frames must be a positive int or None, got {self.max_frames!r}")
        if self.threshold is not None:
            from vlmedge.runtime.grounding.grounder import check_threshold
            object.__setattr__(self, "threshold", check_threshold(self.threshold))
        if self.record is not None:
            ext = Path(self.record).suffix.lower()
            if ext not in (".mp4", ".m4v", ".mov", ".avi"):
                raise ConfigError(f"RunConfig.record {str(self.record)!r}: expected a .mp4 or .avi file name")
            if not Path(self.record).resolve().parent.is_dir():
                raise ConfigError(f"RunConfig.record {str(self.record)!r}: folder does not exist")
        if self.curve_keys is not None and not Path(self.curve_keys).is_dir():
            raise ConfigError(f"RunConfig.curve_keys {str(self.curve_keys)!r} is not a folder; "
                              "make one with `vlmedge keys DIR`")
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        for name in ("print_interval_s", "status_interval_s"):
            v = getattr(self, name)
            if v is None and name == "print_interval_s":
                continue
            if not isinstance(v, (int, float)) or v < 0 or (name == "status_interval_s" and v == 0):
                raise ConfigError(f"RunConfig.{name} must be a {'positive' if name == 'status_interval_s' else '>= 0'}"
                                  f" number of seconds, got {v!r}")

    @classmethod
    def from_dict(cls, options: dict) -> "RunConfig":
        """Build from a dict, refusing unknown keys with a did-you-mean suggestion."""
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                raise ConfigError(f"unknown run option {key!r}; expected one of {known}" + did_you_mean(key, known))
        return cls(**options)

    def replace(self, **changes) -> "RunConfig":
        """A copy with some options changed (same validation as from_dict)."""
        return RunConfig.from_dict({**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


@dataclass(frozen=True)
class RunSummary:
    """What a run did. Latencies are capture-to-publish, milliseconds."""

    frames: int  # frames grounded and published
    seconds: float  # wall time of the loop, startup included
    fps: float  # steady rate: (frames - 1) / (last publish - first publish)
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    stop_reason: str
    queries: tuple[str, ...]  # the queries active at the end
    publish_endpoint: str | None
    control_endpoint: str | None
    dropped_frames: int  # frames the capture thread replaced before they were processed
    source_state: str
    recorded: int = 0
    extra: dict = field(default_factory=dict)

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


class _Stats:
    """Frame counters shared with the heartbeat thread."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.frames = 0
        self.fps = 0.0
        self.latency_ms: float | None = None
        self.latencies: list[float] = []
        self.first_publish: float | None = None
        self._last = None

    def frame_done(self, latency_ms: float) -> None:
        now = time.monotonic()
        if self._last is not None:
            dt = max(now - self._last, 1e-6)
            self.fps = 1.0 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
        self._last = now
        if self.first_publish is None:
            self.first_publish = now
        self.frames += 1
        self.latency_ms = latency_ms
        if len(self.latencies) < 100_000:
            self.latencies.append(latency_ms)

    def current_fps(self, stale_s: float = 2.0) -> float:
        """The smoothed publish rate; 0 once nothing was published for ``stale_s`` (camera down, paused)."""
        if self._last is None or time.monotonic() - self._last > stale_s:
            return 0.0
        return self.fps

    def steady_fps(self) -> float:
        """Frames per second between the first and the last publish (startup excluded)."""
        if self.frames < 2 or self._last is None or self._last <= self.first_publish:
            return 0.0
        return (self.frames - 1) / (self._last - self.first_publish)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) if self.latencies else None


class _Prefetcher:
    """Preprocesses the newest captured frame in a thread, so preprocessing overlaps the encoder.

    ``latest(after_id, timeout) -> (Frame, Prepared) | None`` mirrors ``Capture.latest``; an error in
    the thread is re-raised in the caller.
    """

    def __init__(self, capture, grounder):
        self.capture, self.grounder = capture, grounder
        self._cond = threading.Condition()
        self._item = None
        self._error: BaseException | None = None
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlmedge-preprocess", daemon=True)

    def start(self) -> "_Prefetcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        last = -1
        try:
            while not self._stop.is_set():
                frame = self.capture.latest(after_id=last, timeout=0.1)
                if frame is None:
                    if self.capture.state in ("ended", "failed", "stopped"):
                        break
                    continue
                last = frame.id
                prepared = self.grounder.prepare(frame.image)
                with self._cond:
                    self._item = (frame, prepared)
                    self._cond.notify_all()
        except BaseException as e:  # handed to the main loop
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def latest(self, after_id: int, timeout: float):
        deadline = time.monotonic() + timeout
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

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class _NextFrame:
    """For a live source: preprocesses the newest frame in a helper thread while the loop matches the
    current one and publishes it (on-demand files use ``_ReadWhenAsked``). Nothing runs beside the
    encoder itself: on a 2-core CPU, work next to a 2-thread encoder slowed it by more than the work
    took (measured: a 2.3 ms preprocessing during the encoder's last 3 ms made it 4.5 ms slower; even
    a 0.4 ms frame read 2 ms before its end cost ~1%).

    ``start(after_id)`` begins after the encoder; ``take(after_id)`` returns its ``(Frame, Prepared)``
    or None (no new frame within 0.1 s), starting the fetch itself when none is running. Errors
    in the helper are re-raised there.
    """

    def __init__(self, capture, grounder):
        from concurrent.futures import ThreadPoolExecutor

        self.capture, self.grounder = capture, grounder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlmedge-next-frame")
        self._job = None

    def _fetch(self, after_id: int):
        frame = self.capture.latest(after_id=after_id, timeout=0.1)
        return None if frame is None else (frame, self.grounder.prepare(frame.image))

    def start(self, after_id: int) -> None:
        if self._job is None:
            self._job = (after_id, self._pool.submit(self._fetch, after_id))

    def take(self, after_id: int):
        if self._job is not None and self._job[0] != after_id:
            self._job[1].result()  # a stale request (the loop skipped a frame): finish and drop it
            self._job = None
        self.start(after_id)
        job, self._job = self._job[1], None
        return job.result()

    def drop(self) -> None:
        """Forget the frame being prepared (the loop paused)."""
        if self._job is not None:
            try:
                self._job[1].result()
            finally:
                self._job = None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ReadWhenAsked:
    """``_NextFrame`` for an on-demand capture that preprocesses in its own reader thread: ``start``
    asks it for the next frame (read + preprocessed while the loop matches and publishes), ``take``
    returns ``(Frame, Prepared)``. One hand-off each way instead of two."""

    def __init__(self, capture):
        self.capture = capture

    def start(self, after_id: int) -> None:
        self.capture.request()

    def take(self, after_id: int):
        frame = self.capture.latest(after_id=after_id, timeout=0.1)
        if frame is None:
            return None
        if isinstance(frame.data, BaseException):
            raise frame.data
        return frame, frame.data

    def drop(self) -> None:
        """Nothing to forget: a file's next frame stays next (the file pauses with the loop)."""

    def close(self) -> None:
        pass


def _want_prefetch(cfg: RunConfig, grounder) -> bool:
    if cfg.prefetch is not None:
        return cfg.prefetch
    import os

    threads = int(getattr(grounder.encoders, "threads", 0) or 1)
    gpu = any(p != "CPUExecutionProvider" for p in getattr(grounder.encoders, "providers", []))
    return gpu or (os.cpu_count() or 1) >= threads + 2


def _format_line(frame_id: int, result, stats: _Stats) -> str:
    parts = []
    for q in result.queries:
        best = result.best(q)
        if best.found:
            extra = len(result.targets_for(q)) - 1
            parts.append(f"{q!r}: {best.score:.2f} bbox={list(best.bbox)} id={best.track_id}"
                         + (f" (+{extra} more)" if extra else ""))
        else:
            parts.append(f"{q!r}: not found ({best.score:.2f})")
    lat = f"{stats.latency_ms:.0f} ms" if stats.latency_ms is not None else "-"
    return f"frame {frame_id}: " + " | ".join(parts or ["no queries"]) + f"  [{stats.fps:.1f} FPS, {lat}]"


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
    cfg = config
    from vlmedge.runtime.io.capture import Capture
    from vlmedge.runtime.display import Recorder, Window, display_available, draw_overlay
    from vlmedge.embedded import resolve_bundle
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.runtime.io.sources import open_source

    if grounder is None:
        grounder = Grounder(resolve_bundle(cfg.bundle), providers=list(cfg.providers) if cfg.providers else None,
                            threshold=cfg.threshold, smoothing=cfg.smoothing, spinning=cfg.ort_spinning)
    elif cfg.threshold is not None:
        grounder.set_threshold(cfg.threshold)
    model = grounder.manifest.model_id

    from vlmedge.runtime.messaging.control import ControlServer, ControlState

    stats = _Stats()
    state = ControlState(queries=cfg.queries, threshold=grounder.threshold)
    curve = _curve(cfg.curve_keys)
    show = cfg.display
    if show is None:
        show, why = display_available()
        if not show:
            log.info("headless: %s", why)
    window = Window(f"vlmedge - {model}") if show else None  # BackendUnavailable if --display has none

    stop = stop_event or threading.Event()
    reason = {"value": "stop_event"}
    installed: dict = {}
    if threading.current_thread() is threading.main_thread():
        def _on_signal(signum, _frame):
            reason["value"] = "signal"
            stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            installed[sig] = signal.signal(sig, _on_signal)

    capture = publisher = control = recorder = prefetcher = preparer = None
    result = None
    try:
        source = cfg.source if not isinstance(cfg.source, str) else \
            open_source(cfg.source, loop=cfg.loop, realtime=cfg.realtime)
        # Files and synthetic scenes without real-time pacing: every frame, read (and preprocessed, in
        # the capture thread) when the loop asks.
        on_demand = not source.is_live and not getattr(source, "realtime", True)
        prefetch = _want_prefetch(cfg, grounder)
        capture = Capture(source, on_demand=on_demand,
                          process=grounder.prepare if on_demand and not prefetch else None)
        capture.start()
        if prefetch:
            prefetcher = _Prefetcher(capture, grounder).start()
            log.info("preprocessing runs in its own thread (prefetch)")
        elif on_demand:
            preparer = _ReadWhenAsked(capture)
        else:
            preparer = _NextFrame(capture, grounder)

        def status() -> dict:
            snap = state.snapshot()
            return {**capture.stats(), "fps": stats.current_fps(), "latency_ms": stats.latency_ms,
                    "queries": list(snap.queries), "paused": snap.paused, "model": model, "frames": stats.frames,
                    "uptime_s": time.monotonic() - stats.t0, "threshold": snap.threshold}

        state.status_fn = status
        if cfg.publish:
            from vlmedge.runtime.messaging.publisher import Publisher
            publisher = Publisher(cfg.publish, heatmaps=cfg.heatmaps, curve=curve, model=model)
            publisher.start_heartbeat(status, cfg.status_interval_s)
        if cfg.control:
            control = ControlServer(cfg.control, state.handle, curve=curve)
        endpoints = {"publish": publisher.endpoint if publisher else None,
                     "control": control.endpoint if control else None}
        from vlmedge.preprocess import kernels_backend

        log.info("running: source %s, model %s, queries %s, publish %s, control %s, preprocessing %s", cfg.source,
                 model, list(cfg.queries), endpoints["publish"], endpoints["control"], kernels_backend())
        if on_ready is not None:
            on_ready(endpoints)

        last_id = -1
        last_print = 0.0
        while not stop.is_set():
            if control is not None:
                while control.poll_once(0):
                    pass
            if state.snapshot().paused:  # nothing is grounded, and no frame is read or preprocessed for it
                if preparer is not None:
                    preparer.drop()  # a live frame prepared before the pause would be stale after it
                if window is not None and not window.show_idle():
                    reason["value"] = "window"
                    break
                stop.wait(0.02)
                continue
            if prefetcher is not None:
                item = prefetcher.latest(after_id=last_id, timeout=0.1)
            else:
                item = preparer.take(last_id)
            if item is None:
                if capture.state in ("ended", "failed", "stopped"):
                    reason["value"] = "source_end"
                    break
                if window is not None and not window.show_idle():
                    reason["value"] = "window"
                    break
                continue
            frame, prepared = item
            last_id = frame.id
            encoded = grounder.encode(prepared)
            if preparer is not None:
                preparer.start(last_id)  # the next frame is read and preprocessed while this one is matched
            # Control requests are served at the top of the loop only: one that arrives during this frame
            # is answered after its publish and applies from the next frame on (pause included).
            snap = state.snapshot()
            if snap.threshold != grounder.threshold:
                grounder.set_threshold(snap.threshold)
            result = grounder.ground_encoded(encoded, snap.queries, thresholds=snap.thresholds or None)
            if publisher is not None:
                publisher.publish_result(result, frame)
            stats.frame_done((time.monotonic_ns() - frame.t_capture_ns) / 1e6)
            if on_result is not None:
                on_result(result, frame)

            if window is not None or cfg.record is not None:
                overlay = draw_overlay(frame.image, result, fps=stats.fps, latency_ms=stats.latency_ms)
                if cfg.record is not None:
                    if recorder is None:
                        recorder = Recorder(cfg.record, fps=getattr(capture.source, "nominal_fps", None) or 15.0)
                    recorder.write(overlay)
                if window is not None and not window.show(overlay):
                    reason["value"] = "window"
                    break
            if window is None and cfg.print_interval_s is not None:
                now = time.monotonic()
                if now - last_print >= cfg.print_interval_s:
                    last_print = now
                    print(_format_line(frame.id, result, stats), flush=True)
            if cfg.max_frames is not None and stats.frames >= cfg.max_frames:
                reason["value"] = "max_frames"
                break
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old)
        if capture is not None:
            capture.stop()
        if prefetcher is not None:
            prefetcher.stop()
        if preparer is not None:
            preparer.close()
        for closer in (control, publisher, recorder, window):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # closing must not hide the original error
                    log.exception("error while closing %s", type(closer).__name__)
    seconds = time.monotonic() - stats.t0
    summary = RunSummary(
        frames=stats.frames, seconds=round(seconds, 3), fps=round(stats.steady_fps(), 3),
        latency_p50_ms=stats.percentile(50), latency_p99_ms=stats.percentile(99), stop_reason=reason["value"],
        queries=tuple(state.snapshot().queries), publish_endpoint=endpoints.get("publish") if publisher else None,
        control_endpoint=endpoints.get("control") if control else None,
        dropped_frames=int(capture.dropped) if capture is not None else 0,
        source_state=str(capture.state) if capture is not None else "failed",
        recorded=recorder.frames if recorder is not None else 0)
    log.info("run finished (%s): %d frames in %.1f s (%.1f FPS), latency p50 %s ms p99 %s ms", summary.stop_reason,
             summary.frames, summary.seconds, summary.fps,
             f"{summary.latency_p50_ms:.1f}" if summary.latency_p50_ms is not None else "-",
             f"{summary.latency_p99_ms:.1f}" if summary.latency_p99_ms is not None else "-")
    return summary
