"""The run loop end to end: real video files, real ONNX Runtime, real ZeroMQ sockets on loopback."""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from vlmedge.errors import BackendUnavailable, ConfigError  # noqa: E402
from vlmedge.runtime.app import STOP_REASONS, RunConfig, RunSummary, StopReason, run  # noqa: E402
from vlmedge.runtime.feeds import (  # noqa: E402
    FeedKind,
    NextFrameFeed,
    OnDemandFeed,
    PrefetchFeed,
    feed_kind,
    open_feed,
    want_prefetch,
)
from vlmedge.runtime.grounding.grounder import Grounder, Prepared  # noqa: E402
from vlmedge.runtime.io.capture import Capture  # noqa: E402
from vlmedge.runtime.io.reader import OnDemandReader  # noqa: E402
from vlmedge.runtime.io.sources import FrameSource, open_source  # noqa: E402
from vlmedge.runtime.messaging.control import ControlClient  # noqa: E402
from vlmedge.scenes.video import write_synthetic_video  # noqa: E402

from _bundles import tiny_bundle  # noqa: E402
from _subscriber import Subscriber  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addresses():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 30-frame 320x240 MJPG video of synthetic scenes at 30 fps."""
    path = tmp_path_factory.mktemp("video") / "scene.avi"
    return write_synthetic_video(path, 30, 30.0, size=(240, 320), camera_format="mjpg", seed=1)


def start_run(cfg, **kw):
    out = {}

    def target():
        try:
            out["summary"] = run(cfg, **kw)
        except BaseException as e:  # surfaced by the test
            out["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("prefetch", [False, True])
def test_run_publishes_targets_and_query_changes_on_next_frame(bundle, video, prefetch):
    pub, ctl = addresses()
    sub = Subscriber(pub, topics=(b"targets ", b"status ", b"heatmap "))
    cfg = RunConfig(source=f"file://{video}", bundle=bundle, queries=("the red cup",), display=False,
                    publish=pub, control=ctl, max_frames=40, loop=True, heatmaps=True, print_interval_s=None,
                    prefetch=prefetch)
    t, out = start_run(cfg)
    try:
        targets, status, heatmaps = [], [], []
        while len(targets) < 5:
            topic, msg = sub.recv()
            assert topic is not None, f"no message from the app: {out}"
            {"targets": targets, "status": status, "heatmap": heatmaps}[topic].append(msg)
        h = heatmaps[0]
        assert h["query"] == "the red cup" and h["shape"] == [8, 8] and h["frame_size"] == [320, 240]
        x0, y0, x1, y1 = h["region"]
        assert y0 == 0 and y1 == 240 and abs(x0 - 40) < 6 and abs(x1 - 280) < 6  # centre crop of 320x240
        m = targets[0]
        assert m["queries"] == ["the red cup"] and m["frame_size"] == [320, 240] and m["model"] == "tests/tiny-random-0"
        assert m["targets"] and all(tt["query"] == "the red cup" for tt in m["targets"])
        assert m["t_capture_ns"] <= m["t_publish_ns"]
        with ControlClient(ctl, timeout_ms=10000) as client:
            reply = client.request({"op": "set_queries", "queries": ["a blue ball", "the green bottle"]})
            t_reply = time.time_ns()
            assert reply["ok"] and reply["queries"] == ["a blue ball", "the green bottle"]
            bad = client.send_raw(b'{"op": "set_querys", "queries": []}')  # the server refuses, run goes on
            assert not bad["ok"] and "did you mean 'set_queries'" in bad["error"]
        after = []
        while True:
            topic, msg = sub.recv()
            assert topic is not None
            if topic != "targets":
                continue
            after.append(msg)
            if msg["queries"] != ["the red cup"]:
                break
        # every message published after the reply carries the new queries: the next frame used them
        assert all(x["t_publish_ns"] < t_reply for x in after[:-1])
        new = after[-1]
        assert new["queries"] == ["a blue ball", "the green bottle"]
        assert {tt["query"] for tt in new["targets"]} == {"a blue ball", "the green bottle"}
        assert new["frame_id"] > targets[-1]["frame_id"]
        with ControlClient(ctl, timeout_ms=10000) as client:  # threshold 1.0: nothing can be found
            assert client.request({"op": "set_threshold", "value": 1.0})["ok"]
            t_reply = time.time_ns()
        while True:
            topic, msg = sub.recv()
            assert topic is not None
            if topic == "targets" and msg["t_publish_ns"] > t_reply:
                assert msg["targets"] and not any(tt["found"] or tt["bbox"] for tt in msg["targets"])
                break
        with ControlClient(ctl, timeout_ms=10000) as client:  # pause: heartbeats only, no targets
            assert client.request({"op": "pause"})["paused"] is True
            t_reply = time.time_ns()
            paused_status, late_targets = 0, 0
            while paused_status < 2:
                topic, msg = sub.recv()
                assert topic is not None
                if topic != "heatmap" and msg["t_publish_ns"] > t_reply:
                    late_targets += topic == "targets"
                    paused_status += topic == "status" and msg["paused"]
            assert late_targets == 0
            assert client.request({"op": "resume"})["paused"] is False
        t.join(30)
        assert not t.is_alive() and "error" not in out, out
        s = out["summary"]
        assert s.frames == 40 and s.stop_reason == "max_frames"
        assert s.queries == ("a blue ball", "the green bottle")
        assert s.latency_p50_ms is not None and 0 < s.latency_p50_ms <= s.latency_p99_ms
    finally:
        sub.close()


class StallingSource(FrameSource):
    """A live camera that delivers a few frames, then nothing (read() returns None) until closed for good."""

    is_live = True
    spec = "test://stalling"

    def __init__(self, good_frames=3):
        self.left = good_frames
        self.rng = np.random.default_rng(0)
        self.opens = 0

    def open(self):
        self.opens += 1

    def read(self):
        time.sleep(0.02)
        if self.left <= 0:
            return None
        self.left -= 1
        return self.rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)

    def clone(self):
        return self


def test_status_heartbeat_continues_while_camera_is_down(bundle):
    pub, ctl = addresses()
    sub = Subscriber(pub)
    stop = threading.Event()
    cfg = RunConfig(source=StallingSource(), bundle=bundle, display=False, publish=pub, control=ctl,
                    status_interval_s=0.2, print_interval_s=None)
    t, out = start_run(cfg, stop_event=stop)
    try:
        down, targets_after_down = [], 0
        deadline = time.monotonic() + 20
        while len(down) < 4 and time.monotonic() < deadline:
            topic, msg = sub.recv()
            if topic == "status" and msg["source_state"] in ("stalled", "reconnecting"):
                down.append(msg)
            elif topic == "targets" and down:
                targets_after_down += 1
        assert len(down) >= 4, f"status heartbeats stopped while the camera was down: {out}"
        assert targets_after_down == 0
        gaps = np.diff([m["t_publish_ns"] for m in down]) / 1e9
        assert gaps.max() < 1.0  # still about every 0.2 s
        assert down[-1]["queries"] == ["the red cup"] and down[-1]["paused"] is False
        while down[-1]["fps"] != 0.0 and time.monotonic() < deadline:  # no stale rate once nothing is published
            topic, msg = sub.recv()
            if topic == "status":
                down.append(msg)
        assert down[-1]["fps"] == 0.0 and down[-1]["source_state"] in ("stalled", "reconnecting")
        stop.set()
        t.join(5)
        assert not t.is_alive() and out["summary"].stop_reason == "stop_event"
        assert out["summary"].frames >= 1
    finally:
        stop.set()
        sub.close()


def test_recording_writes_the_overlay_video(bundle, video, tmp_path):
    rec = tmp_path / "overlay.avi"
    s = run(RunConfig(source=f"file://{video}", bundle=bundle, display=False, record=rec, max_frames=6,
                      publish=None, control=None, print_interval_s=None))
    assert s.frames == 6 and s.recorded == 6 and s.publish_endpoint is None
    cap = cv2.VideoCapture(str(rec))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (240, 320, 3)
        n += 1
    assert n == 6


@pytest.mark.parametrize("prefetch", [False, True])
def test_file_source_end_stops_the_run(bundle, video, prefetch):
    s = run(RunConfig(source=f"file://{video}", bundle=bundle, display=False, publish=None, control=None,
                      realtime=True, print_interval_s=None, prefetch=prefetch))
    assert s.stop_reason == "source_end" and 1 <= s.frames <= 30


def test_file_without_realtime_grounds_every_frame_in_order(bundle, video):
    seen = []
    s = run(RunConfig(source=f"file://{video}", bundle=bundle, display=False, publish=None, control=None,
                      realtime=False, print_interval_s=None, prefetch=False),
            on_result=lambda result, frame: seen.append((frame.id, result.frame_size)))
    assert s.stop_reason == "source_end" and s.frames == 30 and s.dropped_frames == 0
    assert [i for i, _ in seen] == list(range(30)) and {hw for _, hw in seen} == {(240, 320)}


def test_a_preprocessing_error_in_the_capture_thread_reaches_the_caller(bundle, video):
    from vlmedge.errors import InputError
    from vlmedge.runtime.grounding.grounder import Grounder

    g = Grounder(bundle)

    def broken(_image):
        raise InputError("this frame cannot be preprocessed")

    g.prepare = broken
    with pytest.raises(InputError, match="cannot be preprocessed"):
        run(RunConfig(source=f"file://{video}", bundle=bundle, display=False, publish=None, control=None,
                      realtime=False, print_interval_s=None, prefetch=False), grounder=g)


def test_pause_stops_reading_a_file_and_resume_continues_in_order(bundle, video):
    pub, ctl = addresses()
    sub = Subscriber(pub)
    seen = []
    cfg = RunConfig(source=f"file://{video}", bundle=bundle, display=False, publish=pub, control=ctl, loop=True,
                    realtime=False, print_interval_s=None, prefetch=False, status_interval_s=0.2, max_frames=200)
    t, out = start_run(cfg, on_result=lambda result, frame: seen.append(frame.id))
    try:
        deadline = time.monotonic() + 30
        while len(seen) < 3:
            assert time.monotonic() < deadline and "error" not in out, out
            time.sleep(0.005)
        with ControlClient(ctl, timeout_ms=10000) as client:
            assert client.request({"op": "pause"})["paused"] is True
            paused = []
            while len(paused) < 3:  # heartbeats keep coming; nothing is read or grounded meanwhile
                topic, msg = sub.recv()
                assert topic is not None
                if topic == "status" and msg["paused"]:
                    paused.append((msg["grabbed"], len(seen)))
            assert paused[1] == paused[2] and paused[2][1] < 200
            assert client.request({"op": "resume"})["paused"] is False
        t.join(60)
        assert not t.is_alive() and "error" not in out, out
        assert out["summary"].stop_reason == "max_frames" and out["summary"].dropped_frames == 0
        assert seen == list(range(seen[0], seen[0] + 200))  # every frame once, in order, across the pause
    finally:
        sub.close()


def test_display_without_a_display_is_a_clear_error(bundle, video, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(BackendUnavailable, match="no-display"):
        run(RunConfig(source=f"file://{video}", bundle=bundle, display=True, publish=None, control=None))


def test_run_config_validation():
    with pytest.raises(ConfigError, match="did you mean 'max_frames'"):
        RunConfig.from_dict({"max_frame": 3})
    with pytest.raises(ConfigError, match="max_frames"):
        RunConfig(max_frames=0)
    with pytest.raises(ConfigError, match="threshold"):
        RunConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        RunConfig(publish="tcp://127.0.0.1")
    with pytest.raises(ConfigError, match="duplicates"):
        RunConfig(queries=("a cup", "a cup"))
    with pytest.raises(ConfigError, match=".mp4 or .avi"):
        RunConfig(record="out.gif")
    with pytest.raises(ConfigError, match="ort_spinning"):
        RunConfig(ort_spinning="on")
    cfg = RunConfig(queries="the red cup", publish="none")
    assert cfg.queries == ("the red cup",) and cfg.publish is None
    assert cfg.replace(max_frames=3).max_frames == 3


def test_sigterm_stops_vlmedge_run_promptly(bundle, video):
    pub, ctl = addresses()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmedge.cli", "run", "--source", f"file://{video}", "--bundle", str(bundle),
         "--headless", "--loop", "--publish", pub, "--control", ctl],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()  # the first target line: the loop is running
        assert line.startswith("frame "), (line, proc.stderr.read() if proc.poll() is not None else "")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        assert rc == 0, proc.stderr.read()
        assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
        rest = proc.stdout.read()
        assert "stopped by signal" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_overlay_draws_heatmap_boxes_and_labels(bundle):
    from vlmedge.runtime.display import draw_overlay
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.render import render_scene

    frame = render_scene(0).frame
    res = Grounder(bundle, threshold=0.2).ground(frame, ["the red cup"])
    plain = draw_overlay(frame, res, heatmap=False)
    heat = draw_overlay(frame, res, heatmap=True, fps=12.5, latency_ms=80)
    assert plain.shape == heat.shape == frame.shape and plain.dtype == np.uint8
    assert not np.array_equal(heat, plain)  # the heatmap changed pixels inside the crop
    assert np.array_equal(heat[:, :60][30:400], frame[:, :60][30:400])  # but not outside it (left margin)
    for t in res.found:
        x0, y0, x1, y1 = t.bbox
        assert not np.array_equal(plain[y0:y1, x0], frame[y0:y1, x0])  # box edge drawn
    assert np.array_equal(frame, render_scene(0).frame)  # the input frame is untouched


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs xvfb-run (apt install xvfb) for a virtual display")
def test_live_window_on_a_virtual_display(bundle, video):
    proc = subprocess.run(
        ["xvfb-run", "-a", sys.executable, "-m", "vlmedge.cli", "run", "--source", f"file://{video}", "--bundle",
         str(bundle), "--display", "--max-frames", "5", "--publish", "none", "--control", "none", "--loop"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 frames" in proc.stdout and "stopped by max_frames" in proc.stdout
    assert not any(line.startswith("frame ") for line in proc.stdout.splitlines())  # the window, not the printout



def _scene(realtime):
    return open_source("synthetic://tabletop?width=160&height=120&fps=60", realtime=realtime)


def _first(feed, timeout=10.0):
    """The feed's first (Frame, Prepared); next() itself gives up after a short wait."""
    deadline = time.monotonic() + timeout
    while (item := feed.next(-1)) is None:
        assert time.monotonic() < deadline and not feed.ended, feed.frames.stats()
    return item


