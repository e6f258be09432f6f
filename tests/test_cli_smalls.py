"""The small things a new user meets in the first ten minutes (issue #16 item 10): how to stop `vlmedge run`, what
its printed fields mean, an honest frame rate, warnings for options that would be silently misread or ignored,
errors that name the flag the user typed, CURVE hints that point the right way, `subscribe` shapes in the order of
the JSON, and examples that do not clash with a running vlmedge. Real processes, real sockets on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "vlmedge.cli"]


def _cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          **kw)


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# ----------------------------------------------------------------------------------------------- run

def test_run_help_explains_the_printed_line_and_how_to_stop():
    out = _cli("run", "--help").stdout
    # each field of a headless line is named: score, bbox, track id, further targets, the rate
    for field in ("score", "bbox=", "id=", "(+1 more)", "count=", "not found", "FPS", "Ctrl-C"):
        assert field in out, field
    assert re.search(r"id=\S*\s+.*track", out), out  # the id is explained as the track id


def test_headless_run_says_how_to_stop_and_prints_no_zero_rate():
    proc = _cli("run", "--headless", "--max-frames", "4", "--publish", "none", "--control", "none",
                "--source", "synthetic://tabletop?width=320&height=240&fps=10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Ctrl-C to stop" in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("frame ")]
    assert lines and not any("0.0 FPS" in line for line in lines), lines


def test_printed_rate_is_the_source_rate_from_the_second_line_on():
    """A 5 fps source: the first line has no rate yet (it said 0.0 FPS), the next ones say about 5 -- neither a
    ramp up from the start of the program nor more than the source delivers."""
    proc = _cli("run", "--headless", "--max-frames", "8", "--publish", "none", "--control", "none",
                "--source", "synthetic://tabletop?width=320&height=240&fps=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rates = re.findall(r"\[(\S+) FPS, ", proc.stdout)
    assert rates and rates[0] == "-", proc.stdout
    later = [float(r) for r in rates[1:]]
    assert later and all(3.5 <= r <= 6.0 for r in later), proc.stdout


def test_config_errors_name_the_flag():
    for args, flag in ((("--publish", "foo"), "--publish"), (("--control", "5556"), "--control"),
                       (("--record", "out.txt"), "--record"), (("--curve-keys", "/no/such/dir"), "--curve-keys"),
                       (("--query", "the cup left of"), "--query")):
        proc = _cli("run", "--headless", *args, timeout=60)
        assert proc.returncode != 0
        assert flag in proc.stderr and "RunConfig" not in proc.stderr, proc.stderr


# -------------------------------------------------------------------------------------------- export

def test_export_warns_about_a_width_first_image_size_and_an_ignored_calib(tmp_path):
    pytest.importorskip("torch")
    proc = _cli("export", tmp_path / "no-such-checkpoint", "--out", tmp_path / "b", "--image-size", "640x480",
                "--calib", tmp_path, timeout=120)
    assert proc.returncode != 0  # the checkpoint does not exist; the warnings come first
    assert re.search(r"--image-size 640x480 .*height x width.*480x640", proc.stderr), proc.stderr
    assert re.search(r"--calib .*ignored.*--precision fp32", proc.stderr), proc.stderr
    quiet = _cli("export", tmp_path / "no-such-checkpoint", "--out", tmp_path / "b", "--image-size", "224",
                 timeout=120)
    assert "warning" not in quiet.stderr, quiet.stderr


# ---------------------------------------------------------------------------------------------- CURVE

def test_subscribe_without_client_name_lists_the_names_in_the_folder(tmp_path):
    keys = tmp_path / "keys"
    assert _cli("keys", keys, "--client", "laptop").returncode == 0
    proc = _cli("subscribe", "--curve-keys", keys, "--timeout", "1", timeout=60)
    assert proc.returncode != 0
    assert "--client-name laptop" in proc.stderr, proc.stderr


def test_send_to_a_curve_server_without_keys_suggests_them(tmp_path):
    from vlmedge.runtime.messaging.control import ControlServer, ControlState
    from vlmedge.runtime.messaging.sockets import CurveServerKeys

    keys = tmp_path / "keys"
    assert _cli("keys", keys).returncode == 0
    address = _free_address()
    server = ControlServer(address, ControlState(queries=("the red cup",)).handle,
                           curve=CurveServerKeys(keys / "server.key_secret"))
    try:
        plain = _cli("send", address, "status", "--timeout", "1", timeout=60)
        assert plain.returncode != 0
        assert "--curve-keys" in plain.stderr and "--server-key" in plain.stderr, plain.stderr
    finally:
        server.close()


# ------------------------------------------------------------------------------------------ subscribe

def test_subscribe_prints_a_heatmap_shape_in_the_order_of_its_json():
    from vlmedge import protocol
    from vlmedge.cli.messaging import format_message

    raw = protocol.build_heatmap(seq=1, frame_id=7, t_capture_ns=time.time_ns(), query="the red cup", index=0,
                                 count=1, data=np.zeros((12, 16), np.uint8), region=(0, 0, 640, 480), width=640,
                                 height=480)
    topic, msg = protocol.parse_message(raw)
    assert msg["shape"] == [12, 16]
    line = format_message(topic, msg)[0]
    assert "[12, 16]" in line and "16x12" not in line, line


# ------------------------------------------------------------------------------------------- examples

def test_webcam_demo_takes_other_sockets_next_to_a_running_vlmedge():
    import zmq

    pub = _free_address()
    proc = subprocess.Popen([sys.executable, "examples/webcam_demo.py", "--source", "synthetic://tabletop",
                             "--no-display", "--publish", pub, "--control", "none"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.SUBSCRIBE, b"targets ")
        sock.connect(pub)
        got = sock.poll(90_000)
        assert got, (proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        assert json.loads(sock.recv().split(b" ", 1)[1])["targets"]
    finally:
        sock.close(linger=0)
        ctx.term()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by signal" in out


def test_example_helps_have_a_description():
    for example in sorted((ROOT / "examples").glob("*.py")):
        proc = subprocess.run([sys.executable, str(example), "--help"], capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, (example.name, proc.stderr[-1000:])
        usage, _, rest = proc.stdout.partition("\n\n")
        description = rest.split("\n\n")[0]
        assert description and not description.startswith(("options:", "optional arguments:")), (example.name,
                                                                                                  proc.stdout)
