"""Limits and named errors at every boundary (#14 items 13, 14, 15): the text-embedding cache is bounded,
queries follow one set of limits and character rules on the Python API and the control socket, and hostile
values get an error that names them instead of a traceback. Real bundles, real ONNX Runtime, real sockets."""

import json
import socket
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from vlmedge import protocol
from vlmedge.errors import ConfigError, InputError, ProtocolError, VlmEdgeError
from vlmedge.runtime.config import RunConfig
from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.runtime.io.sources import open_source
from vlmedge.runtime.messaging.control import ControlClient, ControlServer, ControlState
from vlmedge.scenes.render import render_scene
from vlmedge.validation import QueryRules, check_queries

from _bundles import tiny_bundle

VOCAB = ("the red cup", "a blue ball", "background", "a table", "a wall", "the floor")
ZWJ_EMOJI = "the \U0001F469\u200d\U0001F4BB mug"  # woman technologist: a ZWJ sequence
BIDI_OVERRIDE = "the red cup\u202e"  # RIGHT-TO-LEFT OVERRIDE: text that displays other than it reads
LONE_SURROGATE = "the \ud800 cup"


@pytest.fixture(scope="module")
def frame():
    return render_scene(0).frame


@pytest.fixture(scope="module")
def grounder():
    return Grounder(tiny_bundle())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ item 13: the cache

def test_text_embedding_cache_is_bounded_and_keeps_the_vocabulary():
    g = Grounder(tiny_bundle(vocab=VOCAB), text_cache_size=64)
    vocab = set(VOCAB)
    assert vocab <= set(g.cached_queries)
    calls = g.text_encoder_calls
    for i in range(400):  # distinct queries, as a control client changing commands all day sends them
        g.text_embeddings([f"object number {i}"])
    assert len(g.cached_queries) <= 64 + len(vocab)
    assert vocab <= set(g.cached_queries)  # pinned: never evicted
    g.text_embeddings(list(VOCAB))
    assert g.text_encoder_calls == calls + 400  # the vocabulary is still served without the text encoder
    # recently used texts stay; the least recently used go first
    g.text_embeddings(["object number 399"])
    assert g.text_encoder_calls == calls + 400


def test_text_embedding_cache_memory_stops_growing():
    g = Grounder(tiny_bundle(), text_cache_size=32)
    for i in range(200):  # warm-up: the cache fills to its size
        g.text_embeddings([f"warm {i}"])
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(400):
            g.text_embeddings([f"distinct query {i}"])
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # measured: about 220 KB for 400 more cached [32] embeddings and their keys, about 20 KB when bounded
    assert grown < 80_000, f"memory grew by {grown} bytes over 400 distinct queries"
    assert len(g.cached_queries) <= 32 + len(g.background_prompts)


def test_text_cache_size_is_validated():
    for bad in (0, -1, 1.5, True, "64"):
        with pytest.raises(ConfigError, match="text_cache_size"):
            Grounder(tiny_bundle(), text_cache_size=bad)


# ---------------------------------------------------------------- item 14: one set of limits and characters

def test_api_has_the_sockets_limits(grounder, frame):
    too_many = [f"object {i}" for i in range(protocol.MAX_QUERIES + 1)]
    with pytest.raises(InputError, match=f"limit is {protocol.MAX_QUERIES}"):
        grounder.ground(frame, too_many)
    with pytest.raises(InputError, match=f"limit is {protocol.MAX_QUERY_CHARS}"):
        grounder.ground(frame, ["a" * (protocol.MAX_QUERY_CHARS + 1)])
    with pytest.raises(InputError, match="limit is"):
        grounder.ground(frame, ["x" * 10_000_000])  # refused before anything is tokenized


def test_api_limits_are_configurable(frame):
    g = Grounder(tiny_bundle(), max_queries=24, max_query_chars=300)
    res = g.ground(frame, [f"object {i}" for i in range(20)])
    assert len(res.queries) == 20
    assert g.ground(frame, ["a " * 140]).queries == ("a " * 140,)
    with pytest.raises(InputError, match="limit is 24"):
        g.ground(frame, [f"object {i}" for i in range(25)])
    for bad in ({"max_queries": 0}, {"max_query_chars": -1}, {"max_queries": "16"}):
        with pytest.raises(ConfigError):
            Grounder(tiny_bundle(), **bad)


@pytest.mark.parametrize("query, why", [("the red\x00cup", "control character"),
                                        (BIDI_OVERRIDE, "bidirectional"),
                                        ("\u2066the cup", "bidirectional"),
                                        (LONE_SURROGATE, "surrogate")])
def test_both_paths_refuse_the_same_characters(grounder, frame, query, why):
    with pytest.raises(InputError, match=why):
        grounder.ground(frame, [query])
    with pytest.raises(ProtocolError, match=why):
        protocol.validate_request({"op": "set_queries", "queries": [query]})
    with pytest.raises(ProtocolError, match=why):
        protocol.validate_request({"op": "add_query", "query": query})


def test_both_paths_accept_zwj_emoji(grounder, frame):
    assert grounder.ground(frame, [ZWJ_EMOJI]).queries == (ZWJ_EMOJI,)
    assert protocol.validate_request({"op": "set_queries", "queries": [ZWJ_EMOJI]})["queries"] == [ZWJ_EMOJI]
    assert protocol.validate_request({"op": "add_query", "query": "\U0001F3F3\ufe0f\u200d\U0001F308 flag"})
    assert RunConfig(queries=(ZWJ_EMOJI,)).queries == (ZWJ_EMOJI,)


