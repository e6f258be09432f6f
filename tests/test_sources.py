"""Source parsing for every --source form, with real video files and image folders."""

from __future__ import annotations

import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

from vlmedge.errors import BackendUnavailable, ConfigError, SourceError
from vlmedge.runtime.io import sources
from vlmedge.runtime.io.capture import Capture
from vlmedge.runtime.io.sources import (
    FLIPS,
    ImageSource,
    OpenCVSource,
    SyntheticSource,
    gstreamer_available,
    open_source,
    parse_size,
)

from _stream_servers import MjpegCamera

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


def test_undecodable_images_are_skipped_in_a_folder_and_an_error_alone(tmp_path):
    """#14 item 10: one bad image in a folder ended the run (exit 0, images after it never read); a zero-byte or
    random-bytes .jpg ran 0 frames with exit 0. Now: skipped with a warning and counted; an image alone, or a
    folder where none decodes, is an error naming the file and what is wrong with it."""
    d = tmp_path / "frames"
    d.mkdir()
    cv2.imwrite(str(d / "1.png"), _frame(1))
    (d / "2.jpg").write_bytes(b"")
    (d / "3.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    cv2.imwrite(str(d / "4.png"), _frame(4))
    s = open_source(str(d), loop=1)
    reds = [int(f[..., 2].mean()) for f in _read_all(s)]
    assert reds == [20, 80, 20, 80] and s.skipped == 2  # bad ones skipped once, not again when looping
    with pytest.raises(SourceError, match=r"cannot decode image '.*2\.jpg': empty file \(0 bytes\)"):
        open_source(str(d / "2.jpg")).open()
    with pytest.raises(SourceError, match=r"cannot decode image '.*3\.jpg': not an image OpenCV can decode \(500 "):
        open_source(str(d / "3.jpg")).open()
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(d / "2.jpg", bad / "a.jpg")
    shutil.copy(d / "3.jpg", bad / "b.jpg")
    with pytest.raises(SourceError, match="none of its 2 images can be decoded"):
        _read_all(open_source(str(bad), loop=True))


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing (apt install ffmpeg)")
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True, timeout=120)


def test_a_truncated_video_is_an_error_not_an_end(tmp_path):
    """#14 item 10: a video cut short (109 of 150 frames) ended like a complete one."""
    full = tmp_path / "full.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=30", "-frames:v", "150", "-c:v", "mjpeg", "-q:v", "5",
            "-movflags", "+faststart", str(full))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:int(full.stat().st_size * 0.6)])
    assert len(_read_all(open_source(str(full)), limit=1000)) == 150
    with pytest.raises(SourceError, match=r"cut\.mp4: the video ends after \d+ of 150 frames \(truncated"):
        _read_all(open_source(str(cut)), limit=1000)


def test_variable_frame_rate_file_is_paced_by_its_timestamps(tmp_path):
    """#14 item 4: 10 frames at 30 fps, then 6 frames 0.2 s apart; paced at a flat average rate before."""
    vfr = tmp_path / "vfr.mkv"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-vf",
            "setpts='if(lt(N,10),N/30,10/30+(N-10)*0.2)/TB'", "-frames:v", "16", "-fps_mode", "passthrough",
            "-c:v", "mjpeg", str(vfr))
    s = open_source(str(vfr), realtime=True)
    s.open()
    stamps, t = [], []
    try:
        while s.read() is not None:
            t.append(time.monotonic())
            stamps.append(s.last_stream_s)
    finally:
        s.close()
    assert len(t) == 16
    assert stamps[11] - stamps[10] == pytest.approx(0.2, abs=0.01)  # the file's own timing
    fast, slow = np.diff(t[:10]), np.diff(t[10:])
    assert np.median(fast) < 0.1, fast  # 33 ms apart (generous: a loaded machine)
    assert np.all(slow > 0.15), slow  # 200 ms apart: the gaps are kept, not flattened to the average
    assert t[-1] - t[0] > 0.9  # 9/30 + 6 * 0.2 = 1.5 s


