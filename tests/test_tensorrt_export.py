"""The TensorRT side of the export, checked without TensorRT: int8 graphs the TensorRT ONNX parser accepts
(node by node), fp32 islands marked in the ONNX and the manifest, the layers `build-engine` pins, its
typing plan, its default precision and its engine file names."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from vlmedge.errors import BackendUnavailable, ConfigError
from vlmedge.export import tensorrt
from vlmedge.export.bundle import export_bundle
from vlmedge.manifest import open_bundle

from _bundles import tiny_clip

torch.set_num_threads(1)
TENSORRT_PLATFORMS = ("cuda", "jetson-orin-jp6", "jetson-xavier-jp5")
INT8_TYPES = {onnx.TensorProto.INT8}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    model = tiny_clip(seed=2)
    out = {}
    for platform in TENSORRT_PLATFORMS:
        for precision in ("int8", "fp16"):
            path = root / f"{platform}-{precision}"
            export_bundle(model, path, precision=precision, platform=platform, calib="synthetic", calib_count=4)
            out[platform, precision] = path
    out["jetson-orin-jp6", "fp32"] = root / "orin-fp32"
    export_bundle(model, out["jetson-orin-jp6", "fp32"], platform="jetson-orin-jp6")
    out["cpu", "int8"] = root / "cpu-int8"
    export_bundle(model, out["cpu", "int8"], precision="int8", calib="synthetic", calib_count=4)
    return out


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every initializer and typed value (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {i.name: i.data_type for i in model.graph.initializer}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types.setdefault(v.name, v.type.tensor_type.elem_type)
    return types


@pytest.mark.parametrize("platform", TENSORRT_PLATFORMS)
def test_int8_tensorrt_graphs_have_only_int8_qdq_inputs(bundles, platform):
    """The TensorRT parser accepts only INT8 (FP8/INT4) DequantizeLinear inputs: no int32 bias Q/DQ."""
    model = onnx.load(str(bundles[platform, "int8"] / "image_encoder.onnx"))
    types = _value_types(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        if n.op_type == "DequantizeLinear":
            kind = onnx.TensorProto.DataType.Name(types.get(n.input[0], 0))
            assert types.get(n.input[0]) in INT8_TYPES, f"{n.name}: DequantizeLinear input {n.input[0]} is {kind}"
        else:  # the zero point fixes the quantized type
            assert len(n.input) == 3 and types.get(n.input[2]) in INT8_TYPES, f"{n.name}: not int8"
            assert types.get(n.output[0]) in INT8_TYPES
    # every Gemm/MatMul bias stays a float initializer
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
            assert inits[n.input[2]].data_type == onnx.TensorProto.FLOAT, n.name
    assert open_bundle(bundles[platform, "int8"]).extra["int8"]["bias"].startswith("float")


def _island_ops_present(graph) -> list[str]:
    """Names of the nodes that must be fp32 found by op type alone (fused or decomposed LayerNorm)."""
    names = [n.name for n in graph.node if n.op_type in ("LayerNormalization", "Softmax", "ReduceL2")]
    names += [n.name for n in graph.node if n.op_type in ("ReduceMean", "Pow", "Sqrt")]  # opset-16 LayerNorm
    return names


@pytest.mark.parametrize("platform,precision", [(p, q) for p in TENSORRT_PLATFORMS for q in ("int8", "fp16")]
                         + [("jetson-orin-jp6", "fp32")])
def test_fp32_islands_are_marked_in_the_onnx_and_the_manifest(bundles, platform, precision):
    path = bundles[platform, precision]
    model = onnx.load(str(path / "image_encoder.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    islands = json.loads(props[tensorrt.ISLANDS_KEY])
    assert islands == open_bundle(path).extra["fp32_islands"]["image"]
    marked = set(islands["nodes"])
    by_name = {n.name: n for n in model.graph.node}
    needed = _island_ops_present(model.graph)
    assert needed and set(needed) <= marked
    assert sum(by_name[n].op_type == "Softmax" for n in marked) == 2  # one per block of the tiny model
    if platform == "jetson-xavier-jp5":  # decomposed: mean, sub, pow, mean, +eps, sqrt, div, *w, +b per LayerNorm
        ln = sum(1 for n in model.graph.node if n.op_type == "Sqrt")
        # ln_pre, two per block, ln_post on the class token and on the patches
        assert ln == 1 + 2 * 2 + 2 and sum(by_name[n].op_type == "Sub" for n in marked) == ln
        assert sum(by_name[n].op_type in ("Mul", "Add") for n in marked) >= 3 * ln  # eps, scale, shift
    # the L2 normalization: ReduceL2 and the division of each output by its norm
    producer = {o: n for n in model.graph.node for o in n.output}
    for out in ("image_embeds", "patch_embeds"):
        last = producer[out]
        while last.op_type == "Cast":  # fp16 graphs cast back to the float32 output
            last = producer[last.input[0]]
        assert last.op_type == "Div" and last.name in marked
        assert any(producer[i].op_type == "ReduceL2" or producer[i].name in marked for i in last.input[1:])
    # the quantized / heavy ops are never islands
    assert not any(by_name[n].op_type in ("MatMul", "Gemm", "Conv", "QuantizeLinear", "DequantizeLinear")
                   for n in marked)
    outputs = {o for n in marked for o in by_name[n].output}
    assert set(islands["outputs"]) == outputs


def test_cpu_bundles_carry_no_islands(bundles):
    m = open_bundle(bundles["cpu", "int8"])
    assert "fp32_islands" not in m.extra
    props = {p.key for p in onnx.load(str(bundles["cpu", "int8"] / "image_encoder.onnx")).metadata_props}
    assert tensorrt.ISLANDS_KEY not in props


def _parser_like_layers(graph) -> list[tuple[str, str, list[str]]]:
    """Layer records as the TensorRT ONNX parser names them: a layer per node, named after the node and
    writing its outputs; auxiliary layers (a LayerNorm importer's reshapes) with generated names that write
    internal tensors; constants for the initializers."""
    kinds = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "ReduceL2": "REDUCE",
             "ReduceMean": "REDUCE", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION",
             "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Sqrt": "UNARY"}
    layers = [(f"{i.name}_const", "LayerType.CONSTANT", [i.name]) for i in graph.initializer]
    for n in graph.node:
        if n.op_type == "LayerNormalization":  # the importer adds a shuffle with a generated name first
            layers.append((f"(Unnamed Layer* {len(layers)}) [Shuffle]", "LayerType.SHUFFLE", [f"{n.name}_tmp"]))
        layers.append((n.name, f"LayerType.{kinds.get(n.op_type, 'ELEMENTWISE')}", list(n.output)))
    return layers


@pytest.mark.parametrize("platform", ["jetson-orin-jp6", "jetson-xavier-jp5"])
def test_layers_to_pin_are_the_islands_and_nothing_else(bundles, platform):
    model = onnx.load(str(bundles[platform, "int8"] / "image_encoder.onnx"))
    islands = tensorrt.fp32_islands(model.graph)
    layers = _parser_like_layers(model.graph)
    pinned = {layers[i][0] for i in tensorrt.layers_to_pin(layers, islands)}
    assert pinned == set(islands["nodes"])
    kinds = {layers[i][1] for i in tensorrt.layers_to_pin(layers, islands)}
    assert not kinds & {"LayerType.MATRIX_MULTIPLY", "LayerType.QUANTIZE", "LayerType.DEQUANTIZE",
                        "LayerType.CONSTANT", "LayerType.CONVOLUTION"}
    # a layer renamed by the parser is still found by the island tensor it writes
    renamed = [(f"{name} [renamed]", kind, outs) for name, kind, outs in layers]
    assert {renamed[i][0] for i in tensorrt.layers_to_pin(renamed, islands)} == {f"{n} [renamed]" for n in pinned}
    # and a normalization / softmax layer whatever its name and outputs
    extra = [("foo", "SOFTMAX", ["x"]), ("bar", "NORMALIZATION", ["y"]), ("baz", "MATRIX_MULTIPLY", ["z"])]
    assert tensorrt.layers_to_pin(extra, {}) == [0, 1]


def test_engine_plan_strong_typing_on_9_and_pins_on_8():
    plan = tensorrt.engine_plan
    for bundle in ("fp32", "fp16", "int8"):
        p = plan("10.3.0.26", bundle, bundle)
        assert p.strongly_typed and p.flags == () and not p.pin_fp32 and p.typing == "strong"
    assert plan("8.6.2", "int8", "int8") == tensorrt.EnginePlan("int8", False, ("INT8", "FP16"), True)
    assert plan("8.5.2.2", "fp16", "fp16") == tensorrt.EnginePlan("fp16", False, ("FP16",), True)
    assert plan("8.5.2.2", "fp32", "fp32") == tensorrt.EnginePlan("fp32", False, (), False)
    # fp16 kernels for an fp32 graph cannot be strongly typed: weak, pinned
    assert plan("10.3.0.26", "fp32", "fp16") == tensorrt.EnginePlan("fp16", False, ("FP16",), True)
    # bindings without the STRONGLY_TYPED flag fall back to pins
    assert plan("9.0.0", "int8", "int8", strong_typing_api=False).pin_fp32


def test_build_engine_defaults_to_the_bundle_precision(bundles):
    int8 = open_bundle(bundles["jetson-orin-jp6", "int8"])
    assert tensorrt.engine_precision(int8, None) == "int8"
    assert tensorrt.engine_precision(open_bundle(bundles["jetson-orin-jp6", "fp16"]), None) == "fp16"
    fp32 = open_bundle(bundles["jetson-orin-jp6", "fp32"])
    assert tensorrt.engine_precision(fp32, None) == "fp32" and tensorrt.engine_precision(fp32, "fp16") == "fp16"
    with pytest.raises(ConfigError, match="Q/DQ network.*--int8"):
        tensorrt.engine_precision(int8, "fp16")
    with pytest.raises(ConfigError, match="needs an int8 bundle"):
        tensorrt.engine_precision(fp32, "int8")
    with pytest.raises(ConfigError, match="weights are fp16"):
        tensorrt.engine_precision(open_bundle(bundles["jetson-orin-jp6", "fp16"]), "fp32")
    # the CLI passes no precision unless asked, and an int8 bundle passes validation up to TensorRT itself
    from vlmedge.cli import build_parser

    args = build_parser().parse_args(["build-engine", str(bundles["jetson-orin-jp6", "int8"])])
    assert args.precision is None
    try:
        import tensorrt as _trt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            tensorrt.build_engine(bundles["jetson-orin-jp6", "int8"])
    with pytest.raises(ConfigError, match="Q/DQ network"):
        tensorrt.build_engine(bundles["jetson-orin-jp6", "int8"], precision="fp16")
    with pytest.raises(ConfigError, match="quantized for the CPU"):
        tensorrt.build_engine(bundles["cpu", "int8"])


def test_engine_names_carry_the_full_tensorrt_version():
    gpu = tensorrt.GpuInfo("Orin", (8, 7))
    assert tensorrt.engine_name("image_encoder.onnx", "10.3.0.26", gpu, "int8") == \
        "image_encoder.trt10.3.0.26.sm87.int8.engine"
    assert tensorrt.engine_name("image_encoder.onnx", "8.5.2.2", tensorrt.GpuInfo("Xavier", (7, 2)), "fp16") == \
        "image_encoder.trt8.5.2.2.sm72.fp16.engine"


def test_fp32_islands_of_a_graph_without_any():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    assert tensorrt.fp32_islands(graph) == {"nodes": [], "outputs": []}
    # a ReduceMean that is not a LayerNorm is left alone
    nodes = [onnx.helper.make_node("ReduceMean", ["x"], ["m"], name="mean"),
             onnx.helper.make_node("Sub", ["x", "m"], ["y"], name="sub")]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y])
    assert tensorrt.fp32_islands(graph)["nodes"] == []
    assert np.array_equal(tensorrt.layers_to_pin([], {}), [])


@pytest.mark.parametrize("platform", ["jetson-orin-jp6", "jetson-xavier-jp5"])
def test_fp16_bundles_compute_the_islands_in_float32_end_to_end(bundles, platform):
    """A strongly typed TensorRT network runs what the ONNX types say: every island node of an fp16 bundle
    reads and writes float32, also between two island nodes (no float16 round trip of a variance)."""
    model = onnx.load(str(bundles[platform, "fp16"] / "image_encoder.onnx"))
    types = _value_types(model)
    islands = set(json.loads({p.key: p.value for p in model.metadata_props}[tensorrt.ISLANDS_KEY])["nodes"])
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    for n in model.graph.node:
        if n.name not in islands:
            continue
        for v in list(n.input) + list(n.output):
            if v and types.get(v) in floats:
                assert types[v] == onnx.TensorProto.FLOAT, f"{n.name} ({n.op_type}): {v} is float16"
    heavy = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert heavy and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in heavy)  # still an fp16 network
