"""Control socket over real ZeroMQ sockets on 127.0.0.1: valid and malformed requests."""

from __future__ import annotations

import json
import threading
import time

import pytest
import zmq

from vlmedge import protocol
from vlmedge.errors import ConfigError, ProtocolError
from vlmedge.runtime.messaging.control import ControlClient, ControlServer, ControlState, ControlTimeout, Teacher
from vlmedge.runtime.messaging.sockets import CurveClientKeys, CurveServerKeys, create_keys

ADDR = "tcp://127.0.0.1:0"


@pytest.fixture
def served():
    state = ControlState(queries=["the red cup"], threshold=0.5, status_fn=lambda: {"fps": 9.5, "queries": "x"})
    server = ControlServer(ADDR, state.handle, max_message_bytes=4096).start()
    client = ControlClient(server.endpoint, timeout_ms=3000)
    yield state, server, client
    client.close()
    server.close()


def test_valid_requests_change_state(served):
    state, server, client = served
    assert client.request({"op": "ping"}) == {"ok": True, "op": "ping", "pong": True}
    r = client.request({"op": "set_queries", "queries": ["the blue ball", "  a   mug "]})
    assert r["ok"] and r["queries"] == ["the blue ball", "a mug"]
    assert client.request({"op": "add_query", "query": "a green cube"})["queries"][-1] == "a green cube"
    v = state.snapshot().version
    assert client.request({"op": "add_query", "query": "a mug"})["ok"]  # already there: no change
    assert state.snapshot().version == v
    assert client.request({"op": "remove_query", "query": "the blue ball"})["queries"] == ["a mug", "a green cube"]
    assert client.request({"op": "set_threshold", "value": 0.3})["threshold"] == 0.3
    assert client.request({"op": "set_threshold", "value": 0.8, "query": "a mug"})["thresholds"] == {"a mug": 0.8}
    assert client.request({"op": "pause"})["paused"] is True
    snap = state.snapshot()
    assert snap.queries == ("a mug", "a green cube") and snap.paused and snap.threshold == 0.3
    assert snap.threshold_for("a mug") == 0.8 and snap.threshold_for("a green cube") == 0.3
    assert client.request({"op": "resume"})["paused"] is False
    st = client.request({"op": "status"})
    assert st["fps"] == 9.5 and st["queries"] == ["a mug", "a green cube"]  # the state wins over status_fn
    # removing a query drops its threshold override
    client.request({"op": "remove_query", "query": "a mug"})
    assert state.snapshot().thresholds == {}


