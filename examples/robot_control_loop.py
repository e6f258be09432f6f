#!/usr/bin/env python3
"""A minimal robot control loop driven by vlmedge targets.

    vlmedge run --source 0 --query "the red cup" &
    python3 examples/robot_control_loop.py --query "the red cup"

It subscribes with ZMQ_CONFLATE (the socket keeps only the newest message, so the loop never acts
on a backlog), turns toward the target's center with a proportional controller on the normalized
horizontal image error, and drives forward more slowly the further off-center the target is. It
stops when the target is lost, when the newest targets are older than --max-age (judged from the
frame's capture time, so a slow or dead pipeline stops the robot) and on Ctrl-C.
Replace ``send_to_robot`` with your motor interface.

The query may be a command ("the cup left of the plate", "the second bottle from the left"): from a
protocol v2 publisher the loop reads the command's own resolution (its targets, and why it was not
found); from a v1 publisher it reads the plain target list, which holds the same targets without the why.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass

import zmq

from vlmedge import protocol
from vlmedge.errors import ProtocolError


@dataclass(frozen=True)
class Command:
    """Velocity command: ``turn`` rad/s (positive = left, ROS convention), ``forward`` m/s."""

    turn: float
    forward: float
    reason: str

    @property
    def is_stop(self) -> bool:
        return self.turn == 0.0 and self.forward == 0.0


def stop(reason: str) -> Command:
    return Command(0.0, 0.0, reason)


def pick_target(msg: dict, query: str | None = None) -> dict | None:
    """The best found target (of ``query`` when given): the highest score."""
    return pick(msg, query)[0]


def pick(msg: dict, query: str | None = None) -> tuple[dict | None, str]:
    """(the best found target or None, why none): the highest score among the targets of ``query`` (any
    query when None). A v2 message's commands say why a command was not found; a v1 message cannot."""
    commands = msg.get("v2", {}).get("commands")
    if commands is None:  # a v1 publisher: the flat list
        found = [t for t in msg["targets"] if t["found"] and (query is None or t["query"] == query)]
        return (max(found, key=lambda t: t["score"]), "") if found else (None, "")
    chosen = [c for c in commands if query is None or c["command"] == query]
    found = [t for c in chosen for t in c["targets"]]
    if found:
        return max(found, key=lambda t: t["score"]), ""
    reasons = [c["reason"] for c in chosen if c["reason"]]
    return None, "; ".join(reasons) if reasons else ("" if chosen else f"{query!r} is not an active query")


def steer(msg: dict, *, now_ns: int, query: str | None = None, gain: float = 1.5, max_turn: float = 1.0,
          speed: float = 0.2, max_age_s: float = 0.5, min_score: float = 0.0) -> Command:
    """One control step from a parsed targets message."""
    age = (now_ns - msg["t_capture_ns"]) / 1e9
    if age > max_age_s:
        return stop(f"stale: frame is {age:.2f} s old")
    target, why = pick(msg, query)
    if target is None or target["score"] < min_score:
        return stop("target not found" + (f": {why}" if why and target is None else ""))
    width = msg["frame_size"][0]
    error = (target["center"][0] - width / 2) / (width / 2)  # -1 (far left) .. +1 (far right)
    turn = max(-max_turn, min(max_turn, -gain * error))
    forward = speed * max(0.0, 1.0 - abs(error))
    return Command(turn, forward, f"{target['query']!r} at x-error {error:+.2f}, score {target['score']:.2f}")


def handle(raw: bytes, *, now_ns: int, **kw) -> Command:
    """Raw ZeroMQ message -> command; a malformed message stops the robot."""
    try:
        topic, msg = protocol.parse_message(raw)
    except ProtocolError as e:
        return stop(f"bad message: {e}")
    if topic != "targets":
        return stop(f"unexpected topic {topic!r}")
    return steer(msg, now_ns=now_ns, **kw)


def connect(address: str, ctx: zmq.Context | None = None) -> zmq.Socket:
    """SUB socket that keeps only the newest targets message (CONFLATE must be set before connect)."""
    sock = (ctx or zmq.Context.instance()).socket(zmq.SUB)
    sock.setsockopt(zmq.CONFLATE, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"targets ")
    sock.connect(address)
    return sock


def send_to_robot(cmd: Command, changed: bool = True) -> None:
    """Send every cycle (motor controllers usually stop on their own when commands stop coming);
    this demo prints only changes."""
    if changed:
        print(f"turn {cmd.turn:+.3f} rad/s  forward {cmd.forward:.3f} m/s  ({cmd.reason})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Steer toward a vlmedge target.")
    ap.add_argument("--address", default=protocol.DEFAULT_PUB_ADDRESS)
    ap.add_argument("--query", default=None, help="follow this query (default: the best target of any)")
    ap.add_argument("--gain", type=float, default=1.5, help="turn rate per unit of normalized x error")
    ap.add_argument("--speed", type=float, default=0.2, help="forward speed when centered (m/s)")
    ap.add_argument("--max-age", type=float, default=0.5, help="stop when targets are older than this (s)")
    ap.add_argument("--rate", type=float, default=20.0, help="control loop rate (Hz)")
    args = ap.parse_args(argv)

    running = True

    def on_sigint(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGINT, on_sigint)
    sock = connect(args.address)
    last: tuple | None = None
    last_msg: bytes | None = None
    period = 1.0 / args.rate
    try:
        while running:
            if sock.poll(int(period * 1000)):
                last_msg = sock.recv()
            now = time.time_ns()
            cmd = (handle(last_msg, now_ns=now, query=args.query, gain=args.gain, speed=args.speed,
                          max_age_s=args.max_age) if last_msg is not None else stop("no targets yet"))
            key = (round(cmd.turn, 3), round(cmd.forward, 3), cmd.reason.split(":")[0])
            send_to_robot(cmd, changed=key != last)
            last = key
    finally:
        send_to_robot(stop("shutting down"))
        sock.close(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
