"""Control socket: a REP server that applies JSON requests (set_queries, pause, teach, ...) and a client.

Every request gets exactly one reply, ``{"ok": true, "op": ..., ...}`` or ``{"ok": false, "error": ...}``;
a bad request changes nothing and the server keeps serving. Requests longer than
``max_message_bytes`` get an error reply; libzmq's ZMQ_MAXMSGSIZE is set to 4x that, so a peer
sending something absurd is disconnected before the bytes are buffered. Nothing is ever unpickled.

Use it from the app loop (``poll_once()``, no thread) or in its own thread (``start()``); the
``ControlState`` handler is thread-safe either way. The ``teach``/``forget`` ops run a ``Teacher``, which uses
the grounder: serve them in the thread that grounds (``vlmedge run`` polls from its loop, between frames).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from vlmedge import protocol
from vlmedge.errors import ConfigError, ProtocolError, VlmEdgeError, did_you_mean
from vlmedge.runtime.messaging.sockets import (
    ClientKeysWatch,
    CurveClientKeys,
    CurveServerKeys,
    bind,
    check_address,
    rebind,
    setup_curve_client,
    setup_curve_server,
    shutdown,
    watch_clients,
)
from vlmedge.validation import QueryRules, check_queries, check_threshold

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


class Teaching(Protocol):
    """What ``ControlState`` needs for the teach / forget / taught ops (``Teacher`` is the implementation)."""

    def teach(self, name: str, box: Sequence[float]) -> Mapping[str, Any]: ...

    def forget(self, name: str) -> Mapping[str, Any]: ...

    def names(self) -> Collection[str]: ...


class Teacher:
    """The teach / forget / taught ops applied to a ``Grounder``.

    A teach request's box is in the pixels of the frame whose targets the client saw last, e.g. a target's
    ``bbox`` from the last targets message, or a box drawn on the displayed frame. So the box is applied to
    the frame grounded last, which the app loop hands over after publishing it (``frame_grounded``), not to
    the next frame, which nobody has seen yet. Teaching encodes that frame once more (one encoder run).

    Not thread-safe with respect to the grounder: call ``teach``/``forget`` in the thread that runs
    ``grounder.match`` (``vlmedge run`` serves control requests in its loop, between frames).
    """

    def __init__(self, grounder: Any):
        self.grounder = grounder
        self._image = None
        self._frame_id: int | None = None

    def frame_grounded(self, image: Any, frame_id: int | None = None) -> None:
        """The frame whose targets were just published: the next teach request's box refers to it."""
        self._image, self._frame_id = image, frame_id

    def names(self) -> tuple[str, ...]:
        return tuple(self.grounder.taught.names())

    def teach(self, name: str, box: Sequence[float]) -> dict:
        if self._image is None:
            raise ProtocolError("teach: no frame has been grounded yet; the box refers to the frame of the last "
                                "targets message, so send it once targets arrive")
        replaced = name in self.names()
        # Grounder.teach checks the box against the frame and encodes before it stores anything: a refused
        # request (box outside the frame, too many taught objects) teaches nothing.
        self.grounder.teach(name, self._image, box)
        return {"name": name, "box": list(box), "frame_id": self._frame_id, "replaced": replaced}

    def forget(self, name: str) -> dict:
        self.grounder.forget(name)  # InputError naming the taught ones when the name is unknown
        return {"name": name}


