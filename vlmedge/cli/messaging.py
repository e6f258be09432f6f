"""``vlmedge subscribe``, ``vlmedge send`` and ``vlmedge keys``: talk to a running ``vlmedge run``.

Top level is light (argparse, json, the socket addresses); zmq and the runtime's sockets are imported inside
the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlmedge.protocol import DEFAULT_CONTROL_ADDRESS, DEFAULT_PUB_ADDRESS


class _IntermixedParser(argparse.ArgumentParser):
    """Options may stand anywhere among the words: ``vlmedge send ADDRESS --timeout 2 teach "my mug" 1 2 3 4``.

    A plain parser takes one run of positional words, so words after an option were "unrecognized". The
    sub-command action calls ``parse_known_args``; here that parses intermixed (which itself calls
    ``parse_known_args`` again, hence the guard)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "subscribe", help="print targets/status/heatmaps published by `vlmedge run`",
        description="Subscribe to a vlmedge publisher and print what arrives, one line per target "
                    "(or the raw JSON with --json).")
    p.add_argument("address", nargs="?", default=DEFAULT_PUB_ADDRESS,
                   help=f"publisher address (default {DEFAULT_PUB_ADDRESS})")
    p.add_argument("--topic", choices=("targets", "status", "heatmap", "all"), default="targets")
    p.add_argument("--count", type=int, default=0, help="exit after N messages (default: run until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print each message as one JSON line")
    p.add_argument("--conflate", action=argparse.BooleanOptionalAction, default=False,
                   help="keep only the newest message (like a control loop would)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="exit with status 1 when nothing arrives for S seconds")
    _add_curve_client_options(p)
    p.set_defaults(func=cmd_subscribe)

    s = subparsers.add_parser(
        "send", help="send one control request to `vlmedge run` and print the reply",
        description="Send one control request, e.g.  vlmedge send set_queries \"the blue ball\" \"a mug\"  |  "
                    "vlmedge send set_threshold 0.4 [QUERY]  |  vlmedge send pause  |  "
                    "vlmedge send teach \"my mug\" 100 120 220 260  |  vlmedge send forget \"my mug\"  |  "
                    "vlmedge send tcp://10.0.0.5:5556 status  |  vlmedge send --json '{\"op\": \"ping\"}'. "
                    "Ops: set_queries Q..., add_query Q, remove_query Q, set_threshold V [Q], pause, resume, "
                    "status, ping, teach NAME X0 Y0 X1 Y1 (a box in the frame of the last targets message), "
                    "forget NAME, taught. Options may come anywhere.")
    s.__class__ = _IntermixedParser  # add_parser makes a plain parser; this one reads options among the words
    s.add_argument("words", nargs="*", metavar="[ADDRESS] OP ARG",
                   help=f"optional address (default {DEFAULT_CONTROL_ADDRESS}), the op, and its arguments")
    s.add_argument("--json", dest="raw_json", metavar="JSON", help="the whole request as a JSON object")
    s.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait for the reply")
    _add_curve_client_options(s)
    s.set_defaults(func=cmd_send)

    k = subparsers.add_parser(
        "keys", help="create CURVE key pairs for encrypted, authenticated sockets",
        description="Write DIR/server.key (public: give it to clients), DIR/server.key_secret (keep on the "
                    "robot), DIR/clients/<name>.key (allowed clients' public keys) and "
                    "DIR/<name>.key_secret (give each to its client).")
    k.add_argument("dir", help="output directory")
    k.add_argument("--client", action="append", default=None, help="client name (repeatable; default: client)")
    k.set_defaults(func=cmd_keys)


# ----------------------------------------------------------- CURVE client keys (subscribe, send)

def _add_curve_client_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE encryption (when `vlmedge run --curve-keys DIR` was used)")
    g.add_argument("--curve-keys", metavar="DIR", help="the folder from `vlmedge keys DIR`: uses DIR/server.key "
                   "and DIR/<--client-name>.key_secret")
    g.add_argument("--client-name", default="client", help="client key name in --curve-keys (default: client)")
    g.add_argument("--server-key", metavar="FILE", help="the server's public key file (server.key)")
    g.add_argument("--client-key", metavar="FILE", help="this client's secret key file (client.key_secret)")


def _curve_from_args(args):
    from pathlib import Path

    server_key, client_key = args.server_key, args.client_key
    from vlmedge.errors import ConfigError

    if args.curve_keys:
        d = Path(args.curve_keys)
        server_key = server_key or d / "server.key"
        if not client_key:
            client_key = d / f"{args.client_name}.key_secret"
            if not client_key.is_file() and d.is_dir():
                names = sorted(p.name.removesuffix(".key_secret") for p in d.glob("*.key_secret")
                               if p.name != "server.key_secret")
                if names:
                    raise ConfigError(f"--curve-keys {str(d)!r} has no {client_key.name} (the client name is "
                                      f"{args.client_name!r}); its client keys are for: {', '.join(names)}; pass "
                                      f"--client-name {names[0]}")
    if not server_key and not client_key:
        return None
    from vlmedge.runtime.messaging.sockets import CurveClientKeys

    if not (server_key and client_key):
        raise ConfigError("CURVE needs both --server-key (server.key) and --client-key (client.key_secret), "
                          "or --curve-keys DIR")
    return CurveClientKeys(client_key, server_key)


# A CURVE server never answers a plain client (the handshake fails silently): a silence may be that.
_CURVE_HINT = ("; if it runs with --curve-keys, pass --curve-keys DIR [--client-name NAME] or --server-key "
               "server.key --client-key NAME.key_secret")


# ------------------------------------------------------------------------------------- subscribe

def format_message(topic: str, msg: dict) -> list[str]:
    """Readable lines for one parsed message."""
    if topic == "status":
        lat = "-" if msg["latency_ms"] is None else f"{msg['latency_ms']:.0f} ms"
        return [f"status  {msg['source_state']:<12} fps {msg['fps']:.1f}  latency {lat}  dropped {msg['dropped']}"
                f"  paused {'yes' if msg['paused'] else 'no'}  queries {msg['queries']}"]
    if topic == "heatmap":
        data = msg["data"]
        return [f"heatmap frame {msg['frame_id']}  {msg['query']!r}  shape {list(data.shape)} (rows, columns)"
                f"  max {float(data.max()) * msg['scale']:.2f}  region {msg['region']}"]
    import time

    age_ms = (time.time_ns() - msg["t_capture_ns"]) / 1e6
    head = f"frame {msg['frame_id']:>6}  age {age_ms:6.1f} ms"
    if not msg["targets"]:
        return [f"{head}  (no queries)"]
    if "v2" in msg:
        return _command_lines(head, msg)
    lines = []
    for t in msg["targets"]:
        if t["found"]:
            lines.append(f"{head}  {t['query']!r}  {_target_text(t)}")
        else:
            lines.append(f"{head}  {t['query']!r}  not found (best {t['score']:.2f})")
    return lines


def _target_text(t: dict) -> str:
    cx, cy = t["center"]
    track = "" if t["track_id"] is None else f"  track {t['track_id']}"
    return f"score {t['score']:.2f}  center ({cx:.0f}, {cy:.0f})  bbox {t['bbox']}{track}"


def _command_lines(head: str, msg: dict) -> list[str]:
    """A v2 message: per command one line per resolved target, the first with the count and the anchors; a
    command not found says why (a ``how many`` that counted 0 is found, with count 0)."""
    lines = []
    for c in msg["v2"]["commands"]:
        extra = "" if c["count"] is None else f"  count {c['count']}"
        if c["anchors"]:
            extra += "  anchors " + ", ".join(f"{a['text']!r} {a['bbox']}" for a in c["anchors"])
        name = repr(c["command"])
        if not c["found"]:
            best = max((t["score"] for t in msg["targets"] if t["query"] == c["command"]), default=None)
            score = "" if best is None else f" (best {best:.2f})"
            lines.append(f"{head}  {name}  not found{score}: {c['reason']}{extra}")
        elif not c["targets"]:
            lines.append(f"{head}  {name}{extra}")
        for i, t in enumerate(c["targets"]):
            lines.append(f"{head}  {name}  {_target_text(t)}{extra if i == 0 else ''}")
    return lines


def cmd_subscribe(args) -> int:
    import zmq

    from vlmedge import protocol
    from vlmedge.errors import ProtocolError
    from vlmedge.runtime.messaging.sockets import check_address, setup_curve_client

    check_address(args.address, purpose="subscribe", bind=False)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if args.conflate:
        sock.setsockopt(zmq.CONFLATE, 1)
    curve = _curve_from_args(args)
    if curve is not None:
        setup_curve_client(sock, curve)
    topics = protocol.TOPICS if args.topic == "all" else (args.topic,)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t.encode() + b" ")
    sock.connect(args.address)
    print(f"# listening on {args.address} for {', '.join(topics)} (Ctrl-C to stop)", file=sys.stderr)
    n = 0
    try:
        while not args.count or n < args.count:
            if not sock.poll(None if args.timeout is None else int(args.timeout * 1000)):
                print(f"vlmedge subscribe: nothing received from {args.address} for {args.timeout:g} s "
                      "(is `vlmedge run` publishing there?" + ("" if curve is not None else _CURVE_HINT) + ")",
                      file=sys.stderr)
                return 1
            raw = sock.recv()
            try:
                topic, msg = protocol.parse_message(raw)
            except ProtocolError as e:
                print(f"# bad message: {e}", file=sys.stderr)
                continue
            n += 1
            if args.json:
                if topic == "heatmap":
                    data = msg.pop("data")
                    msg["data_bytes"] = int(data.size)
                print(json.dumps(msg), flush=True)
            else:
                for line in format_message(topic, msg):
                    print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(linger=0)
        ctx.term()
    return 0


