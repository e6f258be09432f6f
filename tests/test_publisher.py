"""Publisher over real ZeroMQ sockets on 127.0.0.1 (random ports)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from _scripts import load_script

from vlmedge import protocol
from vlmedge.errors import ConfigError
from vlmedge.runtime.grounding.results import GroundingResult, Target
from vlmedge.runtime.io.capture import Frame
from vlmedge.runtime.messaging.publisher import Publisher
from vlmedge.runtime.messaging.sockets import (
    CurveClientKeys,
    CurveServerKeys,
    check_address,
    create_keys,
    setup_curve_client,
)

ADDR = "tcp://127.0.0.1:0"


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _sub(ctx, endpoint, topic=b"", conflate=False, rcvhwm=None):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if conflate:
        s.setsockopt(zmq.CONFLATE, 1)
    if rcvhwm is not None:
        s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(endpoint)
    return s


def _wait_joined(pub: Publisher, sub: zmq.Socket, timeout=5.0):
    """Publish statuses until the subscriber sees one (PUB/SUB slow joiner), then drain."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish_status(_status())
        if sub.poll(50):
            while sub.poll(50):
                sub.recv()
            return
    raise AssertionError("subscriber never joined")


def _status(**over):
    d = dict(source_state="running", fps=12.5, latency_ms=40.0, dropped=0, queries=["the red cup"], paused=False)
    d.update(over)
    return d


def _targets(pub, frame_id, x=100.0):
    return pub.publish_targets(
        [Target("the red cup", True, 0.9, bbox=(int(x) - 10, 10, int(x) + 10, 30), center=(x, 20.0),
                peak=(x, 20.0), area=400, track_id=1)],
        frame_id=frame_id, t_capture_ns=time.time_ns(), t_capture_mono_ns=time.monotonic_ns(),
        width=640, height=480, queries=["the red cup"])


def test_subscriber_receives_valid_messages(ctx):
    jsonschema = pytest.importorskip("jsonschema")
    with Publisher(ADDR, model="tiny") as pub:
        assert pub.endpoint.startswith("tcp://127.0.0.1:") and not pub.endpoint.endswith(":0")
        sub = _sub(ctx, pub.endpoint)
        _wait_joined(pub, sub)
        _targets(pub, 7)
        pub.publish_status(_status(source_state="reconnecting", fps=0.0, latency_ms=None, reconnects=3))
        got = {}
        while len(got) < 2 and sub.poll(2000):
            topic, msg = protocol.parse_message(sub.recv())
            got[topic] = msg
    assert got["targets"]["frame_id"] == 7 and got["targets"]["model"] == "tiny"
    assert got["status"]["source_state"] == "reconnecting" and got["status"]["model"] == "tiny"
    for topic, msg in got.items():
        v = jsonschema.Draft202012Validator(protocol.load_schema(topic))
        assert not list(v.iter_errors(msg)), topic
    assert got["status"]["seq"] > 0  # seq counts per topic (the join statuses came first)
    assert got["targets"]["seq"] == 0


def test_conflate_subscriber_reads_the_newest(ctx):
    with Publisher(ADDR) as pub:
        sub = _sub(ctx, pub.endpoint, b"targets ", conflate=True)
        deadline = time.monotonic() + 5
        while not sub.poll(20):  # slow joiner
            _targets(pub, 0)
            assert time.monotonic() < deadline
        sub.recv()
        for i in range(1, 51):  # at a (fast) frame rate: a burst beyond SNDHWM would drop the newest
            _targets(pub, i)
            time.sleep(0.002)
        time.sleep(0.3)  # let the I/O thread deliver everything; CONFLATE keeps the last one
        topic, msg = protocol.parse_message(sub.recv())
        assert topic == "targets" and msg["frame_id"] == 50
        assert not sub.poll(100), "a conflating socket holds only one message"


