"""The wire on the device: ``Publisher`` (targets, heatmaps, status), the control socket, ZeroMQ helpers."""
