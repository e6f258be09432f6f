"""The vlmedge wire protocol, version 2 (see docs/PROTOCOL.md). Pure Python + numpy, torch-free.

Published messages are ONE ZeroMQ frame each, ``b"<topic> " + body``, so a subscriber can use
ZMQ_CONFLATE (which only works with single-part messages) and always read the newest:

- ``targets``: ``b"targets " + JSON`` with the grounded targets of one frame; since v2 also a ``"v2"`` block
  with, per command, its parsed form, resolved targets, anchors, count and reason.
- ``heatmap``: ``b"heatmap " + header JSON + b"\\n" + raw uint8 bytes`` (one query's map per message).
- ``status``: ``b"status " + JSON``, a heartbeat about once a second, also while the camera is down.

Control requests/replies (REQ/REP) are single JSON objects. Every builder validates what it
produces and every parser validates what it receives, raising ProtocolError naming the problem.
Timestamps ``t_*_ns`` are Unix wall-clock nanoseconds (``time.time_ns()``) so that other processes
and machines can compare them; ``t_capture_mono_ns`` is the publisher host's ``time.monotonic_ns()``.

Version 2 only adds, so every message still says ``"v": 1``: a v1 parser refuses any other ``v``, and
keeping it lets v1 subscribers read a v2 message's v1 part unchanged (they ignore the ``"v2"`` block).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vlmedge.errors import ProtocolError, did_you_mean
from vlmedge.validation import MAX_QUERIES, MAX_QUERY_CHARS, QueryRules, check_queries, check_query, check_threshold

PROTOCOL_VERSION = 2  # the protocol this module speaks: v1 plus the "v2" block of targets and the teach ops
# The "v" every published message carries. v2 removes nothing and changes no meaning, and v1 parsers refuse any
# other value, so it stays 1; a change that v1 readers would misread bumps it (and the schema file names).
MESSAGE_VERSION = 1
REQUEST_VERSIONS = (1, 2)  # the "v" a control request may carry (optional); both speak the same requests
TOPICS = ("targets", "heatmap", "status")
DEFAULT_PUB_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_CONTROL_ADDRESS = "tcp://127.0.0.1:5556"
MAX_CONTROL_MESSAGE_BYTES = 65536  # a request longer than this gets an error reply
# MAX_QUERIES (16, queries active at once) and MAX_QUERY_CHARS (200) come from vlmedge.validation: the Python API
# has the same limits. Queries that travel on the wire, or may be set over it later (RunConfig, ControlState): typed
# text, normalized, within those limits. Check them with validation.check_queries(..., rules=QUERY_RULES); a server
# with other limits passes its own rules (QUERY_RULES.limited(...)) to parse_request.
QUERY_RULES = QueryRules(normalize=True, max_count=MAX_QUERIES, max_chars=MAX_QUERY_CHARS)
CAPTURE_STATES = ("starting", "running", "stalled", "reconnecting", "ended", "failed", "stopped")
# name -> {version: file}; a v2 targets message is also a valid v1 targets message (the tests check both).
SCHEMA_FILES = {"targets": {1: "targets.v1.json", 2: "targets.v2.json"},
                "status": {1: "status.v1.json"},
                "heatmap": {1: "heatmap.v1.json"},
                "control": {1: "control.v1.json", 2: "control.v2.json"}}
SCHEMA_NAMES = {name: files[max(files)] for name, files in SCHEMA_FILES.items()}  # the newest of each
COMMAND_KINDS = ("single", "plural", "count")  # vlmedge.language.Command.kind
# Nodes from root to leaf in a parsed tree: well beyond what the language nests (relations to depth 2), and a
# bound on the recursion a hostile message can cause.
MAX_TREE_DEPTH = 16

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
    # v2: taught objects. ``box`` is in the pixels of the frame of the last targets message.
    "teach": {"name": (True, "query"), "box": (True, "box")},
    "forget": {"name": (True, "query")},
    "taught": {},
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


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"duplicate key {_short(key)} in a JSON object; each key may appear once")
            seen.add(key)
    return out


def loads(data: bytes | str, what: str = "message", *, unique_keys: bool = False) -> Any:
    """Parse strict JSON (no NaN/Infinity), raising ProtocolError naming ``what``. ``unique_keys``: refuse an
    object with a key twice (JSON parsers disagree on which one wins, so a request that has one is refused)."""
    try:
        text = bytes(data).decode("utf-8") if not isinstance(data, str) else data
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys if unique_keys
                          else None)
    except _DuplicateKey as e:
        raise ProtocolError(f"{what}: {e}") from None
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
    if v != MESSAGE_VERSION or not _is_int(v):
        raise ProtocolError(f"{where}: unsupported protocol version {v!r}; this vlmedge (protocol "
                            f"v{PROTOCOL_VERSION}) reads messages with \"v\": {MESSAGE_VERSION}")
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


# ---------------------------------------------------------------------------------- targets, v2 block
# Per command (one per query, in order): how the grounder read it and what it resolved to. The block is one
# key, "v2", so that a v1 reader sees exactly the v1 message it knows plus one key it ignores.

QUANTITY_MODES = ("all", "exactly", "count")
# Parsed-tree node type -> {field: kind} (vlmedge.language.tree, ``to_dict``); kinds are checked by _check_node.
NODE_FIELDS: dict[str, dict[str, str]] = {
    "noun_phrase": {"text": "str", "kind": "str", "colour": "str?", "plural": "bool", "taught": "bool"},
    "not_colour": {"base": "node", "colour": "str"},
    "relation": {"relation": "str", "subject": "node", "anchor": "node", "anchor2": "node?"},
    "select": {"how": "str", "index": "n", "direction": "str?", "of": "node"},
    "quantity": {"mode": "str", "n": "n?", "of": "node"},
}


def _short(v: Any) -> str:
    """A value quoted in an error message: a hostile 64 KiB field is not copied into the reply."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _plain_json(obj: Any) -> Any:
    return json.loads(dumps(obj))  # numpy scalars, tuples -> plain JSON types