@pytest.mark.parametrize("make_source, prefetch, feed_type, reader_type, reader_prepares", [
    (StallingSource, False, NextFrameFeed, Capture, False),  # a live camera: drained continuously
    (lambda: _scene(True), False, NextFrameFeed, Capture, False),  # a paced scene is read like a camera
    (lambda: _scene(False), False, OnDemandFeed, OnDemandReader, True),  # every frame, prepared by the reader
    (StallingSource, True, PrefetchFeed, Capture, False),
    (lambda: _scene(False), True, PrefetchFeed, OnDemandReader, False),
], ids=["live", "paced", "on-demand", "live-prefetch", "on-demand-prefetch"])
def test_the_feed_follows_the_source_and_prefetch(bundle, make_source, prefetch, feed_type, reader_type,
                                                  reader_prepares):
    g = Grounder(bundle)
    source = make_source()
    feed = open_feed(source, g, prefetch)
    assert type(feed) is feed_type and feed.kind is feed_kind(source, prefetch)
    assert type(feed.frames) is reader_type and feed.frames.source is source
    assert (getattr(feed.frames, "process", None) == g.prepare) is reader_prepares
    with feed:
        frame, prepared = _first(feed)
        assert isinstance(prepared, Prepared) and prepared.frame_size == frame.image.shape[:2]
    assert feed.ended and feed.frames.state == "stopped"


