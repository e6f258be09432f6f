"""Stream servers the source tests start on loopback, and the system Python that has GStreamer.

* ``MjpegCamera``: an IP camera serving MJPEG over HTTP (``multipart/x-mixed-replace``) from a
  ``http.server`` thread; ``stop()`` is an outage (connections dropped, port closed), ``start()`` brings it
  back on the same port.
* ``RtspServer``: gst-rtsp-server (python3-gi) in a child process of the system Python, serving
  ``videotestsrc`` as H.264 or MJPEG on ``rtsp://127.0.0.1:PORT/test``.
* ``gst_python()``: the system Python whose OpenCV is built with GStreamer (Debian's python3-opencv, what
  JetPack ships; the pip wheel has no GStreamer), able to import this checkout through ``site.addsitedir``.

Run as a script, this file is the RTSP server: ``python3 _stream_servers.py rtsp PORT CODEC FPS WxH``
prints ``ready`` once it listens and serves until killed.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = os.environ.get("VLMEDGE_GST_PYTHON", "/usr/bin/python3")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ MJPEG over HTTP

class MjpegCamera:
    """MJPEG over HTTP at ``fps``: each frame differs (a moving bar, the frame number in its pixels)."""

    def __init__(self, fps: float = 30.0, size: tuple[int, int] = (120, 160), port: int | None = None):
        self.fps = float(fps)
        self.size = size
        self.port = port or free_port()
        self.sent = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._down = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def _jpeg(self, i: int) -> bytes:
        import cv2
        import numpy as np

        h, w = self.size
        img = np.full((h, w, 3), 40, np.uint8)
        x = (i * 3) % w
        img[:, x:x + 6] = (0, 0, 230)
        img[0, :8] = [(i >> b & 1) * 255 for b in range(8)][0]
        img[h // 2, :, 1] = (i * 7) % 256
        return cv2.imencode(".jpg", img)[1].tobytes()

    def _handler(self):
        cam = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                period, t_next = 1.0 / cam.fps, time.monotonic()
                try:
                    while not cam._down.is_set():
                        jpg = cam._jpeg(cam.sent)
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                        self.wfile.flush()
                        cam.sent += 1
                        t_next += period
                        delay = t_next - time.monotonic()
                        if delay > 0:
                            cam._down.wait(delay)
                        else:
                            t_next = time.monotonic()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

        return Handler

    def start(self) -> MjpegCamera:
        self._down.clear()
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """An outage: open streams end and the port refuses connections until ``start()``."""
        self._down.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MjpegCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------ GStreamer (system Python)

def vlmedge_site() -> str:
    """The site-packages folder this test run imports vlmedge from (the editable install's .pth is there)."""
    return sysconfig.get_paths()["purelib"]


def gst_prelude() -> str:
    """Python lines that make the system Python import this checkout (its numpy and cv2 stay first)."""
    return f"import site, sys; site.addsitedir({vlmedge_site()!r}); sys.path.insert(0, {str(HERE)!r})\n"


@functools.lru_cache(maxsize=1)
def gst_python_problem() -> str | None:
    """None when SYSTEM_PYTHON has an OpenCV with GStreamer and gst-rtsp-server; else why not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (apt install python3-opencv python3-gi gir1.2-gst-rtsp-server-1.0)"
    code = gst_prelude() + (
        "import re, cv2, gi\n"
        "gi.require_version('GstRtspServer', '1.0')\n"
        "from gi.repository import GstRtspServer\n"
        "m = re.search(r'GStreamer:\\s*(\\S+)', cv2.getBuildInformation())\n"
        "assert m and m.group(1) == 'YES', 'cv2 ' + cv2.__version__ + ' has no GStreamer'\n"
        "import vlmedge.runtime.io.capture, zmq\n"
        f"assert sys.version_info[:2] == {tuple(sys.version_info[:2])!r}, sys.version\n")
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{SYSTEM_PYTHON} unusable: {e}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{SYSTEM_PYTHON} lacks GStreamer OpenCV / gst-rtsp-server ({last}); apt install python3-opencv "
                "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad,ugly} gstreamer1.0-libav")
    return None


class RtspServer:
    """gst-rtsp-server in a child process on 127.0.0.1; ``stop()``/``start()`` for outages (same port)."""

    def __init__(self, codec: str = "h264", fps: int = 30, size: str = "320x240", port: int | None = None):
        self.codec, self.fps, self.size = codec, fps, size
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, __file__, "rtsp", str(self.port), self.codec, str(self.fps),
                                      self.size], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _rtsp_main(port: int, codec: str, fps: int, size: str) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    w, h = size.split("x")
    raw = f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1"
    enc = {"h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96",
           "mjpeg": "jpegenc ! rtpjpegpay name=pay0 pt=26"}[codec]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {raw} ! {enc} )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__" and sys.argv[1:2] == ["rtsp"]:
    _rtsp_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
