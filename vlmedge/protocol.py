"""The vlmedge wire protocol, version 1 (see docs/PROTOCOL.md). Pure Python + numpy, torch-free.

Published messages are ONE ZeroMQ frame each, ``b"<topic> " + body``, so a subscriber can use
ZMQ_CONFLATE (which only works with single-part messages) and always read the newest:

- ``targets``: ``b"targets " + JSON`` with the grounded targets of one frame.
- ``heatmap``: ``b"heatmap " + header JSON + b"\\n" + raw uint8 bytes`` (one query's map per message).
- ``status``: ``b"status " + JSON``, a heartbeat about once a second, also while the camera is down.

Control requests/replies (REQ/REP) are single JSON objects. Every builder validates what it
produces and every parser validates what it receives, raising ProtocolError naming the problem.
Timestamps ``t_*_ns`` are Unix wall-clock nanoseconds (``time.time_ns()``) so that other processes
and machines can compare them; ``t_capture_mono_ns`` is the publisher host's ``time.monotonic_ns()``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vlmedge.errors import ProtocolError, did_you_mean
from vlmedge.validation import QueryRules, check_queries, check_query, check_threshold

PROTOCOL_VERSION = 1
TOPICS = ("targets", "heatmap", "status")
DEFAULT_PUB_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_CONTROL_ADDRESS = "tcp://127.0.0.1:5556"
MAX_CONTROL_MESSAGE_BYTES = 65536  # a request longer than this gets an error reply
MAX_QUERIES = 16  # queries active at once
MAX_QUERY_CHARS = 200  # CLIP's text context is 77 tokens; longer text would be truncated anyway
# Queries that travel on the wire, or may be set over it later (RunConfig, ControlState): typed text,
# normalized, within the limits above. Check them with validation.check_queries(..., rules=QUERY_RULES).
QUERY_RULES = QueryRules(normalize=True, max_count=MAX_QUERIES, max_chars=MAX_QUERY_CHARS)
CAPTURE_STATES = ("starting", "running", "stalled", "reconnecting", "ended", "failed", "stopped")
SCHEMA_NAMES = {"targets": "targets.v1.json", "status": "status.v1.json",
                "heatmap": "heatmap.v1.json", "control": "control.v1.json"}

# op -> {field: (required, kind)}; kinds are checked by _check_field.
CONTROL_OPS: dict[str, dict[str, tuple[bool, str]]] = {
    "set_queries": {"queries": (True, "queries")},
    "add_query": {"query": (True, "query")},
    "remove_query": {"query": (True, "query")},
    "set_threshold": {"value": (True, "unit"), "query": (False, "query")},
    "pause": {},
    "resume": {},
    "status": {},
    "ping": {},
}
_COMMON_REQUEST_FIELDS = ("op", "v")


# ----------------------------------------------------------------------------------------- helpers

def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; NaN/Infinity are refused (they are not JSON)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default,
                          ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        hint = " (NaN or infinity in a number field?)" if "Out of range float" in str(e) else ""
        raise ProtocolError(f"cannot encode message as JSON: {e}{hint}") from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes | str, what: str = "message") -> Any:
    """Parse strict JSON (no NaN/Infinity), raising ProtocolError naming ``what``."""
    try:
        text = bytes(data).decode("utf-8") if not isinstance(data, str) else data
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{what} is not valid JSON: {e}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _need(d: Mapping, key: str, where: str) -> Any:
    if key not in d:
        raise ProtocolError(f"{where}: missing field {key!r}")
    return d[key]


def _int(d: Mapping, key: str, where: str, *, minimum: int = 0, optional: bool = False) -> None:
    if optional and d.get(key) is None:
        return
    v = _need(d, key, where)
    if not _is_int(v) or v < minimum:
        raise ProtocolError(f"{where}: field {key!r} must be an integer >= {minimum}, got {v!r}")


def _num(d: Mapping, key: str, where: str, *, optional: bool = False, nullable: bool = False,
         lo: float | None = None, hi: float | None = None) -> None:
    if optional and key not in d:
        return
    v = _need(d, key, where)
    if v is None and nullable:
        return
    if not _is_num(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
        raise ProtocolError(f"{where}: field {key!r} must be a finite number{rng}"
                            f"{' or null' if nullable else ''}, got {v!r}")


def _str(d: Mapping, key: str, where: str, *, optional: bool = False) -> None:
    if optional and key not in d:
        return
    v = _need(d, key, where)
    if not isinstance(v, str):
        raise ProtocolError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")


def _bool(d: Mapping, key: str, where: str, *, optional: bool = False) -> None:
    if optional and key not in d:
        return
    v = _need(d, key, where)
    if not isinstance(v, bool):
        raise ProtocolError(f"{where}: field {key!r} must be true or false, got {v!r}")


def _numbers(v: Any, n: int, where: str, key: str, *, ints: bool = False, nullable: bool = True,
             positive: bool = False) -> None:
    if v is None and nullable:
        return
    ok = isinstance(v, list) and len(v) == n and all((_is_int(x) if ints else _is_num(x)) for x in v)
    if ok and positive:
        ok = all(x > 0 for x in v)
    if not ok:
        kind = "integers" if ints else "numbers"
        raise ProtocolError(f"{where}: field {key!r} must be a list of {n} {kind}"
                            f"{' > 0' if positive else ''}{' or null' if nullable else ''}, got {v!r}")


def _header(d: Any, topic: str, where: str) -> None:
    if not isinstance(d, dict):
        raise ProtocolError(f"{where}: expected a JSON object, got {type(d).__name__}")
    v = _need(d, "v", where)
    if v != PROTOCOL_VERSION or not _is_int(v):
        raise ProtocolError(f"{where}: unsupported protocol version {v!r}; this vlmedge speaks v{PROTOCOL_VERSION}")
    if d.get("type") != topic:
        raise ProtocolError(f"{where}: field 'type' must be {topic!r}, got {d.get('type')!r}")
    _int(d, "seq", where)


# ----------------------------------------------------------------------------------------- targets

def target_to_dict(t: Any) -> dict:
    """One target as a message dict. Accepts a ``runtime.results.Target`` (or anything with the same
    attributes) or a mapping with the same keys."""
    if hasattr(t, "to_dict") and not isinstance(t, Mapping):
        d = t.to_dict()
    elif isinstance(t, Mapping):
        d = dict(t)
    else:
        d = {k: getattr(t, k, None) for k in ("query", "found", "score", "bbox", "center", "peak", "area", "track_id")}
    out = {"query": d.get("query"), "found": d.get("found"), "score": d.get("score"),
           "bbox": d.get("bbox"), "center": d.get("center"), "peak": d.get("peak"),
           "area": d.get("area", 0), "track_id": d.get("track_id")}
    out = json.loads(dumps(out))  # numpy scalars/tuples -> plain JSON types
    if _is_num(out["score"]):
        out["score"] = round(float(out["score"]), 6)
    for k in ("center", "peak"):
        if isinstance(out[k], list):
            out[k] = [round(float(c), 2) if _is_num(c) else c for c in out[k]]
    if isinstance(out["bbox"], list):
        out["bbox"] = [int(round(c)) if _is_num(c) else c for c in out["bbox"]]
    if _is_num(out["area"]):
        out["area"] = int(out["area"])
    return out


def validate_target(t: Any, where: str = "target") -> None:
    if not isinstance(t, dict):
        raise ProtocolError(f"{where}: expected an object, got {type(t).__name__}")
    _str(t, "query", where)
    _bool(t, "found", where)
    _num(t, "score", where)
    for key, n, ints in (("bbox", 4, True), ("center", 2, False), ("peak", 2, False)):
        _numbers(_need(t, key, where), n, where, key, ints=ints)
    _int(t, "area", where)
    tid = _need(t, "track_id", where)
    if tid is not None and (not _is_int(tid) or tid < 0):
        raise ProtocolError(f"{where}: field 'track_id' must be an integer >= 0 or null, got {tid!r}")
    if t["found"] and t["bbox"] is None:
        raise ProtocolError(f"{where}: found=true needs a bbox")
    if not t["found"] and (t["bbox"] is not None or t["track_id"] is not None):
        raise ProtocolError(f"{where}: found=false must have no bbox and no track_id")
    if t["bbox"] is not None:
        x0, y0, x1, y1 = t["bbox"]
        if x1 < x0 or y1 < y0:
            raise ProtocolError(f"{where}: bbox must have x0 <= x1 and y0 <= y1, got {t['bbox']}")


def validate_targets(d: Any, where: str = "targets message") -> dict:
    """Check a decoded ``targets`` message; return it unchanged."""
    _header(d, "targets", where)
    _int(d, "frame_id", where)
    _int(d, "t_capture_ns", where)
    _int(d, "t_capture_mono_ns", where, optional=True)
    _int(d, "t_publish_ns", where)
    _numbers(_need(d, "frame_size", where), 2, where, "frame_size", ints=True, nullable=False, positive=True)
    _str(d, "model", where)
    qs = _need(d, "queries", where)
    if not isinstance(qs, list) or not all(isinstance(q, str) for q in qs):
        raise ProtocolError(f"{where}: field 'queries' must be a list of strings, got {qs!r}")
    ts = _need(d, "targets", where)
    if not isinstance(ts, list):
        raise ProtocolError(f"{where}: field 'targets' must be a list, got {type(ts).__name__}")
    for i, t in enumerate(ts):
        validate_target(t, f"{where}: targets[{i}]")
    return d


def build_targets(*, seq: int, frame_id: int, t_capture_ns: int, width: int, height: int, model: str,
                  queries: Sequence[str], targets: Iterable[Any], t_capture_mono_ns: int | None = None,
                  t_publish_ns: int | None = None) -> bytes:
    """``b"targets " + JSON`` for one frame. ``targets``: Target objects or dicts (see target_to_dict)."""
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": "targets", "seq": int(seq), "frame_id": int(frame_id),
                           "t_capture_ns": int(t_capture_ns)}
    if t_capture_mono_ns is not None:
        msg["t_capture_mono_ns"] = int(t_capture_mono_ns)
    msg.update({"t_publish_ns": int(time.time_ns() if t_publish_ns is None else t_publish_ns),
                "frame_size": [int(width), int(height)], "model": str(model),
                "queries": [str(q) for q in queries], "targets": [target_to_dict(t) for t in targets]})
    validate_targets(msg, "targets message being built")
    return b"targets " + dumps(msg)


# ------------------------------------------------------------------------------------------ status

def validate_status(d: Any, where: str = "status message") -> dict:
    """Check a decoded ``status`` message; unknown extra fields are allowed (forward compatible)."""
    _header(d, "status", where)
    _int(d, "t_publish_ns", where)
    state = _need(d, "source_state", where)
    if state not in CAPTURE_STATES:
        raise ProtocolError(f"{where}: field 'source_state' must be one of {list(CAPTURE_STATES)}, got {state!r}")
    _num(d, "fps", where, lo=0)
    _num(d, "latency_ms", where, nullable=True, lo=0)
    _int(d, "dropped", where)
    qs = _need(d, "queries", where)
    if not isinstance(qs, list) or not all(isinstance(q, str) for q in qs):
        raise ProtocolError(f"{where}: field 'queries' must be a list of strings, got {qs!r}")
    _bool(d, "paused", where)
    _str(d, "source", where, optional=True)
    _str(d, "model", where, optional=True)
    for k in ("grabbed", "reconnects", "frames"):
        _int(d, k, where, optional=True)
    for k in ("capture_fps", "uptime_s"):
        _num(d, k, where, optional=True, lo=0)
    _num(d, "frame_age_ms", where, optional=True, nullable=True, lo=0)
    _num(d, "threshold", where, optional=True, lo=0, hi=1)
    return d


def build_status(*, seq: int, source_state: str, fps: float, latency_ms: float | None, dropped: int,
                 queries: Sequence[str], paused: bool, t_publish_ns: int | None = None, **extra: Any) -> bytes:
    """``b"status " + JSON``. Recommended extras: source, model, grabbed, reconnects, frames,
    capture_fps, uptime_s, frame_age_ms, threshold (see docs/PROTOCOL.md)."""
    msg = {"v": PROTOCOL_VERSION, "type": "status", "seq": int(seq),
           "t_publish_ns": int(time.time_ns() if t_publish_ns is None else t_publish_ns),
           "source_state": source_state, "fps": round(float(fps), 3),
           "latency_ms": None if latency_ms is None else round(float(latency_ms), 3),
           "dropped": int(dropped), "queries": [str(q) for q in queries], "paused": bool(paused)}
    clash = sorted(set(extra) & {"v", "type"})
    if clash:
        raise ProtocolError(f"status message: fields {clash} are reserved")
    msg.update(json.loads(dumps(extra)))
    validate_status(msg, "status message being built")
    return b"status " + dumps(msg)


# ----------------------------------------------------------------------------------------- heatmap

def validate_heatmap_header(d: Any, where: str = "heatmap header") -> dict:
    _header(d, "heatmap", where)
    _int(d, "frame_id", where)
    _int(d, "t_capture_ns", where)
    _int(d, "t_publish_ns", where)
    _str(d, "query", where)
    _int(d, "index", where)
    _int(d, "count", where, minimum=1)
    if d.get("dtype") != "uint8":
        raise ProtocolError(f"{where}: field 'dtype' must be 'uint8', got {d.get('dtype')!r}")
    _numbers(_need(d, "shape", where), 2, where, "shape", ints=True, nullable=False, positive=True)
    _numbers(_need(d, "region", where), 4, where, "region", ints=True, nullable=False)
    _numbers(_need(d, "frame_size", where), 2, where, "frame_size", ints=True, nullable=False, positive=True)
    _num(d, "scale", where, lo=0)
    if d["index"] >= d["count"]:
        raise ProtocolError(f"{where}: index {d['index']} must be < count {d['count']}")
    return d


def build_heatmap(*, seq: int, frame_id: int, t_capture_ns: int, query: str, index: int, count: int,
                  data: np.ndarray, region: Sequence[int], width: int, height: int,
                  scale: float = 1 / 255, t_publish_ns: int | None = None) -> bytes:
    """``b"heatmap " + header + b"\\n" + raw`` for one query's uint8 [h, w] map covering ``region``
    (x0, y0, x1, y1 in frame pixels); value = byte * scale."""
    arr = np.ascontiguousarray(data)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ProtocolError(f"heatmap {query!r}: data must be a 2-D uint8 array, got {arr.dtype} {arr.shape}")
    header = {"v": PROTOCOL_VERSION, "type": "heatmap", "seq": int(seq), "frame_id": int(frame_id),
              "t_capture_ns": int(t_capture_ns),
              "t_publish_ns": int(time.time_ns() if t_publish_ns is None else t_publish_ns),
              "query": str(query), "index": int(index), "count": int(count),
              "dtype": "uint8", "shape": [int(s) for s in arr.shape], "region": [int(v) for v in region],
              "frame_size": [int(width), int(height)], "scale": float(scale)}
    validate_heatmap_header(header, "heatmap header being built")
    return b"heatmap " + dumps(header) + b"\n" + arr.tobytes()


def quantize_map(prob_map: np.ndarray) -> np.ndarray:
    """float map in [0, 1] -> uint8 (round(p * 255), clipped); pair with scale=1/255."""
    return np.clip(np.rint(np.asarray(prob_map, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ parsing

def split_topic(data: bytes) -> tuple[str, bytes]:
    """``b"topic body"`` -> ("topic", body), ProtocolError for an unknown topic."""
    data = bytes(data)
    topic, sep, body = data.partition(b" ")
    name = topic.decode("ascii", "replace")
    if not sep or name not in TOPICS:
        raise ProtocolError(f"message does not start with a known topic and a space: got {data[:24]!r}; "
                            f"expected one of {list(TOPICS)}" + did_you_mean(name, TOPICS))
    return name, body


def parse_message(data: bytes) -> tuple[str, dict]:
    """Decode and validate one published message -> (topic, dict).

    For ``heatmap`` the dict is the header plus ``"data"``: a read-only uint8 array of ``shape``.
    """
    topic, body = split_topic(data)
    if topic == "heatmap":
        head, sep, raw = body.partition(b"\n")
        if not sep:
            raise ProtocolError("heatmap message: no newline between the JSON header and the data")
        header = validate_heatmap_header(loads(head, "heatmap header"))
        h, w = header["shape"]
        if len(raw) != h * w:
            raise ProtocolError(f"heatmap message: shape {header['shape']} needs {h * w} bytes, got {len(raw)}")
        header["data"] = np.frombuffer(raw, dtype=np.uint8).reshape(h, w)
        return topic, header
    msg = loads(body, f"{topic} message")
    if topic == "targets":
        return topic, validate_targets(msg)
    return topic, validate_status(msg)


# ----------------------------------------------------------------------------------------- control

def _check_field(kind: str, value: Any, where: str) -> Any:
    if kind == "queries":
        return list(check_queries(value, where, error=ProtocolError, rules=QUERY_RULES))
    if kind == "query":
        return check_query(value, where, error=ProtocolError, rules=QUERY_RULES)
    if kind == "unit":
        return check_threshold(value, where, error=ProtocolError)
    raise AssertionError(kind)  # table bug, not user input


def validate_request(req: Any) -> dict:
    """Validate a decoded control request; return a normalized copy (queries stripped)."""
    if not isinstance(req, dict):
        raise ProtocolError(f"request must be a JSON object like {{\"op\": \"ping\"}}, got {type(req).__name__}")
    if "v" in req and (req["v"] != PROTOCOL_VERSION or not _is_int(req["v"])):
        raise ProtocolError(f"unsupported protocol version {req['v']!r}; this vlmedge speaks v{PROTOCOL_VERSION}")
    op = req.get("op")
    if not isinstance(op, str):
        raise ProtocolError(f"request needs a string field 'op'; one of {list(CONTROL_OPS)}"
                            + ("" if op is None else f", got {op!r}"))
    if op not in CONTROL_OPS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {list(CONTROL_OPS)}" + did_you_mean(op, CONTROL_OPS))
    fields = CONTROL_OPS[op]
    unknown = sorted(set(req) - set(fields) - set(_COMMON_REQUEST_FIELDS))
    if unknown:
        hint = did_you_mean(unknown[0], fields) if fields else ""
        raise ProtocolError(f"op {op!r}: unknown field(s) {unknown}; expected "
                            f"{list(fields) if fields else 'no fields'}" + hint)
    out: dict[str, Any] = {"op": op}
    for name, (required, kind) in fields.items():
        if name not in req:
            if required:
                raise ProtocolError(f"op {op!r}: missing field {name!r}")
            continue
        out[name] = _check_field(kind, req[name], f"op {op!r}: field {name!r}")
    return out


def parse_request(data: bytes, *, max_bytes: int = MAX_CONTROL_MESSAGE_BYTES) -> dict:
    """Decode + validate one control request (raw bytes from the socket)."""
    if len(data) > max_bytes:
        raise ProtocolError(f"request is {len(data)} bytes; the limit is {max_bytes}")
    return validate_request(loads(data, "request"))


def encode_request(req: Mapping) -> bytes:
    """Validate and encode a control request."""
    return dumps(validate_request(dict(req)))


def ok_reply(op: str, **fields: Any) -> dict:
    reply = {"ok": True, "op": op}
    reply.update(fields)
    return reply


def error_reply(error: str, op: str | None = None) -> dict:
    reply: dict[str, Any] = {"ok": False, "error": str(error)}
    if op is not None:
        reply["op"] = op
    return reply


def validate_reply(d: Any, where: str = "reply") -> dict:
    if not isinstance(d, dict):
        raise ProtocolError(f"{where}: expected a JSON object, got {type(d).__name__}")
    _bool(d, "ok", where)
    if not d["ok"]:
        _str(d, "error", where)
    _str(d, "op", where, optional=True)
    return d


def encode_reply(reply: Mapping) -> bytes:
    return dumps(validate_reply(dict(reply), "reply being built"))


def parse_reply(data: bytes) -> dict:
    return validate_reply(loads(data, "reply"))


def schema_path(name: str):
    """Path of a shipped JSON Schema: name in SCHEMA_NAMES ('targets', 'status', 'heatmap', 'control')."""
    from importlib import resources

    from vlmedge.errors import check_choice
    check_choice("schema", name, SCHEMA_NAMES)
    return resources.files("vlmedge").joinpath("schemas", SCHEMA_NAMES[name])


def load_schema(name: str) -> dict:
    return json.loads(schema_path(name).read_text(encoding="utf-8"))