# ------------------------------------------------------------------------------------------ send

def request_from_words(words: list[str]) -> dict:
    """['set_threshold', '0.4', 'a cup'] -> {"op": "set_threshold", "value": 0.4, "query": "a cup"}."""
    from vlmedge import protocol
    from vlmedge.errors import ProtocolError, did_you_mean
    from vlmedge.validation import check_threshold

    if not words:
        raise ProtocolError(f"which op? one of {list(protocol.CONTROL_OPS)}")
    op, rest = words[0], words[1:]
    if op not in protocol.CONTROL_OPS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {list(protocol.CONTROL_OPS)}"
                            + did_you_mean(op, protocol.CONTROL_OPS))
    if op == "set_queries":
        return {"op": op, "queries": rest}
    if op in ("add_query", "remove_query"):
        if len(rest) != 1:
            raise ProtocolError(f"{op} takes one query (quote it: {op} \"the red cup\"), got {len(rest)} arguments")
        return {"op": op, "query": rest[0]}
    if op == "set_threshold":
        if len(rest) not in (1, 2):
            raise ProtocolError("set_threshold takes VALUE [QUERY]")
        value = check_threshold(rest[0], "set_threshold: value", error=ProtocolError, text=True)
        return {"op": op, "value": value, **({"query": rest[1]} if len(rest) == 2 else {})}
    if op == "teach":
        # NAME may be one quoted argument or several words: the box is always the last four.
        if len(rest) < 5:
            raise ProtocolError(f"teach takes NAME X0 Y0 X1 Y1, e.g. teach \"my mug\" 100 120 220 260; got "
                                f"{len(rest)} arguments")
        return {"op": op, "name": " ".join(rest[:-4]), "box": [_box_number(v, k) for k, v in zip(_BOX, rest[-4:])]}
    if op == "forget":
        if not rest:
            raise ProtocolError("forget takes the NAME of a taught object (forget \"my mug\")")
        return {"op": op, "name": " ".join(rest)}
    if rest:
        raise ProtocolError(f"{op} takes no arguments, got {rest}")
    return {"op": op}


