"""PUB side of the wire protocol: targets, optional heatmaps and a status heartbeat.

Sends never block: the send high-water mark is small (a slow subscriber loses old messages
instead of growing memory here), LINGER is 0, and a full queue drops the message. Sends are
serialized by a lock, so the heartbeat thread (``start_heartbeat``) can share the socket with the
app loop; the heartbeat keeps coming when the app loop waits for a camera that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from vlmedge import protocol
from vlmedge.errors import ConfigError, VlmEdgeError
from vlmedge.runtime.messaging.sockets import CurveServerKeys, bind, setup_curve_server, shutdown

log = logging.getLogger(__name__)


class Publisher:
    """PUB socket speaking protocol v2 (v1 readers parse its messages too). ``endpoint`` is the bound address
    (port 0 resolved).

    Example::

        with Publisher("tcp://127.0.0.1:5555") as pub:
            pub.publish_result(result, frame, model="clip-vit-b16")
    """

    def __init__(self, address: str = protocol.DEFAULT_PUB_ADDRESS, *, heatmaps: bool = False,
                 curve: CurveServerKeys | None = None, sndhwm: int = 4, model: str = ""):
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
        self._sock = self._ctx.socket(zmq.PUB)
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        try:
            self._sock.setsockopt(zmq.SNDHWM, sndhwm)
            self._sock.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                self._auth = setup_curve_server(self._ctx, self._sock, curve)
            self.endpoint = bind(self._sock, address, "publisher")
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
        heatmaps when enabled. This is the one place a result becomes a targets message."""
        h, w = result.frame_size
        # A result made without commands (by hand, or by a grounder before #13) has none to describe: its
        # message is plain v1 rather than a v2 block that disagrees with the queries.
        commands = getattr(result, "commands", ())
        seq = self.publish_targets(result.targets, frame_id=frame.id, t_capture_ns=frame.t_capture_unix_ns,
                                   t_capture_mono_ns=frame.t_capture_ns, width=w, height=h,
                                   queries=result.queries, model=model,
                                   commands=commands if len(commands) == len(result.queries) else None)
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
    def start_heartbeat(self, status_fn: Callable[[], Mapping[str, Any]], interval_s: float = 1.0) -> None:
        """Publish ``status_fn()`` every ``interval_s`` from a daemon thread until close()."""
        if self._hb_thread is not None:
            raise ConfigError("heartbeat already started")
        if not interval_s > 0:
            raise ConfigError(f"heartbeat interval_s must be > 0, got {interval_s!r}")

        def run():
            while not self._hb_stop.is_set():
                t0 = time.monotonic()
                try:
                    self.publish_status(status_fn())
                except VlmEdgeError as e:
                    log.warning("status heartbeat skipped: %s", e)
                except Exception:  # never let the heartbeat die of a bug in status_fn
                    log.exception("status heartbeat failed")
                self._hb_stop.wait(max(0.0, interval_s - (time.monotonic() - t0)))

        self._hb_thread = threading.Thread(target=run, name="vlmedge-heartbeat", daemon=True)
        self._hb_thread.start()

    # ------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=2.0)
            self._hb_thread = None
        with self._lock:  # no send may run while the socket closes
            shutdown(self._ctx, self._sock, self._auth)
        self._auth = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
