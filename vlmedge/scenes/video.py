"""Videos of moving synthetic tabletop scenes: what `vlmedge bench` plays as its camera or file source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vlmedge.errors import BackendUnavailable, check_choice
from vlmedge.scenes.render import TabletopStream

CAMERA_FORMATS = {"raw": "I420", "mjpg": "MJPG"}  # --camera-format -> AVI fourcc


def write_synthetic_video(path: Path, frames: int, fps: float, size=(480, 640), camera_format: str = "raw",
                          seed: int = 0) -> Path:
    """An .avi of moving synthetic tabletop scenes: raw YUV 4:2:0 (``raw``) or JPEG (``mjpg``) frames."""
    import cv2


    check_choice("camera_format", camera_format, tuple(CAMERA_FORMATS))
    fourcc = CAMERA_FORMATS[camera_format]
    stream = TabletopStream(seed=seed, size=size, fps=fps)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
    if not writer.isOpened():
        raise BackendUnavailable(f"an OpenCV video writer ({fourcc}/.avi)", "this OpenCV build cannot write it")
    try:
        for _ in range(frames):
            frame, _ = stream.read()
            writer.write(frame)
    finally:
        writer.release()
    return path


def write_synthetic_video_subprocess(path: Path, frames: int, fps: float, camera_format: str = "raw") -> Path:
    """``write_synthetic_video`` in a child process, so that rendering does not count in this process's
    memory figures (a camera or file source needs none of it)."""
    cmd = [sys.executable, "-m", "vlmedge.scenes.video",
           json.dumps({"path": str(path), "frames": int(frames), "fps": float(fps), "format": camera_format})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not path.is_file():
        raise BackendUnavailable("writing the synthetic benchmark video", (proc.stderr.strip().splitlines()
                                                                           or ["no output"])[-1])
    return path


if __name__ == "__main__":  # the child process of write_synthetic_video_subprocess
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vlmedge.scenes.video JSON (internal; use `vlmedge bench`)")
    spec = json.loads(sys.argv[1])
    write_synthetic_video(Path(spec["path"]), int(spec["frames"]), float(spec["fps"]),
                          camera_format=spec.get("format", "raw"))