def anchor_to_dict(a: Any) -> dict:
    """An anchor (``vlmedge.language.Anchor`` or a mapping with ``text`` and ``bbox``) as a message dict."""
    text, bbox = (a.get("text"), a.get("bbox")) if isinstance(a, Mapping) else (getattr(a, "text", None),
                                                                                  getattr(a, "bbox", None))
    out = _plain_json({"text": text, "bbox": bbox})
    if isinstance(out["bbox"], list):
        out["bbox"] = [int(round(c)) if _is_num(c) else c for c in out["bbox"]]
    return out


def command_to_dict(c: Any, converted: Mapping[int, dict] | None = None) -> dict:
    """One command's entry of the v2 block. Accepts a ``runtime...results.CommandResult`` (or anything with a
    ``to_dict()`` of the same keys) or a mapping with the keys command, parsed (a dict or a parsed Command),
    found, count, reason, targets (found ones only), anchors. ``converted``: ``id(target) -> target_to_dict``
    of targets already converted for the same message (a command's targets are also the v1 targets)."""
    if hasattr(c, "targets") and hasattr(c, "parsed") and not isinstance(c, Mapping):
        d = {"command": c.command, "parsed": c.parsed, "found": c.found, "count": c.count, "reason": c.reason,
             "anchors": c.anchors, "targets": [t for t in c.targets if t.found]}
    else:
        d = c.to_dict() if hasattr(c, "to_dict") and not isinstance(c, Mapping) else dict(c)
    parsed = d.get("parsed")
    if hasattr(parsed, "wire"):  # a parsed Command: its wire form is made once
        parsed = parsed.wire
    elif hasattr(parsed, "to_dict") and not isinstance(parsed, Mapping):
        parsed = _plain_json(parsed.to_dict())
    else:
        parsed = _plain_json(parsed)
    out = _plain_json({"command": d.get("command"), "found": d.get("found"), "count": d.get("count"),
                       "reason": d.get("reason")})
    out = {"command": out["command"], "parsed": parsed, **{k: out[k] for k in ("found", "count", "reason")}}
    known = converted or {}
    out["targets"] = [known.get(id(t)) or target_to_dict(t) for t in d.get("targets") or ()]
    out["anchors"] = [anchor_to_dict(a) for a in d.get("anchors") or ()]
    return out


