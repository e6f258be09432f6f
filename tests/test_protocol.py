"""Wire protocol v2 (and v1): builders, parsers, validation, agreement with the shipped JSON Schemas, and v1
subscribers (the v1 parser as it was in git) still reading v2 messages."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

from vlmedge import protocol, validation
from vlmedge.errors import ConfigError, InputError, ProtocolError
from vlmedge.language import Anchor, parse
from vlmedge.runtime.grounding.results import CommandResult, Target

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed to check the shipped schemas")

ROOT = Path(__file__).resolve().parents[1]


def _validator(name: str, version: int | None = None):
    schema = protocol.load_schema(name, version)
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


def _mutate(base: bytes | None = None, **changes) -> bytes:
    """``base`` (default: a v1 message) with fields changed: ``targets__0__bbox=[...]``, KeyError deletes."""
    _, msg = protocol.parse_message(_targets_msg() if base is None else base)
    for path, value in changes.items():
        obj = msg
        keys = path.split("__")
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        if value is KeyError:
            if isinstance(obj, list):
                del obj[int(keys[-1])]
            else:
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


# ------------------------------------------------------------------------------------------------ v2: commands

PLATE = Anchor("the plate", (300, 200, 420, 300))


def _commands() -> list[CommandResult]:
    """A relation resolved against an anchor, a count, and a command not found (with its not-found target)."""
    cup = Target("the cup left of the plate", True, np.float32(0.9), bbox=(10, 20, 110, 220), center=(60.0, 120.0),
                 peak=(58.0, 118.0), area=9000, track_id=4, anchors=(PLATE,))
    balls = tuple(Target("how many balls", True, s, bbox=(x, 300, x + 40, 340), center=(x + 20.0, 320.0),
                         peak=(x + 20.0, 320.0), area=1600, track_id=i)
                  for i, (s, x) in enumerate(((0.8, 50), (0.7, 500))))
    missing = Target("the mug next to the plate", False, 0.2, reason="no mug in view")
    return [CommandResult("the cup left of the plate", parse("the cup left of the plate"), True, (cup,), (PLATE,)),
            CommandResult("how many balls", parse("how many balls"), True, balls, (), np.int64(2)),
            CommandResult("the mug next to the plate", parse("the mug next to the plate"), False, (missing,), (),
                          None, "no mug in view")]


def _v2_msg(**over) -> bytes:
    cmds = _commands()
    kw = dict(seq=5, frame_id=18, t_capture_ns=1_763_900_000_123_456_789, t_publish_ns=1_763_900_000_171_456_789,
              width=640, height=480, model="tiny-clip", queries=[c.command for c in cmds],
              targets=[t for c in cmds for t in c.targets], commands=cmds)
    kw.update(over)
    return protocol.build_targets(**kw)


def test_targets_v2_roundtrip_and_both_schemas():
    data = _v2_msg()
    topic, msg = protocol.parse_message(data)
    assert topic == "targets" and msg["v"] == 1  # v2 only adds: see test_v1_parser_from_git_reads_v2
    rel, count, missing = msg["v2"]["commands"]
    assert rel == {"command": "the cup left of the plate", "parsed": parse("the cup left of the plate").to_dict(),
                   "found": True, "count": None, "reason": None,
                   "targets": [{"query": "the cup left of the plate", "found": True, "score": 0.9,
                                "bbox": [10, 20, 110, 220], "center": [60.0, 120.0], "peak": [58.0, 118.0],
                                "area": 9000, "track_id": 4}],
                   "anchors": [{"text": "the plate", "bbox": [300, 200, 420, 300]}]}
    assert rel["parsed"]["tree"]["type"] == "relation" and rel["parsed"]["tree"]["anchor"]["text"] == "the plate"
    assert count["count"] == 2 and [t["track_id"] for t in count["targets"]] == [0, 1]
    assert count["parsed"]["kind"] == "count" and count["parsed"]["describe"] == "how many: [the ball]"
    assert missing["found"] is False and missing["reason"] == "no mug in view" and missing["targets"] == []
    # the v1 part is exactly the v1 message of the same frame: the v2 block is one added key
    v1 = json.loads(_v2_msg(commands=None)[len(b"targets "):])
    assert {k: v for k, v in msg.items() if k != "v2"} == v1 and "v2" not in v1
    assert [t["query"] for t in msg["targets"]] == ["the cup left of the plate", "how many balls", "how many balls",
                                                    "the mug next to the plate"]
    for version in (2, 1):  # a v2 message is also a valid v1 message
        errors = list(_validator("targets", version).iter_errors(msg))
        assert not errors, (version, errors)


V1_PARSERS = {  # protocol.py as v1 subscribers run it, read from git
    "5655abb93e2f229809ee5bd0019676eeeabc72b8": "the last v1 revision",
    "e5fe0f0d0d5c15cfc29940f66ef76b428cadca21": "v1 before the shared validation rules",
}


def _v1_protocol(commit: str, tmp_path: Path):
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to read the v1 parser from history")
    proc = subprocess.run([git, "show", f"{commit}:vlmedge/protocol.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"commit {commit[:7]} is not in this checkout (shallow clone?): {proc.stderr.strip()}")
    assert "\nPROTOCOL_VERSION = 1\n" in proc.stdout
    path = tmp_path / f"protocol_v1_{commit[:7]}.py"
    path.write_text(proc.stdout, encoding="utf-8")
    return load_script(path)


@pytest.mark.parametrize("commit", list(V1_PARSERS), ids=list(V1_PARSERS.values()))
def test_v1_parser_from_git_reads_v2(commit, tmp_path):
    old = _v1_protocol(commit, tmp_path)
    data = _v2_msg()
    topic, seen = old.parse_message(data)  # validates: raises on anything it does not accept
    assert topic == "targets"
    _, new = protocol.parse_message(data)
    assert seen == new  # the v1 reader gets every v1 field, unchanged (and carries the v2 block it ignores)
    v1_fields = {k: v for k, v in seen.items() if k != "v2"}
    assert v1_fields == json.loads(_v2_msg(commands=None)[len(b"targets "):])
    assert old.validate_targets(copy.deepcopy(v1_fields)) == v1_fields
    # why "v" stays 1: the same v1 reader refuses any other version outright
    with pytest.raises(ProtocolError, match="unsupported protocol version 2"):
        old.parse_message(_mutate(data, v=2))
    # and the other v1 topics are unchanged
    status = protocol.build_status(seq=0, source_state="running", fps=1.0, latency_ms=None, dropped=0, queries=[],
                                   paused=False)
    assert old.parse_message(status)[1] == protocol.parse_message(status)[1]


C = "v2__commands__"


@pytest.mark.parametrize("changes, words", [
    ({"v2": ["x"]}, "field 'v2' must be an object"),
    ({"v2__commands": KeyError}, "v2: missing field 'commands'"),
    ({C + "2": KeyError}, "'v2.commands' has 2 entries but 'queries' has 3"),
    ({C + "2__command": "the mug"}, "v2.commands[2] is 'the mug' but queries[2] is 'the mug next to the plate'"),
    ({C + "2__reason": None}, "v2.commands[2]: found=false needs a reason"),
    ({C + "2__found": "no"}, "v2.commands[2]: field 'found' must be true or false"),
    ({C + "1__count": -1}, "v2.commands[1]: field 'count' must be an integer >= 0 or null"),
    ({C + "1__count": 1.5}, "field 'count' must be an integer >= 0 or null"),
    ({C + "0__reason": 3}, "field 'reason' must be a string or null"),
    ({C + "0__targets__0__query": "how many balls"}, "targets[0] must be a found target of"),
    ({C + "0__targets__0__bbox": [1, 2, 3]}, "v2.commands[0]: targets[0]: field 'bbox' must be a list of 4"),
    ({C + "0__anchors": {"text": "x"}}, "field 'anchors' must be a list"),
    ({C + "0__anchors__0__bbox": [1, 2, 3]}, "anchors[0]: field 'bbox' must be a list of 4 integers"),
    ({C + "0__anchors__0__bbox": [10, 2, 3, 4]}, "anchors[0]: bbox must have x0 <= x1"),
    ({C + "0__anchors__0__text": None}, "anchors[0]: field 'text' must be a string"),
    ({C + "0__parsed": "the cup"}, "v2.commands[0]: parsed: expected an object"),
    ({C + "0__parsed__kind": "many"}, "parsed: field 'kind' must be one of ['single', 'plural', 'count']"),
    ({C + "0__parsed__noun_phrases": "the cup"}, "field 'noun_phrases' must be a list of strings"),
    ({C + "0__parsed__tree__subject": KeyError}, "parsed: tree: missing field 'subject'"),
    ({C + "0__parsed__tree__anchor__plural": "yes"}, "parsed: tree.anchor: field 'plural' must be true or false"),
    ({C + "0__parsed__tree__anchor": [1]}, "tree.anchor: a tree node must be an object"),
    ({C + "1__parsed__tree__mode": "most"}, "field 'mode' must be one of ['all', 'exactly', 'count']"),
    ({C + "1__parsed__tree__of__colour": 3}, "tree.of: field 'colour' must be a string or null"),
])
def test_v2_validation_agrees_with_schema(changes, words):
    data = _mutate(_v2_msg(), **changes)
    with pytest.raises(ProtocolError) as e:
        protocol.parse_message(data)
    assert words in str(e.value)
    # JSON Schema cannot compare across fields (entries per query, texts, x0 <= x1); everything else it refuses too
    cross_field = ("entries but", "is 'the mug' but", "must be a found target of", "x0 <= x1")
    if not any(w in words for w in cross_field):
        assert list(_validator("targets").iter_errors(json.loads(data[8:]))), words


def test_v2_tree_nodes_of_later_revisions_are_accepted_and_depth_is_bounded():
    later = _mutate(_v2_msg(), **{C + "0__parsed__tree": {"type": "near_the_robot", "within_m": 1.5}})
    msg = protocol.parse_message(later)[1]
    assert not list(_validator("targets").iter_errors(msg))
    node = {"type": "noun_phrase", "text": "the cup", "kind": "cup", "colour": None, "plural": False, "taught": False}
    for _ in range(protocol.MAX_TREE_DEPTH):
        node = {"type": "not_colour", "base": node, "colour": "red"}
    with pytest.raises(ProtocolError, match="nested deeper than 16 levels"):
        protocol.parse_message(_mutate(_v2_msg(), **{C + "0__parsed__tree": node}))


def test_build_v2_refuses_commands_that_do_not_match_the_queries():
    with pytest.raises(ProtocolError, match="'v2.commands' has 3 entries but 'queries' has 2"):
        _v2_msg(queries=["the cup left of the plate", "how many balls"])
    with pytest.raises(ProtocolError, match="found=false needs a reason"):
        cmds = _commands()
        _v2_msg(commands=[cmds[0], cmds[1], {**cmds[2].to_dict(), "reason": None}])
    # a mapping with Target and Anchor objects works like a CommandResult
    cmds = _commands()
    as_mapping = {"command": cmds[0].command, "parsed": cmds[0].parsed, "found": np.bool_(True), "count": None,
                  "reason": None, "targets": cmds[0].targets, "anchors": cmds[0].anchors}
    a = protocol.parse_message(_v2_msg(commands=[as_mapping, *cmds[1:]]))[1]
    assert a == protocol.parse_message(_v2_msg())[1]


def _doc_examples(heading: str) -> list[dict]:
    """The JSON examples of one section of docs/PROTOCOL.md."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_the_documented_targets_examples_are_valid():
    examples = _doc_examples("## `targets`")
    assert len(examples) >= 1 and any("v2" in e for e in examples)
    for msg in examples:
        protocol.validate_targets(copy.deepcopy(msg))
        for version in (1, 2):
            assert not list(_validator("targets", version).iter_errors(msg)), version


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
    {"op": "ping", "v": 2}, {"op": "taught"}, {"op": "forget", "name": "my mug"},
    {"op": "teach", "name": "my mug", "box": [100, 120, 220, 260]},
    {"op": "teach", "name": "my mug", "box": [-5, 0.5, 10, 1e4], "v": 2},  # the server checks the frame bounds
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
    ({"op": "ping", "v": 3}, "unsupported protocol version 3; this vlmedge speaks v1 and v2"),
    ({"op": "pause", "extra": 1}, "unknown field(s) ['extra']"),
    ({"op": "teach", "name": "my mug"}, "op 'teach': missing field 'box'"),
    ({"op": "teach", "box": [1, 2, 3, 4]}, "op 'teach': missing field 'name'"),
    ({"op": "teach", "name": "my mug", "boxx": [1, 2, 3, 4]}, "did you mean 'box'"),
    ({"op": "teach", "name": "my mug", "box": [1, 2, 3]}, "field 'box' must be [x0, y0, x1, y1]: 4 finite numbers"),
    ({"op": "teach", "name": "my mug", "box": "1 2 3 4"}, "field 'box' must be [x0, y0, x1, y1]"),
    ({"op": "teach", "name": "my mug", "box": [1, 2, "3", 4]}, "field 'box' must be [x0, y0, x1, y1]"),
    ({"op": "teach", "name": "my mug", "box": [1, 2, True, 4]}, "field 'box' must be [x0, y0, x1, y1]"),
    ({"op": "teach", "name": "my mug", "box": [10, 2, 10, 4]}, "field 'box' must have x0 < x1 and y0 < y1"),
    ({"op": "teach", "name": " ", "box": [1, 2, 3, 4]}, "op 'teach': field 'name' is empty"),
    ({"op": "teach", "name": "m" * 201, "box": [1, 2, 3, 4]}, "op 'teach': field 'name' is 201 characters long"),
    ({"op": "forget"}, "op 'forget': missing field 'name'"),
    ({"op": "forget", "name": 3}, "op 'forget': field 'name' must be a string"),
    ({"op": "taught", "name": "x"}, "op 'taught': unknown field(s) ['name']"),
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
    if "x0 < x1" not in words:  # JSON Schema cannot compare two items of an array
        assert list(_validator("control").iter_errors(req)), "the schema should reject it too"


def test_v1_requests_still_match_the_v1_schema():
    v1 = _validator("control", 1)
    for req in GOOD_REQUESTS:
        v1_only = req["op"] not in ("teach", "forget", "taught") and req.get("v", 1) == 1
        assert bool(list(v1.iter_errors(req))) is not v1_only, req


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
    return load_script(f"examples/{name}.py", f"example_{name}")


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
