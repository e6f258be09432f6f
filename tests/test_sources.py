"""Source parsing for every --source form, with real video files and image folders."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from vlmedge.errors import BackendUnavailable, ConfigError, SourceError
from vlmedge.runtime.io import sources
from vlmedge.runtime.io.sources import (
    ImageSource,
    OpenCVSource,
    SyntheticSource,
    gstreamer_available,
    open_source,
    parse_size,
)

needs_no_gst = pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer; the error path is moot")


def _frame(i: int, h=48, w=64) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 2] = 20 * i  # red level encodes the index (survives lossy codecs within ~10)
    return img


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    for fourcc, ext in (("MJPG", ".avi"), ("mp4v", ".mp4")):
        path = d / f"clip{ext}"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 20.0, (64, 48))
        if not w.isOpened():
            continue
        for i in range(8):
            w.write(_frame(i))
        w.release()
        return path
    pytest.skip("no working VideoWriter codec here")


def _read_all(src, limit=100):
    out = []
    src.open()
    try:
        while len(out) < limit and (f := src.read()) is not None:
            out.append(f)
    finally:
        src.close()
    return out


def test_camera_forms_build_the_right_opencv_call():
    cam = open_source("0")
    assert isinstance(cam, OpenCVSource) and cam.is_live and cam.kind == "camera"
    assert cam.open_args == (0, cv2.CAP_V4L2)
    for spec in ("/dev/video2", "v4l2:///dev/video2"):
        s = open_source(spec, size=(480, 640), fps=15)
        assert s.open_args == ("/dev/video2", cv2.CAP_V4L2) and s.is_live and s.size == (480, 640)
        assert s.nominal_fps == 15


def test_missing_v4l2_device_names_it():
    with pytest.raises(SourceError, match=r"/dev/video9: no such device.*ls /dev/video\*"):
        open_source("/dev/video9").open()


def test_rtsp_uses_ffmpeg_with_timeouts_without_connecting():
    url = "rtsp://user:pw@10.0.0.7:554/stream1"
    s = open_source(url)
    assert s.is_live and s.kind == "rtsp"
    if gstreamer_available():
        assert s.open_args[1] == cv2.CAP_GSTREAMER and f"location={url}" in s.open_args[0]
    else:
        assert s.open_args == (url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, sources.OPEN_TIMEOUT_MS,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, sources.READ_TIMEOUT_MS])
    assert open_source("http://cam.local:8080/video").open_args[1] == cv2.CAP_FFMPEG
    with pytest.raises(ConfigError, match="expected rtsp://HOST"):
        open_source("rtsp://")


@needs_no_gst
def test_csi_and_pipelines_need_gstreamer():
    with pytest.raises(BackendUnavailable) as e:
        open_source("csi://0")
    msg = str(e.value)
    assert "GStreamer support in OpenCV (needed for CSI camera csi://0) is not available" in msg
    assert "built without GStreamer" in msg and "python3-opencv" in msg and "/dev/video0" in msg
    with pytest.raises(BackendUnavailable, match="GStreamer pipeline"):
        open_source("videotestsrc ! videoconvert ! appsink")


def test_csi_pipeline_text_and_params():
    pipe = sources.csi_pipeline(1, width=1920, height=1080, fps=30, flip=2, out_size=(480, 640))
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=1920, height=1080, framerate=30/1" in pipe and "flip-method=2" in pipe
    assert "width=640, height=480, format=BGRx" in pipe and pipe.endswith("appsink drop=true max-buffers=1 sync=false")
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        open_source("csi://0?widht=640")  # parameters are checked before the backend
    with pytest.raises(ConfigError, match="csi://SENSOR_ID"):
        open_source("csi://front")


def test_video_file_reads_every_frame_then_ends(video):
    for spec in (str(video), f"file://{video}"):
        s = open_source(spec)
        assert isinstance(s, OpenCVSource) and not s.is_live
        frames = _read_all(s)
        assert len(frames) == 8 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
        assert s.nominal_fps == pytest.approx(20.0) and s.frame_count == 8
        reds = [int(f[..., 2].mean()) for f in frames]
        assert all(abs(r - 20 * i) <= 12 for i, r in enumerate(reds)), reds
    assert "8 frames" in s.describe()


def test_video_loop_resize_and_pacing(video):
    s = open_source(str(video), loop=True, size="32x24")
    frames = _read_all(s, limit=20)
    assert len(frames) == 20 and frames[0].shape == (24, 32, 3)
    reds = [int(f[..., 2].mean()) for f in frames]
    assert abs(reds[8] - reds[0]) <= 12 and abs(reds[9] - reds[1]) <= 12  # wrapped around
    paced = open_source(str(video), realtime=True, fps=25)
    t0 = time.monotonic()
    assert len(_read_all(paced)) == 8
    assert time.monotonic() - t0 >= 7 / 25 * 0.9  # 40 ms apart
    fast = open_source(str(video))
    t0 = time.monotonic()
    _read_all(fast)
    assert time.monotonic() - t0 < 7 / 25 / 2  # benchmarks read as fast as possible


def test_image_and_directory(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (10, 2, 1):  # natural sort: 1, 2, 10
        cv2.imwrite(str(d / f"img{i}.png"), _frame(i))
    (d / "notes.txt").write_text("not an image")
    s = open_source(str(d))
    assert isinstance(s, ImageSource) and not s.is_live
    reds = [int(f[..., 2].mean()) for f in _read_all(s)]
    assert reds == [20, 40, 200]
    looped = [int(f[..., 2].mean()) for f in _read_all(open_source(f"file://{d}", loop=True), limit=7)]
    assert looped == [20, 40, 200, 20, 40, 200, 20]
    one = open_source(str(d / "img2.png"))
    assert len(_read_all(one)) == 1
    assert len(_read_all(open_source(str(d / "img2.png"), loop=True), limit=5)) == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(empty))
    (d / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SourceError, match="cannot decode image .*broken.png"):
        _read_all(open_source(str(d)))


def test_missing_file_names_the_path(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(SourceError) as e:
        open_source(str(tmp_path / "clp.mp4"))
    assert str(tmp_path / "clp.mp4") in str(e.value) and "did you mean 'clip.mp4'" in str(e.value)
    with pytest.raises(SourceError, match="no such file"):
        open_source("file://does/not/exist.avi")


def test_unknown_schemes_and_bad_options():
    with pytest.raises(ConfigError, match="unknown scheme 'rstp://'.*did you mean 'rtsp'"):
        open_source("rstp://10.0.0.1/x")
    with pytest.raises(ConfigError, match="did you mean 'synthetic'"):
        open_source("synthtic://tabletop")
    with pytest.raises(ConfigError, match="non-empty string"):
        open_source("  ")
    with pytest.raises(ConfigError, match="fps must be in"):
        open_source("0", fps=0)
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        open_source("0", size="640by480")
    assert parse_size("640x480") == (480, 640)


def test_synthetic_source():
    s = open_source("synthetic://tabletop?seed=3&fps=15&width=160&height=120")
    assert isinstance(s, SyntheticSource) and s.seed == 3 and s.nominal_fps == 15 and s.size == (120, 160)
    frames = _read_all(s, limit=3)
    assert len(frames) == 3 and frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    again = _read_all(open_source("synthetic://tabletop?seed=3&fps=15&width=160&height=120"), limit=3)
    np.testing.assert_array_equal(frames[2], again[2])  # seeded: reproducible
    assert "synthetic tabletop (seed 3, 160x120 @ 15 fps" in s.describe()
    d = open_source("synthetic://tabletop", size=(96, 128))
    assert d.size == (96, 128) and d.seed == 0 and d.nominal_fps == 30.0
    with pytest.raises(ConfigError, match="unknown synthetic scene 'tabeltop'.*did you mean 'tabletop'"):
        open_source("synthetic://tabeltop")
    with pytest.raises(ConfigError, match="parameter seed='x' must be int"):
        open_source("synthetic://tabletop?seed=x")


def test_clone_is_an_unopened_copy(video):
    s = open_source(str(video), loop=True, size=(24, 32))
    c = s.clone()
    assert c is not s and c.open_args == s.open_args and c.loop and c.size == (24, 32)
    assert len(_read_all(c, limit=3)) == 3