def test_want_prefetch_resolves_auto(bundle):
    g = Grounder(bundle)
    assert want_prefetch(True, g) is True and want_prefetch(False, g) is False
    threads = int(getattr(g.encoders, "threads", 0) or 1)
    assert want_prefetch(None, g) is ((os.cpu_count() or 1) >= threads + 2)  # CPU provider: spare cores only
    assert feed_kind(_scene(False), want_prefetch(True, g)) is FeedKind.PREFETCH


@pytest.mark.parametrize("realtime", [True, False], ids=["live", "on-demand"])
def test_without_prefetch_the_next_frame_is_prepared_only_after_the_encoder(bundle, realtime):
    """Nothing is read or preprocessed beside the encoder: the feed starts on the next frame when told
    that the encoder is done (``encoded``), and then runs beside the matching and publishing."""
    g = Grounder(bundle)
    prepared_at = []
    prepare = g.prepare

    def counting_prepare(image):
        prepared_at.append(time.monotonic())
        return prepare(image)

    g.prepare = counting_prepare
    with open_feed(_scene(realtime), g, prefetch=False) as feed:
        frame, _ = _first(feed)
        time.sleep(0.3)  # "the encoder" runs: new frames arrive (live), nothing is prepared for them
        assert len(prepared_at) == 1 and (realtime or feed.frames.grabbed == 1)
        t_encoded = time.monotonic()
        feed.encoded(frame.id)
        deadline = time.monotonic() + 5
        while len(prepared_at) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert prepared_at[1] >= t_encoded
        nxt, _ = feed.next(frame.id)
        assert nxt.id > frame.id and len(prepared_at) == 2


