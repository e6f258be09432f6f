"""vlmedge targets and camera frames as ROS 2 messages, without ROS: the message definitions and pure conversions.

The messages are plain dicts whose keys are the ROS field names, so they can be CDR-encoded from the definitions
below (``mcap-ros2-support`` does it for ``vlmedge run --record out.mcap``) or copied into real ``rclpy``
messages (``examples/ros2_bridge.py``). Both use the same functions, so a bag and a live bridge carry the same
detections.

The definitions (``MSGDEFS``) are written out in full, each followed by every type it uses, in the
concatenated ``.msg`` form rosbag2 stores in a bag's schema: a reader needs no ROS installation to decode them.
They are the ROS 2 Humble (and later) definitions: vision_msgs 4 (``ObjectHypothesisWithPose.hypothesis``,
``BoundingBox2D.center.position``), sensor_msgs, std_msgs, geometry_msgs, builtin_interfaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmedge.errors import ProtocolError

FRAME_ID = "camera"  # header.frame_id of every message: the camera's optical frame

# Topics of a bag written by `vlmedge run --record out.mcap`.
TOPIC_IMAGE = "/vlmedge/image_raw/compressed"  # sensor_msgs/msg/CompressedImage, the camera frame (JPEG)
TOPIC_DETECTIONS = "/vlmedge/detections"  # vision_msgs/msg/Detection2DArray, the found targets
TOPIC_TARGETS = "/vlmedge/targets"  # std_msgs/msg/String, the `targets` message JSON (docs/PROTOCOL.md)

_SEP = "=" * 80

_TIME = "int32 sec\nuint32 nanosec"
_HEADER = "builtin_interfaces/Time stamp\nstring frame_id"


def _msgdef(main: str, *deps: tuple[str, str]) -> str:
    """The concatenated form: the main definition, then ``MSG: pkg/Type`` and its definition for each type used."""
    parts = [main]
    for name, text in deps:
        parts.append(f"{_SEP}\nMSG: {name}\n{text}")
    return "\n".join(parts) + "\n"


COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
DETECTION2D_ARRAY = "vision_msgs/msg/Detection2DArray"
STRING = "std_msgs/msg/String"

MSGDEFS: dict[str, str] = {
    COMPRESSED_IMAGE: _msgdef(
        "std_msgs/Header header\nstring format\nuint8[] data",
        ("std_msgs/Header", _HEADER),
        ("builtin_interfaces/Time", _TIME)),
    DETECTION2D_ARRAY: _msgdef(
        "std_msgs/Header header\nvision_msgs/Detection2D[] detections",
        ("std_msgs/Header", _HEADER),
        ("builtin_interfaces/Time", _TIME),
        ("vision_msgs/Detection2D", "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                                    "vision_msgs/BoundingBox2D bbox\nstring id"),
        ("vision_msgs/ObjectHypothesisWithPose", "vision_msgs/ObjectHypothesis hypothesis\n"
                                                 "geometry_msgs/PoseWithCovariance pose"),
        ("vision_msgs/ObjectHypothesis", "string class_id\nfloat64 score"),
        ("geometry_msgs/PoseWithCovariance", "geometry_msgs/Pose pose\nfloat64[36] covariance"),
        ("geometry_msgs/Pose", "geometry_msgs/Point position\ngeometry_msgs/Quaternion orientation"),
        ("geometry_msgs/Point", "float64 x\nfloat64 y\nfloat64 z"),
        ("geometry_msgs/Quaternion", "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1"),
        ("vision_msgs/BoundingBox2D", "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y"),
        ("vision_msgs/Pose2D", "vision_msgs/Point2D position\nfloat64 theta"),
        ("vision_msgs/Point2D", "float64 x\nfloat64 y")),
    STRING: _msgdef("string data"),
}


def stamp(t_ns: int) -> dict:
    """A Unix time in nanoseconds -> builtin_interfaces/Time."""
    t = int(t_ns)
    return {"sec": t // 1_000_000_000, "nanosec": t % 1_000_000_000}


def header(t_ns: int, frame_id: str = FRAME_ID) -> dict:
    """std_msgs/Header stamped ``t_ns`` (Unix nanoseconds)."""
    return {"stamp": stamp(t_ns), "frame_id": str(frame_id)}


def targets_to_detection2d_array(msg: Mapping[str, Any], frame_id: str = FRAME_ID) -> dict:
    """A parsed ``targets`` message (``vlmedge.protocol.parse_message``) -> a vision_msgs/Detection2DArray dict.

    One Detection2D per found target: ``results[0].hypothesis.class_id`` = the command (query text), ``score`` =
    its score, bbox center/size in pixels, ``id`` = the track id ("" without tracking). Every header carries the
    frame's capture time (Unix clock). Not-found targets are left out. The hypothesis' 3D ``pose`` is not known
    and left out: encoders and ``rclpy`` give it the ROS default (origin, identity rotation, zero covariance).
    """
    if not isinstance(msg, Mapping) or msg.get("type") != "targets":
        got = msg.get("type") if isinstance(msg, Mapping) else type(msg).__name__
        raise ProtocolError(f"expected a targets message, got {got!r}")
    head = header(msg["t_capture_ns"], frame_id)
    detections = []
    for target in msg["targets"]:
        if not target["found"]:
            continue
        x0, y0, x1, y1 = target["bbox"]
        detections.append({
            "header": head,
            "results": [{"hypothesis": {"class_id": str(target["query"]), "score": float(target["score"])}}],
            "bbox": {"center": {"position": {"x": (x0 + x1) / 2.0, "y": (y0 + y1) / 2.0}, "theta": 0.0},
                     "size_x": float(x1 - x0), "size_y": float(y1 - y0)},
            "id": "" if target.get("track_id") is None else str(target["track_id"]),
        })
    return {"header": head, "detections": detections}


def compressed_image(jpeg: bytes, t_ns: int, frame_id: str = FRAME_ID) -> dict:
    """A JPEG-encoded camera frame captured at ``t_ns`` -> a sensor_msgs/CompressedImage dict."""
    return {"header": header(t_ns, frame_id), "format": "jpeg", "data": bytes(jpeg)}


def string_message(text: str) -> dict:
    """std_msgs/String."""
    return {"data": str(text)}


__all__ = ["COMPRESSED_IMAGE", "DETECTION2D_ARRAY", "FRAME_ID", "MSGDEFS", "STRING", "TOPIC_DETECTIONS",
           "TOPIC_IMAGE", "TOPIC_TARGETS", "compressed_image", "header", "stamp", "string_message",
           "targets_to_detection2d_array"]