@dataclass
class ControlState:
    """Thread-safe queries/thresholds/pause state and the default request handler.

    ``status_fn`` (optional) returns extra fields for the ``status`` op reply (fps, source state...).
    ``teacher`` (optional, a ``Teacher``) serves the teach / forget / taught ops; without one they are
    refused. Pass ``state.handle`` as the ControlServer handler and read ``state.snapshot()`` in the app loop.

    Queries are parsed as commands (``vlmedge.language``, with the taught names) when they are set: one the
    grammar cannot read is refused here, with the parser's message, instead of failing every frame later.
    """

    queries: Sequence[str] = ()
    threshold: float = 0.5
    paused: bool = False
    status_fn: Callable[[], Mapping[str, Any]] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    teacher: Teaching | None = None
    query_rules: QueryRules = protocol.QUERY_RULES  # the server's limits (vlmedge run: the grounder's)
    _version: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        # Queries given here may be listed, replaced and published over the wire: the wire's rules apply.
        self.queries = check_queries(self.queries, "ControlState.queries", error=ConfigError,
                                     rules=self.query_rules)
        self.threshold = check_threshold(self.threshold, "ControlState.threshold", error=ConfigError)

    def _taught(self) -> tuple[str, ...]:
        return tuple(self.teacher.names()) if self.teacher is not None else ()

    def _unreadable(self, queries: Sequence[str], taught: Collection[str] | None = None) -> tuple[int, str] | None:
        """(index, parser message) of the first query that does not parse as a command, else None: the grounder
        would refuse such a query on every frame, so the request that brings it is refused instead."""
        from vlmedge.language import CommandSyntaxError, read_command

        names = frozenset(self._taught() if taught is None else taught)
        for i, q in enumerate(queries):
            try:
                read_command(q, taught=names)
            except CommandSyntaxError as e:
                return i, str(e)
        return None

    def snapshot(self) -> ControlSnapshot:
        with self._lock:
            return ControlSnapshot(self.queries, self.threshold, dict(self.thresholds), self.paused, self._version)

    def handle(self, req: dict) -> dict:
        """Apply a validated request (see protocol.validate_request); return reply fields.
        Raises ProtocolError (-> error reply, nothing changed) when it cannot be applied."""
        op = req["op"]
        if op in ("teach", "forget", "taught"):
            return self._objects(op, req)
        if op in ("set_queries", "add_query"):  # parsed before anything changes
            field_name = "queries" if op == "set_queries" else "query"
            queries = req["queries"] if op == "set_queries" else [req["query"]]
            bad = self._unreadable(queries)
            if bad is not None:
                at = f"[{bad[0]}]" if op == "set_queries" else ""
                raise ProtocolError(f"op {op!r}: field {field_name!r}{at} is not a command vlmedge can read: {bad[1]}")
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
                    limit = self.query_rules.max_count
                    if limit is not None and len(self.queries) >= limit:
                        raise ProtocolError(f"add_query: already {len(self.queries)} queries; the limit is {limit}")
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

    def _objects(self, op: str, req: dict) -> dict:
        """teach / forget / taught. The teacher runs outside the lock: teaching encodes a frame, and the status
        heartbeat must not wait for that."""
        if self.teacher is None:
            raise ProtocolError(f"op {op!r}: this server cannot teach (it has no grounder: ControlState.teacher "
                                "is not set)")
        extra: Mapping[str, Any] = {}
        if op in ("teach", "forget"):
            # The active queries must still parse with the new set of names, or the grounder would refuse them
            # on every frame from now on: a name can swallow words a query needs ("cup left" in "the cup left
            # of the plate"), and a query can need a name ("the cup left of leftmost").
            name, taught = req["name"], set(self._taught())
            with self._lock:
                queries = self.queries
            bad = self._unreadable(queries, taught=taught | {name} if op == "teach" else taught - {name})
            if bad is not None:
                why = "would no longer parse" if op == "teach" else f"needs {name!r}"
                raise ProtocolError(f"{op}: the active query {queries[bad[0]]!r} {why}; remove the query first "
                                    f"({'with' if op == 'teach' else 'without'} the name it reads: {bad[1]})")
        if op == "teach":
            extra = self.teacher.teach(req["name"], req["box"])
        elif op == "forget":
            extra = self.teacher.forget(req["name"])
        with self._lock:
            if op != "taught":
                self._version += 1  # the active commands may now resolve differently
            state = self._describe()
        return {**extra, **state}

    def _set(self, queries: tuple[str, ...]) -> None:
        self.queries = queries
        self.thresholds = {q: v for q, v in self.thresholds.items() if q in queries}
        self._version += 1

    def _describe(self) -> dict:
        state = {"queries": list(self.queries), "threshold": self.threshold, "thresholds": dict(self.thresholds),
                 "paused": self.paused, "version": self._version}
        if self.teacher is not None:
            state["taught"] = list(self.teacher.names())
        return state


# -------------------------------------------------------------------------------------- the server