def test_heatmaps_off_by_default_and_on_when_asked(ctx):
    t = Target("a cup", False, 0.1)
    maps = np.linspace(0, 1, 4 * 6, dtype=np.float32).reshape(1, 4, 6)
    result = GroundingResult(("a cup",), (t,), maps, frame_size=(480, 640), crop_box=(80, 0, 560, 480))
    frame = Frame(3, np.zeros((480, 640, 3), np.uint8), time.monotonic_ns(), time.time_ns())
    with Publisher(ADDR) as pub:
        assert pub.publish_heatmaps({"a cup": maps[0]}, frame_id=1, t_capture_ns=1, region=(0, 0, 6, 4),
                                    width=640, height=480) == 0
    with Publisher(ADDR, heatmaps=True) as pub:
        sub = _sub(ctx, pub.endpoint)
        _wait_joined(pub, sub)
        pub.publish_result(result, frame)
        got = {}
        while len(got) < 2 and sub.poll(2000):
            topic, msg = protocol.parse_message(sub.recv())
            got[topic] = msg
    assert got["targets"]["frame_size"] == [640, 480] and got["targets"]["frame_id"] == 3
    assert got["targets"]["t_capture_mono_ns"] == frame.t_capture_ns
    hm = got["heatmap"]
    assert hm["query"] == "a cup" and hm["region"] == [80, 0, 560, 480] and hm["shape"] == [4, 6]
    np.testing.assert_allclose(hm["data"] * hm["scale"], maps[0], atol=0.5 / 255 + 1e-6)


def test_heartbeat_thread_keeps_publishing(ctx):
    calls = []

    def status():
        calls.append(1)
        return _status(source_state="stalled", fps=0.0, latency_ms=None)

    with Publisher(ADDR) as pub:
        sub = _sub(ctx, pub.endpoint, b"status ")
        _wait_joined(pub, sub)
        pub.start_heartbeat(status, interval_s=0.05)
        seqs = []
        deadline = time.monotonic() + 5
        while len(seqs) < 4 and time.monotonic() < deadline:
            if sub.poll(500):
                _, msg = protocol.parse_message(sub.recv())
                seqs.append(msg["seq"])
                assert msg["source_state"] == "stalled"
        assert len(seqs) == 4 and seqs == sorted(seqs)
    n = len(calls)
    time.sleep(0.15)
    assert len(calls) == n, "heartbeat must stop on close()"


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_slow_subscriber_does_not_grow_publisher_memory(ctx, sndhwm=2):
    targets = [Target("x" * 50_000, False, 0.1)]  # one ~50 KB message per frame
    with Publisher(ADDR, sndhwm=sndhwm) as pub:
        sub = _sub(ctx, pub.endpoint, rcvhwm=2)  # subscribes, then never reads
        _wait_joined(pub, sub)
        base = _rss_kb()
        for i in range(5000):
            pub.publish_targets(targets, frame_id=i, t_capture_ns=time.time_ns(), width=640, height=480, queries=[])
        grown_mb = (_rss_kb() - base) / 1024
    msg_size = len(protocol.build_targets(seq=0, frame_id=0, t_capture_ns=0, width=640, height=480, model="",
                                          queries=[], targets=targets))
    assert msg_size > 50_000
    total_mb = 5000 * msg_size / 2**20
    assert grown_mb < 40, f"RSS grew {grown_mb:.1f} MB while publishing {total_mb:.0f} MB to a stalled subscriber"


def test_address_checks(caplog):
    with caplog.at_level(logging.WARNING, logger="vlmedge.runtime.messaging.sockets"):
        check_address("tcp://127.0.0.1:5555")
        check_address("tcp://localhost:0")
        check_address("tcp://[::1]:5555")
        assert not caplog.records
        check_address("tcp://0.0.0.0:5555", purpose="publisher")
        check_address("tcp://*:5555")
    assert len(caplog.records) == 2 and "reachable from the network" in caplog.records[0].getMessage()
    for bad, words in (("127.0.0.1:5555", "not a ZeroMQ endpoint"), ("tcpp://127.0.0.1:1", "did you mean 'tcp'"),
                       ("tcp://127.0.0.1", "tcp://HOST:PORT"), ("tcp://127.0.0.1:70000", "outside 0..65535")):
        with pytest.raises(ConfigError, match=None) as e:
            Publisher(bad)
        assert words in str(e.value)


