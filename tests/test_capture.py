"""Live capture (newest-frame semantics, stall watchdog, reconnect with backoff, prompt stop) and the
on-demand reader (every frame of a file, each read when asked)."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from vlmedge import protocol
from vlmedge.errors import ConfigError, SourceError
from vlmedge.runtime.io.capture import Capture, Frame, frame_checksum
from vlmedge.runtime.io.frames import FINAL_STATES, CaptureState
from vlmedge.runtime.io.reader import OnDemandReader
from vlmedge.runtime.io.sources import FrameSource, open_source


class Camera:
    """A scripted camera shared by a FakeSource and its clones. mode: ok | repeat | none | block | raise."""

    def __init__(self, mode="ok", period=0.005):
        self.mode = mode
        self.open_ok = True
        self.period = period
        self.counter = 0
        self.opens = 0
        self.closes = 0
        self.unblock = threading.Event()
        self.blocked_reads = 0
        self.last = None
        self.glitches = 0  # this many reads return None first

    def frame(self):
        img = np.zeros((24, 32, 3), np.uint8)
        img[0, 0] = (self.counter % 256, self.counter // 256 % 256, 7)
        img[12, 16] = 200 + (self.counter % 50)
        self.counter += 1
        return img


class FakeSource(FrameSource):
    def __init__(self, cam: Camera, is_live=True):
        self.cam = cam
        self.is_live = is_live
        self.spec = "fake://cam"
        self.nominal_fps = 1 / cam.period

    def open(self):
        self.cam.opens += 1
        if not self.cam.open_ok:
            raise SourceError("fake camera unplugged")

    def close(self):
        self.cam.closes += 1

    def clone(self):
        return FakeSource(self.cam, self.is_live)

    def read(self):
        cam = self.cam
        time.sleep(cam.period)
        if cam.glitches:
            cam.glitches -= 1
            return None
        if cam.mode == "ok":
            cam.last = cam.frame()
            return cam.last
        if cam.mode == "repeat":
            return cam.last.copy() if cam.last is not None else cam.frame()
        if cam.mode == "none":
            return None
        if cam.mode == "raise":
            raise RuntimeError("driver error")
        if cam.mode == "block":
            cam.blocked_reads += 1
            cam.unblock.wait(30)
            return cam.frame()
        if cam.mode == "end":
            return None
        raise AssertionError(cam.mode)


def wait_for(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_frames_are_newest_only_and_stamped():
    cam = Camera(period=0.002)
    with Capture(FakeSource(cam), stall_timeout=1.0) as cap:
        f0 = cap.latest(timeout=2)
        assert isinstance(f0, Frame) and f0.image.shape == (24, 32, 3)
        assert abs(f0.t_capture_unix_ns - time.time_ns()) < 2e9 and f0.t_capture_ns <= time.monotonic_ns()
        time.sleep(0.1)  # a slow consumer: many frames replaced meanwhile
        f1 = cap.latest(after_id=f0.id, timeout=2)
        assert f1.id > f0.id + 1 and f1.t_capture_ns > f0.t_capture_ns
        assert cap.dropped >= f1.id - f0.id - 2 and cap.grabbed >= f1.id + 1
        assert cap.state == "running" and cap.fps > 20
        assert cap.latest(after_id=10**9, timeout=0.05) is None  # nothing newer than that id
        stats = cap.stats()
        assert stats["source_state"] == "running" and stats["grabbed"] >= 2 and stats["frame_age_ms"] is not None
    assert cap.state == "stopped" and cam.closes >= 1


def test_repeated_identical_frames_are_a_stall_and_recovered():
    cam = Camera()
    with Capture(FakeSource(cam), stall_timeout=0.3, backoff=(0.05, 0.4)) as cap:
        first = cap.latest(timeout=2)
        cam.mode = "repeat"  # read() keeps returning True with the same stale buffer
        wait_for(lambda: cap.reconnects >= 1, what="a reconnect after repeated frames")
        assert cap.repeats > 0 and "same image repeated" in cap.last_error
        stale_id = cap.latest(timeout=0).id
        cam.mode = "ok"
        fresh = cap.latest(after_id=stale_id, timeout=3)
        assert fresh is not None and fresh.id > first.id
        wait_for(lambda: cap.state == "running", what="running again")
        assert cam.opens >= 2  # reopened without restarting anything


def test_none_and_failed_reopens_back_off_exponentially():
    cam = Camera()
    with Capture(FakeSource(cam), stall_timeout=0.5, backoff=(0.02, 0.16)) as cap:
        cap.latest(timeout=2)
        cam.open_ok = False
        cam.mode = "none"  # camera unplugged: read() fails, and reopening fails too
        wait_for(lambda: len(cap.reconnect_delays) >= 6, what="six reconnect attempts")
        assert cap.state in ("stalled", "reconnecting")
        delays = list(cap.reconnect_delays)[:6]
        assert delays == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.16, 0.16])
        assert cap.reconnects == 0 and cap.reconnect_attempts >= 5
        last_id = cap.latest(timeout=0).id
        cam.open_ok, cam.mode = True, "ok"  # plugged back in
        fresh = cap.latest(after_id=last_id, timeout=3)
        assert fresh is not None and fresh.id == last_id + 1
        assert cap.reconnects == 1
        cam.mode = "none"  # a later failure starts again at the first delay
        n = len(cap.reconnect_delays)
        wait_for(lambda: len(cap.reconnect_delays) > n, what="another reconnect")
        assert cap.reconnect_delays[n] == pytest.approx(0.02)


def test_a_single_failed_read_is_not_a_stall():
    cam = Camera()
    with Capture(FakeSource(cam), stall_timeout=1.0, backoff=(0.05, 0.1)) as cap:
        last = cap.latest(timeout=2).id
        cam.glitches = 2  # two bad reads in a row (a corrupt packet), then fine again
        wait_for(lambda: cam.glitches == 0, what="the glitches to be read")
        assert cap.latest(after_id=last, timeout=2) is not None
        assert cap.reconnect_attempts == 0 and cap.state == "running"
        cam.glitches = 3  # three in a row: reconnect
        wait_for(lambda: cap.reconnects == 1, what="a reconnect")


def test_blocking_read_is_abandoned_and_replaced():
    cam = Camera()
    cap = Capture(FakeSource(cam), stall_timeout=0.3, backoff=(0.02, 0.1)).start()
    try:
        last = cap.latest(timeout=2).id
        cam.mode = "block"  # read() hangs inside the "driver"
        wait_for(lambda: cap.state in ("stalled", "reconnecting") and cap.source is not None
                 and cam.blocked_reads >= 1, what="stall detected")
        wait_for(lambda: cap.reconnect_attempts >= 1, what="a replacement source")
        assert "blocked" in (cap.last_error or "")
        cam.mode = "ok"
        cam.unblock.set()  # the hung reads return; their threads notice they were abandoned
        fresh = cap.latest(after_id=last, timeout=3)
        assert fresh is not None
        wait_for(lambda: cap.state == "running", what="running")
        assert cap.reconnects >= 1
    finally:
        t0 = time.monotonic()
        cap.stop()
        assert time.monotonic() - t0 < 1.5


def test_stop_is_prompt_even_when_read_hangs():
    cam = Camera(mode="block")
    cap = Capture(FakeSource(cam), stall_timeout=5.0).start()
    wait_for(lambda: cam.blocked_reads >= 1, what="a hung read")
    t0 = time.monotonic()
    cap.stop()
    assert time.monotonic() - t0 < 1.5
    assert cap.state == "stopped"
    assert cap.latest(timeout=0.5) is None  # returns at once after stop
    closes = cam.closes
    cam.unblock.set()  # the daemon thread's read returns, and it closes its source itself
    wait_for(lambda: cam.closes > closes, what="the abandoned reader to close its source")


def test_start_failures_and_giving_up():
    cam = Camera()
    cam.open_ok = False
    with pytest.raises(SourceError, match="unplugged"):
        Capture(FakeSource(cam), fail_fast=True).start()
    cap = Capture(FakeSource(cam), backoff=(0.01, 0.02), max_attempts=2).start()  # retried, then given up
    wait_for(lambda: cap.state == "failed", what="failed state")
    assert cam.opens == 1 + 3 and "gave up after 2 attempts" in cap.last_error and "unplugged" in cap.last_error
    cap.stop()
    cam2 = Camera()
    cap = Capture(FakeSource(cam2), stall_timeout=0.5, backoff=(0.01, 0.02), max_attempts=3).start()
    try:
        cap.latest(timeout=2)
        cam2.open_ok = False
        cam2.mode = "raise"
        wait_for(lambda: cap.state == "failed", what="failed state")
        assert cap.reconnect_attempts == 3 and "unplugged" in cap.last_error and "gave up" in cap.last_error
        assert cap.latest(after_id=10**9, timeout=5) is None  # does not wait once failed
    finally:
        cap.stop()
    assert cap.state == "failed"


def test_bad_options():
    src = FakeSource(Camera())
    for kw, words in (({"stall_timeout": 0}, "stall_timeout"), ({"backoff": (2, 1)}, "first <= max"),
                      ({"backoff": 3}, "backoff must be"), ({"max_attempts": 0}, "max_attempts")):
        with pytest.raises(ConfigError, match=words):
            Capture(src, **kw)
    with pytest.raises(ConfigError, match="FrameSource"):
        Capture("0")


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    if not w.isOpened():
        pytest.skip("MJPG VideoWriter unavailable")
    for i in range(10):
        w.write(np.full((48, 64, 3), 20 * i, np.uint8))
    w.release()
    return path


def test_file_source_ends_and_on_demand_delivers_every_frame(video):
    with OnDemandReader(open_source(str(video))) as cap:
        ids, last = [], None
        while (f := cap.latest(after_id=last, timeout=3)) is not None:
            ids.append(f.id)
            last = f.id
            time.sleep(0.005)  # slower than decoding: on-demand mode must wait for us
        assert ids == list(range(10)) and cap.dropped == 0
        assert cap.state == "ended"
    assert not Capture(open_source(str(video))).detect_repeats  # files may legitimately repeat frames


def test_on_demand_delivers_identical_consecutive_frames(tmp_path):
    d = tmp_path / "same"
    d.mkdir()
    for i in range(4):  # a still scene: every frame the same image, and each one is still a frame
        cv2.imwrite(str(d / f"{i}.png"), np.full((8, 8, 3), 50, np.uint8))
    with OnDemandReader(open_source(str(d))) as reader:
        ids, last = [], None
        while (f := reader.latest(after_id=last, timeout=3)) is not None:
            ids.append(f.id)
            last = f.id
        assert ids == [0, 1, 2, 3] and reader.state == "ended"


def test_on_demand_reads_each_frame_when_asked(video):
    with OnDemandReader(open_source(str(video))) as cap:
        time.sleep(0.1)
        assert cap.grabbed == 0  # nothing is read before the consumer asks
        ids, last = [], None
        while True:
            asked = time.monotonic_ns()
            f = cap.latest(after_id=last, timeout=3)
            if f is None:
                break
            assert f.t_capture_ns >= asked  # read for this request, not waiting since the last one
            ids.append(f.id)
            last = f.id
            time.sleep(0.02)  # a slow consumer: the capture must not run ahead
            assert cap.grabbed == len(ids)
        assert ids == list(range(10)) and cap.dropped == 0 and cap.state == "ended"
        for _ in range(3):  # asking again at the end neither blocks nor reads
            assert cap.latest(after_id=last, timeout=0.05) is None


def test_on_demand_refuses_live_sources():
    with pytest.raises(ConfigError, match="OnDemandReader.*live.*Capture"):
        OnDemandReader(FakeSource(Camera()))
    with pytest.raises(ConfigError, match="FrameSource"):
        OnDemandReader("clip.mp4")


def test_on_demand_process_runs_in_the_reader_after_the_stamp(video):
    def slow_gray(image):
        time.sleep(0.05)
        if image[0, 0, 0] > 100:
            raise ValueError("too bright")
        return image.mean()

    with OnDemandReader(open_source(str(video)), process=slow_gray) as cap:
        cap.request()  # start the read now; latest() collects it
        time.sleep(0.1)
        assert cap.grabbed == 1
        f = cap.latest(after_id=None, timeout=3)
        assert f.id == 0 and f.data == pytest.approx(f.image.mean())
        asked = time.monotonic_ns()
        f = cap.latest(after_id=0, timeout=3)
        got = time.monotonic_ns()
        assert asked <= f.t_capture_ns <= got - 40_000_000  # stamped at the read, before the 50 ms process
        last = f.id
        while (f := cap.latest(after_id=last, timeout=3)) is not None:
            last = f.id
            if f.image[0, 0, 0] > 100:
                assert isinstance(f.data, ValueError)  # handed over, not swallowed
        assert last == 9 and cap.dropped == 0


def test_a_crashing_reader_fails_loudly():
    class Garbage(FakeSource):
        def read(self):
            return "not an image"  # the repeat check on a live source cannot take this

    with Capture(Garbage(Camera())) as cap:
        wait_for(lambda: cap.state == "failed", what="state failed")
        assert "reader thread crashed" in cap.last_error
        assert cap.latest(timeout=0.2) is None


def test_looping_file_keeps_going(video):
    with Capture(open_source(str(video), loop=True)) as cap:
        wait_for(lambda: cap.grabbed > 25, what="more frames than the file has")
        assert cap.state == "running"


def test_file_read_error_fails(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (d / "b.png").write_bytes(b"garbage")
    with Capture(open_source(str(d))) as cap:  # one bad image among good ones is skipped and counted
        wait_for(lambda: cap.state == "ended", what="ended")
        assert cap.grabbed == 1 and cap.stats()["skipped"] == 1
    (d / "a.png").write_bytes(b"")
    with Capture(open_source(str(d))) as cap:  # none can be decoded
        wait_for(lambda: cap.state == "failed", what="failed")
        assert "none of its 2 images can be decoded" in cap.last_error


def test_checksum():
    a = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    b = a.copy()
    assert frame_checksum(a) == frame_checksum(b)
    b[::10, ::10] += 1
    assert frame_checksum(a) != frame_checksum(b)


def test_capture_states_are_the_wire_format():
    assert tuple(s.value for s in CaptureState) == protocol.CAPTURE_STATES
    assert FINAL_STATES == {CaptureState.ENDED, CaptureState.FAILED, CaptureState.STOPPED}
    assert CaptureState.RUNNING == "running" and str(CaptureState.RUNNING) == "running"
    assert f"{CaptureState.STALLED}" == "stalled"  # log lines and messages show the wire name


def test_on_demand_read_error_fails(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (d / "b.png").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="cannot decode image .*b.png.*7 bytes"):  # a lone bad image: at start
        OnDemandReader(open_source(str(d / "b.png"))).start()
    (d / "a.png").write_bytes(b"garbage")
    with OnDemandReader(open_source(str(d))) as reader:  # a folder of bad images: fails at the first read
        assert reader.latest(timeout=3) is None
        assert reader.state == "failed" and "none of its 2 images can be decoded" in reader.last_error
        assert reader.stats()["source_state"] == "failed" and reader.stats()["skipped"] == 2


def test_on_demand_stop_is_prompt_even_when_read_hangs():
    cam = Camera(mode="block")
    reader = OnDemandReader(FakeSource(cam, is_live=False)).start()
    reader.request()
    wait_for(lambda: cam.blocked_reads >= 1, what="a hung read")
    t0 = time.monotonic()
    reader.stop()
    assert time.monotonic() - t0 < 1.5 and reader.state == "stopped"
    assert reader.latest(timeout=0.5) is None  # returns at once after stop
    closes = cam.closes
    cam.unblock.set()  # the daemon thread's read returns, and it closes its source itself
    wait_for(lambda: cam.closes > closes, what="the reader to close its source")
    assert reader.grabbed == 0  # the late frame is not handed over after stop


def test_a_camera_that_comes_up_late_is_waited_for():
    """#14 item 3: a camera not up when the run starts was an exit with rc 1. Now start() returns at once
    and the reader opens it with the same backoff as after a loss."""
    cam = Camera()
    cam.open_ok = False
    t0 = time.monotonic()
    cap = Capture(FakeSource(cam), backoff=(0.02, 0.08)).start()
    try:
        assert time.monotonic() - t0 < 0.5 and cap.state in ("starting", "reconnecting")
        wait_for(lambda: cap.reconnect_attempts >= 4, what="start-up retries")
        assert cap.state == "reconnecting" and "open failed: fake camera unplugged" in cap.last_error
        assert list(cap.reconnect_delays)[:4] == pytest.approx([0.02, 0.04, 0.08, 0.08])
        assert cap.latest(timeout=0.05) is None and cap.stats()["source_error"] == cap.last_error
        cam.open_ok = True  # the camera has booted
        assert cap.latest(timeout=3) is not None
        wait_for(lambda: cap.state == "running", what="running")
        assert cap.stats()["source_error"] is None
    finally:
        cap.stop()


class SlowOpen(FakeSource):
    """open() hangs (a camera whose RTSP server accepts and never answers) until ``cam.unblock``."""

    def open(self):
        self.cam.opens += 1
        self.cam.unblock.wait(30)

    def clone(self):
        return SlowOpen(self.cam, self.is_live)


def test_open_is_watched_and_fail_fast_bounds_it():
    """#14 item 8: an open() that hangs is abandoned after open_timeout and retried; with fail_fast it is an
    error after open_timeout, and an abort (SIGTERM) returns at once."""
    cam = Camera()
    cap = Capture(SlowOpen(cam), open_timeout=0.3, backoff=(0.02, 0.05)).start()
    try:
        wait_for(lambda: cam.opens >= 2, what="a second open after the first hung")
        assert "no answer from open() within 0.3 s" in cap.last_error
    finally:
        t0 = time.monotonic()
        cap.stop()
        assert time.monotonic() - t0 < 1.5 and cap.state == "stopped"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"cannot open fake://cam: no answer from open\(\) within 0.3 s"):
        Capture(SlowOpen(cam), open_timeout=0.3, fail_fast=True).start()
    assert time.monotonic() - t0 < 2.0
    abort = threading.Event()
    threading.Timer(0.2, abort.set).start()
    t0 = time.monotonic()
    cap = Capture(SlowOpen(cam), open_timeout=30, fail_fast=True).start(abort)
    assert time.monotonic() - t0 < 2.0
    cap.stop()
    assert cap.state == "stopped"
    closes = cam.closes
    cam.unblock.set()
    wait_for(lambda: cam.closes > closes, what="the abandoned open to close its source")


class Timestamped(FakeSource):
    """A camera at 30 fps whose frames carry stream timestamps; read() takes ``decode_s`` (a decoder that
    cannot keep up when it is over 1/30 s: frames queue and the one handed out is older and older)."""

    def __init__(self, cam, decode_s):
        super().__init__(cam)
        self.decode_s = decode_s
        self.n = 0

    def open(self):
        super().open()
        self.n = 0
        self.t0 = time.monotonic()

    def read(self):
        time.sleep(self.decode_s)
        if self.decode_s < 1 / 30:  # keeps up: waits for the camera's next frame
            self.n = int((time.monotonic() - self.t0) * 30) + 1
            time.sleep(max(0.0, self.t0 + self.n / 30 - time.monotonic()))
        else:  # the next queued frame
            self.n += 1
        self.last_stream_s = 1000.0 + self.n / 30  # the camera's clock: frame n was taken at n/30
        return self.cam.frame()


def test_staleness_is_measured_from_stream_timestamps():
    """#14 item 2: a decoder slower than the camera made the data seconds stale while status said running."""
    with Capture(Timestamped(Camera(), decode_s=0.01), behind_s=0.5) as cap:
        wait_for(lambda: cap.grabbed > 30, what="frames")
        time.sleep(0.5)
        assert cap.lag_s is not None and cap.lag_s < 0.3 and not cap.behind
    with Capture(Timestamped(Camera(), decode_s=0.06), behind_s=0.5) as cap:  # 16 of the camera's 30 fps
        wait_for(lambda: cap.behind, timeout=15, what="behind")
        stats = cap.stats()
        assert stats["behind"] is True and stats["camera_lag_ms"] > 500 and stats["source_state"] == "running"
