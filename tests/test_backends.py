"""Encoder backends (runtime/grounding/backends.py): OpenVINO parity with ONNX Runtime on the same bundle files, the
auto choice (measured once, cached per bundle + CPU + versions + settings), TensorRT engine selection, the options.

OpenVINO tests need `pip install openvino` (the `vlmedge[openvino]` extra) and skip with that reason without it.
TensorRT cannot run here (no GPU): its selection is a pure function of the engine sidecars, tested on real files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vlmedge.errors import BackendUnavailable, ConfigError
from vlmedge.runtime.grounding import backends as B

ROOT = Path(__file__).resolve().parents[1]
needs_openvino = pytest.mark.skipif(B.openvino_version() is None,
                                    reason='OpenVINO is not installed (pip install "vlmedge[openvino]")')
QUERIES = ["the red cup", "a blue ball", "the green bottle", "a yellow box", "background", "a table"]


def _cos(a, b):
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _frames(size, n=3):
    from vlmedge.preprocess import preprocess
    from vlmedge.scenes.render import render_scene

    return [preprocess(render_scene(seed).frame, size) for seed in range(n)]


# ------------------------------------------------------------------------------------------------ parity
@needs_openvino
@pytest.mark.parametrize("which", ["tiny-fp32", "tiny-int8", "embedded-int8"])
def test_openvino_runs_the_bundle_files_as_they_are_and_agrees_with_onnxruntime(which, tiny_bundles, request):
    from vlmedge.runtime.bench import backend_parity
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    bundle = (request.getfixturevalue("embedded_int8") if which == "embedded-int8"
              else tiny_bundles(precision=which.split("-")[1]))
    ort_enc = BundleEncoders(bundle, backend="onnxruntime", threads=2)
    ov_enc = BundleEncoders(bundle, backend="openvino", threads=2, verify=False)
    assert (ort_enc.backend, ov_enc.backend, ov_enc.text_backend) == ("onnxruntime", "openvino", "openvino")
    # a cpu int8 bundle made now has OpenVINO's own image encoder (the QDQ graph beside ONNX Runtime's CPU form):
    # OpenVINO runs it, ONNX Runtime the CPU form; the shipped demo bundle predates it and has one file for both
    ov_file = "image_encoder_openvino.onnx" if which == "tiny-int8" else "image_encoder.onnx"
    assert (ort_enc.image_file, ov_enc.image_file) == ("image_encoder.onnx", ov_file)
    texts = ort_enc.encode_text(QUERIES)
    ov_texts = ov_enc.encode_text(QUERIES)
    assert _cos(texts, ov_texts).min() > 0.999
    outs = {"ort": [], "ov": []}
    for px in _frames(ort_enc.manifest.preprocess, 6):
        outs["ort"].append(ort_enc.encode_image(px))
        outs["ov"].append(ov_enc.encode_image(px))
        (a_img, a_patch), (b_img, b_patch) = outs["ort"][-1], outs["ov"][-1]
        assert b_img.shape == a_img.shape and b_patch.shape == a_patch.shape and b_patch.dtype == np.float32
    # pooled over the frames: one frame of the demo model has 192 patches, two near-ties flipping are 1%
    a, b = ([np.concatenate([o[k] for o in outs[side]]) for k in (0, 1)] for side in ("ort", "ov"))
    par = backend_parity(*a, *b, texts)
    assert par["image_cosine_min"] > 0.999 and par["patch_cosine_mean"] > 0.999, par
    assert par["patch_agreement"] >= 0.99, par
    # a batch the graph takes at once (dynamic batch) gives what single frames give
    both = np.concatenate(_frames(ort_enc.manifest.preprocess, 2))
    img2, _ = ov_enc.encode_image(both)
    assert _cos(img2[1:], ov_enc.encode_image(both[1:])[0]).min() > 0.9999


@needs_openvino
def test_openvino_backend_never_imports_torch(embedded_int8):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from vlmedge.runtime.grounding.encoders import BundleEncoders\n"
            f"enc = BundleEncoders({str(embedded_int8)!r}, backend='openvino', threads=1)\n"
            "h, w = enc.image_size\n"
            "img, patches = enc.encode_image(np.zeros((1, 3, h, w), np.float32))\n"
            "enc.encode_text(['the red cup'])\n"
            "print(enc.backend, 'torch' in sys.modules and sys.modules['torch'] is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["openvino", "False"]


# ---------------------------------------------------------------------------------------- the auto choice
def test_decide_backend_names_its_reason():
    d = B.decide_backend
    assert d("onnxruntime", openvino=None, gpu_providers=False).backend == "onnxruntime"
    c = d("auto", openvino=None, gpu_providers=False)
    assert c.backend == "onnxruntime" and "OpenVINO is not installed" in c.reason and "vlmedge[openvino]" in c.reason
    c = d("auto", openvino="2026.0", gpu_providers=True)
    assert c.backend == "onnxruntime" and "GPU" in c.reason
    assert d("auto", openvino="2026.0", gpu_providers=False) is None  # needs a measurement
    c = d("auto", openvino="2026.0", gpu_providers=False, measured_ms={"onnxruntime": 60.0, "openvino": 50.0})
    assert c.backend == "openvino" and "1.20x faster" in c.reason and "measured now" in c.reason and not c.cached
    c = d("auto", openvino="2026.0", gpu_providers=False,
          measured_ms={"onnxruntime": 60.0, "openvino": 50.0, "resident_mb": {"onnxruntime": 120.0, "openvino": 310.0}})
    assert c.backend == "openvino" and "resident memory +120 MB vs +310 MB" in c.reason  # said, not hidden
    # ... and weighed: the faster one must keep the process within the memory budget when the other one would
    # (the process now + the backend's own share + the pipeline's reserve, 30 MB)
    tight = {"onnxruntime": 60.0, "openvino": 50.0, "resident_mb": {"onnxruntime": 200.0, "openvino": 300.0}}
    c = d("auto", openvino="2026.0", gpu_providers=False, measured_ms=tight, base_mb=80.0)
    assert c.backend == "onnxruntime" and "above the 350 MB memory budget" in c.reason and "~410 MB" in c.reason
    assert "~310 MB" in c.reason
    assert d("auto", openvino="2026.0", gpu_providers=False, measured_ms=tight, base_mb=15.0).backend == "openvino"
    assert d("auto", openvino="2026.0", gpu_providers=False, measured_ms=tight, base_mb=25.0).backend == "onnxruntime"
    assert d("auto", openvino="2026.0", gpu_providers=False, measured_ms=tight, base_mb=200.0).backend == "openvino"
    c = d("auto", openvino="2026.0", gpu_providers=False, measured_ms={"onnxruntime": 50.0, "openvino": 60.0})
    assert c.backend == "onnxruntime" and "ONNX Runtime is 1.20x faster" in c.reason
    # within the margin: ONNX Runtime stays (two backends that close swap places from one run to the next)
    c = d("auto", openvino="2026.0", gpu_providers=False, measured_ms={"onnxruntime": 50.0, "openvino": 49.0})
    assert c.backend == "onnxruntime" and "not faster by more than 3%" in c.reason
    c = d("auto", openvino="2026.0", gpu_providers=False,
          cached={"measured_ms": {"onnxruntime": 60.0, "openvino": 40.0}})
    assert c.backend == "openvino" and c.cached and "(cache)" in c.reason
    c = d("auto", openvino="2026.0", gpu_providers=False,
          measured_ms={"onnxruntime": None, "openvino": None, "openvino_error": "unsupported op Foo"})
    assert c.backend == "onnxruntime" and "cannot run this bundle (unsupported op Foo)" in c.reason
    with pytest.raises(BackendUnavailable, match=r"OpenVINO.*pip install \"vlmedge\[openvino\]\""):
        d("openvino", openvino=None, gpu_providers=False)
    with pytest.raises(ConfigError, match="GPU providers"):
        d("openvino", openvino="2026.0", gpu_providers=True)
    with pytest.raises(ConfigError, match="backend.*'openvin'.*did you mean 'openvino'"):
        d("openvin", openvino=None, gpu_providers=False)


def test_the_measurement_sees_another_busy_process_and_not_its_own_work():
    """others_cpu: the share of the CPUs other processes kept busy while auto measured (a real busy process)."""
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        before, t0 = B._cpu_ticks(), time.perf_counter()
        time.sleep(1.0)
        share = B.others_cpu_share(before, B._cpu_ticks(), time.perf_counter() - t0)
    finally:
        busy.kill()
        busy.wait()
    ncpu = os.cpu_count() or 1
    assert share is not None and share >= 0.7 / ncpu  # one core of ncpu kept busy by the other process
    # this process's own ticks are not "others": all busy ticks being its own leaves nothing
    assert B.others_cpu_share((1000, 50), (1000 + 200, 50 + 200), 1.0) == 0.0
    assert B.others_cpu_share(None, (1, 1), 1.0) is None


@needs_openvino
def test_auto_measures_again_when_the_cached_measurement_was_taken_under_load(tiny_bundle_dir, tmp_path, caplog):
    """A choice measured while other processes were busy is not kept as the answer: the next starts measure
    again (up to LOADED_MEASUREMENTS loaded measurements, the least loaded standing); a quiet one ends it."""
    from vlmedge.manifest import Manifest

    manifest = Manifest.from_dict(json.loads((tiny_bundle_dir / "manifest.json").read_text(encoding="utf-8")))
    cache = tmp_path / "choice.json"
    answers = [{"onnxruntime": 90.0, "openvino": 50.0, "others_cpu": 0.6},  # loaded: OpenVINO looked faster
               {"onnxruntime": 80.0, "openvino": 60.0, "others_cpu": 0.4},  # loaded, less
               {"onnxruntime": 95.0, "openvino": 40.0, "others_cpu": 0.9},  # loaded, more: the 0.4 one stands
               {"onnxruntime": 20.0, "openvino": 30.0, "others_cpu": 0.0}]  # never asked: the limit was reached
    calls = []

    def measure(*args):
        calls.append(args)
        return dict(answers[len(calls) - 1])

    def resolve():
        return B.resolve_backend("auto", tiny_bundle_dir, manifest, threads=2, spinning=False, cache=cache,
                                 measure=measure)

    with caplog.at_level(logging.INFO, logger="vlmedge.runtime.grounding.backends"):
        first = resolve()
    assert first.backend == "openvino" and "other processes used 60% of the CPUs" in first.reason
    assert "measured again at the next start" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmedge.runtime.grounding.backends"):
        second = resolve()
    assert len(calls) == 2 and "taken while other processes used 60%" in caplog.text
    assert second.measured_ms["openvino"] == 60.0
    third = resolve()
    assert len(calls) == 3 and third.measured_ms["others_cpu"] == 0.4  # the less loaded measurement kept
    fourth = resolve()
    assert len(calls) == 3 and fourth.cached and fourth.measured_ms["others_cpu"] == 0.4  # limit: no 4th run

    # a quiet measurement is kept for good
    cache.unlink()
    answers[:] = [{"onnxruntime": 60.0, "openvino": 50.0, "others_cpu": 0.7},
                  {"onnxruntime": 40.0, "openvino": 50.0, "others_cpu": 0.05}]
    calls.clear()
    assert resolve().backend == "openvino"
    quiet = resolve()
    assert len(calls) == 2 and quiet.backend == "onnxruntime" and not quiet.cached
    assert resolve().cached and len(calls) == 2


@needs_openvino
def test_each_backends_memory_is_measured_in_a_process_of_its_own(embedded_int8, monkeypatch):
    """auto weighs each backend's resident memory against the budget. Measured one after the other in one
    process, the second backend reuses heap the first freed: at ViT-B/16 int8 that gave OpenVINO +220 MB where it
    takes +277 MB alone, auto chose it, and the process reached 381 MB, over the 350 MB budget
    (benchmarks/auto_memory.py; benchmarks/results/auto-memory-*). Now each figure comes from a fresh child."""
    path = embedded_int8 / "image_encoder.onnx"
    shape = (1, 3, 192, 256)
    calls = []
    real_child = B._child
    monkeypatch.setattr(B, "_child", lambda opts, timeout: calls.append(opts) or real_child(opts, timeout))
    ms = B.measure_in_child(path, shape, 2, False)
    assert [c.get("resident") for c in calls] == [None, "onnxruntime", "openvino"]  # timing, then one each
    assert ms["onnxruntime"] > 0 and ms["openvino"] > 0
    # each figure is what a process holding only that backend grows by (an independent fresh process here)
    for backend in ("onnxruntime", "openvino"):
        code = ("import json, sys\nfrom vlmedge.runtime.grounding import backends as B\n"
                f"print(json.dumps(B.measure_resident(sys.argv[1], {shape}, '{backend}', threads=2, spinning=False)))")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        alone = json.loads(out.stdout.strip().splitlines()[-1])
        assert abs(ms["resident_mb"][backend] - alone) <= 8 + 0.1 * alone, (backend, ms["resident_mb"], alone)
    assert ms["resident_mb"]["openvino"] > ms["resident_mb"]["onnxruntime"]  # its libraries come with it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim, /proc/self/status")
def test_auto_weighs_the_process_without_the_heap_the_tokenizer_freed(tiny_bundle_dir, tmp_path):
    """Parsing tokenizer.json (the CLIP vocabulary) leaves ~24 MB of freed heap in glibc's arenas. auto compares this
    process's resident memory + a backend's against the budget, so that heap pushed OpenVINO (ViT-B/16 int8: ~328
    MB real) to a predicted ~357 MB in `vlmedge run` and ONNX Runtime was chosen. auto hands freed heap back before
    it weighs the process: at that moment a trim finds (almost) nothing more to return."""
    from vlmedge.manifest import open_bundle
    from vlmedge.tokenizer import ClipTokenizer

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    ClipTokenizer.default().save(bundle / open_bundle(bundle, verify=False).tokenizer)  # the full CLIP vocabulary
    code = ("import json, sys\n"
            "from vlmedge.runtime.grounding import backends as B\n"
            "from vlmedge.runtime.grounding.encoders import BundleEncoders\n"
            "seen = {}\n"
            "def decide(*a, **k):\n"
            "    if 'base_mb' not in k:\n"
            "        return None  # not decided without the measurement: on to weighing the process\n"
            "    seen['rss'] = B._rss_mb(); B.release_free_heap(); seen['trimmed'] = B._rss_mb()\n"
            "    return B.BackendChoice('onnxruntime', 'test')\n"
            "B.decide_backend = decide\n"
            "BundleEncoders(sys.argv[1], backend='auto', threads=1, verify=False)\n"
            "print(json.dumps(seen))")
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["rss"] - seen["trimmed"] < 5, seen  # without the trim in resolve_backend: ~24 MB


def test_the_memory_budget_is_the_users_to_set(monkeypatch):
    """--memory-budget / $VLMEDGE_MEMORY_BUDGET_MB: 350 MB by default (the runtime's goal), another number, or
    'none' (speed alone: OpenVINO whenever it is faster, what a workstation with memory to spare wants)."""
    monkeypatch.delenv("VLMEDGE_MEMORY_BUDGET_MB", raising=False)
    assert B.memory_budget() == 350.0 and B.memory_budget(500) == 500.0 and B.memory_budget("None") is None
    monkeypatch.setenv("VLMEDGE_MEMORY_BUDGET_MB", "off")
    assert B.memory_budget() is None and B.memory_budget("400") == 400.0  # the argument wins over the variable
    monkeypatch.setenv("VLMEDGE_MEMORY_BUDGET_MB", "lots")
    with pytest.raises(ConfigError, match=r"VLMEDGE_MEMORY_BUDGET_MB \(environment\).*'lots'"):
        B.memory_budget()
    for bad in (0, -5, "abc", float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="memory budget must be a number of MB > 0 or 'none'"):
            B.memory_budget(bad)
    big = {"onnxruntime": 60.0, "openvino": 40.0, "resident_mb": {"onnxruntime": 150.0, "openvino": 280.0}}
    d = B.decide_backend
    assert d("auto", openvino="2026.0", gpu_providers=False, measured_ms=big, base_mb=70.0).backend == "onnxruntime"
    assert d("auto", openvino="2026.0", gpu_providers=False, measured_ms=big, base_mb=70.0,
             budget_mb=None).backend == "openvino"
    assert d("auto", openvino="2026.0", gpu_providers=False, measured_ms=big, base_mb=70.0,
             budget_mb=400.0).backend == "openvino"


def test_run_and_bench_take_the_memory_budget_and_refuse_a_bad_one(capsys):
    from vlmedge.cli import main
    from vlmedge.runtime.config import RunConfig

    assert RunConfig(source="synthetic://tabletop", memory_budget_mb="none").memory_budget_mb == "none"
    with pytest.raises(ConfigError, match="memory budget.*'-1'"):
        RunConfig(source="synthetic://tabletop", memory_budget_mb="-1")
    from vlmedge.cli.main import build_parser
    from vlmedge.cli.run import _run_config

    for command in ("run", "bench"):
        assert build_parser().parse_args([command, "--memory-budget", "400"]).memory_budget_mb == "400"
    assert _run_config(build_parser().parse_args(["run", "--memory-budget", "none"])).memory_budget_mb == "none"
    assert main(["run", "--memory-budget", "lots", "--max-frames", "1"]) == 1  # refused before anything starts
    assert "memory budget must be a number of MB > 0 or 'none'" in capsys.readouterr().err


def test_the_cache_key_changes_with_every_thing_that_changes_the_timing():
    base = dict(bundle="b1", cpu="Xeon [2 cpus, flags 1234abcd]", versions={"onnxruntime": "1.2", "openvino": "3"},
                threads=2, spinning=True)
    keys = {B.choice_key(**base)}
    for change in ({"bundle": "b2"}, {"cpu": "EPYC [2 cpus, flags 1234abcd]"},
                   {"versions": {"onnxruntime": "1.3", "openvino": "3"}},
                   {"versions": {"onnxruntime": "1.2", "openvino": "4"}}, {"threads": 1}, {"spinning": False}):
        keys.add(B.choice_key(**{**base, **change}))
    assert len(keys) == 7
    assert B.cpu_model().count("flags") == 1


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "c"))
    assert B.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VLMEDGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert B.cache_dir() == tmp_path / "x" / "vlmedge"


def test_a_broken_cache_file_is_measured_again_and_rewritten(tmp_path, caplog):
    path = tmp_path / "backend-choice.json"
    path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert B.read_cache(path) == {}
    assert "unreadable" in caplog.text
    path.write_text(json.dumps({"version": 99, "entries": {}}), encoding="utf-8")
    assert B.read_cache(path) == {}
    assert B.write_cache(path, {"k": {"choice": "openvino", "measured_at": "2026"}})
    assert B.read_cache(path) == {"k": {"choice": "openvino", "measured_at": "2026"}}


@needs_openvino
def test_auto_measures_once_per_key_and_then_reads_the_cache(tiny_bundle_dir, tmp_path, caplog, monkeypatch):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    # whatever else runs on this machine now: the re-measuring under load has its own test below
    monkeypatch.setattr(B, "LOADED_SHARE", 1.01)

    cache = tmp_path / "choice.json"
    with caplog.at_level(logging.INFO, logger="vlmedge.runtime.grounding.backends"):
        first = BundleEncoders(tiny_bundle_dir, backend="auto", threads=2, cache=cache)
    assert "measuring ONNX Runtime and OpenVINO" in caplog.text and "encoder backend:" in caplog.text
    assert first.backend in ("onnxruntime", "openvino") and not first.backend_choice.cached
    assert first.text_backend == "onnxruntime"  # auto: the text encoder loads fastest there (run once per new text)
    ms = first.backend_choice.measured_ms
    assert ms["onnxruntime"] > 0 and ms["openvino"] > 0  # both really timed, in the child process
    assert set(ms["resident_mb"]) == {"onnxruntime", "openvino"} and "resident memory" in first.backend_choice.reason
    entries = json.loads(cache.read_text(encoding="utf-8"))["entries"]
    (key, entry), = entries.items()
    assert entry["choice"] == first.backend and entry["threads"] == 2 and entry["versions"]["openvino"]
    assert B.onnxruntime_version() in key and B.openvino_version() in key

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmedge.runtime.grounding.backends"):
        again = BundleEncoders(tiny_bundle_dir, backend="auto", threads=2, cache=cache, verify=False)
    assert again.backend == first.backend and again.backend_choice.cached
    assert "measuring" not in caplog.text and "(cache)" in caplog.text
    # another setting is another key: measured again, both entries kept
    BundleEncoders(tiny_bundle_dir, backend="auto", threads=1, cache=cache, verify=False)
    assert len(json.loads(cache.read_text(encoding="utf-8"))["entries"]) == 2
    # an entry made under other versions (an upgrade) is not used: the choice is measured again
    stale = {k.replace(B.onnxruntime_version(), "0.0.1"): v for k, v in entries.items()}
    cache.write_text(json.dumps({"version": B.CACHE_VERSION, "entries": stale}), encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmedge.runtime.grounding.backends"):
        BundleEncoders(tiny_bundle_dir, backend="auto", threads=2, cache=cache, verify=False)
    assert "measuring" in caplog.text


def test_auto_with_providers_named_is_onnxruntime(tiny_bundle_dir, tmp_path):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    enc = BundleEncoders(tiny_bundle_dir, backend="auto", providers=["CPUExecutionProvider"], cache=tmp_path / "c")
    assert enc.backend == "onnxruntime" and "--providers" in enc.backend_choice.reason
    assert not (tmp_path / "c").exists()  # nothing measured


def test_the_backend_environment_variable_is_checked(monkeypatch):
    monkeypatch.setenv("VLMEDGE_BACKEND", "openvino")
    assert B.default_backend(None) == "openvino" and B.default_backend("onnxruntime") == "onnxruntime"
    monkeypatch.setenv("VLMEDGE_BACKEND", "onxruntime")
    with pytest.raises(ConfigError, match="VLMEDGE_BACKEND.*did you mean 'onnxruntime'"):
        B.default_backend(None)
    monkeypatch.delenv("VLMEDGE_BACKEND")
    assert B.default_backend(None) == "auto"


def test_run_options_accept_the_backends_and_refuse_others():
    from vlmedge.cli import build_parser
    from vlmedge.runtime.config import RunConfig

    for name in B.BACKENDS:
        assert RunConfig(backend=name).backend == name
    with pytest.raises(ConfigError, match="RunConfig.backend.*did you mean 'openvino'"):
        RunConfig(backend="openvno")
    with pytest.raises(ConfigError, match="text_idle_s"):
        RunConfig(text_idle_s=-1)
    for cmd in ("run", "bench"):
        args = build_parser().parse_args([cmd, "--backend", "openvino", "--text-idle", "never"])
        assert args.backend == "openvino" and args.text_idle_s is None
    # the parser's list (written out: building the parser must not import the runtime) is the runtime's
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
                  if "--backend" in a.option_strings)
    assert tuple(action.choices) == B.BACKENDS


# ------------------------------------------------------------------------------------------------ TensorRT
def _sidecar(folder: Path, manifest, name: str, trt: str = "10.3.0.26", cc=(8, 7), precision: str = "fp16",
             sha: str | None = None, gpu: str = "Orin") -> Path:
    engine = folder / name
    engine.write_bytes(b"engine bytes")
    meta = {"tensorrt_version": trt, "gpu": gpu, "compute_capability": list(cc), "precision": precision,
            "onnx": manifest.image_encoder.file,
            "onnx_sha256": sha or manifest.files[manifest.image_encoder.file]["sha256"],
            "built_at": "2026-11-30T10:00:00Z"}
    Path(str(engine) + ".json").write_text(json.dumps(meta), encoding="utf-8")
    return engine


def test_select_engine_uses_only_the_engine_for_this_tensorrt_and_gpu(tiny_bundle_dir, tmp_path):
    from vlmedge.manifest import open_bundle

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_dir, bundle)
    m = open_bundle(bundle)
    orin = ("Orin", (8, 7))
    assert B.select_engine(bundle, m, None, orin).reason == "TensorRT is not installed"
    assert B.select_engine(bundle, m, "10.3.0.26", None).reason == "no CUDA GPU"
    none = B.select_engine(bundle, m, "10.3.0.26", orin)
    assert none.engine is None and "no engine in" in none.reason and "vlmedge build-engine" in none.reason

    _sidecar(bundle, m, "image_encoder.trt10.3.0.26.sm87.fp16.engine")
    ok = B.select_engine(bundle, m, "10.3.0.26", orin)
    assert ok.engine == bundle / "image_encoder.trt10.3.0.26.sm87.fp16.engine"
    assert "TensorRT 10.3.0.26 on sm87" in ok.reason
    # the full version counts: a patch release is another TensorRT
    wrong = B.select_engine(bundle, m, "10.3.0.30", orin)
    assert wrong.engine is None and "built with TensorRT 10.3.0.26, this is TensorRT 10.3.0.30" in wrong.reason
    gpu = B.select_engine(bundle, m, "10.3.0.26", ("RTX 3090", (8, 6)))
    assert gpu.engine is None and "built for Orin (sm87), this GPU is RTX 3090 (sm86)" in gpu.reason

    other = tmp_path / "other"
    other.mkdir()
    _sidecar(other, m, "image_encoder.x.engine", sha="0" * 64)
    (other / "image_encoder.y.engine.json").write_text("{broken", encoding="utf-8")
    res = B.select_engine(other, m, "10.3.0.26", orin)
    assert res.engine is None and "another image encoder" in res.reason and "unreadable sidecar" in res.reason


def test_select_engine_prefers_the_bundle_precision(tiny_bundle_dir, tmp_path):
    from vlmedge.manifest import open_bundle

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_dir, bundle)
    m = open_bundle(bundle)  # an fp32 bundle
    for p in ("int8", "fp16", "fp32"):
        _sidecar(bundle, m, f"image_encoder.trt10.3.0.26.sm87.{p}.engine", precision=p)
    assert B.select_engine(bundle, m, "10.3.0.26", ("Orin", (8, 7))).engine.name.endswith(".fp32.engine")
    (bundle / "image_encoder.trt10.3.0.26.sm87.fp32.engine.json").unlink()
    assert B.select_engine(bundle, m, "10.3.0.26", ("Orin", (8, 7))).engine.name.endswith(".int8.engine")


def test_without_tensorrt_the_engine_backend_says_why_and_auto_falls_back(tiny_bundle_dir, caplog):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    trt_version, gpu = B.tensorrt_environment()
    if trt_version is not None and gpu is not None:
        pytest.skip("this machine has TensorRT and a GPU")
    with pytest.raises(BackendUnavailable, match="TensorRT engine.*(not installed|no CUDA GPU).*build-engine"):
        BundleEncoders(tiny_bundle_dir, backend="tensorrt")
    with caplog.at_level(logging.WARNING):
        enc = BundleEncoders(tiny_bundle_dir, backend="auto", providers=["CPUExecutionProvider"], verify=False)
    assert enc.backend == "onnxruntime" and enc.engine is None


@needs_openvino
def test_auto_measures_each_backend_on_the_file_it_would_run(tiny_bundles, tmp_path):
    """A cpu int8 bundle has OpenVINO's own image encoder: auto's measurement (the real child processes) times
    and weighs OpenVINO on that file and ONNX Runtime on the CPU form, not both on one of them."""
    from vlmedge.manifest import open_bundle

    bundle = tiny_bundles(precision="int8")
    manifest = open_bundle(bundle)
    assert manifest.image_file("openvino") != manifest.image_file("onnxruntime")
    seen = []

    def measure(files, shape, threads, spinning):
        seen.append(files)
        return B.measure_in_child(files, shape, threads, spinning)

    choice = B.resolve_backend("auto", bundle, manifest, threads=1, spinning=False, cache=tmp_path / "c.json",
                               measure=measure, budget_mb="none")
    assert seen == [{"onnxruntime": bundle / "image_encoder.onnx", "openvino": bundle / "image_encoder_openvino.onnx"}]
    ms = choice.measured_ms
    assert ms["onnxruntime"] > 0 and ms["openvino"] > 0 and not ms.get("openvino_error")
    assert ms["resident_mb"]["onnxruntime"] is not None and ms["resident_mb"]["openvino"] is not None
    # a bundle with one file for both (exported with --no-openvino-file, or before 2026-12-01) passes that file
    one = B.resolve_backend("auto", bundle, dataclasses.replace(manifest, image_openvino=None), threads=1,
                            spinning=False, cache=tmp_path / "d.json", budget_mb="none",
                            measure=lambda files, *a: seen.append(files) or dict(ms))
    assert seen[-1] == bundle / "image_encoder.onnx" and one.backend in ("onnxruntime", "openvino")
