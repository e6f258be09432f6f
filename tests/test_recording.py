"""ROS 2 bags without ROS (``vlmedge run --record out.mcap``), read back by an independent implementation
(``rosbags``): every message type, count and stamp; the message definitions against ROS 2 Humble's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _scripts import load_script

from vlmedge import protocol
from vlmedge.errors import BackendUnavailable
from vlmedge.runtime.app import RunConfig, run
from vlmedge.runtime.recording import ros
from vlmedge.scenes.video import write_synthetic_video

pytest.importorskip("mcap_ros2", reason='writing bags needs the mcap extra: pip install "vlmedge[mcap]"')
rosbags = pytest.importorskip("rosbags", reason="the read-back test needs rosbags (dev extra)")

from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 12


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """12 frames, 320x240, MJPG, 30 fps."""
    path = tmp_path_factory.mktemp("video") / "scene.avi"
    return write_synthetic_video(path, FRAMES, 30.0, size=(240, 320), camera_format="mjpg", seed=3)


def _video_frames(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _read_bag(path: Path) -> tuple[dict, dict]:
    """topic -> msgtype, and topic -> [(log time, message)], read with rosbags (its own CDR decoder, the types from
    the bag's own definitions)."""
    types, messages = {}, {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for c in reader.connections:
            types[c.topic] = c.msgtype
            messages[c.topic] = []
        for connection, t, raw in reader.messages():
            messages[connection.topic].append((t, reader.deserialize(raw, connection.msgtype)))
    return types, messages


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_a_run_records_a_bag_that_rosbags_reads_back(tiny_bundle_dir, video, tmp_path):
    bag = tmp_path / "out.mcap"
    results = []
    summary = run(RunConfig(source=f"file://{video}", bundle=tiny_bundle_dir, display=False, publish=None,
                            control=None, realtime=False, record=bag, print_interval_s=None,
                            queries=("the red cup", "the blue ball")),
                  on_result=lambda result, frame: results.append((frame.id, result)))
    assert summary.frames == FRAMES and summary.recorded == FRAMES
    assert summary.extra["bag"] == {"path": str(bag), "frames": FRAMES, "dropped": 0}

    types, messages = _read_bag(bag)
    assert types == {ros.TOPIC_IMAGE: "sensor_msgs/msg/CompressedImage",
                     ros.TOPIC_DETECTIONS: "vision_msgs/msg/Detection2DArray",
                     ros.TOPIC_TARGETS: "std_msgs/msg/String"}
    assert {topic: len(m) for topic, m in messages.items()} == dict.fromkeys(types, FRAMES)
    for topic, msgs in messages.items():  # one clock, in capture order
        times = [t for t, _ in msgs]
        assert times == sorted(times) and len(set(times)) == FRAMES, topic
    source = _video_frames(video)
    found = 0
    for i in range(FRAMES):
        (t_img, img), (t_det, det), (t_json, text) = (messages[topic][i] for topic in
                                                      (ros.TOPIC_IMAGE, ros.TOPIC_DETECTIONS, ros.TOPIC_TARGETS))
        _, targets = protocol.parse_message(b"targets " + text.data.encode())  # the raw targets JSON, valid
        stamp = targets["t_capture_ns"]  # the capture clock, the same on all three
        assert t_img == t_det == t_json == stamp == _ns(img.header.stamp) == _ns(det.header.stamp)
        assert targets["frame_id"] == results[i][0] and targets["queries"] == ["the red cup", "the blue ball"]
        # the camera frame, not the overlay
        assert img.format == "jpeg" and img.header.frame_id == ros.FRAME_ID
        decoded = cv2.imdecode(np.frombuffer(bytes(img.data), np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (240, 320, 3)
        assert np.abs(decoded.astype(int) - source[i].astype(int)).mean() < 4.0
        # one detection per found target: class id = the command, its score, bbox centre/size, track id
        expected = [t for t in targets["targets"] if t["found"]]
        assert len(det.detections) == len(expected)
        for d, t in zip(det.detections, expected):
            x0, y0, x1, y1 = t["bbox"]
            (hyp,) = d.results
            assert hyp.hypothesis.class_id == t["query"] and hyp.hypothesis.score == pytest.approx(t["score"])
            assert (d.bbox.center.position.x, d.bbox.center.position.y) == ((x0 + x1) / 2, (y0 + y1) / 2)
            assert (d.bbox.size_x, d.bbox.size_y) == (x1 - x0, y1 - y0)
            assert d.id == ("" if t["track_id"] is None else str(t["track_id"]))
            assert _ns(d.header.stamp) == stamp
            assert hyp.pose.pose.orientation.w == 1.0  # the ROS default: an unknown pose is the identity
            found += 1
    assert found > 0  # the scene shows a red cup


def test_the_bag_is_a_rosbag2_mcap_with_full_definitions(tiny_bundle_dir, video, tmp_path):
    from mcap.reader import make_reader

    bag = tmp_path / "out.mcap"
    run(RunConfig(source=f"file://{video}", bundle=tiny_bundle_dir, display=False, publish=None, control=None,
                  realtime=False, record=bag, max_frames=2, print_interval_s=None))
    with open(bag, "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        schemas = {s.name: s for s in summary.schemas.values()}
        assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
    assert set(schemas) == set(ros.MSGDEFS)
    for name, schema in schemas.items():
        assert schema.encoding == "ros2msg" and schema.data.decode() == ros.MSGDEFS[name]


def test_message_definitions_match_ros2_humble():
    """Every standard type the definitions use, field by field, against rosbags' ROS 2 Humble type store; the
    vision_msgs ones parse and use them."""
    humble = get_typestore(Stores.ROS2_HUMBLE)
    for name, text in ros.MSGDEFS.items():
        parsed = get_types_from_msg(text, name)
        assert name in parsed
        for typename, (_, fields) in parsed.items():
            if typename in humble.fielddefs:
                assert [(f, t) for f, t in fields] == list(humble.fielddefs[typename][1]), typename
            else:
                assert typename.startswith("vision_msgs/"), typename
        if name in humble.fielddefs:  # written exactly as ROS 2 writes them into a bag
            assert text == humble.generate_msgdef(name, ros_version=2)[0]
    vision = get_types_from_msg(ros.MSGDEFS[ros.DETECTION2D_ARRAY], ros.DETECTION2D_ARRAY)
    assert [f for f, _ in vision["vision_msgs/msg/Detection2D"][1]] == ["header", "results", "bbox", "id"]
    assert [f for f, _ in vision["vision_msgs/msg/ObjectHypothesis"][1]] == ["class_id", "score"]


def test_the_ros2_bridge_example_shares_the_conversion_and_explains_itself():
    bridge = load_script("examples/ros2_bridge.py", "example_ros2_bridge")
    assert bridge.targets_to_detection2d_array is ros.targets_to_detection2d_array
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "ros2_bridge.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    description = out.stdout.split("\n\n")[1]
    assert "vision_msgs/Detection2DArray" in description and "--record out.mcap" in out.stdout


def test_vlmedge_run_record_mcap_from_the_command_line(tiny_bundle_dir, video, tmp_path):
    bag = tmp_path / "cli.mcap"
    out = subprocess.run([sys.executable, "-m", "vlmedge.cli", "run", "--source", f"file://{video}", "--bundle",
                          str(tiny_bundle_dir), "--headless", "--max-frames", "3", "--no-realtime", "--publish",
                          "none", "--control", "none", "--record", str(bag)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    types, messages = _read_bag(bag)
    assert sorted(types.values()) == sorted(ros.MSGDEFS) and all(len(m) == 3 for m in messages.values())
    json.loads(messages[ros.TOPIC_TARGETS][0][1].data)


def test_without_the_mcap_extra_the_recorder_says_what_to_install(monkeypatch, tmp_path):
    from vlmedge.runtime.recording.bag import BagRecorder

    monkeypatch.setitem(sys.modules, "mcap_ros2.writer", None)  # `from mcap_ros2.writer import ...` now fails
    with pytest.raises(BackendUnavailable, match=r'pip install "vlmedge\[mcap\]"'):
        BagRecorder(tmp_path / "out.mcap")
    assert not (tmp_path / "out.mcap").exists()
