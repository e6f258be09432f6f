"""PUB side of the wire protocol: targets, optional heatmaps and a status heartbeat.

Sends never block: the send high-water mark is small (a slow subscriber loses old messages
instead of growing memory here), LINGER is 0, and a full queue drops the message. Sends are
serialized by a lock, so the heartbeat thread (``start_heartbeat``) can share the socket with the
app loop; the heartbeat keeps coming when the app loop waits for a camera that is down.

Status is published on the heartbeat, at once when the watched state changes (``changed``), at once
when a subscriber to ``status`` joins (the socket is an XPUB: it sees subscriptions, so a new subscriber
does not wait for the next heartbeat to learn the state), and a last time by ``publish_final`` before the
socket closes (flushed, not dropped by LINGER 0).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from vlmedge import protocol
from vlmedge.errors import ConfigError, VlmEdgeError
from vlmedge.runtime.messaging.sockets import (
    ClientKeysWatch,
    CurveServerKeys,
    bind,
    rebind,
    setup_curve_server,
    shutdown,
    watch_clients,
)

log = logging.getLogger(__name__)

# Messages queued per subscriber before new ones are dropped for it: a few seconds of targets, to ride out a
# moment when this process's ZeroMQ I/O thread gets no CPU (at 4, a reader lost 17 of 5695 targets messages in an
# 8-minute soak on a loaded 2-core machine); small enough that a stuck subscriber costs little memory.
SNDHWM = 64
STATUS_POLL_S = 0.02  # how often the heartbeat thread looks for a state change or a new subscriber
FINAL_LINGER_MS = 1000  # the final status may take this long to leave when the socket closes


def targets_message(result: Any, frame: Any, *, seq: int, model: str) -> bytes:
    """The ``targets`` message (``b"targets " + JSON``) of a ``GroundingResult`` and its capture ``Frame``: what
    the publisher sends, the browser view shows and a ROS 2 bag records."""
    h, w = result.frame_size
    # A result made without commands (by hand, or by a grounder before #13) has none to describe: its
    # message is plain v1 rather than a v2 block that disagrees with the queries.
    commands = getattr(result, "commands", ())
    return protocol.build_targets(seq=seq, frame_id=frame.id, t_capture_ns=frame.t_capture_unix_ns,
                                  t_capture_mono_ns=frame.t_capture_ns, width=w, height=h, model=model,
                                  queries=result.queries, targets=result.targets,
                                  commands=commands if len(commands) == len(result.queries) else None)


class Publisher:
    """PUB socket speaking protocol v2 (v1 readers parse its messages too). ``endpoint`` is the bound address
    (port 0 resolved).

    Example::

        with Publisher("tcp://127.0.0.1:5555") as pub:
            pub.publish_result(result, frame, model="clip-vit-b16")
    """

    def __init__(self, address: str = protocol.DEFAULT_PUB_ADDRESS, *, heatmaps: bool = False,
                 curve: CurveServerKeys | None = None, sndhwm: int = SNDHWM, model: str = ""):
        if not isinstance(sndhwm, int) or sndhwm < 1:
            raise ConfigError(f"sndhwm must be a positive int, got {sndhwm!r}")
        self.heatmaps = bool(heatmaps)
        self.model = str(model)
        self._lock = threading.Lock()
        self._seq = {t: 0 for t in protocol.TOPICS}
        self.sent = {t: 0 for t in protocol.TOPICS}
        self.dropped = 0  # messages refused by a full queue
        self._ctx = zmq.Context()
        self._auth = None
        # XPUB: a PUB that also reads its subscribers' subscriptions (see ``_new_status_subscriber``)
        self._sock = self._ctx.socket(zmq.XPUB)
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._hb_wake = threading.Event()
        self._linger_ms = 0
        self._watch: ClientKeysWatch | None = None
        try:
            self._sock.setsockopt(zmq.SNDHWM, sndhwm)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not only new topics
            self._sock.setsockopt(zmq.RCVHWM, 64)
            if curve is not None:
                self._auth = setup_curve_server(self._ctx, self._sock, curve)
            self.endpoint = bind(self._sock, address, "publisher")
            if curve is not None:
                self._watch = watch_clients(self._auth, curve, self._drop_connections, "publisher")
        except BaseException:
            self.close()
            raise
        log.info("publishing on %s (topics: targets%s, status)%s", self.endpoint,
                 ", heatmap" if self.heatmaps else "", " with CURVE" if curve else "")

    # ------------------------------------------------------------------------------------- sending
    def _send(self, topic: str, payload: bytes) -> bool:
        with self._lock:
            if self._sock.closed:
                return False
            try:
                self._sock.send(payload, zmq.NOBLOCK, copy=len(payload) < 65536)
            except zmq.Again:
                self.dropped += 1
                return False
            self.sent[topic] += 1
            return True

    def _next_seq(self, topic: str) -> int:
        with self._lock:
            seq = self._seq[topic]
            self._seq[topic] += 1
            return seq

    def publish_targets(self, targets: Iterable[Any], *, frame_id: int, t_capture_ns: int, width: int, height: int,
                        queries: Sequence[str], model: str | None = None, t_capture_mono_ns: int | None = None,
                        commands: Sequence[Any] | None = None) -> int:
        """Publish one frame's targets (Target objects or dicts) and, given ``commands`` (one per query: the
        ``CommandResult`` s or dicts, see ``protocol.command_to_dict``), the v2 block. Returns the message seq."""
        seq = self._next_seq("targets")
        msg = protocol.build_targets(seq=seq, frame_id=frame_id, t_capture_ns=t_capture_ns, width=width,
                                     height=height, model=self.model if model is None else model,
                                     queries=queries, targets=targets, t_capture_mono_ns=t_capture_mono_ns,
                                     commands=commands)
        self._send("targets", msg)
        return seq

    def publish_result(self, result: Any, frame: Any, *, model: str | None = None) -> int:
        """Publish a ``GroundingResult`` of a capture ``Frame``: its targets, its commands (the v2 block), and
        heatmaps when enabled. Its message is made by ``targets_message``, the one place a result becomes one."""
        h, w = result.frame_size
        seq = self._next_seq("targets")
        self._send("targets", targets_message(result, frame, seq=seq, model=self.model if model is None else model))
        if self.heatmaps and len(result.queries):
            self.publish_heatmaps(dict(zip(result.queries, result.patch_maps)), frame_id=frame.id,
                                  t_capture_ns=frame.t_capture_unix_ns, region=result.crop_box, width=w, height=h)
        return seq

    def publish_heatmaps(self, maps: Mapping[str, np.ndarray], *, frame_id: int, t_capture_ns: int,
                         region: Sequence[int], width: int, height: int) -> int:
        """Publish per-query maps (float in [0, 1] -> uint8, or uint8 as is), one message per query,
        each covering frame ``region`` (x0, y0, x1, y1). No-op unless ``heatmaps=True``. Returns the count sent."""
        if not self.heatmaps:
            return 0
        sent = 0
        items = list(maps.items())
        for i, (query, m) in enumerate(items):
            arr = np.asarray(m)
            data = arr if arr.dtype == np.uint8 else protocol.quantize_map(arr)
            msg = protocol.build_heatmap(seq=self._next_seq("heatmap"), frame_id=frame_id, t_capture_ns=t_capture_ns,
                                         query=query, index=i, count=len(items), data=data, region=region,
                                         width=width, height=height)
            sent += self._send("heatmap", msg)
        return sent

    def publish_status(self, status: Mapping[str, Any]) -> int:
        """Publish a status heartbeat from a dict with at least source_state, fps, latency_ms, dropped,
        queries, paused (extras: see protocol.build_status). Returns the seq."""
        fields = dict(status)
        if self.model and "model" not in fields:
            fields["model"] = self.model
        seq = self._next_seq("status")
        try:
            msg = protocol.build_status(seq=seq, **fields)
        except TypeError as e:  # missing required field
            raise ConfigError(f"publish_status: {e}") from None
        self._send("status", msg)
        return seq

    # ----------------------------------------------------------------------------------- heartbeat
    def start_heartbeat(self, status_fn: Callable[[], Mapping[str, Any]], interval_s: float = 1.0, *,
                        changed: Callable[[], Hashable] | None = None) -> None:
        """Publish ``status_fn()`` every ``interval_s`` from a daemon thread until close(); also at once when
        a subscriber to ``status`` joins and, given ``changed`` (a cheap function returning the state worth
        announcing, e.g. ``(source_state, paused)``), within ``STATUS_POLL_S`` of any change of its value."""
        if self._hb_thread is not None:
            raise ConfigError("heartbeat already started")
        if not interval_s > 0:
            raise ConfigError(f"heartbeat interval_s must be > 0, got {interval_s!r}")

        def run():
            last_key, due = None, 0.0
            while not self._hb_stop.is_set():
                now = time.monotonic()
                try:
                    key = changed() if changed is not None else None
                    joined = self._new_status_subscriber()
                    if now >= due or key != last_key or joined:
                        self.publish_status(status_fn())
                        last_key, due = key, now + interval_s
                except VlmEdgeError as e:
                    log.warning("status heartbeat skipped: %s", e)
                    due = now + interval_s
                except Exception:  # never let the heartbeat die of a bug in status_fn
                    log.exception("status heartbeat failed")
                    due = now + interval_s
                self._hb_wake.wait(max(0.0, min(STATUS_POLL_S, due - time.monotonic())))
                self._hb_wake.clear()

        self._hb_thread = threading.Thread(target=run, name="vlmedge-heartbeat", daemon=True)
        self._hb_thread.start()

    def status_changed(self) -> None:
        """Have the heartbeat thread look at ``changed`` now (e.g. right after a control request was served)."""
        self._hb_wake.set()

    def _new_status_subscriber(self) -> bool:
        """Read the subscriptions that arrived (XPUB); True when one covers the ``status`` topic."""
        joined = False
        with self._lock:
            while not self._sock.closed:
                try:
                    msg = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg[:1] == b"\x01" and b"status ".startswith(msg[1:]):
                    joined = True
        return joined

    def publish_final(self, status: Mapping[str, Any]) -> int:
        """Stop the heartbeat and publish the last status (with the reason the run ended); it is flushed when
        the socket closes (up to ``FINAL_LINGER_MS``), so a subscriber learns how the run ended."""
        self._stop_heartbeat()
        seq = self.publish_status(status)
        self._linger_ms = FINAL_LINGER_MS
        return seq

    def _stop_heartbeat(self) -> None:
        self._hb_stop.set()
        self._hb_wake.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=2.0)
            self._hb_thread = None

    def _drop_connections(self) -> None:
        """A client key was revoked: close every connection (unbind, bind again); subscribers reconnect and
        authenticate anew, and the revoked one is refused."""
        with self._lock:
            if self._sock.closed:
                return
            rebind(self._sock, self.endpoint, "publisher")
        log.warning("publisher: a CURVE client key was revoked; every subscriber was disconnected to "
                    "authenticate again")

    # ------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._stop_heartbeat()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        with self._lock:  # no send may run while the socket closes
            shutdown(self._ctx, self._sock, self._auth, linger_ms=self._linger_ms)
        self._auth = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