def test_with_prefetch_frames_are_prepared_beside_the_encoder(bundle):
    g = Grounder(bundle)
    prepared = []
    prepare = g.prepare
    g.prepare = lambda image: (prepared.append(1), prepare(image))[1]
    with open_feed(_scene(True), g, prefetch=True) as feed:
        frame, _ = _first(feed)
        deadline = time.monotonic() + 5
        while len(prepared) < 3:  # no encoded() call: the prefetch thread keeps preparing the newest frame
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_stop_reasons_are_one_table_that_run_summary_uses():
    assert STOP_REASONS == ("max_frames", "signal", "source_end", "window", "stop_event")
    assert STOP_REASONS == tuple(r.value for r in StopReason)
    rest = dict(frames=0, seconds=0.0, fps=0.0, latency_p50_ms=None, latency_p99_ms=None, queries=(),
                publish_endpoint=None, control_endpoint=None, dropped_frames=0, source_state="ended")
    for reason in StopReason:
        for given in (reason, reason.value):
            summary = RunSummary(stop_reason=given, **rest)
            assert summary.stop_reason == reason.value and type(summary.stop_reason) is str
            assert summary.to_dict()["stop_reason"] == reason.value
    with pytest.raises(ValueError, match="eof"):
        RunSummary(stop_reason="eof", **rest)


