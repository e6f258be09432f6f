"""Soak: ``vlmedge run`` for a long time against a local MJPEG camera that goes down now and then, with a
subscriber reading every message and a control client changing the commands every second (#14, Acceptance).

    python benchmarks/soak.py --minutes 30                      # the benchmark (the README's numbers)
    python benchmarks/soak.py --minutes 2 --outage-every 40     # what CI runs (tests/test_soak.py)

The camera is an MJPEG-over-HTTP server in this process (``multipart/x-mixed-replace``, tabletop scenes
rendered once); an outage closes its port and every connection for ``--outage-s`` seconds. ``vlmedge run`` runs
in a child process (the demo int8 bundle unless ``--bundle``); this process samples its resident memory
(``/proc/PID/status``) every second. Passes when:

* RSS growth after warm-up is at most ``--max-rss-growth`` (5 %): the median of the last minute against the
  median of the first minute after warm-up (a tenth of the run each, when it is shorter than 10 minutes);
* every outage is seen (a status other than ``running``) and recovered (targets again within
  ``--recover-within`` seconds of the camera's return);
* the subscriber sees zero sequence gaps on ``targets`` and on ``status``;
* the run ends on SIGTERM with exit code 0 and a final status saying so.

Writes ``benchmarks/results/soak-<date>.json`` (or ``--out``) and prints a summary; the exit code is 1 when a
criterion fails. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("the red cup", "a blue ball", "the cup next to the plate", "how many cups", "the leftmost bottle",
            "all red objects", "the green bottle", "the second cup from the left")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- the camera

class MjpegCamera:
    """An IP camera serving MJPEG over HTTP at ``fps`` on loopback; ``down()`` is an outage (port closed, every
    connection dropped), ``up()`` brings it back on the same port."""

    def __init__(self, fps: float, size: tuple[int, int], frames: int = 60):
        import cv2

        from vlmedge.scenes.render import render_scene

        h, w = size
        self.fps = float(fps)
        self.port = free_port()
        self.jpegs = [cv2.imencode(".jpg", cv2.resize(render_scene(i).frame, (w, h), interpolation=cv2.INTER_AREA),
                                   [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for i in range(frames)]
        self.sent = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._down = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def _handler(self):
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i, t_next = 0, time.monotonic()
                try:
                    while not camera._down.is_set():
                        jpeg = camera.jpegs[i % len(camera.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        camera.sent += 1
                        i += 1
                        t_next += 1.0 / camera.fps
                        time.sleep(max(0.0, t_next - time.monotonic()))
                except OSError:  # the client went away
                    pass

        return Handler

    def up(self) -> None:
        self._down.clear()
        deadline = time.monotonic() + 30
        while True:
            try:
                http.server.ThreadingHTTPServer.allow_reuse_address = True
                self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="soak-camera", daemon=True).start()

    def down(self) -> None:
        self._down.set()  # the streaming handlers return: connections closed
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ------------------------------------------------------------------------------------------- the clients

@dataclass
class Reading:
    """What the subscriber saw."""

    messages: dict = field(default_factory=lambda: {"targets": 0, "status": 0})
    gaps: dict = field(default_factory=lambda: {"targets": 0, "status": 0})
    last_seq: dict = field(default_factory=dict)
    last_targets_t: float = 0.0
    states: list = field(default_factory=list)  # (monotonic time, source_state) on every change
    final: dict | None = None
    fps: list = field(default_factory=list)


def subscribe(address: str, reading: Reading, stop: threading.Event) -> None:
    from vlmedge import protocol

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    for topic in (b"targets ", b"status "):
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(address)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            topic, msg = protocol.parse_message(sock.recv())
            reading.messages[topic] += 1
            last = reading.last_seq.get(topic)
            if last is not None and msg["seq"] > last + 1:
                reading.gaps[topic] += msg["seq"] - last - 1
            reading.last_seq[topic] = msg["seq"]
            now = time.monotonic()
            if topic == "targets":
                reading.last_targets_t = now
            else:
                if not reading.states or reading.states[-1][1] != msg["source_state"]:
                    reading.states.append((now, msg["source_state"]))
                reading.fps.append(msg["fps"])
                if "stop_reason" in msg:
                    reading.final = msg
    finally:
        sock.close(0)
        ctx.term()


@dataclass
class Controlling:
    requests: int = 0
    refused: int = 0
    timeouts: int = 0
    timed_out: list = field(default_factory=list)  # (seconds since the start, op) of each timeout


def control(address: str, out: Controlling, stop: threading.Event) -> None:
    """A request every second: new commands, thresholds, additions and removals; every tenth brings a query
    never seen before (the text-embedding cache must not grow without bound)."""
    from vlmedge.runtime.messaging.control import ControlClient, ControlTimeout

    with ControlClient(address, timeout_ms=5000) as client:
        i, t0 = 0, time.monotonic()
        while not stop.wait(1.0):
            c = COMMANDS[i % len(COMMANDS)]
            req = [{"op": "set_queries", "queries": [c]},
                   {"op": "set_threshold", "value": 0.3 + 0.05 * (i % 5)},
                   {"op": "add_query", "query": COMMANDS[(i + 3) % len(COMMANDS)]},
                   {"op": "status"},
                   {"op": "set_queries", "queries": [c, f"a thing number {i}"] if i % 10 == 4 else [c]}][i % 5]
            i += 1
            try:
                reply = client.request(req)
            except ControlTimeout:
                out.timeouts += 1
                out.timed_out.append((round(time.monotonic() - t0, 1), req["op"]))
                continue
            out.requests += 1
            out.refused += not reply["ok"]


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------- the soak

def soak(minutes: float = 30.0, *, outage_every_s: float = 300.0, outage_s: float = 10.0, fps: float = 15.0,
         size: tuple[int, int] = (240, 320), bundle: str | None = None, warmup_s: float = 60.0,
         recover_within_s: float = 60.0, max_rss_growth: float = 0.05, extra_args: tuple[str, ...] = (),
         log_path: Path | None = None) -> dict:
    """Run the soak; returns the results (``passed`` and each criterion)."""
    duration = minutes * 60.0
    camera = MjpegCamera(fps, size)
    camera.up()
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "vlmedge.cli", "run", "--source", camera.url, "--headless", "--publish", pub,
           "--control", ctl, "--query", COMMANDS[0], *(("--bundle", bundle) if bundle else ()), *extra_args]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    reading, controlling, stop, ctl_stop = Reading(), Controlling(), threading.Event(), threading.Event()
    sub = threading.Thread(target=subscribe, args=(pub, reading, stop), daemon=True)
    sub.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    samples: list[tuple[float, int]] = []
    outages: list[dict] = []
    ctl_thread = None
    try:
        deadline = time.monotonic() + 120
        while reading.messages["targets"] == 0:  # started: the model loaded, the camera read
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vlmedge run did not start (exit code {proc.poll()}); see {log_path}")
            time.sleep(0.2)
        t0 = time.monotonic()
        ctl_thread = threading.Thread(target=control, args=(ctl, controlling, ctl_stop), daemon=True)
        ctl_thread.start()
        next_outage = t0 + outage_every_s
        while time.monotonic() - t0 < duration and proc.poll() is None:
            now = time.monotonic()
            kb = rss_kb(proc.pid)
            if kb is not None:
                samples.append((now - t0, kb))
            if now >= next_outage and now - t0 + outage_s + recover_within_s < duration:
                outages.append(_outage(camera, reading, outage_s, recover_within_s))
                next_outage = t0 + outage_every_s * (len(outages) + 1)
                continue
            time.sleep(1.0)
        t_end = time.monotonic()
        ctl_stop.set()  # no request is left without its server
        ctl_thread.join(10)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        time.sleep(1.0)  # the final status reaches the subscriber
    finally:
        stop.set()
        ctl_stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        camera.down()
        if log_path:
            log.close()
    sub.join(5)
    if ctl_thread is not None:
        ctl_thread.join(10)
    return _results(minutes, t_end - t0, samples, warmup_s, max_rss_growth, outages, reading, controlling, rc,
                    dict(fps=fps, size=f"{size[1]}x{size[0]}", outage_every_s=outage_every_s, outage_s=outage_s,
                         bundle=bundle or "embedded int8", command=" ".join(cmd[1:])))


def _outage(camera: MjpegCamera, reading: Reading, outage_s: float, recover_within_s: float) -> dict:
    t_down = time.monotonic()
    camera.down()
    time.sleep(outage_s)
    camera.up()
    t_up = time.monotonic()
    recovered = None
    while time.monotonic() - t_up < recover_within_s:
        if reading.last_targets_t > t_up and reading.states and reading.states[-1][1] == "running":
            recovered = reading.last_targets_t - t_up
            break
        time.sleep(0.05)
    seen = sorted({s for t, s in reading.states if t_down <= t} - {"running"})
    return {"down_s": round(t_up - t_down, 2), "states_seen": seen, "recovered_after_s":
            None if recovered is None else round(recovered, 2)}


def _median_kb(samples: list[tuple[float, int]], lo: float, hi: float) -> float | None:
    vals = [kb for t, kb in samples if lo <= t < hi]
    return statistics.median(vals) if vals else None


def _results(minutes, seconds, samples, warmup_s, max_growth, outages, reading, controlling, rc, setup) -> dict:
    window = min(60.0, seconds / 10)
    start = min(warmup_s, seconds / 4)
    base = _median_kb(samples, start, start + window)
    end = _median_kb(samples, seconds - window, seconds + 1)
    growth = None if not base or end is None else (end - base) / base
    final = reading.final or {}
    checks = {
        "rss_growth": growth is not None and growth <= max_growth,
        "outages_recovered": all(o["recovered_after_s"] is not None and o["states_seen"] for o in outages),
        "no_sequence_gaps": reading.gaps == {"targets": 0, "status": 0},
        "clean_exit": rc == 0 and final.get("stop_reason") == "signal" and final.get("source_state") == "stopped",
    }
    fps = [f for f in reading.fps if f > 0]
    return {
        "passed": all(checks.values()), "checks": checks, "minutes": minutes, "seconds": round(seconds, 1),
        "rss_mb": {"after_warmup": None if base is None else round(base / 1024, 1),
                   "end": None if end is None else round(end / 1024, 1),
                   "max": round(max(kb for _, kb in samples) / 1024, 1) if samples else None,
                   "growth_pct": None if growth is None else round(100 * growth, 2),
                   "warmup_s": start, "window_s": round(window, 1)},
        "outages": outages, "messages": reading.messages, "sequence_gaps": reading.gaps,
        "status_fps_median": round(statistics.median(fps), 2) if fps else None,
        "control": asdict(controlling), "exit_code": rc, "final_status": {k: final.get(k) for k in (
            "source_state", "stop_reason", "frames", "reconnects")},
        "setup": setup,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--outage-every", type=float, default=300.0, help="seconds between camera outages")
    ap.add_argument("--outage-s", type=float, default=10.0, help="length of each outage")
    ap.add_argument("--fps", type=float, default=15.0, help="camera frame rate")
    ap.add_argument("--size", default="320x240", help="camera frame size WxH")
    ap.add_argument("--bundle", default=None, help="bundle directory (default: the embedded int8 demo bundle)")
    ap.add_argument("--warmup-s", type=float, default=60.0)
    ap.add_argument("--max-rss-growth", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results/soak-*.json)")
    ap.add_argument("--log", type=Path, default=None, help="write vlmedge run's log here")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    res = soak(a.minutes, outage_every_s=a.outage_every, outage_s=a.outage_s, fps=a.fps, size=(h, w),
               bundle=a.bundle, warmup_s=a.warmup_s, max_rss_growth=a.max_rss_growth, log_path=a.log)
    out = a.out or ROOT / "benchmarks" / "results" / f"soak-{a.minutes:g}min-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("passed", "checks", "rss_mb", "outages", "sequence_gaps", "messages",
                                          "status_fps_median", "control", "exit_code")}, indent=2))
    print(f"results: {out}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
