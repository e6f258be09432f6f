"""benchmarks/gemm_floor.py (MAC counting, the single-node models it times, the floor file it writes) and
vlmedge.floor (the torch-free reader ``vlmedge bench`` uses)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _scripts import load_script
from onnx import TensorProto, helper, numpy_helper

from vlmedge.errors import ArtifactError
from vlmedge.floor import FLOOR_SCHEMA, cpu_model, default_floor_path, floor_multiple, read_floor_file
from vlmedge.manifest import sha256_file
from vlmedge.runtime.grounding.backends import openvino_version


@pytest.fixture(scope="module")
def gf():
    return load_script("benchmarks/gemm_floor.py")


def _init(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def small_graph() -> onnx.ModelProto:
    """Every kind of product gemm_floor counts, with MACs worked out by hand in the test."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="proj"),  # batch [B,5,8] @ [8,6]
        helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),  # [B,2,5,6] @ [B,2,6,5]
        helper.make_node("Gemm", ["a", "w2"], ["g"], name="gemm", transB=1),  # [3,4] @ [7,4]^T
        helper.make_node("Conv", ["img", "w3"], ["c"], name="conv", strides=[2, 2]),  # [B,3,8,8] * [4,3,2,2]
        helper.make_node("MatMulIntegerToFloat", ["xq", "w4", "sa", "sw", "za", "zw"], ["y4"], name="int8",
                         domain="com.microsoft"),  # [5,8] @ [8,3]
        helper.make_node("MultiHeadAttention", ["mq", "mk", "mv"], ["mo"], name="mha", domain="com.microsoft",
                         num_heads=2),  # [1,5,8] x3, 2 heads of 4
    ]
    f, u8 = TensorProto.FLOAT, TensorProto.UINT8
    inputs = [helper.make_tensor_value_info("x", f, ["B", 5, 8]), helper.make_tensor_value_info("q", f, ["B", 2, 5, 6]),
              helper.make_tensor_value_info("k", f, ["B", 2, 6, 5]), helper.make_tensor_value_info("a", f, [3, 4]),
              helper.make_tensor_value_info("img", f, ["B", 3, 8, 8]), helper.make_tensor_value_info("xq", u8, [5, 8]),
              *[helper.make_tensor_value_info(n, f, [1, 5, 8]) for n in ("mq", "mk", "mv")]]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("h1", "s", "g", "c", "y4", "mo")]
    inits = [_init("w1", [8, 6]), _init("w2", [7, 4]), _init("w3", [4, 3, 2, 2]), _init("w4", [8, 3], np.int8),
             _init("sa", []), _init("sw", []), _init("za", [], np.uint8), _init("zw", [], np.int8)]
    graph = helper.make_graph(nodes, "small", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_count_macs_of_a_small_graph_with_known_counts(gf):
    weight = 5 * 8 * 6 + 3 * 4 * 7 + (4 * 4) * (3 * 2 * 2) * 4 + 5 * 8 * 3  # proj, gemm, conv (4x4 out), int8
    activation = 2 * 5 * 6 * 5 + 2 * (5 * 4 * 5) + 2 * (5 * 5 * 4)  # scores, MHA scores + context
    macs = gf.count_macs(small_graph())
    assert (macs["weight"], macs["activation"], macs["total"]) == (weight, activation, weight + activation)
    assert macs["by_op"]["Conv"] == 768 and macs["by_op"]["MultiHeadAttention"] == 400
    assert macs["products"] == 7
    # a symbolic batch given a value scales the products that have it (not the Gemm, int8 or MHA ones)
    b3 = gf.count_macs(small_graph(), {"B": 3})
    assert b3["total"] - macs["total"] == 2 * (5 * 8 * 6 + 2 * 5 * 6 * 5 + 768)


def test_count_macs_names_the_node_whose_shape_is_unknown(gf):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "hidden"], ["y"], name="mystery")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    graph.node.insert(0, helper.make_node("Custom", ["x"], ["hidden"], domain="nowhere"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere", 1)])
    with pytest.raises(ValueError, match="'mystery'.*input 1.*'hidden'"):
        gf.gemms(model)


def _computed_reshape_graph() -> onnx.ModelProto:
    """q [1,2,5,3] @ k, where k [1,2,3,4] is x [1,6,4] reshaped to a shape computed at run time (batch from
    Shape(x), as a ViT's attention heads): shape inference leaves k's dims unknown, as in an int8 graph ONNX
    Runtime saved, whose q @ k^T input it records with symbolic dims."""
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "zero"], ["b"], axis=0),
             helper.make_node("Concat", ["b", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["k"]),
             helper.make_node("MatMul", ["q", "k"], ["s"], name="scores")]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([2, 3, 4], np.int64), "rest")]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", f, [1, 6, 4]),
                                               helper.make_tensor_value_info("q", f, [1, 2, 5, 3])],
                              [helper.make_tensor_value_info("s", f, None)], initializer=inits,
                              value_info=[helper.make_tensor_value_info("k", f, ["unk__1", "unk__2", "unk__3",
                                                                                  "unk__4"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_observed_shapes_count_a_product_whose_operand_shape_inference_cannot_know(gf):
    model = _computed_reshape_graph()
    observed = gf.observed_shapes(model)
    assert observed["k"] == [1, 2, 3, 4] and observed["q"] == [1, 2, 5, 3]
    (p,) = gf.gemms(model, observed=observed)
    assert (p.batch, p.m, p.k, p.n, p.weight) == (2, 5, 3, 4, False)
    assert gf.count_macs(model, observed=observed)["total"] == 2 * 5 * 3 * 4
    # from inference alone the symbolic dims count as 1: the product it would count is wrong
    assert gf.count_macs(model)["total"] != 2 * 5 * 3 * 4


def test_a_dequantized_int8_constant_counts_as_a_weight(gf):
    """OpenVINO's QDQ file: the weight reaches the MatMul through DequantizeLinear."""
    model, _ = gf.single_node_qdq(4, 8, 6)
    (p,) = gf.gemms(model, observed=gf.observed_shapes(model))
    assert (p.batch, p.m, p.k, p.n, p.weight) == (1, 4, 8, 6, True)


def test_the_qdq_single_node_model_computes_the_product(gf):
    model, feeds = gf.single_node_qdq(5, 16, 8)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W")).astype(np.float64)
    xq = np.clip(np.round(feeds["X"] / 0.02) + 128, 0, 255) - 128
    np.testing.assert_allclose(y, (xq * 0.02) @ (w * 0.01), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MatMulInteger", "MatMulIntegerToFloat"])
@pytest.mark.parametrize("weight", [True, False])
def test_the_timed_single_node_models_compute_the_product(gf, op, weight):
    batch = 1 if weight else 3
    model, feeds = gf.single_node(op, batch, 5, 16, 8, weight)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = feeds.get("B")
    if b is None:
        b = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "B"))
    want = np.matmul(feeds["A"].astype(np.int64) - 128, b.astype(np.int64))
    if op == "MatMulIntegerToFloat":
        want = want * 0.02 * 0.01
    np.testing.assert_allclose(y.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_floor_of_sums_each_product_at_its_shapes_best_rate(gf):
    P = gf.Product
    products = [P("a", "MatMul", 1, 10, 10, 10, True), P("b", "MatMul", 1, 10, 10, 10, True),
                P("c", "MatMul", 2, 5, 5, 5, False)]
    rates = [{"batch": 1, "m": 10, "k": 10, "n": 10, "weight": True, "best_gmacs": 1e-3},  # 1 MMAC/s
             {"batch": 2, "m": 5, "k": 5, "n": 5, "weight": False, "best_gmacs": 0.5e-3}]
    f = gf.floor_of(products, rates)
    assert f["floor_ms"] == pytest.approx((2000 / 1e6 + 250 / 0.5e6) * 1e3)
    assert f["floor_ms_uniform"] == pytest.approx(2250 / 1e6 * 1e3) and f["best_rate_gmacs"] == 1e-3


def test_floor_streamed_takes_the_streamed_rate_of_weight_products_only(gf):
    P = gf.Product
    products = [P("a", "MatMul", 1, 10, 10, 10, True), P("s", "MatMul", 2, 5, 5, 5, False),
                P("one", "MatMul", 1, 1, 10, 10, True)]  # a shape with no streamed rate: its best rate
    rates = [{"batch": 1, "m": 10, "k": 10, "n": 10, "weight": True, "best_gmacs": 2e-3,
              "gmacs": {"x": 2e-3, "torch_int_mm_streamed": 1e-3}},
             {"batch": 2, "m": 5, "k": 5, "n": 5, "weight": False, "best_gmacs": 1e-3, "gmacs": {"x": 1e-3}},
             {"batch": 1, "m": 1, "k": 10, "n": 10, "weight": True, "best_gmacs": 1e-3, "gmacs": {"x": 1e-3}}]
    f = gf.floor_of(products, rates)
    assert f["floor_ms"] == pytest.approx((1000 / 2e6 + 250 / 1e6 + 100 / 1e6) * 1e3)
    assert f["floor_ms_streamed"] == pytest.approx((1000 / 1e6 + 250 / 1e6 + 100 / 1e6) * 1e3)
    del rates[0]["gmacs"]["torch_int_mm_streamed"]
    assert "floor_ms_streamed" not in gf.floor_of(products, rates)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_measure_rates_streams_weights_only_for_shapes_the_encoder_has_several_of(gf):
    rows = gf.measure_rates([(1, 8, 64, 32, True), (1, 4, 64, 32, True)], threads=1, repeats=3,
                            copies={(1, 8, 64, 32): 3})
    several, one = rows
    assert several["gmacs"]["torch_int_mm_streamed"] > 0 and "torch_int_mm_streamed" not in one["gmacs"]
    assert several["best_by"] != "torch_int_mm_streamed"  # the floor's best rate stays the definition


def test_timer_keeps_rounds_apart_and_leaves_out_zeros(gf):
    values = iter([9.0, 9.0, 0.5, 0.0, 0.25, 0.75])  # two warm-up calls first
    t = gf.Timer(lambda: next(values))
    t.round(2)
    t.round(2)
    assert t.rounds == [[0.5, 0.0], [0.25, 0.75]]
    assert t.times(0) == [0.5] and t.times() == [0.5, 0.25, 0.75]  # a 0 (under a profile's resolution) left out


def test_floors_by_round_use_each_rounds_best_int8_method(gf):
    P = gf.Product
    products = [P("a", "MatMul", 1, 10, 10, 10, True), P("s", "MatMul", 2, 5, 5, 5, False)]
    rates = [{"batch": 1, "m": 10, "k": 10, "n": 10, "weight": True, "best_gmacs": 4e-3,
              "gmacs_by_round": {"ort_MatMulInteger": [1e-3, 4e-3], "torch_int_mm": [2e-3, None],
                                 "torch_int_mm_streamed": [9e-3, 9e-3]}},  # not a floor method
             {"batch": 2, "m": 5, "k": 5, "n": 5, "weight": False, "best_gmacs": 1e-3,
              "gmacs_by_round": {"ort_fp32_matmul": [5e-3, 5e-3], "ort_MatMulInteger": [0.5e-3, 1e-3]}}]
    got = gf.floors_by_round(products, rates)
    assert got == pytest.approx([(1000 / 2e6 + 250 / 0.5e6) * 1e3, (1000 / 4e6 + 250 / 1e6) * 1e3])
    pm = gf.paired_multiples([2 * got[0], 3 * got[1]], got)
    assert (pm["median"], pm["min"], pm["max"], pm["rounds"]) == (pytest.approx(2.5), pytest.approx(2.0),
                                                                 pytest.approx(3.0), 2)


def test_measure_rates_in_rounds_calls_between_after_each_round(gf):
    seen = []
    rows = gf.measure_rates([(1, 8, 64, 32, True)], threads=1, repeats=4, rounds=2, between=seen.append)
    assert seen == [0, 1]
    (row,) = rows
    assert all(len(v) == 2 for v in row["gmacs_by_round"].values())
    assert row["gmacs"]["ort_MatMulInteger"] == pytest.approx(max(row["gmacs_by_round"]["ort_MatMulInteger"]))
    assert row["best_by"] in gf.INT8_METHODS


def test_weight_gemms_by_method_sums_each_methods_own_rates(gf):
    P = gf.Product
    products = [P("a", "MatMul", 1, 10, 10, 10, True), P("b", "MatMul", 1, 10, 10, 20, True),
                P("s", "MatMul", 2, 5, 5, 5, False)]  # not a weight product: left out
    rates = [{"batch": 1, "m": 10, "k": 10, "n": 10, "weight": True, "best_gmacs": 2e-3,
              "gmacs": {"x": 1e-3, "y": 2e-3, "only_here": 5e-3}},
             {"batch": 1, "m": 10, "k": 10, "n": 20, "weight": True, "best_gmacs": 4e-3,
              "gmacs": {"x": 4e-3, "y": 2e-3}},
             {"batch": 2, "m": 5, "k": 5, "n": 5, "weight": False, "best_gmacs": 1e-3, "gmacs": {"x": 1e-3}}]
    got = gf.weight_gemms_by_method(products, rates)
    assert set(got) == {"x", "y", "best"}  # "only_here" was not measured at every weight shape
    assert got["x"] == pytest.approx((1000 / 1e6 + 2000 / 4e6) * 1e3)
    assert got["y"] == pytest.approx((1000 / 2e6 + 2000 / 2e6) * 1e3)
    assert got["best"] == pytest.approx((1000 / 2e6 + 2000 / 4e6) * 1e3)


def _tiny_encoder(path: Path, name: str = "enc") -> Path:
    """A one-projection image 'encoder': pixel_values [1,3,8,8] -> [1,3,8,16]."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (8, 16)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["pixel_values", "w"], ["y"], name="proj")], name,
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_floor_file_written_by_the_script_is_read_back(gf, tmp_path):
    enc, floor_file = _tiny_encoder(tmp_path / "enc.onnx"), tmp_path / "floor" / "gemm-floor.json"
    assert gf.main([str(enc), "--threads", "1", "--repeats", "3", "--encoder-repeats", "2", "--rounds", "2",
                    "--floor-file", str(floor_file), "--json", str(tmp_path / "run.json")]) == 0
    data = read_floor_file(floor_file)
    entry = data["encoders"][sha256_file(enc)]
    assert len(entry["floor_ms_by_round"]) == 2 and entry["paired_multiple"]["onnxruntime"]["rounds"] == 2
    assert entry["paired_multiple"]["onnxruntime"]["min"] <= entry["paired_multiple"]["onnxruntime"]["median"]
    assert data["cpu"] == cpu_model() and data["threads"] == 1 and entry["macs"] == 3 * 8 * 8 * 16
    got = floor_multiple(10.0, sha256_file(enc), floor_file)
    assert got is not None and got.floor_ms == entry["floor_ms"] and got.multiple == pytest.approx(10.0 / got.floor_ms)
    assert got.threads == 1 and got.path == str(floor_file)
    if openvino_version() is not None:  # the file OpenVINO runs, timed in the same run
        ov = entry["openvino"]
        assert ov["file"] == str(enc) and 0 < ov["best_ms"] <= ov["median_ms"] and ov["calls"] >= 2
        assert json.loads((tmp_path / "run.json").read_text())["run"][str(enc)]["openvino"] == ov
        assert entry["paired_multiple"]["openvino"]["rounds"] == 2
        assert set(entry["paired_multiple"]) == {"onnxruntime", "openvino", "openvino GEMM nodes (mean)",
                                                 "openvino other nodes (mean)"}
    # another encoder (another file content) is added to the same file, the first one kept
    enc2 = _tiny_encoder(tmp_path / "enc2.onnx", name="enc2")
    assert gf.main([str(enc2), "--threads", "1", "--repeats", "3", "--encoder-repeats", "2",
                    "--floor-file", str(floor_file)]) == 0
    assert set(read_floor_file(floor_file)["encoders"]) == {sha256_file(enc), sha256_file(enc2)}


needs_openvino = pytest.mark.skipif(openvino_version() is None,
                                    reason='OpenVINO is not installed (pip install "vlmedge[openvino]")')


@needs_openvino
def test_openvino_encoder_time_splits_gemm_nodes_from_the_rest(gf, tmp_path):
    """A product big enough for OpenVINO's profile to time (a tiny one runs in under its 1 us resolution),
    followed by a Softmax (a Sigmoid would be fused into the product): the FullyConnected node counts as GEMM
    time, the Softmax as the rest."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (256, 512)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["pixel_values", "w"], ["h"]),
             helper.make_node("Softmax", ["h"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                          [1, 3, 256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    path = tmp_path / "enc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    enc = gf.OpenVinoEncoder(path, threads=1)
    enc.timer.round(3)
    enc.timer.round(2)
    got = enc.result()
    assert len(got["gemm_nodes_ms_by_round"]) == 2 and all(g > 0 for g in got["gemm_nodes_ms_by_round"])
    assert got["gemm_nodes_mean_ms"] > 0 and got["other_nodes_mean_ms"] > 0 and got["calls"] >= 5
    assert 0 < got["best_ms"] <= got["median_ms"]
    assert got["gemm_nodes_mean_ms"] + got["other_nodes_mean_ms"] <= got["mean_ms"] * 1.05  # inside the calls


@needs_openvino
def test_openvino_gemm_kernel_rate_of_a_weight_product(gf):
    timer = gf.OpenVinoKernelTimer(64, 256, 256, threads=1)
    timer.round(5)
    timer.round(5)
    times = timer.times()
    assert len(times) == 2 and all(0 < t < 1.0 for t in times)  # a mean per round of the GEMM kernel alone
    walls = [w for r in timer.rounds for w in r]
    assert len(walls) == 10 and min(times) < sum(walls) / len(walls)  # the kernel is part of the call


@pytest.mark.parametrize("flag", ["--rounds", "--repeats", "--encoder-repeats", "--threads"])
def test_counts_below_one_are_refused_naming_the_option(gf, flag, capsys):
    with pytest.raises(SystemExit) as e:
        gf.parse_args(["enc.onnx", flag, "0"])
    assert e.value.code == 2 and f"{flag} must be >= 1, got 0" in capsys.readouterr().err


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _floor(cpu: str | None = None, floor_ms=20.0) -> dict:
    return {"schema": FLOOR_SCHEMA, "cpu": cpu or cpu_model(), "threads": 2,
            "encoders": {"ab" * 32: {"floor_ms": floor_ms, "floor_ms_uniform": 18.0}}}


def test_floor_multiple_is_none_without_a_file_an_entry_or_on_another_cpu(tmp_path):
    sha = "ab" * 32
    assert floor_multiple(30.0, sha, tmp_path / "missing.json") is None
    path = _write(tmp_path / "f.json", _floor())
    got = floor_multiple(30.0, sha, path)
    assert got.multiple == pytest.approx(1.5) and got.floor_ms_uniform == 18.0
    assert got.to_dict()["multiple"] == 1.5
    assert got.floor_ms_streamed is None and got.to_dict()["multiple_streamed"] is None  # an older file
    data = _floor()
    data["encoders"]["ab" * 32]["floor_ms_streamed"] = 24.0
    streamed = floor_multiple(30.0, sha, _write(tmp_path / "s.json", data))
    assert streamed.floor_ms_streamed == 24.0 and streamed.to_dict()["multiple_streamed"] == 1.25
    assert floor_multiple(30.0, "cd" * 32, path) is None  # another encoder
    assert floor_multiple(30.0, sha, _write(tmp_path / "g.json", _floor(cpu="Some Other CPU"))) is None


@pytest.mark.parametrize("data, field", [
    ("not json", "not a readable GEMM floor file"),
    ({"schema": "other/1"}, "'schema' must be"),
    ({**_floor(), "cpu": ""}, "'cpu' must be"),
    ({**_floor(), "threads": 0}, "'threads' must be an int >= 1"),
    ({**_floor(), "encoders": []}, "'encoders' must be an object"),
    (_floor(floor_ms=-1), r"encoders\['abababababab'\].floor_ms must be a positive number, got -1"),
    (_floor(floor_ms="fast"), "floor_ms must be a positive number"),
    ({**_floor(), "encoders": {"ab" * 32: {"floor_ms": 20.0, "floor_ms_streamed": 0}}},
     "floor_ms_streamed must be a positive number, got 0"),
])
def test_a_bad_floor_file_is_an_error_naming_the_file_and_field(tmp_path, data, field):
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ArtifactError, match=field) as e:
        floor_multiple(30.0, "ab" * 32, path)
    assert str(path) in str(e.value)


def test_default_floor_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMEDGE_GEMM_FLOOR", str(tmp_path / "x.json"))
    assert default_floor_path() == tmp_path / "x.json"
    monkeypatch.delenv("VLMEDGE_GEMM_FLOOR")
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    assert default_floor_path() == tmp_path / "cache" / "gemm-floor.json"
    monkeypatch.delenv("VLMEDGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_floor_path() == tmp_path / "xdg" / "vlmedge" / "gemm-floor.json"


def test_bench_floor_reads_the_entry_of_the_bundles_image_encoder(tiny_bundle_dir, tmp_path, monkeypatch):
    from vlmedge.floor import bench_floor, floor_lines
    from vlmedge.manifest import read_manifest

    manifest = read_manifest(tiny_bundle_dir)
    sha = sha256_file(tiny_bundle_dir / manifest.image_encoder.file)
    monkeypatch.setenv("VLMEDGE_GEMM_FLOOR", str(tmp_path / "floor.json"))
    encoder = {"p50_ms": 5.0, "min_ms": 4.0}
    assert bench_floor(manifest, encoder, ["CPUExecutionProvider"]) is None  # no floor file yet: no line
    assert floor_lines(None) == []
    data = _floor()
    data["encoders"] = {sha: {"floor_ms": 2.0, "floor_ms_uniform": 1.5}}
    _write(tmp_path / "floor.json", data)
    got = bench_floor(manifest, encoder, ["CPUExecutionProvider"])
    assert got["multiple"] == 2.5 and got["min_multiple"] == 2.0 and got["floor_ms"] == 2.0
    assert bench_floor(manifest, encoder, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    (line,) = floor_lines(got, threads=2)
    assert "p50 2.50x the floor of 2.00 ms" in line and "fastest call 2.00x" in line and "threads" not in line
    assert "measured at 2 threads" in floor_lines(got, threads=1)[0]
    assert "once per frame" not in line  # no streamed floor in this file
    data["encoders"][sha]["floor_ms_streamed"] = 4.0
    _write(tmp_path / "floor.json", data)
    (line,) = floor_lines(bench_floor(manifest, encoder, ["CPUExecutionProvider"]), threads=2)
    assert "p50 2.50x the floor of 2.00 ms" in line and "1.25x the 4.00 ms with each weight read once per frame" in line