def _port_free(address: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        except OSError:
            return False
        return True


class CloseFails(FrameSource):
    """A synthetic scene read on demand whose close() fails (a driver error on release). It notes what
    was still open at that moment, which shows the order in which the run closes its resources."""

    spec = "test://close-fails"
    realtime = False

    def __init__(self, addresses):
        self.inner = open_source("synthetic://tabletop?width=160&height=120")
        self.addresses = addresses
        self.at_close: dict = {}

    def open(self):
        self.inner.open()

    def read(self):
        return self.inner.read()

    def close(self):
        self.inner.close()
        self.at_close = {"sockets_free": all(_port_free(a) for a in self.addresses),
                         "sigint": signal.getsignal(signal.SIGINT)}
        raise OSError("the driver failed to release the device")


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_failing_close_neither_hides_the_loops_error_nor_keeps_the_rest_open(bundle, tmp_path, caplog, prefetch):
    pub, ctl = addresses()
    source = CloseFails((pub, ctl))
    rec = tmp_path / "overlay.avi"
    sigint = signal.getsignal(signal.SIGINT)
    threads = set(threading.enumerate())
    seen = []

    def on_result(result, frame):
        seen.append(frame.id)
        if len(seen) == 3:
            raise RuntimeError("the arm controller rejected the target")

    cfg = RunConfig(source=source, bundle=bundle, display=False, publish=pub, control=ctl, record=rec,
                    print_interval_s=None, prefetch=prefetch)
    with caplog.at_level(logging.ERROR, logger="vlmedge.runtime.app"):
        with pytest.raises(RuntimeError, match="arm controller"):  # the loop's error, not the close error
            run(cfg, on_result=on_result)
    closing = [r for r in caplog.records if "error while closing the frame feed" in r.getMessage()]
    assert len(closing) == 1 and isinstance(closing[0].exc_info[1], OSError)
    # closed in reverse order of opening: sockets (opened last) before the feed, signal handlers after it
    assert source.at_close["sockets_free"] and source.at_close["sigint"] is not sigint
    assert signal.getsignal(signal.SIGINT) is sigint and _port_free(pub) and _port_free(ctl)
    lingering = [t.name for t in set(threading.enumerate()) - threads if t.name.startswith("vlmedge-")]
    assert lingering == []  # reader, preprocessing helper and heartbeat all joined
    cap = cv2.VideoCapture(str(rec))  # the recorder was closed too: a complete file with the frames drawn
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 2  # on_result runs before drawing: the third frame failed before it was recorded


# ------------------------------------------------------------------------- #14: status, floods (items 6, 7, 12)

class BurstySource(FrameSource):
    """A live camera that delivers frames in bursts: two frames 20 ms apart, then nothing for 0.6 s. The
    moving average of 1/dt over-reports such a stream several times over."""

    is_live = True
    spec = "test://bursty"

    def __init__(self):
        self.rng = np.random.default_rng(1)
        self.n = 0

    def open(self):
        pass

    def read(self):
        time.sleep(0.02 if self.n % 2 else 0.6)
        self.n += 1
        return self.rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)

    def clone(self):
        return self


