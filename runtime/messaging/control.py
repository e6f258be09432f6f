"""Control socket: a REP server that applies JSON requests (set_queries, pause, ...) and a client.

Every request gets exactly one reply, ``{"ok": true, "op": ..., ...}`` or ``{"ok": false, "error": ...}``;
a bad request changes nothing and the server keeps serving. Requests longer than
``max_message_bytes`` get an error reply; libzmq's ZMQ_MAXMSGSIZE is set to 4x that, so a peer
sending something absurd is disconnected before the bytes are buffered. Nothing is ever unpickled.

Use it from the app loop (``poll_once()``, no thread) or in its own thread (``start()``); the
``ControlState`` handler is thread-safe either way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from vlmedge import protocol
from vlmedge.errors import ConfigError, ProtocolError, VlmEdgeError, did_you_mean
from vlmedge.runtime.messaging.sockets import (
    CurveClientKeys,
    CurveServerKeys,
    bind,
    check_address,
    setup_curve_client,
    setup_curve_server,
    shutdown,
)
from vlmedge.validation import check_queries, check_threshold

log = logging.getLogger(__name__)

Handler = Callable[[dict], "Mapping[str, Any] | None"]


class ControlTimeout(ProtocolError, TimeoutError):
    """No reply from the control server in time."""


# --------------------------------------------------------------------------------------- the state

@dataclass(frozen=True)
class ControlSnapshot:
    """What the app loop needs each frame. ``version`` increases with every change."""

    queries: tuple[str, ...]
    threshold: float
    thresholds: Mapping[str, float]  # per-query overrides
    paused: bool
    version: int

    def threshold_for(self, query: str) -> float:
        return self.thresholds.get(query, self.threshold)


@dataclass
class ControlState:
    """Thread-safe queries/thresholds/pause state and the default request handler.

    ``status_fn`` (optional) returns extra fields for the ``status`` op reply (fps, source state...).
    Pass ``state.handle`` as the ControlServer handler and read ``state.snapshot()`` in the app loop.
    """

    queries: Sequence[str] = ()
    threshold: float = 0.5
    paused: bool = False
    status_fn: Callable[[], Mapping[str, Any]] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    _version: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        # Queries given here may be listed, replaced and published over the wire: the wire's rules apply.
        self.queries = check_queries(self.queries, "ControlState.queries", error=ConfigError,
                                     rules=protocol.QUERY_RULES)
        self.threshold = check_threshold(self.threshold, "ControlState.threshold", error=ConfigError)

    def snapshot(self) -> ControlSnapshot:
        with self._lock:
            return ControlSnapshot(self.queries, self.threshold, dict(self.thresholds), self.paused, self._version)

    def handle(self, req: dict) -> dict:
        """Apply a validated request (see protocol.validate_request); return reply fields.
        Raises ProtocolError (-> error reply, nothing changed) when it cannot be applied."""
        op = req["op"]
        with self._lock:
            if op == "ping":
                return {"pong": True}
            if op == "status":
                pass  # described below
            elif op == "set_queries":
                self._set(tuple(req["queries"]))
            elif op == "add_query":
                q = req["query"]
                if q not in self.queries:
                    if len(self.queries) >= protocol.MAX_QUERIES:
                        raise ProtocolError(f"add_query: already {len(self.queries)} queries; "
                                            f"the limit is {protocol.MAX_QUERIES}")
                    self._set(self.queries + (q,))
            elif op == "remove_query":
                q = req["query"]
                if q not in self.queries:
                    raise ProtocolError(f"remove_query: {q!r} is not an active query; active: {list(self.queries)}"
                                        + did_you_mean(q, self.queries))
                self._set(tuple(x for x in self.queries if x != q))
            elif op == "set_threshold":
                q = req.get("query")
                if q is None:
                    self.threshold = req["value"]
                elif q not in self.queries:
                    raise ProtocolError(f"set_threshold: {q!r} is not an active query; active: "
                                        f"{list(self.queries)}" + did_you_mean(q, self.queries))
                else:
                    self.thresholds[q] = req["value"]
                self._version += 1
            elif op in ("pause", "resume"):
                self.paused = op == "pause"
                self._version += 1
            else:
                raise ProtocolError(f"op {op!r} is not handled here")
            state = self._describe()
        if op == "status" and self.status_fn is not None:
            extra = dict(self.status_fn())
            extra.update(state)
            state = extra
        return state

    def _set(self, queries: tuple[str, ...]) -> None:
        self.queries = queries
        self.thresholds = {q: v for q, v in self.thresholds.items() if q in queries}
        self._version += 1

    def _describe(self) -> dict:
        return {"queries": list(self.queries), "threshold": self.threshold, "thresholds": dict(self.thresholds),
                "paused": self.paused, "version": self._version}


# -------------------------------------------------------------------------------------- the server

class ControlServer:
    """REP socket answering control requests with ``handler(request) -> reply fields``.

    The handler gets a validated, normalized request dict; it may raise a VlmEdgeError (its message
    becomes the error reply). Any other exception is logged and answered as an internal error.
    """

    def __init__(self, address: str = protocol.DEFAULT_CONTROL_ADDRESS, handler: Handler | None = None, *,
                 curve: CurveServerKeys | None = None,
                 max_message_bytes: int = protocol.MAX_CONTROL_MESSAGE_BYTES):
        if handler is None or not callable(handler):
            raise ConfigError("ControlServer needs a handler callable(request) -> dict, e.g. ControlState().handle")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 64:
            raise ConfigError(f"max_message_bytes must be an int >= 64, got {max_message_bytes!r}")
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.served = 0
        self.errors = 0
        self._ctx = zmq.Context()
        self._auth = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sock = self._ctx.socket(zmq.REP)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * max_message_bytes)
            self._sock.setsockopt(zmq.SNDTIMEO, 1000)
            if curve is not None:
                self._auth = setup_curve_server(self._ctx, self._sock, curve)
            self.endpoint = bind(self._sock, address, "control server")
        except BaseException:
            self.close()
            raise
        log.info("control requests on %s%s", self.endpoint, " with CURVE" if curve else "")

    def handle_bytes(self, data: bytes) -> dict:
        """Turn one raw request into its reply dict (never raises)."""
        op = None
        try:
            req = protocol.parse_request(data, max_bytes=self.max_message_bytes)
            op = req["op"]
            result = self.handler(req)
            reply = protocol.ok_reply(op, **dict(result or {}))
        except VlmEdgeError as e:
            reply = protocol.error_reply(str(e), op)
        except Exception as e:  # a bug in the handler must not kill the control socket
            log.exception("control handler failed on op %r", op)
            reply = protocol.error_reply(f"internal error: {type(e).__name__}: {e}", op)
        if not reply["ok"]:
            self.errors += 1
            log.info("control request refused: %s", reply["error"])
        return reply

    def poll_once(self, timeout_ms: int = 0) -> bool:
        """Serve at most one request waiting up to ``timeout_ms``. Returns True when one was served.
        Not to be mixed with ``start()`` (a socket belongs to one thread)."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise ConfigError("this ControlServer serves from its own thread (start()); do not call poll_once")
        if self._sock.poll(timeout_ms, zmq.POLLIN) == 0:
            return False
        data = self._sock.recv()
        multipart = False
        while self._sock.getsockopt(zmq.RCVMORE):  # drain a multipart request, then refuse it
            self._sock.recv()
            multipart = True
        if multipart:
            reply = protocol.error_reply("multipart requests are not supported; send one JSON frame")
            self.errors += 1
        else:
            reply = self.handle_bytes(data)
        try:
            self._sock.send(protocol.dumps(reply))
        except zmq.ZMQError as e:
            log.warning("control reply not sent: %s", e)
        self.served += 1
        return True

    def start(self) -> ControlServer:
        """Serve from a daemon thread (the handler then runs in that thread)."""
        if self._thread is not None:
            raise ConfigError("ControlServer already started")

        def run():
            while not self._stop.is_set():
                try:
                    self.poll_once(100)
                except zmq.ZMQError as e:
                    if self._stop.is_set():
                        break
                    log.warning("control socket error: %s", e)

        self._thread = threading.Thread(target=run, name="vlmedge-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        shutdown(self._ctx, self._sock, self._auth)
        self._auth = None

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------------------------- the client

class ControlClient:
    """REQ client. ``request({"op": "ping"}) -> reply dict``; on timeout the socket is closed and
    recreated (the lazy-pirate pattern, so the next request works) and ControlTimeout is raised."""

    def __init__(self, address: str = protocol.DEFAULT_CONTROL_ADDRESS, *, timeout_ms: int = 2000,
                 curve: CurveClientKeys | None = None):
        check_address(address, purpose="control client", bind=False)
        self.address = address
        self.timeout_ms = int(timeout_ms)
        self.curve = curve
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                setup_curve_client(s, self.curve)
            s.connect(self.address)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, req: Mapping[str, Any]) -> dict:
        """Validate, send and wait for the reply (ProtocolError before sending if ``req`` is invalid)."""
        return self.send_raw(protocol.encode_request(req))

    def send_raw(self, data: bytes) -> dict:
        """Send raw bytes as a request (for tests and `vlmedge send --raw`); return the parsed reply."""
        sock = self._socket()
        sock.send(data)
        if sock.poll(self.timeout_ms, zmq.POLLIN) == 0:
            self._reset()
            raise ControlTimeout(f"no reply from control server {self.address} within {self.timeout_ms} ms "
                                 "(is `vlmedge run` running with its control socket there?)")
        return protocol.parse_reply(sock.recv())

    def close(self) -> None:
        self._reset()
        self._ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
