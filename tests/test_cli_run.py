"""`vlmedge run`, `vlmedge classify`, `vlmedge bench` through the real CLI entry point; the parser's shape."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from vlmedge.cli import build_parser, main
from vlmedge.preprocess import native as _native
from vlmedge.scenes.render import render_scene
from vlmedge.scenes.video import write_synthetic_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "clip.avi"
    return write_synthetic_video(path, 10, 30.0, size=(240, 320), camera_format="mjpg", seed=2)


def test_run_flags_and_defaults():
    p = build_parser()
    a = p.parse_args(["run"])
    assert a.source == "synthetic://tabletop" and a.bundle is None and a.display is None
    assert a.publish == "tcp://127.0.0.1:5555" and a.control == "tcp://127.0.0.1:5556" and not a.heatmaps
    assert p.parse_args(["run", "--no-display"]).display is False
    assert p.parse_args(["run", "--headless"]).display is False
    assert p.parse_args(["run", "--display"]).display is True
    a = p.parse_args(["run", "-q", "the red cup", "-q", "a bottle", "--max-frames", "5", "--threshold", "0.3"])
    assert a.queries == ["the red cup", "a bottle"] and a.max_frames == 5 and a.threshold == 0.3
    for bad in (["run", "--threshold", "2"], ["run", "--max-frames", "0"], ["run", "--heatmaps=yes"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_help_mentions_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--source", "--bundle", "--query", "--no-display", "--record", "--publish", "--control",
                 "--heatmaps", "--max-frames", "--threshold", "--loop", "--curve-keys"):
        assert flag in text


def test_no_arguments_is_run_and_missing_embedded_bundle_is_explained(monkeypatch, tmp_path, capsys):
    import vlmedge.embedded as assets

    monkeypatch.setattr(assets, "DEMO_DIR", tmp_path / "no-demo")
    rc = main([])
    err = capsys.readouterr().err
    assert rc == 1
    assert "vlmedge run: error" in err and "--bundle" in err and "train-demo" in err


def test_run_cli_headless_max_frames(tiny_bundle_dir, video, capsys):
    rc = main(["run", "--source", f"file://{video}", "--bundle", str(tiny_bundle_dir), "--headless",
               "--max-frames", "3", "--publish", "none", "--control", "none", "--loop"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("frame ") and "'the red cup'" in out
    assert "3 frames" in out and "stopped by max_frames" in out


def test_classify_cli_json(tiny_bundle_dir, tmp_path, capsys):
    bundle = tiny_bundle_dir
    img = tmp_path / "scene.png"
    cv2.imwrite(str(img), render_scene(5).frame)
    rc = main(["classify", str(img), "--labels", "cup", "ball", "plate", "--bundle", str(bundle), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    probs = [x["prob"] for x in out["labels"]]
    assert sorted(x["label"] for x in out["labels"]) == ["ball", "cup", "plate"]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    rc = main(["classify", str(tmp_path / "missing.png"), "--labels", "a", "--bundle", str(bundle)])
    assert rc == 1 and "missing.png" in capsys.readouterr().err


def test_bench_cli_writes_json_with_checks(tiny_bundle_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", str(tiny_bundle_dir), "--frames", "41", "--json", str(out), "--camera-fps", "40",
               "--camera-format", "mjpg", "--no-ort-spinning"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "image encoder" in text and ("PASS" in text or "FAIL" in text)
    assert "synthetic scenes video (mjpg frames, 40 fps)" in text and "video as a 40 fps camera" in text
    r = json.loads(out.read_text())
    assert r["camera"] == {"synthetic": True, "fps": 40.0, "format": "mjpg"}
    assert r["runtime"]["ort_spinning"] is False and "(spinning off)" in text
    pre = r["preprocess"]
    assert pre["frame"] == [480, 640] and pre["mean_ms"] > 0 and pre["kernels"] == _native.backend()
    if _native.resample_rows is not None:  # the compiled kernel and the numpy fallback, side by side
        assert pre["identical"] is True and pre["speedup"] == pytest.approx(pre["numpy"]["mean_ms"] / pre["mean_ms"],
                                                                            abs=0.01)
        assert "preprocess (640x480 frame, compiled)" in text and "bit-identical output" in text
    # 41 frames: two video runs (21 + 20 frames) between three timings of the bare encoder (13 runs each)
    assert r["encoder"]["n"] == 39 and r["encoder"]["p50_ms"] > 0
    assert [s["frames"] for s in r["pipeline"]["segments"]] == [21, 20]
    for s in r["pipeline"]["segments"]:
        assert s["ratio"] == pytest.approx(s["fps"] / s["encoder_fps_around"], rel=1e-3)
    assert "runs vs the bare encoder around" in text
    for run, realtime in (("pipeline", False), ("camera_pipeline", True)):
        p = r[run]
        assert p["realtime"] is realtime and p["frames"] == 41 and p["fps"] > 0
        assert p["capture_to_publish_p99_ms"] >= p["capture_to_publish_p50_ms"] > p["wait_p50_ms"]
    assert r["pipeline"]["dropped_frames"] == 0  # the video run reads every frame, when the loop asks
    assert r["query_switch"]["measured"] and r["query_switch"]["next_frame"] is True
    assert r["memory_mb"]["VmHWM"] >= r["memory_mb"]["VmRSS"] > 0
    small = r["goal_basis"]["kind"] == "preprocessing-bound"  # the tiny model: relative to a frame's work
    assert [c["name"] for c in r["checks"]] == [  # the goals' names are read by people comparing saved reports
        "pipeline throughput >= 90% of the rate of preprocess + encode + match in the loop" if small else
        "pipeline throughput >= 90% of the bare encoder rate",
        "capture-to-publish p99 <= 1.5x the latency of a frame's work" if small else
        "capture-to-publish p99 <= 1.5x encoder latency",
        "a new query takes effect on the next frame",
        "a 3-relation command adds <= 1 ms over its noun phrases", "resident memory <= 350 MB"]
    assert all(isinstance(c["ok"], bool) for c in r["checks"])
    cmd = r["commands"]  # composition cost, measured against the same noun phrases as plain queries
    assert cmd["noun_phrases"] == ["the cup", "the bottle", "the book", "the can", "the plate"]
    assert {cmd[k]["n"] for k in ("match_command", "match_noun_phrases", "match_plain_phrases")} == {cmd["rounds"]}
    assert cmd["added_p50_ms"] == pytest.approx(cmd["match_command"]["p50_ms"] - cmd["match_plain_phrases"]["p50_ms"],
                                                abs=1e-3)
    assert "match: 3-relation command" in text


def test_bench_pools_runs_by_frame_intervals_over_time():
    import threading

    from vlmedge.runtime.bench import _PipelineMeter, _segments, pipeline_report

    def meter(times, latencies, encode_ms):
        m = _PipelineMeter(len(times), warmup=0, stop=threading.Event())
        m.times, m.latencies, m.encode_ms, m.waits = list(times), list(latencies), list(encode_ms), [0.0] * len(times)
        return m

    a = meter([10.0, 10.1, 10.2], [30, 31, 32], [80, 80, 80])  # 2 intervals in 0.2 s
    b = meter([50.0, 50.3], [40, 41], [90, 90])  # 1 interval in 0.3 s
    r = pipeline_report([a, b])
    assert r["fps"] == pytest.approx(3 / 0.5) and r["frames"] == 5  # not the mean of 10 and 3.33 fps
    assert r["encoder_busy_fraction"] == pytest.approx((0.16 + 0.09) / 0.5)
    assert r["capture_to_publish_p50_ms"] == 32 and r["in_pipeline_encode_mean_ms"] == 84
    assert pipeline_report([meter([1.0], [5], [3])])["fps"] == 0.0  # one frame: no interval, no rate
    assert _segments(8) == [8] and _segments(41) == [21, 20] and _segments(150) == [30] * 5
    assert _segments(1000) == [200] * 5


def test_bench_goals_pass_and_fail_at_their_limits():
    from vlmedge.runtime.bench import GOAL_MEMORY_MB, check_goals

    switched = {"measured": True, "next_frame": True, "stale_messages_after_reply": 0, "switch_latency_ms": 5.0}
    report = {"encoder": {"fps": 10.0, "p50_ms": 100.0, "p99_ms": 120.0},
              "pipeline": {"fps": 9.5, "capture_to_publish_p99_ms": 149.0}, "query_switch": switched,
              "memory_mb": {"VmHWM": GOAL_MEMORY_MB, "VmRSS": 200.0}}
    assert [c["ok"] for c in check_goals(report)] == [True] * 4
    report.update(pipeline={"fps": 8.5, "capture_to_publish_p99_ms": 151.0},
                  query_switch={"measured": False, "error": "timed out"}, memory_mb={"VmHWM": GOAL_MEMORY_MB + 1})
    goals = check_goals(report)
    assert [c["ok"] for c in goals] == [False] * 4 and goals[2]["value"] == "not measured: timed out"


def test_bench_synthetic_camera_video_formats(tmp_path):
    from vlmedge.errors import ConfigError
    from vlmedge.runtime.bench import bench

    for fmt in ("raw", "mjpg"):
        path = write_synthetic_video(tmp_path / f"{fmt}.avi", frames=6, fps=45.0, size=(120, 160), camera_format=fmt)
        cap = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(45.0)
        cap.release()
        assert len(frames) == 6 and frames[0].shape == (120, 160, 3) and frames[0].std() > 10
    with pytest.raises(ConfigError, match="camera_format.*'h264'"):
        write_synthetic_video(tmp_path / "x.avi", 2, 30.0, camera_format="h264")
    with pytest.raises(ConfigError, match="camera_fps"):
        bench(tmp_path, camera_fps=0)
    with pytest.raises(ConfigError, match="with --source"):
        bench(tmp_path, source="file://x.avi", camera_fps=30)


# ------------------------------------------------------------------------------------------ the parser's shape

def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


HELP_SCRIPT = r"""
import argparse, contextlib, io, json, sys
from vlmedge.cli import build_parser, main
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
codes = {}
for argv in [["--help"]] + [[name, "--help"] for name in sub.choices]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            codes[" ".join(argv)] = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "torch", "torchvision", "cv2", "zmq"))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_of_every_command_imports_no_heavy_module():
    # `vlmedge --help` and a mistyped option must answer at once, also on a device without torch: the command
    # modules import onnxruntime, OpenCV, zmq and torch only inside their handlers.
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert set(out["codes"].values()) == {0} and len(out["codes"]) == 1 + len(_commands(build_parser()))