def test_a_lone_surrogate_over_the_wire_is_refused_by_name():
    port = free_port()
    state = ControlState()
    with ControlServer(f"tcp://127.0.0.1:{port}", state.handle).start(), \
            ControlClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000) as client:
        reply = client.send_raw(b'{"op": "set_queries", "queries": ["the \\ud800 cup"]}')
        assert not reply["ok"] and "surrogate" in reply["error"] and "queries" in reply["error"]
        reply = client.send_raw(json.dumps({"op": "set_queries", "queries": [ZWJ_EMOJI]}).encode())
        assert reply["ok"] and reply["queries"] == [ZWJ_EMOJI]


def test_any_sequence_of_str_is_accepted(grounder, frame):
    arr = np.array(["the red cup", "a blue ball"])
    res = grounder.ground(frame, arr)
    assert res.queries == ("the red cup", "a blue ball") and all(type(q) is str for q in res.queries)
    assert grounder.ground(frame, ("the red cup",)).queries == ("the red cup",)
    assert check_queries(np.array(["a", "b"], dtype=object)) == ("a", "b")
    with pytest.raises(InputError, match="list of strings"):
        grounder.ground(frame, np.array([[1, 2]]))
    with pytest.raises(InputError, match="list of strings"):
        grounder.ground(frame, "the red cup")


def test_query_rules_validate_their_limits():
    with pytest.raises(ConfigError, match="max_count"):
        QueryRules(max_count=0)
    with pytest.raises(ConfigError, match="max_chars"):
        QueryRules(max_chars=-5)


# ------------------------------------------------------------------------------- item 15: named errors

def test_thresholds_per_query_are_checked(grounder, frame):
    with pytest.raises(InputError, match="thresholds has 1 entries but there are 2 queries"):
        grounder.ground(frame, ["the red cup", "a blue ball"], thresholds=[0.2])
    res = grounder.ground(frame, ["the red cup", "a blue ball"], thresholds=[0.2, 0.9])
    assert len(res.queries) == 2
    with pytest.raises(InputError, match="not one of the queries"):
        grounder.ground(frame, ["the red cup"], thresholds={"a blue ball": 0.3})
    with pytest.raises(ConfigError, match=r"thresholds\['the red cup'\]"):
        grounder.ground(frame, ["the red cup"], thresholds={"the red cup": 5})
    with pytest.raises(InputError, match="thresholds must be"):
        grounder.ground(frame, ["the red cup"], thresholds=0.3)


@pytest.mark.parametrize("spec, words", [
    ("99999999999999999999", "camera index"),
    ("synthetic://tabletop?seed=-1", "seed"),
    ("synthetic://tabletop?seed=99999999999999999999999", "seed"),
    ("synthetic://tabletop?width=200000&height=200000", "height 200000"),
    ("synthetic://tabletop?width=200000", "width 200000"),
    ("synthetic://tabletop?width=0", "width"),
    ("a" * 300 + ".mp4", "255"),
    ("file:///tmp/" + "b" * 300 + "/clip.mp4", "255"),
    ("/tmp/x\x00.mp4", "NUL"),
])
def test_hostile_sources_get_named_errors(spec, words):
    with pytest.raises(VlmEdgeError, match=words):
        open_source(spec).open()


def test_synthetic_size_from_the_size_option_is_bounded():
    with pytest.raises(ConfigError, match="height"):
        open_source("synthetic://tabletop", size=(90000, 100))


@pytest.mark.parametrize("field", ["record", "taught", "curve_keys", "bundle"])
def test_long_path_names_in_run_options_are_named(tmp_path, field):
    long_name = "c" * 300
    value = str(tmp_path / (long_name + (".mp4" if field == "record" else "")))
    with pytest.raises(ConfigError, match=f"RunConfig.{field}.*255"):
        RunConfig(**{field: value})


def test_vlmedge_run_with_a_huge_camera_index_is_an_error_not_a_traceback():
    p = subprocess.run([sys.executable, "-m", "vlmedge.cli", "run", "--source", "99999999999999999999", "--headless",
                        "--max-frames", "1"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and "camera index" in p.stderr, p.stderr[-2000:]


@pytest.mark.parametrize("raw, words", [
    (b'{"op": "set_threshold", "value": 1' + b"0" * 400 + b"}", "must be a number in"),
    (b'{"op": "set_threshold", "value": 1e400}', "must be a number in"),
    (b'{"op": "set_threshold", "value": -1e400}', "must be a number in"),
    (b'{"op": "set_queries", "queries": ["a cup"], "queries": ["a bomb"]}', "duplicate key 'queries'"),
    (b'{"op": "pause", "op": "resume"}', "duplicate key 'op'"),
    (b'{"op": "teach", "name": "mug", "box": [0, 0, 10, 10], "box": [1, 1, 2, 2]}', "duplicate key 'box'"),
])
def test_hostile_control_values_are_refused_by_name(raw, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.parse_request(raw)


def test_duplicate_keys_over_the_socket_change_nothing():
    port = free_port()
    state = ControlState(queries=("the red cup",))
    with ControlServer(f"tcp://127.0.0.1:{port}", state.handle).start(), \
            ControlClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000) as client:
        reply = client.send_raw(b'{"op": "set_queries", "queries": ["a blue ball"], "queries": ["a cup"]}')
        assert not reply["ok"] and "duplicate key" in reply["error"]
        reply = client.send_raw(b'{"op": "set_threshold", "value": 1' + b"0" * 400 + b"}")
        assert not reply["ok"] and "internal error" not in reply["error"]
    assert state.snapshot().queries == ("the red cup",) and state.snapshot().threshold == 0.5