def _check_box(v: Any, where: str, key: str) -> None:
    _numbers(v, 4, where, key, ints=True, nullable=False)
    x0, y0, x1, y1 = v
    if x1 < x0 or y1 < y0:
        raise ProtocolError(f"{where}: {key} must have x0 <= x1 and y0 <= y1, got {v}")


def _check_node(node: Any, where: str, depth: int = 1) -> None:
    """A parsed-tree node. Node types this version does not know are accepted as long as they are objects with a
    string ``type``: a later v2 language may add one, and a subscriber must not lose the frame over it."""
    if depth > MAX_TREE_DEPTH:
        raise ProtocolError(f"{where}: the parsed tree is nested deeper than {MAX_TREE_DEPTH} levels")
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise ProtocolError(f"{where}: a tree node must be an object with a string field 'type', got {_short(node)}")
    for key, kind in NODE_FIELDS.get(node["type"], {}).items():
        v = _need(node, key, where)
        optional = kind.endswith("?")
        if v is None and optional:
            continue
        kind = kind.rstrip("?")
        if kind == "node":
            _check_node(v, f"{where}.{key}", depth + 1)
        elif kind == "str" and not isinstance(v, str):
            raise ProtocolError(f"{where}: field {key!r} must be a string{' or null' if optional else ''}, got {v!r}")
        elif kind == "bool" and not isinstance(v, bool):
            raise ProtocolError(f"{where}: field {key!r} must be true or false, got {v!r}")
        elif kind == "n" and (not _is_int(v) or v < 1):
            raise ProtocolError(f"{where}: field {key!r} must be an integer >= 1{' or null' if optional else ''}, "
                                f"got {v!r}")
    if node["type"] == "quantity" and node["mode"] not in QUANTITY_MODES:
        raise ProtocolError(f"{where}: field 'mode' must be one of {list(QUANTITY_MODES)}, got {node['mode']!r}")


def validate_parsed(p: Any, where: str = "parsed") -> None:
    """The parsed form of a command (``vlmedge.language.Command.to_dict``)."""
    if not isinstance(p, dict):
        raise ProtocolError(f"{where}: expected an object, got {type(p).__name__}")
    _str(p, "text", where)
    if _need(p, "kind", where) not in COMMAND_KINDS:
        raise ProtocolError(f"{where}: field 'kind' must be one of {list(COMMAND_KINDS)}, got {p['kind']!r}")
    _str(p, "describe", where)
    phrases = _need(p, "noun_phrases", where)
    if not isinstance(phrases, list) or not all(isinstance(x, str) for x in phrases):
        raise ProtocolError(f"{where}: field 'noun_phrases' must be a list of strings, got {phrases!r}")
    _check_node(_need(p, "tree", where), f"{where}: tree")