def test_every_command_has_a_cmd_handler_in_its_family_module():
    commands = _commands(build_parser())
    assert list(commands) == ["run", "classify", "bench", "subscribe", "send", "keys", "parse", "eval-grounding",
                              "export", "verify", "build-engine", "train-demo"]
    for name, parser in commands.items():
        func = parser.get_default("func")
        assert func.__module__.startswith("vlmedge.cli."), (name, func.__module__)
        assert func.__name__ == "cmd_" + name.replace("-", "_"), (name, func.__name__)


def test_run_and_bench_share_their_options():
    commands = _commands(build_parser())

    def options(cmd):
        return {opt: (a.dest, a.default, a.help) for a in commands[cmd]._actions for opt in a.option_strings}

    run, bench, classify = options("run"), options("bench"), options("classify")
    for opt in ("--query", "-q", "--providers", "--prefetch", "--no-prefetch", "--ort-spinning", "--no-ort-spinning"):
        assert run[opt] == bench[opt], opt
    for opt in ("--bundle", "-b"):
        assert run[opt] == classify[opt], opt


def test_bench_camera_formats_match_the_video_writer():
    from vlmedge.scenes.video import CAMERA_FORMATS

    action = next(a for a in _commands(build_parser())["bench"]._actions if "--camera-format" in a.option_strings)
    assert tuple(action.choices) == tuple(CAMERA_FORMATS)


