#!/usr/bin/env python3
"""Republish vlmedge targets as ROS 2 ``vision_msgs/Detection2DArray``.

    vlmedge run --source csi://0 --query "the red cup" &      # publishes on tcp://127.0.0.1:5555
    python3 examples/ros2_bridge.py --address tcp://127.0.0.1:5555 --topic /vlmedge/detections

Each found target becomes one Detection2D: ``class_id`` = the query text, ``score`` = its score,
bbox center/size in pixels, ``id`` = the track id, header stamp = the frame's CAPTURE time (Unix
clock; run chrony/NTP so ROS and the camera host agree). Not-found targets are left out.

The conversion (``targets_to_detection2d_array``) is a pure function producing a dict with the
message's fields, so it is testable without ROS; rclpy and vision_msgs are imported only in main().
"""

from __future__ import annotations

import argparse
import sys

from vlmedge import protocol
from vlmedge.errors import ProtocolError


def targets_to_detection2d_array(msg: dict, frame_id: str = "camera") -> dict:
    """A parsed ``targets`` message -> dict shaped like vision_msgs/Detection2DArray."""
    if not isinstance(msg, dict) or msg.get("type") != "targets":
        got = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
        raise ProtocolError(f"expected a targets message, got {got!r}")
    t = int(msg["t_capture_ns"])
    header = {"stamp": {"sec": t // 1_000_000_000, "nanosec": t % 1_000_000_000}, "frame_id": frame_id}
    detections = []
    for target in msg["targets"]:
        if not target["found"]:
            continue
        x0, y0, x1, y1 = target["bbox"]
        detections.append({
            "header": header,
            "results": [{"hypothesis": {"class_id": target["query"], "score": float(target["score"])}}],
            "bbox": {"center": {"position": {"x": (x0 + x1) / 2.0, "y": (y0 + y1) / 2.0}, "theta": 0.0},
                     "size_x": float(x1 - x0), "size_y": float(y1 - y0)},
            "id": "" if target["track_id"] is None else str(target["track_id"]),
        })
    return {"header": header, "detections": detections}


def to_ros(d: dict):
    """Build the real ROS message from the dict (needs vision_msgs)."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    def header(h):
        return Header(stamp=Time(sec=h["stamp"]["sec"], nanosec=h["stamp"]["nanosec"]), frame_id=h["frame_id"])

    out = Detection2DArray(header=header(d["header"]))
    for det in d["detections"]:
        m = Detection2D(header=header(det["header"]), id=det["id"])
        for r in det["results"]:
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = r["hypothesis"]["class_id"]
            hyp.hypothesis.score = r["hypothesis"]["score"]
            m.results.append(hyp)
        c = det["bbox"]["center"]
        if hasattr(m.bbox.center, "position"):  # vision_msgs >= 4 (Humble)
            m.bbox.center.position.x, m.bbox.center.position.y = c["position"]["x"], c["position"]["y"]
        else:  # vision_msgs 3 (Foxy/Galactic)
            m.bbox.center.x, m.bbox.center.y = c["position"]["x"], c["position"]["y"]
        m.bbox.center.theta = c["theta"]
        m.bbox.size_x, m.bbox.size_y = det["bbox"]["size_x"], det["bbox"]["size_y"]
        out.detections.append(m)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--address", default=protocol.DEFAULT_PUB_ADDRESS, help="vlmedge publisher address")
    ap.add_argument("--topic", default="/vlmedge/detections", help="ROS 2 topic")
    ap.add_argument("--frame-id", default="camera", help="header.frame_id of the camera")
    args = ap.parse_args(argv)
    try:
        import rclpy
        from rclpy.node import Node
        from vision_msgs.msg import Detection2DArray
    except ImportError as e:
        print(f"ros2_bridge: ROS 2 is not available ({e}). Source your ROS 2 setup "
              "(e.g. `source /opt/ros/humble/setup.bash`) and install vision_msgs "
              "(`sudo apt install ros-humble-vision-msgs`).", file=sys.stderr)
        return 2
    import zmq

    rclpy.init()
    node = Node("vlmedge_bridge")
    pub = node.create_publisher(Detection2DArray, args.topic, 10)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.CONFLATE, 1)  # only the newest frame matters
    sub.setsockopt(zmq.SUBSCRIBE, b"targets ")
    sub.connect(args.address)

    def poll():
        while sub.poll(0):
            try:
                _, msg = protocol.parse_message(sub.recv())
            except ProtocolError as e:
                node.get_logger().warning(f"bad message: {e}")
                continue
            pub.publish(to_ros(targets_to_detection2d_array(msg, args.frame_id)))

    node.create_timer(0.005, poll)
    node.get_logger().info(f"bridging {args.address} -> {args.topic}")
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(linger=0)
        ctx.term()
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