def answer_request(data: bytes, handler: Handler, *, max_bytes: int = protocol.MAX_CONTROL_MESSAGE_BYTES,
                   rules: QueryRules = protocol.QUERY_RULES) -> dict:
    """One raw request -> its reply dict; never raises. The one way a request is answered: the control socket
    and the browser view (``vlmedge.runtime.web``) both call it, so they validate and refuse alike."""
    op = None
    try:
        req = protocol.parse_request(data, max_bytes=max_bytes, rules=rules)
        op = req["op"]
        result = handler(req)
        reply = protocol.ok_reply(op, **dict(result or {}))
    except VlmEdgeError as e:
        reply = protocol.error_reply(str(e), op)
    except Exception as e:  # a bug in the handler must not kill the control socket
        log.exception("control handler failed on op %r", op)
        reply = protocol.error_reply(f"internal error: {type(e).__name__}: {e}", op)
    if not reply["ok"]:
        log.info("control request refused: %s", reply["error"])
    return reply


class ControlServer:
    """REP socket answering control requests with ``handler(request) -> reply fields``.

    The handler gets a validated, normalized request dict; it may raise a VlmEdgeError (its message
    becomes the error reply). Any other exception is logged and answered as an internal error.
    """

    def __init__(self, address: str = protocol.DEFAULT_CONTROL_ADDRESS, handler: Handler | None = None, *,
                 curve: CurveServerKeys | None = None,
                 max_message_bytes: int = protocol.MAX_CONTROL_MESSAGE_BYTES,
                 query_rules: QueryRules = protocol.QUERY_RULES):
        if handler is None or not callable(handler):
            raise ConfigError("ControlServer needs a handler callable(request) -> dict, e.g. ControlState().handle")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 64:
            raise ConfigError(f"max_message_bytes must be an int >= 64, got {max_message_bytes!r}")
        if not isinstance(query_rules, QueryRules):
            raise ConfigError(f"query_rules must be a QueryRules, got {type(query_rules).__name__}")
        self.handler = handler
        self.query_rules = query_rules
        self.max_message_bytes = max_message_bytes
        self.served = 0
        self.errors = 0
        self._ctx = zmq.Context()
        self._auth = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sock = self._ctx.socket(zmq.REP)
        self._watch: ClientKeysWatch | None = None
        self._revoked = threading.Event()  # set by the key watch; the socket's own thread rebinds
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * max_message_bytes)
            self._sock.setsockopt(zmq.SNDTIMEO, 1000)
            if curve is not None:
                self._auth = setup_curve_server(self._ctx, self._sock, curve)
            self.endpoint = bind(self._sock, address, "control server")
            if curve is not None:
                self._watch = watch_clients(self._auth, curve, self._revoked.set, "control server")
        except BaseException:
            self.close()
            raise
        log.info("control requests on %s%s", self.endpoint, " with CURVE" if curve else "")

    def handle_bytes(self, data: bytes) -> dict:
        """Turn one raw request into its reply dict (never raises)."""
        reply = answer_request(data, self.handler, max_bytes=self.max_message_bytes, rules=self.query_rules)
        if not reply["ok"]:
            self.errors += 1
        return reply

    def poll_once(self, timeout_ms: int = 0) -> bool:
        """Serve at most one request waiting up to ``timeout_ms``. Returns True when one was served.
        Not to be mixed with ``start()`` (a socket belongs to one thread)."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise ConfigError("this ControlServer serves from its own thread (start()); do not call poll_once")
        if self._revoked.is_set():
            self._drop_connections()
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

    def serve_pending(self, limit: int) -> int:
        """Serve the requests already waiting, at most ``limit`` of them (no wait); returns how many. The run
        loop calls it once per frame: a peer flooding the socket gets ``limit`` answers a frame, and the
        frames keep their rate (its other requests wait in the socket's queue)."""
        served = 0
        while served < limit and self.poll_once(0):
            served += 1
        return served

    def _drop_connections(self) -> None:
        """A client key was revoked: close every connection (unbind, bind again; between two requests, in the
        socket's own thread). Clients still allowed reconnect; the revoked one fails its handshake."""
        self._revoked.clear()
        rebind(self._sock, self.endpoint, "control server")
        log.warning("control server: a CURVE client key was revoked; every client was disconnected to "
                    "authenticate again")

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
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
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
            try:
                s.setsockopt(zmq.LINGER, 0)
                if self.curve is not None:
                    setup_curve_client(s, self.curve)
                s.connect(self.address)
            except BaseException:  # an unclosed socket would make close() (Context.term) wait forever
                s.close(linger=0)
                raise
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