_BOX = ("x0", "y0", "x1", "y1")


def _box_number(text: str, name: str) -> int | float:
    """One box coordinate from the command line: an int when it is one (pixels), else a float."""
    from vlmedge.errors import ProtocolError

    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ProtocolError(f"teach: box {name} must be a number (pixels), got {text!r}") from None


def cmd_send(args) -> int:
    from vlmedge import protocol
    from vlmedge.errors import ProtocolError
    from vlmedge.runtime.messaging.control import ControlClient, ControlTimeout

    words = list(args.words)
    address = DEFAULT_CONTROL_ADDRESS
    if words and "://" in words[0]:
        address = words.pop(0)
    if args.raw_json is not None:
        if words:
            raise ProtocolError(f"give either --json or OP ARGS, not both (got {words})")
        req = protocol.loads(args.raw_json, "--json")
        if not isinstance(req, dict):
            raise ProtocolError(f"--json must be a JSON object, got {type(req).__name__}")
    else:
        req = request_from_words(words)
    curve = _curve_from_args(args)
    with ControlClient(address, timeout_ms=int(args.timeout * 1000), curve=curve) as client:
        try:
            reply = client.request(req)
        except ControlTimeout as e:
            if curve is not None:
                raise
            raise ControlTimeout(str(e).rstrip(")") + _CURVE_HINT + ")") from None
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def cmd_keys(args) -> int:
    from vlmedge.runtime.messaging.sockets import create_keys

    paths = create_keys(args.dir, clients=tuple(args.client or ("client",)))
    print(json.dumps(paths, indent=2))
    print(f"# server:  vlmedge run --curve-keys {args.dir}\n"
          f"# clients: vlmedge subscribe --curve-keys {args.dir}   (copy server.key and your *.key_secret "
          "to client machines; never copy server.key_secret)", file=sys.stderr)
    return 0
