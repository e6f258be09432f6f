#!/usr/bin/env python3
"""Republish vlmedge targets as ROS 2 vision_msgs/Detection2DArray messages.

    vlmedge run --source csi://0 --query "the red cup" &      # publishes on tcp://127.0.0.1:5555
    python3 examples/ros2_bridge.py --address tcp://127.0.0.1:5555 --topic /vlmedge/detections

Each found target becomes one Detection2D: ``class_id`` = the query text, ``score`` = its score,
bbox center/size in pixels, ``id`` = the track id, header stamp = the frame's CAPTURE time (Unix
clock; run chrony/NTP so ROS and the camera host agree). Not-found targets are left out.

The conversion is the one ``vlmedge run --record out.mcap`` writes into ROS 2 bags
(``vlmedge.runtime.recording.ros.targets_to_detection2d_array``): a pure function producing a dict with the
message's fields, testable without ROS; rclpy and vision_msgs are imported only in main().
"""

from __future__ import annotations

import argparse
import sys

from vlmedge import protocol
from vlmedge.errors import ProtocolError
from vlmedge.runtime.recording.ros import FRAME_ID, TOPIC_DETECTIONS, targets_to_detection2d_array


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


DESCRIPTION = """\
Republish the targets of a running `vlmedge run` as ROS 2 vision_msgs/Detection2DArray messages: one
Detection2D per found target, class_id = the command, score, bbox center/size in pixels, id = the track
id, header stamp = the frame's capture time. Needs a sourced ROS 2 (rclpy) with vision_msgs."""

EPILOG = """\
example:
  vlmedge run --source csi://0 --query "the red cup" &
  python3 examples/ros2_bridge.py --topic /vlmedge/detections

Without ROS on the robot: `vlmedge run --record out.mcap` writes the same messages into a ROS 2 bag
(`ros2 bag play out.mcap`, Foxglove)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ros2_bridge.py", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default=protocol.DEFAULT_PUB_ADDRESS,
                    help=f"the publisher of a running `vlmedge run` (default: {protocol.DEFAULT_PUB_ADDRESS})")
    ap.add_argument("--topic", default=TOPIC_DETECTIONS,
                    help=f"ROS 2 topic to publish the Detection2DArray messages on (default: {TOPIC_DETECTIONS})")
    ap.add_argument("--frame-id", default=FRAME_ID, help=f"header.frame_id of the camera (default: {FRAME_ID})")
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
