"""``vlmedge run --record out.mcap``: a rosbag2-compatible MCAP file of the camera and the targets, without ROS.

Per grounded frame, three messages stamped with the frame's capture time (Unix clock), on the topics of
``ros.py``: the camera frame as ``sensor_msgs/msg/CompressedImage`` (JPEG), the found targets as
``vision_msgs/msg/Detection2DArray`` and the ``targets`` message JSON as ``std_msgs/msg/String``. The file has
the ``ros2`` profile, ``ros2msg`` schemas with the full message definitions and CDR messages: ``ros2 bag play``,
``ros2 bag info``, Foxglove and the ``rosbags`` library read it.

JPEG encoding and writing run in the recorder's own thread: the loop hands each frame over without waiting. A
frame that finds the hand-over queue full (a disk slower than the camera) is left out of the bag and counted
(``dropped``); the robot is never slowed down by its recording.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

import cv2

from vlmedge import protocol
from vlmedge.errors import BackendUnavailable, ConfigError
from vlmedge.runtime.messaging.publisher import targets_message
from vlmedge.runtime.recording import ros

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "vlmedge[mcap]" (the mcap and mcap-ros2-support packages)'


class BagRecorder:
    """Writes grounded frames to a rosbag2-compatible MCAP file from a thread.

    ``write(frame, result)`` never blocks; ``close()`` writes what is queued, then the file's summary. ``frames``
    counts the frames written, ``dropped`` those left out (queue full, or the file failed).
    """

    def __init__(self, path: str | Path, *, model: str = "", frame_id: str = ros.FRAME_ID, jpeg_quality: int = 90,
                 queue_size: int = 64):
        try:
            from mcap_ros2.writer import Writer
        except ImportError as e:
            raise BackendUnavailable(f"--record {str(path)!r}: writing ROS 2 bags ({e})", INSTALL_HINT) from None
        self.path = Path(path)
        self.model = str(model)
        self.frame_id = str(frame_id)
        self.jpeg_quality = int(jpeg_quality)
        self.frames = 0
        self.dropped = 0
        self._failed: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close(), after the writer's summary)
        except OSError as e:
            raise ConfigError(f"--record {str(self.path)!r}: cannot write this file: {e}") from None
        self._writer = Writer(self._file)
        self._schemas = {name: self._writer.register_msgdef(name, text) for name, text in ros.MSGDEFS.items()}
        self._thread = threading.Thread(target=self._run, name="vlmedge-bag", daemon=True)
        self._thread.start()
        log.info("recording a ROS 2 bag to %s (topics %s, %s, %s)", self.path, ros.TOPIC_IMAGE,
                 ros.TOPIC_DETECTIONS, ros.TOPIC_TARGETS)

    def write(self, frame: Any, result: Any) -> bool:
        """Queue one grounded frame (its image is read later, in the writer thread: the caller must not change
        it). False when it was dropped."""
        if self._failed is None:
            try:
                self._queue.put_nowait((frame, result))
                return True
            except queue.Full:
                if self.dropped == 0:
                    log.warning("bag %s: the writer is behind the camera; frames are left out of the bag "
                                "(counted in the run summary)", self.path)
        self.dropped += 1
        return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._failed is not None:
                self.dropped += 1
                continue
            try:
                self._write(*item)
                self.frames += 1
            except Exception as e:  # a full disk must not stop the robot: the bag ends here, the run goes on
                self._failed = e
                self.dropped += 1
                log.error("bag %s: writing failed (%s: %s); recording stopped", self.path, type(e).__name__, e)

    def _write(self, frame: Any, result: Any) -> None:
        t = int(frame.t_capture_unix_ns)
        seq = self.frames
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ConfigError(f"frame {frame.id}: OpenCV could not JPEG-encode the image")
        data = targets_message(result, frame, seq=seq, model=self.model)
        body = data[len(b"targets "):]
        msg = protocol.loads(body, "targets message")
        w = self._writer
        w.write_message(ros.TOPIC_IMAGE, self._schemas[ros.COMPRESSED_IMAGE],
                        ros.compressed_image(jpeg.tobytes(), t, self.frame_id), log_time=t, sequence=seq)
        w.write_message(ros.TOPIC_DETECTIONS, self._schemas[ros.DETECTION2D_ARRAY],
                        ros.targets_to_detection2d_array(msg, self.frame_id), log_time=t, sequence=seq)
        w.write_message(ros.TOPIC_TARGETS, self._schemas[ros.STRING], ros.string_message(body.decode("utf-8")),
                        log_time=t, sequence=seq)

    def close(self) -> None:
        """Write what is queued, then the file's index and summary (a bag without them is unreadable to most
        tools)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        try:
            self._writer.finish()
        finally:
            self._file.close()
        log.info("recorded %d frames to %s%s", self.frames, self.path,
                 f" ({self.dropped} left out)" if self.dropped else "")


__all__ = ["BagRecorder", "INSTALL_HINT"]