def validate_command(c: Any, where: str = "command") -> None:
    """One entry of ``v2.commands``."""
    if not isinstance(c, dict):
        raise ProtocolError(f"{where}: expected an object, got {type(c).__name__}")
    _str(c, "command", where)
    validate_parsed(_need(c, "parsed", where), f"{where}: parsed")
    _bool(c, "found", where)
    count = _need(c, "count", where)
    if count is not None and (not _is_int(count) or count < 0):
        raise ProtocolError(f"{where}: field 'count' must be an integer >= 0 or null, got {count!r}")
    reason = _need(c, "reason", where)
    if reason is not None and not isinstance(reason, str):
        raise ProtocolError(f"{where}: field 'reason' must be a string or null, got {reason!r}")
    if not c["found"] and reason is None:
        raise ProtocolError(f"{where}: found=false needs a reason")
    for key in ("targets", "anchors"):
        if not isinstance(_need(c, key, where), list):
            raise ProtocolError(f"{where}: field {key!r} must be a list, got {type(c[key]).__name__}")
    for i, t in enumerate(c["targets"]):
        validate_target(t, f"{where}: targets[{i}]")
        if not t["found"] or t["query"] != c["command"]:
            raise ProtocolError(f"{where}: targets[{i}] must be a found target of {c['command']!r} (not-found "
                                f"entries stay in the v1 list), got found={t['found']} query={t['query']!r}")
    for i, a in enumerate(c["anchors"]):
        w = f"{where}: anchors[{i}]"
        if not isinstance(a, dict):
            raise ProtocolError(f"{w}: expected an object, got {type(a).__name__}")
        _str(a, "text", w)
        _check_box(_need(a, "bbox", w), w, "bbox")


def validate_v2(block: Any, queries: Sequence[str], where: str = "targets message") -> None:
    """The ``"v2"`` block of a targets message: one command per query, in the same order."""
    if not isinstance(block, dict):
        raise ProtocolError(f"{where}: field 'v2' must be an object, got {type(block).__name__}")
    cmds = _need(block, "commands", f"{where}: v2")
    if not isinstance(cmds, list):
        raise ProtocolError(f"{where}: field 'v2.commands' must be a list, got {type(cmds).__name__}")
    if len(cmds) != len(queries):
        raise ProtocolError(f"{where}: 'v2.commands' has {len(cmds)} entries but 'queries' has {len(queries)}; "
                            "there is one command per query, in the same order")
    for i, (c, q) in enumerate(zip(cmds, queries)):
        validate_command(c, f"{where}: v2.commands[{i}]")
        if c["command"] != q:
            raise ProtocolError(f"{where}: v2.commands[{i}] is {c['command']!r} but queries[{i}] is {q!r}")


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
    if "v2" in d:  # absent in messages of a v1 publisher
        validate_v2(d["v2"], qs, where)
    return d


def build_targets(*, seq: int, frame_id: int, t_capture_ns: int, width: int, height: int, model: str,
                  queries: Sequence[str], targets: Iterable[Any], t_capture_mono_ns: int | None = None,
                  t_publish_ns: int | None = None, commands: Iterable[Any] | None = None) -> bytes:
    """``b"targets " + JSON`` for one frame. ``targets``: Target objects or dicts (see target_to_dict).
    ``commands``: one per query, in order (CommandResults or dicts, see command_to_dict); they make the v2
    block. None leaves it out (a plain v1 message)."""
    msg: dict[str, Any] = {"v": MESSAGE_VERSION, "type": "targets", "seq": int(seq), "frame_id": int(frame_id),
                           "t_capture_ns": int(t_capture_ns)}
    if t_capture_mono_ns is not None:
        msg["t_capture_mono_ns"] = int(t_capture_mono_ns)
    msg.update({"t_publish_ns": int(time.time_ns() if t_publish_ns is None else t_publish_ns),
                "frame_size": [int(width), int(height)], "model": str(model),
                "queries": [str(q) for q in queries]})
    targets = list(targets)
    msg["targets"] = [target_to_dict(t) for t in targets]
    if commands is not None:  # each target converted once: the commands' targets are v1 targets too
        converted = {id(t): d for t, d in zip(targets, msg["targets"]) if not isinstance(t, Mapping)}
        msg["v2"] = {"commands": [command_to_dict(c, converted) for c in commands]}
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
    _num(d, "fps_window_s", where, optional=True, lo=0)
    _str(d, "stop_reason", where, optional=True)
    _str(d, "error", where, optional=True)
    return d


