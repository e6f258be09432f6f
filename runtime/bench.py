"""``vlmedge bench BUNDLE``: measure a bundle on this machine and check the runtime goals.

Measured (all in this process, which stays torch-free):

* encoder: ``encode_image`` on one preprocessed frame, ``frames`` runs after a warm-up: mean/p50/p99 ms.
* pipeline (the goals): the real ``vlmedge run`` loop (capture thread -> Grounder -> Publisher
  on a loopback port, control socket polled) on a video file, every frame in order, each read when
  the loop asks for it (``realtime=False``: how ``vlmedge run --no-realtime`` processes a recording).
  Without ``--source`` the file is a temporary video of synthetic scenes (written in a child
  process, so scene rendering does not count in the memory figures). Steady throughput (fps) and
  capture-to-publish latency (``Frame.t_capture_ns``, stamped when the frame is read -> after the
  publish call) p50/p99.
* camera: the same video played at its frame rate like a camera (``--camera-fps``, default 30 fps
  or 1.5x the encoder's rate when that is higher, so the model is the bottleneck;
  ``--camera-format`` ``raw``: uncompressed YUV 4:2:0 frames, what a YUYV/CSI camera hands over;
  ``mjpg``: JPEG frames to decode, like a USB MJPG webcam). The capture thread keeps the newest
  frame, which waits for the encoder to finish the previous one: capture-to-publish includes that
  wait (``wait`` = latency minus preprocess, encode and matching; up to one camera period). No
  scheduler can remove it, so the latency goal is checked on the video run; the camera figures
  are reported beside it. With a live ``--source`` there is only this run, and the checks use it.
* query switch: while the pipeline runs, a REQ client sends ``set_queries`` and a SUB client checks
  that every targets message published after the reply carries the new query.
* memory: VmRSS and VmHWM (peak) from /proc/self/status at the end. Between pipeline runs, freed heap
  is handed back to the OS (``release_free_heap``), so the peak is that of one run (what ``vlmedge
  run`` uses), not of one run plus the freed leftovers of the runs before it.
* torch eager (``--torch-baseline SOURCE``, when torch is installed): ``load_clip`` + ``encode_image``
  timed in a SUBPROCESS (``python -m vlmedge.export.torch_baseline``).

Goals checked (PASS/FAIL lines; ``check_goals``, report key ``checks``): pipeline fps >= 90% of the
encoder rate; capture-to-publish p99 <= 1.5x encoder p50; a new query takes effect on the next frame; peak
resident memory <= 350 MB.
The video run is split into up to five runs (>= 20 frames each) that alternate with timings of the
bare encoder (bare, run, bare, ..., run, bare), so that a machine whose speed drifts (other tenants
on a shared host, thermal limits) slows both sides alike; figures are pooled over the runs, and each
run's ratio to the bare encoder timed around it is reported too (``pipeline.segments``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vlmedge.errors import ArtifactError, BackendUnavailable, ConfigError, check_choice
from vlmedge.floor import bench_floor, floor_lines
from vlmedge.runtime.grounding.backends import MEMORY_BUDGET_MB, memory_mb, release_free_heap
from vlmedge.scenes.video import CAMERA_FORMATS, write_synthetic_video_subprocess
from vlmedge.timing import stats_ms

log = logging.getLogger(__name__)

# The runtime's goals, checked by check_goals (PASS/FAIL). "Goal" and not "target": a target is what the
# grounder publishes.
GOAL_FPS_RATIO = 0.90  # pipeline fps >= this x the bare encoder's rate: the loop adds little around the model
GOAL_LATENCY_RATIO = 1.5  # capture-to-publish p99 <= this x encoder p50: no frame waits long in a queue
# peak resident memory (VmHWM), so the runtime fits beside other processes on the device (350 MB; auto keeps to it)
GOAL_MEMORY_MB = MEMORY_BUDGET_MB
# The throughput/latency goals are relative to preprocess + encode instead of the bare encoder when preprocessing
# a frame costs at least this share of an encode (``goal_basis``: small models such as the embedded demo).
PREPROCESS_BOUND_RATIO = 0.1
GOAL_COMMAND_MS = 1.0  # a 3-relation command may add this much to matching its noun phrases (issue: a millisecond)
SWITCH_QUERY = "a blue ball"
SEGMENTS = 5  # pipeline runs, each between two timings of the bare encoder


def time_encoder(encoders, pixels: np.ndarray, frames: int, warmup: int = 5) -> list[float]:
    """Milliseconds of ``frames`` encode_image calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        encoders.encode_image(pixels)
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        encoders.encode_image(pixels)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def bench_encoder(encoders, pixels: np.ndarray, frames: int, warmup: int = 5) -> dict:
    return stats_ms(time_encoder(encoders, pixels, frames, warmup))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _SwitchProbe(threading.Thread):
    """Once ``go`` is set: sends set_queries and checks the targets messages published after the reply.
    Sets ``done`` when finished (measured or not)."""

    def __init__(self, publish: str, control: str, new_query: str, timeout: float = 30.0):
        super().__init__(name="vlmedge-bench-probe", daemon=True)
        self.publish, self.control, self.new_query, self.timeout = publish, control, new_query, timeout
        self.go, self.done = threading.Event(), threading.Event()
        self.result: dict = {"measured": False, "error": "not started"}

    def run(self) -> None:
        import zmq

        from vlmedge import protocol
        from vlmedge.runtime.messaging.control import ControlClient

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"targets ")
        sub.connect(self.publish)
        try:
            if not self.go.wait(600):
                self.result = {"measured": False, "error": "the pipeline never reached the switch"}
                return
            deadline = time.monotonic() + self.timeout
            with ControlClient(self.control, timeout_ms=int(self.timeout * 1000)) as client:
                t_sent = time.time_ns()
                reply = client.request({"op": "set_queries", "queries": [self.new_query]})
                t_reply = time.time_ns()
            if not reply.get("ok"):
                self.result = {"measured": False, "error": f"set_queries refused: {reply}"}
                return
            stale_after_reply = 0
            while time.monotonic() < deadline:
                if not sub.poll(200):
                    continue
                msg = protocol.parse_message(sub.recv())[1]
                if msg["queries"] == [self.new_query]:
                    self.result = {"measured": True, "next_frame": stale_after_reply == 0,
                                   "stale_messages_after_reply": stale_after_reply,
                                   "switch_latency_ms": round((msg["t_publish_ns"] - t_sent) / 1e6, 3)}
                    return
                if msg["t_publish_ns"] > t_reply:
                    stale_after_reply += 1
            self.result = {"measured": False, "error": f"no message with the new query within {self.timeout} s"}
        except Exception as e:  # report, never hang the benchmark
            self.result = {"measured": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            sub.close(0)
            ctx.term()
            self.done.set()


class _PipelineMeter:
    """on_result hook: capture-to-publish latency and publish times of frames ``warmup .. warmup+frames``.
    With a ``probe``: starts it after those frames and stops the run when it is done; without, stops
    the run after them."""

    def __init__(self, frames: int, warmup: int, stop: threading.Event, probe: _SwitchProbe | None = None):
        self.frames, self.warmup, self.probe, self.stop = frames, warmup, probe, stop
        self.seen = 0
        self.latencies: list[float] = []
        self.waits: list[float] = []
        self.times: list[float] = []
        self.encode_ms: list[float] = []
        self.work_ms: list[tuple[float, float]] = []  # (preprocess, ground) of each measured frame

    def __call__(self, result, frame) -> None:
        now_ns = time.monotonic_ns()
        self.seen += 1
        if self.warmup < self.seen <= self.warmup + self.frames:
            latency = (now_ns - frame.t_capture_ns) / 1e6
            self.latencies.append(latency)
            self.waits.append(latency - sum(float(result.timings.get(k, 0.0)) for k in ("preprocess", "encode",
                                                                                        "ground")))
            self.times.append(now_ns / 1e9)
            self.encode_ms.append(float(result.timings.get("encode", 0.0)))
            t = result.timings
            self.work_ms.append((float(t.get("preprocess", 0.0)), float(t.get("ground", 0.0))))
        if self.seen == self.warmup + self.frames:
            if self.probe is None:
                self.stop.set()
            else:
                self.probe.go.set()
        if self.probe is not None and self.probe.done.is_set():
            self.stop.set()


def _rate(meters: list[_PipelineMeter]) -> tuple[float, float]:
    """(fps, wall seconds) of measured runs, pooled: frame intervals / time, over all runs."""
    spans = [(len(m.times) - 1, m.times[-1] - m.times[0]) for m in meters if len(m.times) >= 2]
    wall = sum(t for _, t in spans)
    return (sum(n for n, _ in spans) / wall if wall > 0 else 0.0), wall


def pipeline_report(meters: list[_PipelineMeter]) -> dict:
    """The figures of one or more measured runs, pooled (see ``_rate``)."""
    fps, wall = _rate(meters)
    latencies = [x for m in meters for x in m.latencies]
    waits = [x for m in meters for x in m.waits]
    encode_ms = [x for m in meters for x in m.encode_ms]
    work = [w for m in meters for w in getattr(m, "work_ms", ())]
    lat = stats_ms(latencies) if latencies else {}
    wait = stats_ms(waits) if waits else {}
    # share of the wall time the encoder ran (load-independent efficiency); each run's first frame opens its span
    busy = round(sum(sum(m.encode_ms[1:]) for m in meters) / 1000.0 / wall, 4) if wall > 0 else None
    return {"frames": len(latencies), "fps": round(fps, 3), "encoder_busy_fraction": busy,
            "in_pipeline_encode_mean_ms": round(float(np.mean(encode_ms)), 3) if encode_ms else None,
            "in_pipeline_preprocess_mean_ms": round(float(np.mean([w[0] for w in work])), 3) if work else None,
            "in_pipeline_ground_mean_ms": round(float(np.mean([w[1] for w in work])), 3) if work else None,
            "capture_to_publish_p50_ms": lat.get("p50_ms"), "capture_to_publish_p99_ms": lat.get("p99_ms"),
            "capture_to_publish_mean_ms": lat.get("mean_ms"), "wait_p50_ms": wait.get("p50_ms"),
            "wait_p99_ms": wait.get("p99_ms")}


def torch_baseline(source: str, image_size: tuple[int, int], frames: int, threads: int, timeout: float = 900) -> dict:
    """Time PyTorch eager encode_image in a subprocess (this process must stay torch-free)."""
    if importlib.util.find_spec("torch") is None:
        return {"measured": False, "error": "torch is not installed"}
    cmd = [sys.executable, "-m", "vlmedge.export.torch_baseline",
           json.dumps({"source": str(source), "image_size": list(image_size), "frames": frames, "threads": threads})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"measured": False, "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"measured": False, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"measured": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def bench(bundle=None, *, source: str | None = None, frames: int = 100, queries=("the red cup",),
          torch_source: str | None = None, providers=None, prefetch: bool | None = None,
          camera_fps: float | None = None, camera_format: str = "raw", spinning: bool = False,
          backend: str | None = None, text_idle_s: float | None = 60.0, compare: bool = True,
          memory_budget_mb: float | str | None = None) -> dict:
    """Run every measurement; returns the report dict (see the module docstring). ``bundle`` None: the
    embedded demo bundle. ``compare``: also time both CPU backends side by side (after the memory reading)."""
    from vlmedge.embedded import resolve_bundle
    from vlmedge.preprocess import preprocess
    from vlmedge.runtime.grounding.encoders import BundleEncoders
    from vlmedge.runtime.grounding.grounder import Grounder

    _check_options(frames, source, camera_fps, camera_format)
    embedded = bundle is None
    bundle = resolve_bundle(bundle)
    encoders = BundleEncoders(bundle, providers=list(providers) if providers else None, spinning=spinning,
                              backend=backend, text_idle_s=text_idle_s, memory_budget_mb=memory_budget_mb)
    grounder = Grounder(encoders)
    report = _describe(bundle, grounder)
    report["bundle"]["embedded"] = embedded
    with tempfile.TemporaryDirectory(prefix="vlmedge-bench-") as tmp:
        if source is None:
            source, report["camera"] = _synthetic_camera_video(grounder, Path(tmp), frames, camera_fps,
                                                                camera_format)
        report.update(_bench_with_source(grounder, bundle, source, frames, queries, prefetch))
        pixels = preprocess(first_frame(source), grounder.manifest.preprocess)
    # the encoder as a multiple of its measured GEMM floor, when benchmarks/gemm_floor.py measured it (#17)
    report["encoder"]["gemm_floor"] = bench_floor(grounder.manifest, report["encoder"], report["runtime"]["providers"])
    report["memory_mb"] = memory_mb()  # the run loop's peak, before the command probe below adds its own
    report["text_encoder"] = {"loads": encoders.text_loads, "loaded_at_memory_reading": encoders.text_loaded,
                              "idle_release_s": encoders.text_idle_s, "texts": list(encoders.encoded_texts)}
    report["commands"] = bench_commands(grounder)
    if compare:
        texts = list(dict.fromkeys(list(queries) + list(grounder.background_prompts)))
        report["backends"] = compare_backends(encoders, pixels, grounder.text_embeddings(texts),
                                              rounds=max(4, min(10, frames // 10)))
    report["loadavg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["runtime"]["torch_imported"] = "torch" in sys.modules
    if torch_source is not None:
        enc = grounder.encoders
        report["torch_eager"] = torch_baseline(torch_source, grounder.manifest.image_size, min(frames, 30),
                                               int(getattr(enc, "threads", 0) or os.cpu_count() or 1))
    report["goal_basis"] = goal_basis(report)
    report["checks"] = check_goals(report)  # key kept: saved results and their readers use "checks"
    return report


def compare_backends(encoders, pixels: np.ndarray, text_embeds: np.ndarray, rounds: int = 8,
                     per_round: int = 5) -> dict:
    """ONNX Runtime and OpenVINO on the bundle's image encoder, side by side: fresh sessions with the encoders'
    threads, batch 1, interleaved rounds (the order alternates; load from other processes hits both alike), and
    their agreement: image-embedding cosine and patch agreement (each patch's best-matching text among
    ``text_embeds``, the queries and background prompts, is the same on both)."""
    from vlmedge.runtime.grounding import backends as B

    if any(p in B.GPU_PROVIDERS for p in getattr(encoders, "providers", ())) or encoders.backend == "tensorrt":
        return {"measured": False, "error": "the encoders run on a GPU; OpenVINO here is the CPU's"}
    if B.openvino_version() is None:
        return {"measured": False, "error": f"OpenVINO is not installed ({B.OPENVINO_HINT})"}
    path = {b: encoders.bundle_dir / encoders.manifest.image_file(b) for b in ("onnxruntime", "openvino")}
    try:
        sessions = {"onnxruntime": B.open_session("onnxruntime", path["onnxruntime"], threads=encoders.threads,
                                                  spinning=encoders.spinning),
                    "openvino": B.open_session("openvino", path["openvino"], threads=encoders.threads)}
    except (ArtifactError, BackendUnavailable) as e:
        return {"measured": False, "error": str(e)}
    outs = {k: s.run(pixels) for k, s in sessions.items()}
    order = list(sessions)
    times = B.interleaved_times(sessions, pixels, rounds, per_round)
    del sessions
    release_free_heap()
    (a_img, a_patch), (b_img, b_patch) = (outs[k][:2] for k in order)
    report = {k: stats_ms(v) for k, v in times.items()}
    report.update(measured=True, rounds=rounds, per_round=per_round, parity=backend_parity(
        a_img, a_patch, b_img, b_patch, text_embeds), chosen=encoders.backend,
        reason=getattr(getattr(encoders, "backend_choice", None), "reason", None),
        openvino_speedup_p50=round(report["onnxruntime"]["p50_ms"] / report["openvino"]["p50_ms"], 3))
    return report


def backend_parity(a_img, a_patch, b_img, b_patch, text_embeds: np.ndarray) -> dict:
    """Agreement of two encoders' outputs: cosines of the image and patch embeddings, and the share of patches
    whose best-matching text (rows of ``text_embeds``) is the same."""
    def cos(x, y):
        x, y = x.reshape(-1, x.shape[-1]).astype(np.float64), y.reshape(-1, y.shape[-1]).astype(np.float64)
        return (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)

    t = np.asarray(text_embeds, dtype=np.float64)
    pa, pb = (p.reshape(-1, p.shape[-1]).astype(np.float64) for p in (a_patch, b_patch))
    agree = float(np.mean((pa @ t.T).argmax(-1) == (pb @ t.T).argmax(-1))) if len(t) else None
    pc = cos(a_patch, b_patch)
    return {"image_cosine_min": round(float(cos(a_img, b_img).min()), 6), "patch_cosine_min": round(float(pc.min()), 6),
            "patch_cosine_mean": round(float(pc.mean()), 6), "patch_agreement": agree, "texts": int(len(t))}


def _check_options(frames, source, camera_fps, camera_format) -> None:
    if not isinstance(frames, int) or frames < 2:
        raise ConfigError(f"frames must be an int >= 2, got {frames!r}")
    check_choice("camera_format", camera_format, tuple(CAMERA_FORMATS))
    if camera_fps is not None and not (isinstance(camera_fps, (int, float)) and 0 < camera_fps <= 240):
        raise ConfigError(f"camera_fps must be a number in (0, 240], got {camera_fps!r}")
    if source is not None and camera_fps is not None:
        raise ConfigError("camera_fps sets the frame rate of the synthetic camera video; with --source the "
                          "source's own rate is used")


def _describe(bundle, grounder) -> dict:
    """The report's ``bundle`` and ``runtime`` sections: what was measured, with what."""
    m, enc = grounder.manifest, grounder.encoders
    # "target": the bundle's deployment platform, under the key its manifest.json and saved reports use
    return {"bundle": {"path": str(bundle), "model_id": m.model_id, "precision": m.precision,
                       "target": m.platform, "image_size": list(m.image_size), "patch_grid": list(m.patch_grid),
                       "embed_dim": m.embed_dim, "dense_head": m.dense_head},
            "runtime": {"providers": list(getattr(enc, "providers", [])), "backend": getattr(enc, "backend", None),
                        "backend_reason": getattr(getattr(enc, "backend_choice", None), "reason", None),
                        "engine": str(enc.engine) if getattr(enc, "engine", None) else None,
                        "threads": getattr(enc, "threads", None), "cpus": os.cpu_count(),
                        "ort_spinning": bool(getattr(enc, "spinning", False)),
                        "torch_imported": "torch" in sys.modules}}


def _synthetic_camera_video(grounder, folder: Path, frames: int, camera_fps: float | None,
                            camera_format: str) -> tuple[str, dict]:
    """A video of synthetic scenes in ``folder`` for the runs without ``--source``: (source, report["camera"])."""
    if camera_fps is None:
        # A first guess of the encoder rate sets the camera-like frame rate: the model, not the camera, is
        # then the bottleneck of the camera run.
        probe_px = np.zeros((1, 3, *grounder.manifest.image_size), dtype=np.float32)
        rate = 1000.0 / float(np.median(time_encoder(grounder.encoders, probe_px, 3, warmup=1)))
        fps = float(min(max(30.0, math.ceil(1.5 * rate)), 240.0))
    else:
        fps = float(camera_fps)
    n = int(min(max(2 * fps, frames + 60), 1200))  # long enough that neither run rewinds it while measuring
    path = write_synthetic_video_subprocess(folder / "synthetic.avi", n, fps, camera_format)
    return "file://" + str(path), {"synthetic": True, "fps": fps, "format": camera_format}


def first_frame(source: str) -> np.ndarray:
    """The first frame of a source (for the preprocessing/encoder measurements)."""
    from vlmedge.runtime.io.sources import open_source

    src = open_source(source)
    src.open()
    try:
        frame = src.read()
    finally:
        src.close()
    if frame is None:
        raise ConfigError(f"bench: source {source!r} delivered no frame")
    return frame


def _run_pipeline(grounder, bundle, source: str, frames: int, queries, prefetch, *, realtime: bool,
                  probe: _SwitchProbe | None = None) -> tuple[_PipelineMeter, dict]:
    """One ``vlmedge run`` on ``source`` with the meter (and the query-switch probe) attached."""
    from vlmedge.runtime.app import RunConfig, run
    from vlmedge.runtime.feeds import want_prefetch

    pub, ctl = (probe.publish, probe.control) if probe else (f"tcp://127.0.0.1:{_free_port()}", None)
    stop = threading.Event()
    meter = _PipelineMeter(frames, warmup=3, stop=stop, probe=probe)
    cfg = RunConfig(source=source, bundle=bundle, queries=tuple(queries), display=False, publish=pub, control=ctl,
                    loop=True, realtime=realtime, print_interval_s=None, prefetch=prefetch)
    try:
        summary = run(cfg, grounder=grounder, stop_event=stop, on_result=meter,
                      on_ready=(lambda _endpoints: probe.start()) if probe else None)
    finally:
        if probe is not None:
            probe.go.set()
            probe.join(timeout=probe.timeout + 5)
    grounder.reset_tracks()
    return meter, {"source": source, "realtime": realtime, "prefetch": want_prefetch(cfg.prefetch, grounder),
                   "dropped_frames": summary.dropped_frames, "stop_reason": summary.stop_reason}


def _segments(frames: int) -> list[int]:
    """Frames per pipeline run: up to SEGMENTS runs of >= 20 frames, alternating with bare-encoder timings."""
    n = max(1, min(SEGMENTS, frames // 20))
    return [frames // n + (1 if i < frames % n else 0) for i in range(n)]


def _bench_with_source(grounder, bundle, source: str, frames: int, queries, prefetch) -> dict:
    """preprocess, pipeline (alternating with the bare encoder), query_switch, encoder and camera_pipeline."""
    from vlmedge.preprocess import preprocess
    from vlmedge.runtime.io.sources import open_source

    spec = grounder.manifest.preprocess
    report: dict = {}
    frame = first_frame(source)
    pixels = preprocess(frame, spec)
    report["preprocess"] = bench_preprocess(frame, spec, min(frames, 30))

    live = open_source(source).is_live
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    probe = _SwitchProbe(pub, ctl, SWITCH_QUERY if SWITCH_QUERY not in queries else "a green bottle")
    meters, segments, bare, info = _alternating_runs(grounder, bundle, source, frames, queries, prefetch, pixels,
                                                     probe, realtime=live)
    report["pipeline"] = {**info, **pipeline_report(meters), "segments": segments}
    report["query_switch"] = probe.result
    enc_times = [t for slot in bare for t in slot]
    report["encoder"] = {**stats_ms(enc_times), "fps": round(1000.0 / float(np.mean(enc_times)), 3),
                         "min_ms": round(min(enc_times), 3)}
    log.info("encoder: %s", report["encoder"])
    if not live:  # the same file played at its frame rate, like a camera (reported, not checked)
        release_free_heap()
        meter, info = _run_pipeline(grounder, bundle, source, frames, queries, prefetch, realtime=True)
        report["camera_pipeline"] = {**info, **pipeline_report([meter])}
    return report


def _alternating_runs(grounder, bundle, source: str, frames: int, queries, prefetch, pixels: np.ndarray,
                      probe: _SwitchProbe, *, realtime: bool) -> tuple[list[_PipelineMeter], list[dict],
                                                                       list[list[float]], dict]:
    """The measured pipeline runs, alternating with timings of the bare encoder: bare, run, bare, ..., run, bare.

    The goals are checked on a file read as fast as the pipeline goes (or on the live source itself). A
    machine whose speed drifts (other tenants, thermal limits) then slows both sides alike instead of skewing
    their ratio. The query-switch probe runs during the middle run. Returns (meters, per-run segments,
    bare-encoder timings, the last run's info with the dropped frames of all runs)."""
    enc = grounder.encoders
    sizes = _segments(frames)
    per_bare = max(1, frames // (len(sizes) + 1))
    bare = [time_encoder(enc, pixels, per_bare)]
    meters, segments, info, dropped = [], [], {}, 0
    for i, n in enumerate(sizes):
        release_free_heap()  # the peak memory is one run's, not one run's plus the freed leftovers of the last
        meter, info = _run_pipeline(grounder, bundle, source, n, queries, prefetch, realtime=realtime,
                                    probe=probe if i == len(sizes) // 2 else None)
        bare.append(time_encoder(enc, pixels, per_bare, warmup=2))
        meters.append(meter)
        dropped += info["dropped_frames"]
        around = 1000.0 / float(np.mean(bare[-2] + bare[-1]))
        fps = round(_rate([meter])[0], 3)
        segments.append({"frames": len(meter.latencies), "fps": fps, "encoder_fps_around": round(around, 3),
                         "ratio": round(fps / around, 4)})
    return meters, segments, bare, {**info, "dropped_frames": dropped}


def bench_preprocess(frame: np.ndarray, spec, n: int) -> dict:
    """Preprocessing of one frame, back to back, with the kernels in use; when they are the compiled
    ones, the numpy path too, interleaved (``numpy`` figures and the ``speedup`` of compiled over it)."""
    from vlmedge.preprocess import native as _native
    from vlmedge.preprocess import preprocess

    def once() -> float:
        t = time.perf_counter()
        preprocess(frame, spec)
        return (time.perf_counter() - t) * 1e3

    times, numpy_times, same = [], [], None
    if _native.resample_rows is not None:
        with _native.numpy_only():
            reference = preprocess(frame, spec)
        same = bool(np.array_equal(preprocess(frame, spec), reference))
    for _ in range(n):
        times.append(once())
        if _native.resample_rows is not None:
            with _native.numpy_only():
                numpy_times.append(once())
    report = {**stats_ms(times), "min_ms": round(min(times), 3), "frame": list(frame.shape[:2]),
              "kernels": _native.backend()}
    if numpy_times:
        report["numpy"] = stats_ms(numpy_times)
        report["speedup"] = round(report["numpy"]["mean_ms"] / report["mean_ms"], 2)
        report["identical"] = same
    return report


# Three relations at depth 2: "between" with a relation as each of its two anchors.
COMMAND_PROBE = "the cup between the bottle left of the book and the can right of the plate"
COMMAND_SCENE = 7340013  # a rendered tabletop scene with bottles, a cup, a can and bananas


def bench_commands(grounder, command: str = COMMAND_PROBE, rounds: int = 200) -> dict:
    """What composing a command costs beyond grounding its noun phrases, on one encoded frame, interleaved call
    by call: ``match`` of the command against ``match`` of its noun phrases as plain queries (a relation keeps
    its phrases' regions whole, as plain queries do), and, for reference, against the same phrases grounded
    into instances ("all the cup", ...: what a counting or ordering command adds by splitting regions)."""
    from vlmedge.language import read_command
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.render import render_scene

    g = Grounder(grounder.encoders, smoothing=False)  # tracking is per-frame work either way: left out
    encoded = g.encode(g.prepare(render_scene(COMMAND_SCENE).frame))
    phrases = [n.text for n in read_command(command).noun_phrases()]
    runs = (("command", [command]), ("instances", [f"all {p}" for p in phrases]), ("plain", phrases))
    for _ in range(5):
        for _, queries in runs:
            g.match(encoded, queries)
    times: dict[str, list[float]] = {key: [] for key, _ in runs}
    for i in range(rounds):
        for key, queries in (runs if i % 2 == 0 else runs[::-1]):  # alternate the order: none always first
            t = time.perf_counter()
            g.match(encoded, queries)
            times[key].append((time.perf_counter() - t) * 1e3)
    cmd, inst, plain = (stats_ms(times[k]) for k in ("command", "instances", "plain"))
    return {"command": command, "noun_phrases": phrases, "relations": 3, "rounds": rounds, "match_command": cmd,
            "match_noun_phrases": inst, "match_plain_phrases": plain,
            "added_p50_ms": round(cmd["p50_ms"] - plain["p50_ms"], 4),
            "instances_over_plain_p50_ms": round(inst["p50_ms"] - plain["p50_ms"], 4)}


def goal_basis(report: dict) -> dict:
    """What the throughput and latency goals are relative to, and why.

    A model whose encoder dominates the frame (every real CLIP: preprocessing a camera frame is ~2% of a ViT-B/16
    encode, ~8% of a B/32 one) is measured against the bare encoder. A model whose encoder costs about as much as
    preprocessing the frame and matching the queries (the embedded demo model: a few ms each) cannot reach 90% of
    the bare encoder's rate however good the loop is, since every frame needs that work too: when the fastest
    preprocessing is >= PREPROCESS_BOUND_RATIO x the fastest encode (best cases: the least disturbed by other
    processes), the goals are relative to the per-frame work measured inside the loop, preprocess + encode +
    match (with a prefetch thread: the slower of preprocess and encode + match). Those goals then check what
    the encoder-bound ones check for a large model: the loop itself (hand-offs, capture, publishing) adds little."""
    enc, pre, pipe = report["encoder"], report.get("preprocess"), report["pipeline"]
    enc_best, pre_best = enc.get("min_ms"), (pre or {}).get("min_ms")
    parts = [pipe.get(f"in_pipeline_{k}_mean_ms") for k in ("preprocess", "encode", "ground")]
    if None in (enc_best, pre_best) or None in parts or pre_best < PREPROCESS_BOUND_RATIO * enc_best:
        return {"kind": "encoder-bound", "fps": enc["fps"], "latency_ms": enc["p50_ms"], "label": "the bare encoder",
                "latency_label": "encoder p50"}
    pre_ms, enc_ms, ground_ms = parts
    prefetch = bool(pipe.get("prefetch"))
    frame_ms = max(pre_ms, enc_ms + ground_ms) if prefetch else pre_ms + enc_ms + ground_ms
    size = "x".join(str(v) for v in reversed(pre.get("frame", [])))
    label = ("the slower of preprocess and encode + match" if prefetch else "preprocess + encode + match") + \
        " in the loop"
    return {"kind": "preprocessing-bound", "fps": round(1000.0 / frame_ms, 3),
            "latency_ms": round(pre_ms + enc_ms + ground_ms, 3), "label": label,
            "latency_label": "preprocess + encode + match",
            "why": f"the model is small: preprocessing a {size} frame takes {pre_best:.2f} ms at best, "
                   f"{pre_best / enc_best:.0%} of the fastest encode ({enc_best:.2f} ms), and every frame needs it "
                   f"(and matching, {ground_ms:.2f} ms here), so 90% of the bare encoder's rate is out of reach by "
                   "construction; the goals check instead that the loop adds <= 10% to the work of a frame "
                   f"({pre_ms:.2f} + {enc_ms:.2f} + {ground_ms:.2f} ms in the loop)"}


def check_goals(report: dict) -> list[dict]:
    """One {name, ok, value} per goal (module constants GOAL_*), in a fixed order (basis: ``goal_basis``)."""
    enc, pipe = report["encoder"], report["pipeline"]
    basis = goal_basis(report)
    out = []
    need = GOAL_FPS_RATIO * basis["fps"]
    # the encoder-bound names as they always were: people compare saved reports by them
    of = "the bare encoder rate" if basis["kind"] == "encoder-bound" else f"the rate of {basis['label']}"
    out.append({"name": f"pipeline throughput >= {GOAL_FPS_RATIO:.0%} of {of}",
                "ok": pipe["fps"] >= need,
                "value": f"{pipe['fps']:.2f} fps vs {need:.2f} fps needed ({basis['fps']:.2f} x {GOAL_FPS_RATIO})"})
    p99 = pipe["capture_to_publish_p99_ms"]
    limit = GOAL_LATENCY_RATIO * basis["latency_ms"]
    what = "encoder latency" if basis["kind"] == "encoder-bound" else "the latency of a frame's work"
    out.append({"name": f"capture-to-publish p99 <= {GOAL_LATENCY_RATIO:g}x {what}",
                "ok": p99 is not None and p99 <= limit,
                "value": f"{p99} ms vs {limit:.1f} ms ({GOAL_LATENCY_RATIO} x {basis['latency_label']} "
                         f"{basis['latency_ms']:.1f} ms; encoder p99 alone is {enc['p99_ms']:.1f} ms)"})
    sw = report["query_switch"]
    out.append({"name": "a new query takes effect on the next frame", "ok": bool(sw.get("next_frame")),
                "value": (f"{sw.get('stale_messages_after_reply')} stale messages after the reply, switch "
                          f"{sw.get('switch_latency_ms')} ms") if sw.get("measured")
                else f"not measured: {sw.get('error')}"})
    cmd = report.get("commands")
    if cmd is not None:
        out.append({"name": f"a {cmd['relations']}-relation command adds <= {GOAL_COMMAND_MS:g} ms over its "
                            "noun phrases",
                    "ok": cmd["added_p50_ms"] <= GOAL_COMMAND_MS,
                    "value": f"{cmd['added_p50_ms']:+.3f} ms (p50 {cmd['match_command']['p50_ms']:.3f} vs "
                             f"{cmd['match_plain_phrases']['p50_ms']:.3f} ms for {len(cmd['noun_phrases'])} phrases)"})
    hwm = report["memory_mb"].get("VmHWM")
    out.append({"name": f"resident memory <= {GOAL_MEMORY_MB:g} MB", "ok": hwm is not None and hwm <= GOAL_MEMORY_MB,
                "value": f"VmHWM {hwm} MB, VmRSS {report['memory_mb'].get('VmRSS')} MB"})
    return out


def _row(label: str, mean=None, p50=None, p99=None, rest: str = "ms") -> str:
    """One table line: label, then mean / p50 / p99 milliseconds (blank when None), then ``rest``."""
    return f"{label:<34}" + "".join(f"{'' if v is None else f'{v:.2f}':>9}" for v in (mean, p50, p99)) + f"   {rest}"


def _stats_row(label: str, d: dict, rest: str = "ms") -> str:
    return _row(label, d["mean_ms"], d["p50_ms"], d["p99_ms"], rest)


def _preprocess_lines(pre: dict) -> list[str]:
    size = "x".join(str(v) for v in reversed(pre["frame"]))
    kind = pre.get("kernels", "").split(" ")[0]
    lines = [_stats_row(f"preprocess ({size} frame, {kind})", pre)]
    if "numpy" in pre:
        lines.append(_stats_row("  same with the numpy fallback", pre["numpy"],
                                f"ms (compiled x{pre['speedup']:.2f} faster, "
                                + ("bit-identical output)" if pre["identical"] else "OUTPUT DIFFERS: please report)")))
    return lines


def _pipeline_lines(title: str, pipe: dict) -> list[str]:
    return [_row(title, pipe["capture_to_publish_mean_ms"], pipe["capture_to_publish_p50_ms"],
                 pipe["capture_to_publish_p99_ms"], f"ms capture->publish, {pipe['fps']:.2f} fps over "
                 f"{pipe['frames']} frames{' (prefetch)' if pipe.get('prefetch') else ''}"),
            _row("  of which waiting for the encoder", None, pipe["wait_p50_ms"], pipe["wait_p99_ms"],
                 "ms (frame age before preprocessing, hand-offs)"),
            _row("  encoder inside the pipeline", pipe["in_pipeline_encode_mean_ms"],
                 rest=f"ms, busy {_pct(pipe['encoder_busy_fraction'])} of the wall time"),
            ] + _segment_lines(pipe.get("segments"))


def _segment_lines(segments: list[dict] | None) -> list[str]:
    if not segments or len(segments) < 2:
        return []
    return [f"{'  runs vs the bare encoder around':<34}   " + " ".join(_pct(s["ratio"]) for s in segments)
            + f" ({len(segments)} runs of ~{segments[0]['frames']} frames, alternating with the bare encoder)"]


def format_report(r: dict) -> str:
    b, enc, pipe, mem = r["bundle"], r["encoder"], r["pipeline"], r["memory_mb"]
    cam = r.get("camera_pipeline")
    video = "synthetic scenes video" if r.get("camera") else pipe["source"]
    lines = [f"bundle    {b['model_id']} [{b['precision']}, {b['target']}, {b['image_size'][0]}x{b['image_size'][1]}, "
             f"grid {b['patch_grid'][0]}x{b['patch_grid'][1]}, D={b['embed_dim']}] at {b['path']}",
             f"backend   {_backend_line(r['runtime'])}",
             f"runtime   {', '.join(r['runtime']['providers'])}, {r['runtime']['threads']} threads "
             f"(spinning {'on' if r['runtime'].get('ort_spinning') else 'off'}), {r['runtime']['cpus']} CPUs, "
             f"torch imported: {r['runtime']['torch_imported']}",
             f"source    {video}" + ("" if not r.get("camera") else
                                      f" ({r['camera']['format']} frames, {r['camera']['fps']:g} fps)"),
             "",
             f"{'measurement':<34}{'mean':>9}{'p50':>9}{'p99':>9}   other",
             *_preprocess_lines(r["preprocess"]),
             _stats_row(f"image encoder ({_BACKEND_NAMES.get(r['runtime'].get('backend'), 'ONNX Runtime')})",
                        enc, f"ms, {enc['fps']:.2f} fps"),
             *floor_lines(enc.get("gemm_floor"), r["runtime"].get("threads"))]
    lines += _pipeline_lines("pipeline, video every frame" if cam is not None else "pipeline, live source", pipe)
    if cam is not None:
        fps = r["camera"]["fps"] if r.get("camera") else None
        lines += _pipeline_lines(f"pipeline, video as a {fps:g} fps camera" if fps else "pipeline, video as a camera",
                                 cam)
    tb = r.get("torch_eager")
    if tb is not None:
        if tb.get("measured"):
            lines.append(_stats_row("PyTorch eager encode_image", tb, f"ms, torch {tb['torch']}, {tb['threads']} "
                                    f"threads (ORT speed-up x{tb['mean_ms'] / enc['mean_ms']:.2f})"))
        else:
            lines.append(f"{'PyTorch eager encode_image':<34}   not measured: {tb.get('error')}")
    cmd = r.get("commands")
    if cmd is not None:
        lines.append(_stats_row("match: 3-relation command", cmd["match_command"], "ms"))
        lines.append(_stats_row(f"match: its {len(cmd['noun_phrases'])} phrases, plain", cmd["match_plain_phrases"],
                                f"ms (composition adds {cmd['added_p50_ms']:+.3f} ms at p50)"))
        lines.append(_stats_row(f"match: its {len(cmd['noun_phrases'])} phrases, instances", cmd["match_noun_phrases"],
                                f"ms (splitting into instances, counting/ordering commands: "
                                f"{cmd['instances_over_plain_p50_ms']:+.3f} ms)"))
    lines += _backends_lines(r.get("backends"))
    lines.append(f"{'memory':<34}   VmRSS {mem.get('VmRSS')} MB, VmHWM (peak) {mem.get('VmHWM')} MB")
    te = r.get("text_encoder")
    if te is not None:
        lines.append(f"{'text encoder':<34}   " + (
            f"loaded {te['loads']}x for texts outside the vocabulary: {', '.join(map(repr, te.get('texts', [])))}"
            if te["loads"] else
            "never loaded (every text came from the vocabulary/cache)")
            + (f", released after {te['idle_release_s']:g} s idle" if te.get("idle_release_s") is not None else ""))
    load = r.get("loadavg")
    lines.append(f"{'load average (1/5/15 min)':<34}   " + (" ".join(f"{v:.2f}" for v in load) if load else "-")
                 + f" on {r['runtime']['cpus']} CPUs")
    lines.append("")
    basis = r.get("goal_basis") or {}
    if basis.get("why"):
        lines.append(f"note  goals relative to {basis['label']}: {basis['why']}")
    for c in r["checks"]:
        lines.append(f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['value']}")
    if cam is not None and cam["frames"] and enc["fps"] > 0:
        period = f" (a frame every {1000 / r['camera']['fps']:.1f} ms)" if r.get("camera") else ""
        lines.append(f"info  as a camera{period}: {100 * cam['fps'] / enc['fps']:.1f}% of the encoder rate, "
                     f"capture-to-publish p99 {cam['capture_to_publish_p99_ms'] / enc['p50_ms']:.2f}x encoder p50, "
                     f"of which up to {_fmt(cam['wait_p99_ms'])} ms (p99) the newest frame waited for the encoder")
    return "\n".join(lines)


_BACKEND_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}


def _backend_line(rt: dict) -> str:
    name = _BACKEND_NAMES.get(rt.get("backend"), rt.get("backend") or "ONNX Runtime")
    extra = f", engine {rt['engine']}" if rt.get("engine") else ""
    return f"{name}{extra}" + (f" ({rt['backend_reason']})" if rt.get("backend_reason") else "")


def _backends_lines(b: dict | None) -> list[str]:
    """The two CPU backends side by side (``compare_backends``)."""
    if b is None:
        return []
    if not b.get("measured"):
        return [f"{'backends side by side':<34}   not measured: {b.get('error')}"]
    par = b["parity"]
    lines = [_stats_row(f"  {_BACKEND_NAMES[k]}{' (in use)' if b.get('chosen') == k else ''}", b[k], "ms")
             for k in ("onnxruntime", "openvino")]
    agree = "-" if par["patch_agreement"] is None else f"{100 * par['patch_agreement']:.1f}%"
    return [f"{'backends side by side':<34}   fresh sessions, {b['rounds']} interleaved rounds x {b['per_round']} "
            f"encodes (OpenVINO x{b['openvino_speedup_p50']:.2f} at p50)"] + lines + [
        f"{'  agreement':<34}   image cosine min {par['image_cosine_min']:.5f}, patch cosine min "
        f"{par['patch_cosine_min']:.5f}, patch agreement {agree} over {par['texts']} texts"]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"