def test_bind_conflict_is_a_clear_error():
    with Publisher(ADDR) as pub:
        with pytest.raises(ConfigError, match="cannot bind"):
            Publisher(pub.endpoint)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_publisher_authenticates_clients(ctx, tmp_path):
    keys = create_keys(tmp_path / "keys", clients=("robot",))
    rogue = create_keys(tmp_path / "rogue", server="unused", clients=("rogue",))
    server = CurveServerKeys(keys["server_secret"], keys["clients_dir"])
    with Publisher(ADDR, curve=server) as pub:
        good = ctx.socket(zmq.SUB)
        setup_curve_client(good, CurveClientKeys(keys["robot_secret"], keys["server_public"]))
        good.setsockopt(zmq.SUBSCRIBE, b"")
        good.connect(pub.endpoint)
        bad = ctx.socket(zmq.SUB)
        setup_curve_client(bad, CurveClientKeys(rogue["rogue_secret"], keys["server_public"]))
        bad.setsockopt(zmq.SUBSCRIBE, b"")
        bad.connect(pub.endpoint)
        plain = _sub(ctx, pub.endpoint)
        _wait_joined(pub, good)
        _targets(pub, 1)
        topic, msg = protocol.parse_message(good.recv())
        assert topic == "targets" and msg["frame_id"] == 1
        assert not bad.poll(300), "a client whose key is not in clients_dir must get nothing"
        assert not plain.poll(10), "a plaintext client must get nothing"
    with pytest.raises(ConfigError, match="holds no secret key"):
        Publisher(ADDR, curve=CurveServerKeys(keys["server_public"]))


def _load_example(name: str):
    return load_script(f"examples/{name}.py", f"example_{name}")


def test_robot_control_loop_example_over_real_sockets(ctx):
    robot = _load_example("robot_control_loop")
    with Publisher(ADDR) as pub:
        sock = robot.connect(pub.endpoint, ctx)
        deadline = time.monotonic() + 5
        while not sock.poll(20):
            _targets(pub, 0, x=320.0)
            assert time.monotonic() < deadline
        sock.recv()
        for i, x in enumerate((100.0, 200.0, 600.0), start=1):  # only the newest (x=600) matters
            _targets(pub, i, x=x)
            time.sleep(0.01)
        time.sleep(0.2)
        raw = sock.recv()
    now = time.time_ns()
    cmd = robot.handle(raw, now_ns=now, gain=1.0, speed=0.2)
    err = (600 - 320) / 320
    assert cmd.turn == pytest.approx(-err) and cmd.forward == pytest.approx(0.2 * (1 - err))
    assert "x-error +0.88" in cmd.reason
    # centered target: straight ahead at full speed
    _, msg = protocol.parse_message(raw)
    msg["targets"][0]["center"] = [320.0, 240.0]
    assert robot.steer(msg, now_ns=now, speed=0.2) == robot.Command(0.0, 0.2, robot.steer(msg, now_ns=now).reason)
    # staleness uses the capture time: 2 s later the same message stops the robot
    assert robot.handle(raw, now_ns=now + 2_000_000_000, max_age_s=0.5).reason.startswith("stale")
    assert robot.handle(raw, now_ns=now, query="a green cube").reason == "target not found"
    assert robot.handle(b"targets {broken", now_ns=now).is_stop
    # turning is clipped
    assert robot.handle(raw, now_ns=now, gain=10.0, max_turn=0.7).turn == -0.7