def test_loop_n_times_flip_and_rate_and_size_pipelines(video, tmp_path):
    """#14 item 11 (jetson-utils videoSource parity): --loop N, --input-flip, rtp://, --input-codec, RTSP
    latency; item 2: --input-size/--input-rate written into the GStreamer pipeline of a network stream."""
    assert len(_read_all(open_source(str(video), loop=2), limit=100)) == 24  # 8 frames, rewound twice
    assert len(_read_all(open_source(str(video), loop=0), limit=100)) == 8
    assert len(_read_all(open_source(str(video), loop=-1), limit=30)) == 30
    with pytest.raises(ConfigError, match="loop must be"):
        open_source(str(video), loop=-2)
    plain = _read_all(open_source(str(video)), limit=1)[0]
    flipped = {f: _read_all(open_source(str(video), flip=f), limit=1)[0] for f in FLIPS}
    np.testing.assert_array_equal(flipped["horizontal"], plain[:, ::-1])
    np.testing.assert_array_equal(flipped["vertical"], plain[::-1])
    np.testing.assert_array_equal(flipped["rotate-180"], plain[::-1, ::-1])
    np.testing.assert_array_equal(flipped["clockwise"], np.rot90(plain, -1))
    np.testing.assert_array_equal(flipped["counterclockwise"], np.rot90(plain, 1))
    np.testing.assert_array_equal(flipped["upper-left-diagonal"], plain.transpose(1, 0, 2))
    np.testing.assert_array_equal(flipped["upper-right-diagonal"], np.rot90(plain, 2).transpose(1, 0, 2))
    np.testing.assert_array_equal(flipped["none"], plain)
    with pytest.raises(ConfigError, match="did you mean 'horizontal'"):
        open_source(str(video), flip="horizontl")
    pipe = sources.rtsp_pipeline("rtsp://cam/x", 50, size=(240, 320), fps=10, codec="h265")
    assert pipe.startswith("rtspsrc location=rtsp://cam/x latency=50 tcp-timeout=5000000 ! rtph265depay")
    assert "max-rate=10" in pipe and "width=320, height=240" in pipe
    assert pipe.endswith("format=BGR ! appsink drop=true max-buffers=1 sync=false")
    rtp = sources.rtp_pipeline("0.0.0.0", 5000, "mjpeg", 20)
    assert 'udpsrc address=0.0.0.0 port=5000 caps="application/x-rtp, media=video' in rtp
    assert "encoding-name=JPEG" in rtp and "rtpjitterbuffer latency=20 ! rtpjpegdepay" in rtp
    with pytest.raises(ConfigError, match="expected rtp://@:PORT"):
        open_source("rtp://@:99999")
    with pytest.raises(ConfigError, match="codec='h264' applies to rtp:// and rtsp://"):
        open_source(str(video), codec="h264")
    with pytest.raises(ConfigError, match="did you mean 'h265'"):
        open_source("rtp://@:5000", codec="h256")
    with pytest.raises(ConfigError, match="latency_ms must be"):
        open_source("rtsp://cam/x", latency_ms=-1)
    if gstreamer_available():
        s = open_source("rtsp://cam/x", latency_ms=2000, size="320x240", fps=5)
        assert "latency=2000" in s.open_args[0] and "max-rate=5" in s.open_args[0]
    else:
        with pytest.raises(BackendUnavailable, match="RTP source"):
            open_source("rtp://@:5000")


def test_mjpeg_over_http_rate_is_measured():
    """#14 item 9: MJPEG over HTTP carries no rate; FFmpeg says 25 fps for a camera at 12."""
    with MjpegCamera(fps=12) as cam:
        s = open_source(cam.url)
        s.open()
        try:
            assert s.fps_measured and s.nominal_fps == pytest.approx(12, rel=0.15), s.nominal_fps
            assert "measured" in s.describe() and not s.timestamps
            assert s.read().shape == (120, 160, 3) and s.last_stream_s is None  # no made-up timestamps
        finally:
            s.close()
    with MjpegCamera(fps=25) as cam, Capture(open_source(cam.url, fps=8)) as cap:  # --input-rate through FFmpeg
        assert cap.latest(timeout=15) is not None
        time.sleep(2.5)
        assert 5 < cap.fps < 9.5 and cap.source.nominal_fps == pytest.approx(8), cap.fps
