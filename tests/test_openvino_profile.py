"""benchmarks/openvino_profile.py: OpenVINO's per-node profile of real bundle encoders, grouped by kernel.

Needs OpenVINO (skips without it, with the reason)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
        return {k: v for k, v in models[name]["groups_ms_median"].items()
                if k.split(" / ")[0] in ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution")}

    int8_rows, fp32_rows = gemm_kernels(str(int8)), gemm_kernels(str(fp32))
    assert int8_rows and fp32_rows
    assert any(k.lower().endswith(("_i8", "_u8")) for k in int8_rows), int8_rows  # the int8 bundle's GEMMs in int8
    assert not any(k.lower().endswith(("_i8", "_u8")) for k in fp32_rows), fp32_rows  # the fp32 one's are not
    for m in models.values():
        assert m["wall_ms_median"] > 0 and m["nodes_ms_median"] > 0
        assert all(v >= 0 for v in m["groups_ms_median"].values())
    # the printed table has a column per model and the totals
    assert "| layer type / kernel | #1 ms | #2 ms |" in r.stdout and "| **wall (median)** |" in r.stdout


def test_profile_refuses_a_missing_file(tmp_path):
    r = _run(str(tmp_path / "nope.onnx"))
    assert r.returncode == 2 and f"{tmp_path / 'nope.onnx'}: no such model file" in r.stderr


def test_a_group_first_seen_in_a_later_call_is_padded_with_zeros():
    """OpenVINO reports a node that took 0 ms as 0, which the profile leaves out: a group can appear in call 3
    first. Before the padding, its shorter list broke the per-call sums (IndexError on a real ViT-B/16 run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("openvino_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    store: dict = {}
    mod.add_call(store, {"a": 1.0}, 0)
    mod.add_call(store, {"a": 1.5, "b": 2.0}, 1)
    mod.add_call(store, {}, 2)
    assert store == {"a": [1.0, 1.5, 0.0], "b": [0.0, 2.0, 0.0]}
