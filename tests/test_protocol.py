"""Wire protocol v1: builders, parsers, validation, and agreement with the shipped JSON Schemas."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vlmedge import protocol, validation
from vlmedge.errors import ConfigError, InputError, ProtocolError
from vlmedge.runtime.grounding.results import Target

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed to check the shipped schemas")

ROOT = Path(__file__).resolve().parents[1]


def _validator(name: str):
    schema = protocol.load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _targets_msg(**over) -> bytes:
    kw = dict(seq=3, frame_id=17, t_capture_ns=time.time_ns(), t_capture_mono_ns=time.monotonic_ns(),
              width=640, height=480, model="tiny-clip", queries=["the red cup", "the blue ball"],
              targets=[Target("the red cup", True, np.float32(0.83), bbox=(10, 20, 110, 220), center=(60.0, 120.0),
                              peak=(np.float64(58.5), 118.25), area=np.int64(9000), track_id=4),
                       {"query": "the blue ball", "found": False, "score": 0.12, "bbox": None, "center": None,
                        "peak": None, "area": 0, "track_id": None}])
    kw.update(over)
    return protocol.build_targets(**kw)


def test_targets_roundtrip_and_schema():
    data = _targets_msg()
    assert data.startswith(b"targets {")
    topic, msg = protocol.parse_message(data)
    assert topic == "targets"
    assert msg["frame_size"] == [640, 480] and msg["frame_id"] == 17 and msg["seq"] == 3
    assert msg["targets"][0] == {"query": "the red cup", "found": True, "score": pytest.approx(0.83, abs=1e-6),
                                 "bbox": [10, 20, 110, 220], "center": [60.0, 120.0], "peak": [58.5, 118.25],
                                 "area": 9000, "track_id": 4}
    assert msg["targets"][1]["found"] is False and msg["targets"][1]["bbox"] is None
    assert msg["t_publish_ns"] >= msg["t_capture_ns"]
    errors = list(_validator("targets").iter_errors(msg))
    assert not errors, errors


def test_status_and_heatmap_roundtrip_and_schema():
    data = protocol.build_status(seq=0, source_state="reconnecting", fps=0.0, latency_ms=None, dropped=5,
                                 queries=["a cup"], paused=False, source="v4l2 /dev/video0", reconnects=2,
                                 capture_fps=0.0, frame_age_ms=3200.5, threshold=0.4)
    topic, msg = protocol.parse_message(data)
    assert topic == "status" and msg["source_state"] == "reconnecting" and msg["reconnects"] == 2
    assert not list(_validator("status").iter_errors(msg))

    m = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = protocol.build_heatmap(seq=1, frame_id=2, t_capture_ns=5, query="a cup", index=0, count=1, data=m,
                                  region=(80, 0, 560, 480), width=640, height=480)
    topic, msg = protocol.parse_message(data)
    assert topic == "heatmap"
    np.testing.assert_array_equal(msg.pop("data"), m)
    assert msg["shape"] == [3, 4] and msg["region"] == [80, 0, 560, 480]
    assert not list(_validator("heatmap").iter_errors(msg))


def test_quantize_map():
    q = protocol.quantize_map(np.array([[0.0, 0.5, 1.0, 1.7, -0.2]]))
    assert q.dtype == np.uint8 and q.tolist() == [[0, 128, 255, 255, 0]]


@pytest.mark.parametrize("data, words", [
    (b"targetz {}", ["known topic", "did you mean 'targets'"]),
    (b"targets", ["known topic"]),
    (b"targets {not json", ["targets message is not valid JSON"]),
    (b"targets \xff\xfe", ["not UTF-8"]),
    (b"targets []", ["expected a JSON object, got list"]),
    (b"status {\"v\": 2, \"type\": \"status\", \"seq\": 0}", ["unsupported protocol version 2"]),
    (b"heatmap {\"v\":1}", ["no newline"]),
])
def test_parse_message_errors(data, words):
    with pytest.raises(ProtocolError) as e:
        protocol.parse_message(data)
    for w in words:
        assert w in str(e.value)


def _mutate(**changes) -> bytes:
    _, msg = protocol.parse_message(_targets_msg())
    for path, value in changes.items():
        obj = msg
        keys = path.split("__")
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        if value is KeyError:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value
    return b"targets " + json.dumps(msg).encode()


@pytest.mark.parametrize("changes, words", [
    ({"frame_id": KeyError}, "missing field 'frame_id'"),
    ({"frame_id": -1}, "'frame_id' must be an integer >= 0"),
    ({"frame_size": [640]}, "'frame_size' must be a list of 2 integers"),
    ({"targets__0__bbox": [1, 2, 3]}, "targets[0]: field 'bbox' must be a list of 4 integers"),
    ({"targets__0__bbox": None}, "targets[0]: found=true needs a bbox"),
    ({"targets__0__bbox": [50, 0, 10, 10]}, "x0 <= x1"),
    ({"targets__1__found": "no"}, "targets[1]: field 'found' must be true or false"),
    ({"targets__0__score": True}, "'score' must be a finite number"),
    ({"queries": "the red cup"}, "'queries' must be a list of strings"),
])
def test_targets_validation_agrees_with_schema(changes, words):
    data = _mutate(**changes)
    with pytest.raises(ProtocolError, match=None) as e:
        protocol.parse_message(data)
    assert words in str(e.value)
    # the schema rejects the same message (except the x0 <= x1 rule, which JSON Schema cannot express)
    if "x0 <= x1" not in words:
        assert list(_validator("targets").iter_errors(json.loads(data[8:])))


def test_nan_is_refused_both_ways():
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        _targets_msg(targets=[{"query": "q", "found": False, "score": float("nan"), "bbox": None,
                               "center": None, "peak": None, "area": 0, "track_id": None}])
    with pytest.raises(ProtocolError, match="not valid JSON"):
        protocol.parse_message(b'status {"fps": NaN}')


GOOD_REQUESTS = [
    {"op": "ping"}, {"op": "status", "v": 1}, {"op": "pause"}, {"op": "resume"},
    {"op": "set_queries", "queries": ["the red cup", "a blue ball"]}, {"op": "set_queries", "queries": []},
    {"op": "add_query", "query": "a mug"}, {"op": "remove_query", "query": "a mug"},
    {"op": "set_threshold", "value": 0.3}, {"op": "set_threshold", "value": 1, "query": "a mug"},
]
BAD_REQUESTS = [
    ([], "must be a JSON object"),
    ({"queries": ["x"]}, "needs a string field 'op'"),
    ({"op": "set_query", "queries": ["x"]}, "did you mean 'set_queries'"),
    ({"op": "set_queries", "queries": "the red cup"}, "must be a list of strings"),
    ({"op": "set_queries", "queries": ["ok", 3]}, "field 'queries'[1] must be a string"),
    ({"op": "set_queries", "queries": ["   "]}, "is empty"),
    ({"op": "set_queries", "queries": ["x" * 201]}, "201 characters long; the limit is 200"),
    ({"op": "set_queries", "queries": [f"q{i}" for i in range(17)]}, "17 entries; the limit is 16"),
    ({"op": "set_queries", "queries": ["a", "a"]}, "duplicates"),
    ({"op": "add_query"}, "missing field 'query'"),
    ({"op": "set_threshold", "value": 1.5}, "number in [0, 1]"),
    ({"op": "set_threshold", "value": "0.5"}, "number in [0, 1]"),
    ({"op": "set_threshold", "value": True}, "number in [0, 1]"),
    ({"op": "set_threshold", "valeu": 0.5}, "did you mean 'value'"),
    ({"op": "ping", "v": 2}, "unsupported protocol version"),
    ({"op": "pause", "extra": 1}, "unknown field(s) ['extra']"),
]


@pytest.mark.parametrize("req", GOOD_REQUESTS)
def test_good_requests(req):
    out = protocol.parse_request(json.dumps(req).encode())
    assert out["op"] == req["op"]
    assert not list(_validator("control").iter_errors(req))


@pytest.mark.parametrize("req, words", BAD_REQUESTS)
def test_bad_requests(req, words):
    with pytest.raises(ProtocolError) as e:
        protocol.parse_request(json.dumps(req).encode())
    assert words in str(e.value)
    assert list(_validator("control").iter_errors(req)), "the schema should reject it too"


def test_request_size_limit_and_normalization():
    with pytest.raises(ProtocolError, match="bytes; the limit is 100"):
        protocol.parse_request(b'{"op":"ping"}' + b" " * 100, max_bytes=100)
    out = protocol.parse_request(json.dumps({"op": "add_query", "query": "  the\tred   cup \n"}).encode())
    assert out == {"op": "add_query", "query": "the red cup"}


def test_replies_match_schema():
    v = _validator("control")
    for r in (protocol.ok_reply("ping", pong=True), protocol.error_reply("bad", "pause"), protocol.error_reply("x")):
        assert protocol.parse_reply(protocol.encode_reply(r)) == r
        assert not list(v.iter_errors(r))
    assert list(v.iter_errors({"ok": False}))  # an error reply must say why
    with pytest.raises(ProtocolError, match="'error' must be a string|missing field 'error'"):
        protocol.parse_reply(b'{"ok": false}')


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_ros2_conversion_without_ros():
    ros = _load_example("ros2_bridge")
    _, msg = protocol.parse_message(_targets_msg(t_capture_ns=1_700_000_000_123_456_789))
    arr = ros.targets_to_detection2d_array(msg, frame_id="camera_optical")
    assert arr["header"] == {"stamp": {"sec": 1_700_000_000, "nanosec": 123_456_789}, "frame_id": "camera_optical"}
    assert len(arr["detections"]) == 1  # only found targets become detections
    det = arr["detections"][0]
    assert det["results"] == [{"hypothesis": {"class_id": "the red cup", "score": pytest.approx(0.83, abs=1e-6)}}]
    assert det["bbox"]["center"]["position"] == {"x": 60.0, "y": 120.0}
    assert det["bbox"]["size_x"] == 100.0 and det["bbox"]["size_y"] == 200.0
    assert det["id"] == "4" and det["header"] == arr["header"]
    with pytest.raises(ProtocolError):
        ros.targets_to_detection2d_array({"type": "status"})


BOUNDARIES = [(ConfigError, "RunConfig.threshold"), (InputError, "find_regions: threshold"),
              (ProtocolError, "op 'set_threshold': field 'value'"), (argparse.ArgumentTypeError, "--threshold")]


@pytest.mark.parametrize("error, where", BOUNDARIES)
def test_one_threshold_rule_each_boundary_its_error(error, where):
    for value, expected in ((0, 0.0), (1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5), (np.int64(1), 1.0)):
        got = validation.check_threshold(value, where, error=error)
        assert got == expected and type(got) is float
    for bad in (1.5, -0.1, float("nan"), float("inf"), True, np.bool_(False), "0.5", None, [0.5]):
        with pytest.raises(error) as e:
            validation.check_threshold(bad, where, error=error)
        assert type(e.value) is error and str(e.value) == f"{where} must be a number in [0, 1], got {bad!r}"
    # a command line hands over text; the wire and the API do not parse it
    assert validation.check_threshold("0.3", where, error=error, text=True) == 0.3
    for bad in ("high", "1.5", "nan", ""):
        with pytest.raises(error, match=rf"{where} must be a number in \[0, 1\], got {bad!r}"):
            validation.check_threshold(bad, where, error=error, text=True)


def test_wire_threshold_goes_through_the_same_rule():
    with pytest.raises(ProtocolError) as e:
        protocol.parse_request(b'{"op": "set_threshold", "value": 1.5}')
    assert str(e.value) == "op 'set_threshold': field 'value' must be a number in [0, 1], got 1.5"
    assert protocol.parse_request(b'{"op": "set_threshold", "value": 1}')["value"] == 1.0


def test_one_query_rule_with_the_wire_limits():
    check = validation.check_queries
    assert check(["  the red  cup", "a mug"]) == ("  the red  cup", "a mug")  # the API keeps text as given
    wire = dict(error=ProtocolError, rules=protocol.QUERY_RULES)
    assert check(["  the red\tcup \n", "a mug"], **wire) == ("the red cup", "a mug")
    assert validation.check_query("  a   mug ", **wire) == "a mug"
    for error in (InputError, ConfigError, ProtocolError):
        with pytest.raises(error, match=r"^RunConfig.queries\[1\] must be a string, got int 3$"):
            check(["a", 3], "RunConfig.queries", error=error)
        with pytest.raises(error, match=r"^queries must be a list of strings, got str 'a cup'$"):
            check("a cup", error=error)
    assert check(["a cup", " a  cup"]) == ("a cup", " a  cup")  # distinct as given ...
    with pytest.raises(ProtocolError, match=r"has duplicates \['a cup'\]"):
        check(["a cup", " a  cup"], **wire)  # ... the same text on the wire
    with pytest.raises(ProtocolError, match="contains control characters"):
        validation.check_query("a\x00cup", **wire)
    with pytest.raises(ProtocolError, match=r"queries has 17 entries; the limit is 16"):
        check([f"q{i}" for i in range(17)], **wire)
    with pytest.raises(ProtocolError, match=r"query is 201 characters long; the limit is 200"):
        validation.check_query("x" * 201, **wire)
    assert check([f"q{i}" for i in range(17)]) and validation.check_query("x" * 201) == "x" * 201  # no API limits
    with pytest.raises(InputError) as e:
        check("x" * 100_000)
    assert len(str(e.value)) < 150  # a huge value is quoted, not copied into the message