@pytest.mark.parametrize("text, expected", [("1", 1), ("250", 250)])
def test_positive_int_accepts(text, expected):
    from vlmedge.cli.args import positive_int

    assert positive_int(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "ten", ""])
def test_positive_int_refuses_with_the_value(text):
    from vlmedge.cli.args import positive_int

    with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
        positive_int(text)


@pytest.mark.parametrize("text, expected", [("0", 0.0), ("1", 1.0), ("0.35", 0.35), ("1e-1", 0.1)])
def test_unit_interval_accepts(text, expected):
    from vlmedge.cli.args import unit_interval

    assert unit_interval(text) == expected


@pytest.mark.parametrize("text", ["-0.01", "1.5", "nan", "inf", "half"])
def test_unit_interval_refuses_with_the_value(text):
    from vlmedge.cli.args import unit_interval

    with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 1\]"):
        unit_interval(text)


def test_parse_prints_the_tree_and_points_at_a_misplaced_word(capsys):
    assert main(["parse", "the cup next to the bottle left of the book"]) == 0
    out = capsys.readouterr().out
    assert "relation 'next to'" in out and "relation 'left of'" in out and "noun phrase 'the book'" in out
    assert main(["parse", "--json", "how", "many", "red", "balls"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["kind"] == "count" and "red ball" in json.dumps(tree)
    assert main(["parse", "--taught", "my mug", "the cup near my mug"]) == 0
    assert "(taught)" in capsys.readouterr().out
    assert main(["parse", "the cup lefft of the plate"]) == 1
    err = capsys.readouterr().err
    assert "lefft" in err and "left of" in err and "^" in err


def test_options_without_a_command_go_to_run_and_a_mistyped_command_gets_a_suggestion(capsys):
    from vlmedge.cli.main import _route

    parser = build_parser()
    for argv in (["--query", "the red cup"], ["--source", "0"], ["--headless"], ["-v", "--headless"], []):
        args = parser.parse_args(_route(parser, argv))
        assert args.command == "run"
    assert parser.parse_args(_route(parser, ["--query", "a cup"])).queries == ["a cup"]
    assert parser.parse_args(_route(parser, ["parse", "the cup"])).command == "parse"
    with pytest.raises(SystemExit):
        _route(parser, ["rnu"])
    assert "did you mean 'run'" in capsys.readouterr().err


def test_export_commands_without_the_export_extra_say_what_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from vlmedge.cli import main\n"
            "sys.exit(main(['export', 'openai/clip-vit-base-patch16', '--out', '/nonexistent/b']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'pip install "vlmedge[export]"' in proc.stderr and "Traceback" not in proc.stderr