def build_status(*, seq: int, source_state: str, fps: float, latency_ms: float | None, dropped: int,
                 queries: Sequence[str], paused: bool, t_publish_ns: int | None = None, **extra: Any) -> bytes:
    """``b"status " + JSON``. Recommended extras: source, model, grabbed, reconnects, frames,
    capture_fps, uptime_s, frame_age_ms, threshold, fps_window_s; the last status of a run adds stop_reason
    (and error) (see docs/PROTOCOL.md)."""
    msg = {"v": MESSAGE_VERSION, "type": "status", "seq": int(seq),
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
    header = {"v": MESSAGE_VERSION, "type": "heatmap", "seq": int(seq), "frame_id": int(frame_id),
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

def _check_field(kind: str, value: Any, where: str, rules: QueryRules) -> Any:
    if kind == "queries":
        return list(check_queries(value, where, error=ProtocolError, rules=rules))
    if kind == "query":
        return check_query(value, where, error=ProtocolError, rules=rules)
    if kind == "unit":
        return check_threshold(value, where, error=ProtocolError)
    if kind == "box":
        return _request_box(value, where)
    raise AssertionError(kind)  # table bug, not user input


def _request_box(value: Any, where: str) -> list:
    """[x0, y0, x1, y1] in frame pixels, x1 > x0 and y1 > y0. Whether it lies in the frame is for the server
    to say: only it knows the frame."""
    ok = isinstance(value, list) and len(value) == 4 and all(_is_num(v) for v in value)
    if not ok:
        raise ProtocolError(f"{where} must be [x0, y0, x1, y1]: 4 finite numbers in frame pixels, got {_short(value)}")
    x0, y0, x1, y1 = value
    if x1 <= x0 or y1 <= y0:
        raise ProtocolError(f"{where} must have x0 < x1 and y0 < y1, got {value!r}")
    return list(value)


def validate_request(req: Any, *, rules: QueryRules = QUERY_RULES) -> dict:
    """Validate a decoded control request; return a normalized copy (queries stripped). ``rules``: the query
    limits of the server (its character rule is everyone's)."""
    if not isinstance(req, dict):
        raise ProtocolError(f"request must be a JSON object like {{\"op\": \"ping\"}}, got {type(req).__name__}")
    if "v" in req and (req["v"] not in REQUEST_VERSIONS or not _is_int(req["v"])):
        raise ProtocolError(f"unsupported protocol version {req['v']!r}; this vlmedge speaks "
                            f"{' and '.join(f'v{v}' for v in REQUEST_VERSIONS)}")
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
        out[name] = _check_field(kind, req[name], f"op {op!r}: field {name!r}", rules)
    return out


def parse_request(data: bytes, *, max_bytes: int = MAX_CONTROL_MESSAGE_BYTES, rules: QueryRules = QUERY_RULES) -> dict:
    """Decode + validate one control request (raw bytes from the socket); a key given twice is refused."""
    if len(data) > max_bytes:
        raise ProtocolError(f"request is {len(data)} bytes; the limit is {max_bytes}")
    return validate_request(loads(data, "request", unique_keys=True), rules=rules)


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


def schema_path(name: str, version: int | None = None):
    """Path of a shipped JSON Schema: name in SCHEMA_NAMES ('targets', 'status', 'heatmap', 'control'); the
    newest version unless ``version`` asks for an older one (``schema_path("targets", 1)``)."""
    from importlib import resources

    from vlmedge.errors import check_choice
    check_choice("schema", name, SCHEMA_NAMES)
    files = SCHEMA_FILES[name]
    if version is None:
        version = max(files)
    if version not in files:
        raise ProtocolError(f"schema {name!r}: no version {version!r}; shipped: {sorted(files)}")
    return resources.files("vlmedge").joinpath("schemas", files[version])


def load_schema(name: str, version: int | None = None) -> dict:
    return json.loads(schema_path(name, version).read_text(encoding="utf-8"))
