"""Recording a run as a ROS 2 bag without ROS: ``ros`` holds the message definitions and the conversions (shared
with ``examples/ros2_bridge.py``), ``bag`` the MCAP writer behind ``vlmedge run --record out.mcap``."""
