"""benchmarks/openvino_profile.py: OpenVINO's per-node profile of real bundle encoders, grouped by kernel.

Needs OpenVINO (skips without it, with the reason)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script

from vlmedge.runtime.grounding.backends import openvino_version

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "openvino_profile.py"

pytestmark = pytest.mark.skipif(openvino_version() is None,
                                reason='OpenVINO is not installed (pip install "vlmedge[openvino]")')


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_profile_tells_int8_kernels_from_float_ones_side_by_side(tiny_bundles, tmp_path):
    int8 = tiny_bundles(precision="int8") / "image_encoder.onnx"
    fp32 = tiny_bundles() / "image_encoder.onnx"
    out = tmp_path / "profile.json"
    r = _run(str(int8), str(fp32), "--rounds", "3", "--warmup", "1", "--size", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    models = result["models"]
    assert list(models) == [str(int8), str(fp32)]
    assert result["input_shape"] == [1, 3, 64, 64] and result["rounds"] == 3
    assert result["models"][str(int8)]["config"]["PERF_COUNT"] == "True"

    def gemm_kernels(name):  # the matrix-product rows: "layer type / kernel" -> ms
        return {k: v for k, v in models[name]["groups_ms_mean"].items()
                if k.split(" / ")[0] in ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution")}

    int8_rows, fp32_rows = gemm_kernels(str(int8)), gemm_kernels(str(fp32))
    assert int8_rows and fp32_rows
    assert any(k.lower().endswith(("_i8", "_u8")) for k in int8_rows), int8_rows  # the int8 bundle's GEMMs in int8
    assert not any(k.lower().endswith(("_i8", "_u8")) for k in fp32_rows), fp32_rows  # the fp32 one's are not
    for m in models.values():
        assert m["wall_ms_median"] > 0 and m["nodes_ms_mean"] > 0
        assert all(v >= 0 for v in m["groups_ms_mean"].values())
        assert m["nodes_ms_mean"] <= m["wall_ms_mean"] * 1.05  # the nodes run inside the calls
    # the printed table has a column per model and the totals
    assert "| layer type / kernel | #1 ms | #2 ms |" in r.stdout and "| **wall (median)** |" in r.stdout
    assert "| **sum of nodes (mean per call)** |" in r.stdout


def test_profile_refuses_a_missing_file(tmp_path):
    r = _run(str(tmp_path / "nope.onnx"))
    assert r.returncode == 2 and f"{tmp_path / 'nope.onnx'}: no such model file" in r.stderr


def _module():
    return load_script(SCRIPT)


def test_window_means_turn_running_means_back_into_the_windows_per_call_time():
    """OpenVINO reports each node's mean since compile. Node a took 10 ms on its first call, then 1 ms: after
    2 calls its mean is 5.5, after 6 calls 2.5; the 4 calls between took 1 ms each. Node b first ran in the
    window (absent before); c is the same kernel group as a."""
    mod = _module()
    before = {"a": ("FullyConnected", "brgemm_i8", 5.5), "c": ("FullyConnected", "brgemm_i8", 2.0)}
    after = {"a": ("FullyConnected", "brgemm_i8", 2.5), "c": ("FullyConnected", "brgemm_i8", 2.0),
             "b": ("MVN", "jit_f32", 0.5)}
    got = mod.window_means(before, after, 2, 6)
    assert got[("FullyConnected", "brgemm_i8")] == pytest.approx(1.0 + 2.0)
    assert got[("MVN", "jit_f32")] == pytest.approx(0.5 * 6 / 4)
    with pytest.raises(ValueError, match="no calls between"):
        mod.window_means(before, after, 6, 6)


def test_counters_are_running_means_on_a_real_model(tmp_path):
    """What window_means rests on, checked on OpenVINO itself: the first call of a compiled model is slower, so
    the node's reported time keeps falling over the next calls while a per-call time would level off."""
    import numpy as np
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (512, 512)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    request = ov.Core().compile_model(str(path), "CPU", {"PERF_COUNT": True}).create_infer_request()
    x = np.ones((256, 512), np.float32)
    mod = _module()
    means, totals = [], []
    for n in range(1, 41):
        request.infer({0: x})
        (node,) = [v for v in mod.counters(request).values() if v[0].startswith(("FullyConnected", "MatMul"))]
        means.append(node[2])
        totals.append(node[2] * n)
    # a running mean: the total it implies never falls (each call adds its time), up to the microsecond rounding
    assert all(b >= a - 0.002 * n for n, (a, b) in enumerate(zip(totals, totals[1:]), start=1))
    per_call = mod.window_means({"n": ("FullyConnected", "k", means[9])}, {"n": ("FullyConnected", "k", means[39])},
                                10, 40)[("FullyConnected", "k")]
    assert 0 < per_call <= means[0]  # the window's calls were no slower than the first one