def _publish_in_background(pub, stop, heatmap=False):
    def run():
        i = 0
        while not stop.is_set():
            _targets(pub, i, x=100.0 + i)
            pub.publish_status(_status())
            if heatmap:
                pub.publish_heatmaps({"the red cup": np.full((2, 3), 0.5, np.float32)}, frame_id=i, t_capture_ns=1,
                                     region=(0, 0, 640, 480), width=640, height=480)
            i += 1
            stop.wait(0.02)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_vlmedge_subscribe_cli(capsys):
    from vlmedge.cli import main

    stop = threading.Event()
    with Publisher(ADDR, heatmaps=True) as pub:
        t = _publish_in_background(pub, stop, heatmap=True)
        try:
            assert main(["subscribe", pub.endpoint, "--count", "3", "--timeout", "5"]) == 0
            lines = capsys.readouterr().out.strip().splitlines()
            assert len(lines) == 3 and all("'the red cup'  score 0.90  center (" in ln for ln in lines), lines
            assert main(["subscribe", pub.endpoint, "--topic", "all", "--json", "--count", "12"]) == 0
            msgs = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
            assert {m["type"] for m in msgs} == {"targets", "status", "heatmap"}
            assert all(m["data_bytes"] == 6 for m in msgs if m["type"] == "heatmap")
            assert main(["subscribe", pub.endpoint, "--topic", "status", "--count", "1"]) == 0
            assert capsys.readouterr().out.startswith("status  running")
        finally:
            stop.set()
            t.join(2)
    assert main(["subscribe", "tcp://127.0.0.1:1", "--timeout", "0.2"]) == 1
    assert "nothing received" in capsys.readouterr().err


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_vlmedge_keys_and_curve_subscribe(tmp_path, capsys):
    from vlmedge.cli import main

    d = tmp_path / "keys"
    assert main(["keys", str(d), "--client", "robot", "--client", "laptop"]) == 0
    assert (d / "server.key_secret").is_file() and (d / "clients" / "robot.key").is_file()
    assert (d / "laptop.key_secret").is_file() and not (d / "clients" / "server.key").exists()
    assert oct((d / "robot.key_secret").stat().st_mode & 0o777) == "0o600"
    assert main(["keys", str(d)]) == 1  # never overwrites keys
    capsys.readouterr()
    stop = threading.Event()
    with Publisher(ADDR, curve=CurveServerKeys(d / "server.key_secret", d / "clients")) as pub:
        t = _publish_in_background(pub, stop)
        try:
            assert main(["subscribe", pub.endpoint, "--curve-keys", str(d), "--client-name", "robot",
                         "--count", "1", "--timeout", "5"]) == 0
            assert "'the red cup'" in capsys.readouterr().out
            assert main(["subscribe", pub.endpoint, "--count", "1", "--timeout", "0.5"]) == 1  # no keys: nothing
        finally:
            stop.set()
            t.join(2)


# ------------------------------------------------------------------------------------------------ v2: commands

COMMANDS = ["the bottle left of the purple bottle", "how many bottles", "the cup between the can and the bottle"]


@pytest.fixture(scope="module")
def grounded():
    """A real result: a rendered scene grounded with the shipped int8 bundle (a relation, a count, a miss)."""
    from vlmedge.embedded import embedded_bundle
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.render import render_scene

    image = render_scene(7340013).frame
    result = Grounder(embedded_bundle("int8")).ground(image, COMMANDS)
    rel, count, miss = (result.command(q) for q in COMMANDS)
    assert rel.found and rel.anchors and count.count == 2 and not miss.found and miss.reason
    return Frame(1287, image, time.monotonic_ns(), time.time_ns()), result


def _receive_result(ctx, result, frame) -> tuple[bytes, dict]:
    with Publisher(ADDR, model="tiny") as pub:
        sub = _sub(ctx, pub.endpoint, b"targets ")
        deadline = time.monotonic() + 5
        while not sub.poll(20):  # slow joiner
            pub.publish_result(result, frame)
            assert time.monotonic() < deadline
        raw = sub.recv()
    return raw, protocol.parse_message(raw)[1]