def test_status_fps_is_frames_per_wall_second_over_its_window(bundle):
    pub, ctl = addresses()
    sub = Subscriber(pub)
    stop = threading.Event()
    cfg = RunConfig(source=BurstySource(), bundle=bundle, display=False, publish=pub, control=None,
                    status_interval_s=0.5, print_interval_s=None)
    t, out = start_run(cfg, stop_event=stop)
    try:
        published, status = [], []
        deadline = time.monotonic() + 60
        while len([m for m in status if m["frames"] >= 8]) < 6 and time.monotonic() < deadline:
            topic, msg = sub.recv()
            assert topic is not None, f"no message from the app: {out}"
            (published.append(msg["t_publish_ns"]) if topic == "targets" else status.append(msg))
        checked = 0
        for m in status:
            window = m.get("fps_window_s")
            assert window is not None and window > 0, m
            if m["uptime_s"] < window + 0.5 or m["frames"] < 8:
                continue  # the first window: fewer seconds behind it
            # what a subscriber counts: targets messages published within the window before this status
            counted = sum(1 for p in published if m["t_publish_ns"] - window * 1e9 < p <= m["t_publish_ns"])
            assert abs(m["fps"] * window - counted) <= 2.5, (m["fps"], counted, window)
            checked += 1
        assert checked >= 3
    finally:
        stop.set()
        t.join(10)
        sub.close()