BAD = [
    (b"{not json", "request is not valid JSON"),
    (bytes(range(256)) * 4, "not UTF-8"),
    (b"\x00\x01\x02garbage", "not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b'"ping"', "must be a JSON object"),
    (b'{"op": "set_query", "queries": ["x"]}', "did you mean 'set_queries'"),
    (b'{"op": 5}', "needs a string field 'op'"),
    (b'{"op": "set_queries", "queries": "a cup"}', "must be a list of strings"),
    (b'{"op": "set_queries", "queries": [""]}', "is empty"),
    (b'{"op": "set_queries", "queries": [null]}', "must be a string"),
    (json.dumps({"op": "set_queries", "queries": [f"q{i}" for i in range(40)]}).encode(), "the limit is 16"),
    (json.dumps({"op": "add_query", "query": "y" * 300}).encode(), "the limit is 200"),
    (b'{"op": "set_threshold", "value": -0.1}', "in [0, 1]"),
    (b'{"op": "set_threshold", "value": 0.5, "query": "a dog"}', "'a dog' is not an active query"),
    (b'{"op": "remove_query", "query": "the red cap"}', "did you mean 'the red cup'"),
    (b'{"op": "pause", "now": true}', "unknown field(s) ['now']"),
    (b'{"op": "ping"}' + b" " * 5000, "5014 bytes; the limit is 4096"),
    (b"", "not valid JSON"),
]


@pytest.mark.parametrize("data, words", BAD, ids=[w for _, w in BAD])
def test_malformed_requests_get_an_error_and_change_nothing(served, data, words):
    state, server, client = served
    before = state.snapshot()
    reply = client.send_raw(data)
    assert reply["ok"] is False and words in reply["error"], reply
    assert state.snapshot() == before
    assert client.request({"op": "ping"})["ok"]  # still serving


def test_too_many_queries_via_add(served):
    state, _, client = served
    client.request({"op": "set_queries", "queries": [f"q{i}" for i in range(protocol.MAX_QUERIES)]})
    before = state.snapshot()
    r = client.request({"op": "add_query", "query": "one more"})
    assert not r["ok"] and "the limit is 16" in r["error"] and state.snapshot() == before


def test_huge_message_drops_the_peer_and_client_recovers(served):
    state, server, client = served
    client.timeout_ms = 500
    with pytest.raises(ControlTimeout, match="no reply from control server"):
        client.send_raw(b"x" * (4 * 4096 + 1))  # over ZMQ_MAXMSGSIZE: libzmq disconnects us
    client.timeout_ms = 3000
    assert client.request({"op": "ping"})["ok"]  # lazy pirate: a fresh socket works


def test_client_validates_before_sending(served):
    _, server, client = served
    served_before = server.served
    with pytest.raises(ProtocolError, match="did you mean 'pause'"):
        client.request({"op": "paus"})
    assert server.served == served_before


def test_handler_bugs_and_multipart_are_answered():
    calls = []

    def handler(req):
        calls.append(req)
        if req["op"] == "pause":
            raise KeyError("boom")
        return {"n": len(calls)}

    with ControlServer(ADDR, handler) as server:  # polled from "the app loop", no thread
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.connect(server.endpoint)
        try:
            assert server.poll_once(0) is False
            for payload, check in (
                    ([b'{"op": "pause"}'], lambda r: not r["ok"] and "internal error: KeyError" in r["error"]),
                    ([b'{"op": "ping"}', b"more"], lambda r: not r["ok"] and "multipart" in r["error"]),
                    ([b'{"op": "status"}'], lambda r: r == {"ok": True, "op": "status", "n": 2})):
                req.send_multipart(payload)
                assert server.poll_once(2000) is True
                assert req.poll(2000)
                assert check(json.loads(req.recv())), payload
        finally:
            req.close(linger=0)
            ctx.term()
    assert server.served == 3 and server.errors == 2


def test_server_thread_is_responsive_under_concurrent_clients(served):
    state, server, _ = served
    errors = []

    def worker(i):
        try:
            with ControlClient(server.endpoint, timeout_ms=5000) as c:
                for j in range(10):
                    assert c.request({"op": "add_query", "query": f"w{i}-{j % 3}"})["ok"]
                    assert not c.send_raw(b'{"op": "set_threshold", "value": 7}')["ok"]
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(state.snapshot().queries) == 1 + 9


def test_constructor_errors():
    with pytest.raises(ConfigError, match="needs a handler"):
        ControlServer(ADDR)
    with pytest.raises(ConfigError, match="duplicates"):
        ControlState(queries=["a", "a"])
    with pytest.raises(ConfigError, match=r"^ControlState.threshold must be a number in \[0, 1\], got 2$"):
        ControlState(threshold=2)
    with pytest.raises(ConfigError, match="ControlState.queries must be a list of strings, got str 'a cup'"):
        ControlState(queries="a cup")
    with pytest.raises(ConfigError, match=r"ControlState.queries\[0\] is 201 characters long"):
        ControlState(queries=["x" * 201])
    snap = ControlState(queries=("  a   mug ",), threshold=1).snapshot()  # the wire's rules
    assert snap.queries == ("a mug",) and snap.threshold == 1.0 and type(snap.threshold) is float


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_control(tmp_path):
    keys = create_keys(tmp_path / "k", clients=("operator",))
    other = create_keys(tmp_path / "o", server="s2", clients=("intruder",))
    state = ControlState(queries=["a cup"])
    with ControlServer(ADDR, state.handle, curve=CurveServerKeys(keys["server_secret"], keys["clients_dir"])) as srv:
        srv.start()
        ok = ControlClient(srv.endpoint, timeout_ms=3000,
                           curve=CurveClientKeys(keys["operator_secret"], keys["server_public"]))
        bad = ControlClient(srv.endpoint, timeout_ms=400,
                            curve=CurveClientKeys(other["intruder_secret"], keys["server_public"]))
        plain = ControlClient(srv.endpoint, timeout_ms=400)
        try:
            assert ok.request({"op": "set_queries", "queries": ["a mug"]})["ok"]
            for c in (bad, plain):
                with pytest.raises(ControlTimeout):
                    c.request({"op": "set_queries", "queries": ["evil"]})
            assert state.snapshot().queries == ("a mug",)
        finally:
            for c in (ok, bad, plain):
                c.close()


def test_vlmedge_send_cli(served, capsys):
    from vlmedge.cli import main

    state, server, _ = served
    assert main(["send", server.endpoint, "set_queries", "the blue ball", "a mug"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["queries"] == ["the blue ball", "a mug"]
    assert main(["send", server.endpoint, "set_threshold", "0.25", "a mug"]) == 0
    assert state.snapshot().threshold_for("a mug") == 0.25
    assert main(["send", server.endpoint, "--json", '{"op": "pause"}']) == 0
    assert state.snapshot().paused
    capsys.readouterr()
    assert main(["send", server.endpoint, "set_threshold", "high"]) == 1  # refused locally
    assert "number" in capsys.readouterr().err
    assert main(["send", server.endpoint, "remove_query", "a cat"]) == 1  # refused by the server
    assert "not an active query" in capsys.readouterr().out
    t0 = time.monotonic()
    assert main(["send", "tcp://127.0.0.1:1", "ping", "--timeout", "0.3"]) == 1
    assert time.monotonic() - t0 < 3


def test_poll_once_refused_while_threaded(served):
    _, server, _ = served
    with pytest.raises(ConfigError, match="own thread"):
        server.poll_once(0)


# ----------------------------------------------------------------------------------------- v2: commands, teach

def test_queries_must_be_commands_vlmedge_can_read(served):
    state, _, client = served
    before = state.snapshot()
    r = client.request({"op": "set_queries", "queries": ["the red cup", "the cup left of"]})
    assert not r["ok"] and "op 'set_queries': field 'queries'[1] is not a command vlmedge can read" in r["error"]
    assert "'left of' needs an object after it" in r["error"]
    r = client.request({"op": "add_query", "query": "how many"})
    assert not r["ok"] and "op 'add_query': field 'query' is not a command vlmedge can read" in r["error"]
    assert state.snapshot() == before
    # commands and open-vocabulary descriptions are fine
    ok = ["the bottle left of the purple bottle", "how many balls", "the second cup from the left", "a toy robot"]
    assert client.request({"op": "set_queries", "queries": ok})["queries"] == ok


def test_teach_ops_are_refused_without_a_teacher(served):
    state, _, client = served
    before = state.snapshot()
    for req in ({"op": "teach", "name": "my mug", "box": [1, 2, 3, 4]}, {"op": "forget", "name": "my mug"},
                {"op": "taught"}):
        r = client.request(req)
        assert not r["ok"] and f"op {req['op']!r}: this server cannot teach" in r["error"] and r["op"] == req["op"]
    assert state.snapshot() == before
    assert "taught" not in client.request({"op": "status"})  # the state of a server that cannot teach


@pytest.fixture(scope="module")
def scene_grounder():
    from vlmedge.embedded import embedded_bundle
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.render import render_scene

    return render_scene(7340013).frame, Grounder(embedded_bundle("int8"), smoothing=False)


class _Polled:
    """A control server polled from this thread, as `vlmedge run` polls it from its loop (the teacher uses the
    grounder there); the client waits in another thread."""

    def __init__(self, state):
        self.server = ControlServer(ADDR, state.handle)
        self.client = ControlClient(self.server.endpoint, timeout_ms=20000)

    def request(self, req) -> dict:
        out = {}
        # raw: the server's own validation is what is tested (ControlClient.request would refuse before sending)
        t = threading.Thread(target=lambda: out.update(reply=self.client.send_raw(json.dumps(req).encode())))
        t.start()
        deadline = time.monotonic() + 20
        while t.is_alive() and time.monotonic() < deadline:
            self.server.poll_once(50)
        t.join(1)
        return out["reply"]

    def close(self):
        self.client.close()
        self.server.close()


def test_teach_forget_taught_over_the_socket(scene_grounder):
    frame, grounder = scene_grounder
    cup_box = [230, 195, 445, 405]  # the black cup of the scene
    teacher = Teacher(grounder)
    state = ControlState(queries=["the red cup"], teacher=teacher)
    polled = _Polled(state)
    try:
        before = state.snapshot()
        r = polled.request({"op": "teach", "name": "my mug", "box": cup_box})
        assert not r["ok"] and "no frame has been grounded yet" in r["error"]
        assert state.snapshot() == before and grounder.taught.names() == ()

        teacher.frame_grounded(frame, 1287)  # the app loop, after publishing frame 1287
        r = polled.request({"op": "teach", "name": "  my   mug ", "box": cup_box})
        assert r["ok"] and r["name"] == "my mug" and r["frame_id"] == 1287 and r["box"] == cup_box
        assert r["replaced"] is False and r["taught"] == ["my mug"] and r["version"] == before.version + 1
        assert grounder.taught.names() == ("my mug",)

        # refused requests change nothing: a box off the frame, a malformed box, an unknown name
        v = state.snapshot().version
        for req, words in (({"op": "teach", "name": "thing", "box": [700, 10, 800, 50]}, "outside the 640x480 frame"),
                           ({"op": "teach", "name": "thing", "box": [50, 10, 40, 50]}, "field 'box' must have x0 < x1"),
                           ({"op": "forget", "name": "my mag"}, "did you mean 'my mug'")):
            r = polled.request(req)
            assert not r["ok"] and words in r["error"], r
        assert state.snapshot().version == v and grounder.taught.names() == ("my mug",)

        # the name is a noun phrase now: a command may use it, and grounding resolves against it
        r = polled.request({"op": "set_queries", "queries": ["the bottle left of my mug", "my mug"]})
        assert r["ok"], r
        res = grounder.ground(frame, state.snapshot().queries)
        assert res.command("my mug").found and res.command("my mug").parsed.root.taught
        assert res.command("the bottle left of my mug").parsed.noun_phrases()[1].text == "my mug"

        r = polled.request({"op": "teach", "name": "my mug", "box": [235, 200, 440, 400]})
        assert r["ok"] and r["replaced"] is True and r["taught"] == ["my mug"]
        assert polled.request({"op": "taught"})["taught"] == ["my mug"]

        # a name an active query needs is not forgotten: the query would no longer parse
        assert polled.request({"op": "teach", "name": "leftmost", "box": [515, 75, 605, 365]})["ok"]
        assert polled.request({"op": "add_query", "query": "the cup left of leftmost"})["ok"]
        v = state.snapshot().version
        r = polled.request({"op": "forget", "name": "leftmost"})
        assert not r["ok"] and "forget: the active query 'the cup left of leftmost' needs 'leftmost'" in r["error"]
        assert "leftmost" in grounder.taught.names() and state.snapshot().version == v
        assert polled.request({"op": "remove_query", "query": "the cup left of leftmost"})["ok"]
        r = polled.request({"op": "forget", "name": "leftmost"})
        assert r["ok"] and r["name"] == "leftmost" and r["taught"] == ["my mug"]

        # nor is a name taught that swallows words an active query needs
        assert polled.request({"op": "add_query", "query": "the cup left of the plate"})["ok"]
        v = state.snapshot().version
        r = polled.request({"op": "teach", "name": "cup left", "box": cup_box})
        assert not r["ok"] and "teach: the active query 'the cup left of the plate' would no longer parse" in r["error"]
        assert grounder.taught.names() == ("my mug",) and state.snapshot().version == v

        # forgetting a name a query uses only as words is fine ("my mug" reads as "the my mug" then)
        r = polled.request({"op": "forget", "name": "my mug"})
        assert r["ok"] and r["taught"] == [] and grounder.taught.names() == ()
    finally:
        polled.close()
        for name in grounder.taught.names():
            grounder.forget(name)


def test_vlmedge_send_teach_and_forget_cli(scene_grounder, capsys):
    from vlmedge.cli import main

    frame, grounder = scene_grounder
    teacher = Teacher(grounder)
    teacher.frame_grounded(frame, 5)
    state = ControlState(teacher=teacher)
    # a server thread: nothing else uses this grounder meanwhile
    with ControlServer(ADDR, state.handle).start() as server:
        try:
            assert main(["send", server.endpoint, "teach", "my mug", "230", "195", "445", "405"]) == 0
            r = json.loads(capsys.readouterr().out)
            assert r["ok"] and r["name"] == "my mug" and r["box"] == [230, 195, 445, 405] and r["frame_id"] == 5
            # options anywhere, a name of several words, float coordinates
            assert main(["send", "--timeout", "20", server.endpoint, "teach", "blue", "thing", "--timeout", "20",
                         "103.5", "249", "218", "410.5"]) == 0
            assert json.loads(capsys.readouterr().out)["taught"] == ["my mug", "blue thing"]
            assert main(["send", server.endpoint, "--timeout", "20", "taught"]) == 0
            assert json.loads(capsys.readouterr().out)["taught"] == ["my mug", "blue thing"]
            assert main(["send", server.endpoint, "forget", "--timeout", "20", "my mug"]) == 0
            assert json.loads(capsys.readouterr().out)["taught"] == ["blue thing"]
            # refused locally, with the field named
            assert main(["send", server.endpoint, "teach", "my mug", "1", "2", "x", "4"]) == 1
            assert "teach: box x1 must be a number (pixels), got 'x'" in capsys.readouterr().err
            assert main(["send", server.endpoint, "teach", "1", "2", "3", "4"]) == 1
            assert "teach takes NAME X0 Y0 X1 Y1" in capsys.readouterr().err
            assert main(["send", server.endpoint, "forget"]) == 1
            assert "forget takes the NAME" in capsys.readouterr().err
            # refused by the server: exit status 1, the reply printed
            assert main(["send", server.endpoint, "forget", "my mug"]) == 1
            assert "was never taught" in capsys.readouterr().out
            assert grounder.taught.names() == ("blue thing",)
        finally:
            for name in grounder.taught.names():
                grounder.forget(name)


def test_a_client_with_missing_key_files_fails_at_once_and_closes(tmp_path):
    """A CURVE key that cannot be read is an error naming the file, and closing the client does not hang
    (an unclosed socket made Context.term() wait forever)."""
    import threading

    from vlmedge.errors import VlmEdgeError
    from vlmedge.runtime.messaging.control import ControlClient
    from vlmedge.runtime.messaging.sockets import CurveClientKeys

    client = ControlClient("tcp://127.0.0.1:5999", timeout_ms=200,
                           curve=CurveClientKeys(tmp_path / "client.key_secret", tmp_path / "server.key"))
    with pytest.raises(VlmEdgeError, match="client.key_secret"):
        client.request({"op": "ping"})
    closer = threading.Thread(target=client.close, daemon=True)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive(), "ControlClient.close() hung"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1", True), ("LOCALHOST", True),
                                            ("localhost", True), ("[::1]", True), ("[::ffff:127.0.0.1]", True),
                                            ("127.0.0.53", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                            ("[::]", False), ("eth0", False), ("robot.local", False)])
def test_loopback_in_every_spelling(host, loopback):
    from vlmedge.runtime.messaging.sockets import is_loopback_host

    assert is_loopback_host(host) is loopback


def test_the_network_warning_names_a_flag_that_exists(caplog):
    import logging

    from vlmedge.runtime.messaging.sockets import check_address

    with caplog.at_level(logging.WARNING):
        check_address("tcp://0.0.0.0:5555", purpose="publisher")
        check_address("tcp://127.1:5555", purpose="publisher")
    (record,) = caplog.records  # the loopback shorthand gives no warning
    assert "--curve-keys" in record.getMessage() and "--curve-*" not in record.getMessage()


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_a_revoked_client_is_refused_within_seconds(tmp_path):
    """#14 item 17: deleting a client's public key revokes it while the server runs, live connection included."""
    from pathlib import Path

    keys = create_keys(tmp_path / "k", clients=("operator", "tablet"))
    state = ControlState(queries=["a cup"])
    server = CurveServerKeys(keys["server_secret"], keys["clients_dir"])
    with ControlServer(ADDR, state.handle, curve=server) as srv:
        srv.start()
        operator = ControlClient(srv.endpoint, timeout_ms=3000,
                                 curve=CurveClientKeys(keys["operator_secret"], keys["server_public"]))
        tablet = ControlClient(srv.endpoint, timeout_ms=500,
                               curve=CurveClientKeys(keys["tablet_secret"], keys["server_public"]))
        try:
            tablet.timeout_ms = 5000
            assert tablet.request({"op": "set_threshold", "value": 0.3})["ok"]  # connected and allowed
            tablet.timeout_ms = 500
            (Path(keys["clients_dir"]) / "tablet.key").unlink()
            t_revoked = time.monotonic()
            while True:  # its requests are answered until the server notices, then never again
                try:
                    tablet.request({"op": "set_threshold", "value": 0.4})
                except ControlTimeout:
                    break
                assert time.monotonic() - t_revoked < 30, "the revoked client was still served after 30 s"
            assert time.monotonic() - t_revoked < 5.0
            for _ in range(3):
                with pytest.raises(ControlTimeout):
                    tablet.request({"op": "set_threshold", "value": 0.9})
            assert state.snapshot().threshold != 0.9
            deadline = time.monotonic() + 15
            while True:  # the operator reconnects and is served (a request in flight at the revocation is lost)
                try:
                    assert operator.request({"op": "set_threshold", "value": 0.6})["ok"]
                    break
                except ControlTimeout:
                    assert time.monotonic() < deadline
            assert state.snapshot().threshold == 0.6
        finally:
            operator.close()
            tablet.close()


def test_serve_pending_serves_a_bounded_number():
    """#14 item 12: the run loop serves at most N requests a frame, the rest wait in the socket."""
    state = ControlState(queries=["the red cup"])
    sent = 0
    with ControlServer(ADDR, state.handle) as srv, zmq.Context() as ctx:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(srv.endpoint)
        for _ in range(50):
            dealer.send_multipart([b"", b'{"op": "ping"}'])
            sent += 1
        time.sleep(0.5)
        assert srv.serve_pending(8) == 8
        assert srv.serve_pending(8) == 8
        total = 16
        while total < sent:
            n = srv.serve_pending(8)
            assert n <= 8
            total += n
            if n == 0:
                time.sleep(0.05)
        replies = 0
        while dealer.poll(1000):
            dealer.recv_multipart()
            replies += 1
            if replies == sent:
                break
        assert replies == sent
        dealer.close(0)