def test_publish_result_sends_each_command(ctx, grounded):
    jsonschema = pytest.importorskip("jsonschema")
    frame, result = grounded
    _, msg = _receive_result(ctx, result, frame)
    assert msg["queries"] == COMMANDS and msg["frame_id"] == 1287
    assert msg["targets"] == [t.to_dict() for t in result.targets]  # the v1 part, as before
    cmds = msg["v2"]["commands"]
    assert [c["command"] for c in cmds] == COMMANDS
    for c, q in zip(cmds, COMMANDS):
        r = result.command(q)
        assert c == json.loads(json.dumps(r.to_dict()))
        assert c["parsed"] == r.parsed.to_dict() and c["count"] == r.count and c["reason"] == r.reason
        assert c["targets"] == [t.to_dict() for t in r.targets if t.found]
        assert c["anchors"] == [{"text": a.text, "bbox": list(a.bbox)} for a in r.anchors]
    rel, count, miss = cmds
    assert rel["anchors"][0]["text"] == "the purple bottle" and rel["parsed"]["tree"]["relation"] == "left_of"
    assert count["count"] == 2 and len(count["targets"]) == 2
    assert miss["found"] is False and miss["targets"] == [] and miss["reason"].startswith("no cup")
    for version in (2, 1):  # a v1 consumer validating with the v1 schema accepts it too
        v = jsonschema.Draft202012Validator(protocol.load_schema("targets", version))
        assert not list(v.iter_errors(msg)), version


def test_a_result_without_commands_is_published_as_v1(ctx):
    t = Target("a cup", True, 0.8, bbox=(0, 0, 10, 10), center=(5.0, 5.0), peak=(5.0, 5.0), area=100, track_id=0)
    result = GroundingResult(("a cup",), (t,), np.zeros((1, 2, 2), np.float32), frame_size=(480, 640),
                             crop_box=(0, 0, 640, 480))
    frame = Frame(3, np.zeros((480, 640, 3), np.uint8), time.monotonic_ns(), time.time_ns())
    _, msg = _receive_result(ctx, result, frame)
    assert "v2" not in msg and msg["targets"][0]["query"] == "a cup"


def test_vlmedge_subscribe_prints_counts_anchors_and_reasons(capsys, grounded):
    from vlmedge.cli import main

    frame, result = grounded
    stop = threading.Event()
    with Publisher(ADDR) as pub:
        def run():
            while not stop.is_set():
                pub.publish_result(result, frame)
                stop.wait(0.02)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            assert main(["subscribe", pub.endpoint, "--count", "1", "--timeout", "5"]) == 0
        finally:
            stop.set()
            t.join(2)
    lines = capsys.readouterr().out.strip().splitlines()
    rel = [ln for ln in lines if "'the bottle left of the purple bottle'" in ln]
    anchor = result.command(COMMANDS[0]).anchors[0]
    assert len(rel) == 1 and f"score {result.command(COMMANDS[0]).targets[0].score:.2f}" in rel[0]
    assert f"anchors 'the purple bottle' {list(anchor.bbox)}" in rel[0]
    count = [ln for ln in lines if "'how many bottles'" in ln]
    assert len(count) == 2 and "count 2" in count[0] and "count" not in count[1]  # one line per bottle
    miss = [ln for ln in lines if "'the cup between the can and the bottle'" in ln]
    assert len(miss) == 1 and "not found (best " in miss[0] and miss[0].endswith(": no cup is between the can and "
                                                                                 "the bottle")