def _wait_first_status(sub, joined, out, timeout=30.0):
    """The subscriber is joined once it has read a status; then the run may begin (``on_ready`` waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topic, msg = sub.recv(timeout=1.0)
        if topic == "status":
            joined.set()
            return msg
        assert "error" not in out, out
    raise AssertionError(f"no status heartbeat within {timeout} s: {out}")


def test_ended_reaches_the_subscriber_in_every_run(bundle, tmp_path):
    video = write_synthetic_video(tmp_path / "short.avi", 8, 30.0, size=(120, 160), camera_format="mjpg", seed=2)
    got = []
    for _ in range(10):
        pub, _ = addresses()
        sub = Subscriber(pub, topics=(b"status ",))
        joined = threading.Event()
        cfg = RunConfig(source=f"file://{video}", bundle=bundle, display=False, publish=pub, control=None,
                        realtime=False, status_interval_s=5.0, print_interval_s=None)
        t, out = start_run(cfg, on_ready=lambda _endpoints, joined=joined: joined.wait(30))
        try:
            _wait_first_status(sub, joined, out)
            last = None
            while True:  # every status until the publisher is gone
                topic, msg = sub.recv(timeout=3.0)
                if topic is None:
                    break
                last = msg
                if msg["source_state"] in ("ended", "failed", "stopped") and "stop_reason" in msg:
                    break
            t.join(30)
            assert "error" not in out, out
            got.append(last)
        finally:
            sub.close()
    states = [(m or {}).get("source_state") for m in got]
    assert states == ["ended"] * 10, states
    assert all(m["stop_reason"] == "source_end" and m["frames"] == 8 for m in got)


def test_a_state_change_is_published_at_once(bundle, video):
    pub, ctl = addresses()
    sub = Subscriber(pub, topics=(b"status ",))
    stop = threading.Event()
    joined = threading.Event()
    # heartbeats 60 s apart: any status after the first one is there because something changed
    cfg = RunConfig(source=StallingSource(good_frames=4), bundle=bundle, display=False, publish=pub, control=ctl,
                    status_interval_s=60.0, print_interval_s=None)
    t, out = start_run(cfg, stop_event=stop, on_ready=lambda _e: joined.wait(30))
    try:
        seen = [_wait_first_status(sub, joined, out)]  # a subscriber that joins gets a status at once
        deadline = time.monotonic() + 30
        down = ("stalled", "reconnecting")  # the capture gives up on the source and reopens it
        while not any(m["source_state"] in down for m in seen) and time.monotonic() < deadline:
            topic, msg = sub.recv(timeout=1.0)
            if topic == "status":
                seen.append(msg)
        states = [m["source_state"] for m in seen]
        assert any(st in down for st in states), states
        with ControlClient(ctl, timeout_ms=10000) as client:
            assert client.request({"op": "pause"})["paused"] is True
            t_reply = time.monotonic()
            while True:
                topic, msg = sub.recv(timeout=1.0)
                assert time.monotonic() - t_reply < 10, "no status within 10 s of the pause"
                if topic == "status" and msg["paused"]:
                    break
        stop.set()
        final = None
        while True:
            topic, msg = sub.recv(timeout=3.0)
            if topic is None:
                break
            final = msg
        assert final is not None and final["stop_reason"] == "stop_event" and final["source_state"] == "stopped"
        t.join(10)
        assert not t.is_alive() and "error" not in out
    finally:
        stop.set()
        sub.close()


FLOOD = r"""
import sys, time, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.SNDHWM, 100000)
s.connect(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
sent = replies = 0
while time.monotonic() < end:
    for _ in range(200):
        try:
            s.send_multipart([b"", b'{"op": "status"}'], zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            break
    while s.poll(0):
        s.recv_multipart()
        replies += 1
    time.sleep(0.001)
print(sent, replies, flush=True)
s.close(0)
ctx.term()
"""


def _targets_rate(sub, seconds):
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        topic, _ = sub.recv(timeout=max(0.01, end - time.monotonic()))
        n += topic == "targets"
    return n / seconds


@pytest.mark.slow
def test_a_flood_of_control_requests_does_not_stall_publishing(bundle, video):
    pub, ctl = addresses()
    sub = Subscriber(pub, topics=(b"targets ",))
    stop = threading.Event()
    cfg = RunConfig(source=f"file://{video}", bundle=bundle, display=False, publish=pub, control=ctl, loop=True,
                    realtime=True, print_interval_s=None)
    t, out = start_run(cfg, stop_event=stop)
    try:
        assert sub.recv(timeout=30)[0] == "targets", out
        baseline = _targets_rate(sub, 3.0)
        assert baseline > 5, baseline  # a 30 fps file on the tiny model
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, ctl, "6"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)  # the queue fills
            flooded = _targets_rate(sub, 4.0)
            with ControlClient(ctl, timeout_ms=10000) as client:  # a normal client is still served
                assert client.request({"op": "ping"})["ok"]
        finally:
            sent, replies = map(int, flood.communicate(timeout=60)[0].split())
        assert sent > 10_000, sent  # it was a flood
        assert flooded >= 0.5 * baseline, (baseline, flooded, sent, replies)
    finally:
        stop.set()
        t.join(15)
        sub.close()