def test_robot_control_loop_reads_commands(ctx, grounded):
    robot = _load_example("robot_control_loop")
    frame, result = grounded
    raw, msg = _receive_result(ctx, result, frame)
    now = msg["t_capture_ns"]
    cmd = robot.handle(raw, now_ns=now, query=COMMANDS[0], gain=1.0, speed=0.2)
    err = (result.command(COMMANDS[0]).targets[0].center[0] - 320) / 320  # the bottle left of the purple one
    assert cmd.turn == pytest.approx(-err, abs=1e-3) and "the bottle left of the purple bottle" in cmd.reason
    miss = robot.handle(raw, now_ns=now, query=COMMANDS[2])
    assert miss.is_stop and miss.reason == "target not found: no cup is between the can and the bottle"
    assert robot.handle(raw, now_ns=now, query="a green cube").reason == \
        "target not found: 'a green cube' is not an active query"
    # any query: the best target of all commands
    best = max((t for c in result.commands for t in c.targets if t.found), key=lambda t: t.score)
    assert robot.pick_target(msg)["score"] == pytest.approx(best.score)
    # the same message from a v1 publisher (no v2 block): the flat list, no reason
    v1 = {k: v for k, v in msg.items() if k != "v2"}
    assert robot.steer(v1, now_ns=now, query=COMMANDS[0], gain=1.0).turn == pytest.approx(cmd.turn)
    assert robot.steer(v1, now_ns=now, query=COMMANDS[2]).reason == "target not found"


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_a_revoked_subscriber_gets_nothing_within_seconds(ctx, tmp_path):
    """#14 item 17: deleting a client's public key revokes it while the server runs."""
    keys = create_keys(tmp_path / "keys", clients=("robot", "laptop"))
    server = CurveServerKeys(keys["server_secret"], keys["clients_dir"])
    stop = threading.Event()
    with Publisher(ADDR, curve=server) as pub:
        subs = {}
        for name in ("robot", "laptop"):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            setup_curve_client(s, CurveClientKeys(keys[f"{name}_secret"], keys["server_public"]))
            s.setsockopt(zmq.SUBSCRIBE, b"targets ")
            s.connect(pub.endpoint)
            subs[name] = s

        def publish():
            i = 0
            while not stop.is_set():
                _targets(pub, i)
                i += 1
                time.sleep(0.02)

        t = threading.Thread(target=publish, daemon=True)
        t.start()
        try:
            for name, s in subs.items():
                assert s.poll(10_000), f"{name} never received a message"
            (Path(keys["clients_dir"]) / "laptop.key").unlink()
            t_revoked = time.monotonic()
            laptop, last = subs["laptop"], t_revoked
            while time.monotonic() - last < 2.0:  # read until it has been silent for 2 s
                if laptop.poll(100):
                    laptop.recv()
                    last = time.monotonic()
                assert time.monotonic() - t_revoked < 30, "the revoked client kept receiving"
            assert last - t_revoked < 5.0, f"the revoked client still received {last - t_revoked:.1f} s later"
            assert not laptop.poll(1000)  # and it stays out
            robot = subs["robot"]
            while robot.poll(0):
                robot.recv()
            assert robot.poll(10_000), "the client still allowed must get messages again after the revocation"
            topic, msg = protocol.parse_message(robot.recv())
            assert topic == "targets"
        finally:
            stop.set()
            t.join(5)
            for s in subs.values():
                s.close(0)


def test_a_new_status_subscriber_gets_a_status_at_once(ctx):
    """#14 item 7: a subscriber that joins does not wait for the next heartbeat to learn the state."""
    with Publisher(ADDR) as pub:
        pub.start_heartbeat(lambda: _status(source_state="reconnecting"), interval_s=60.0)
        time.sleep(0.2)  # the heartbeat's first status went out to nobody
        sub = _sub(ctx, pub.endpoint, topic=b"status ")
        assert sub.poll(5000), "no status within 5 s of subscribing (the next heartbeat is 60 s away)"
        topic, msg = protocol.parse_message(sub.recv())
        assert topic == "status" and msg["source_state"] == "reconnecting"


def test_the_final_status_is_flushed_before_close(ctx):
    """#14 item 7: the last status is not dropped by LINGER 0 when the socket closes right after it."""
    for _ in range(5):
        pub = Publisher(ADDR)
        sub = _sub(ctx, pub.endpoint, topic=b"status ")
        _wait_joined(pub, sub)
        for i in range(3):  # a few messages queued just before, as a run's last frames are
            _targets(pub, i)
        pub.publish_final(_status(source_state="ended", stop_reason="source_end"))
        pub.close()
        got = None
        while got is None and sub.poll(5000):
            msg = protocol.parse_message(sub.recv())[1]
            got = msg if "stop_reason" in msg else None
        assert got is not None and got["source_state"] == "ended" and got["stop_reason"] == "source_end"
        sub.close(0)
