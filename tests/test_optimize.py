"""vlmedge.export.optimize: graph passes on the ONNX Runtime CPU form of an int8 image encoder, run on the
tiny int8 bundle's real encoder (2 layers) with real ONNX Runtime sessions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vlmedge.errors import ConfigError
from vlmedge.export import optimize


@pytest.fixture(scope="module")
def int8_encoder(tmp_path_factory):
    """A tiny int8 bundle in ONNX Runtime's CPU form with float attention: what these passes rewrite (none is a
    default; since 2026-12-01 the cpu recipe quantizes q @ k^T, whose attention core they do not match)."""
    import dataclasses

    from vlmedge import platforms
    from vlmedge.export.bundle import export_bundle

    from _bundles import tiny_clip

    saved = platforms.PLATFORMS["cpu"]
    platforms.PLATFORMS["cpu"] = dataclasses.replace(
        saved, int8=dataclasses.replace(saved.int8, int8_attention_scores=False, openvino_qdq=False))
    try:
        bundle = tmp_path_factory.mktemp("optimize") / "int8"
        export_bundle(tiny_clip(0), bundle, precision="int8", calib="synthetic", calib_count=4)
    finally:
        platforms.PLATFORMS["cpu"] = saved
    return bundle / "image_encoder.onnx", bundle / "text_encoder.onnx"


def _run(model_or_path, x: np.ndarray):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)


def test_qattention_replaces_each_attention_core_and_its_projections_exactly(int8_encoder, pixels):
    path, _ = int8_encoder
    model = onnx.load(str(path))
    before = _ops(model)
    assert before["MatMulIntegerToFloat"] >= 6 and before["Softmax"] == 2  # the CPU form of 2 layers
    assert optimize.optimize_model(model, ("qattention",)) == {"qattention": 2}
    after = _ops(model)
    assert after["QAttention"] == 2 and after["Softmax"] == 0
    assert after["FusedMatMul"] == 0 and after["MatMul"] == 2  # left: the float output projections (image, patches)
    assert after["MatMulIntegerToFloat"] == before["MatMulIntegerToFloat"] - 6
    assert after["Transpose"] == before["Transpose"] - 8  # q, k, v head splits and the merge, per layer
    onnx.checker.check_model(model)
    # the same int8 weights, scales and zero points and the same float core: the same numbers
    for a, b in zip(_run(path, pixels), _run(model, pixels)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mha_and_skip_layernorm_keep_the_outputs(int8_encoder, pixels):
    path, _ = int8_encoder
    ref = _run(path, pixels)
    for passes, op, count in ((("mha",), "MultiHeadAttention", 2), (("skip_layernorm",), "SkipLayerNormalization", 3),
                              (("qattention", "skip_layernorm"), "QAttention", 2)):
        model = onnx.load(str(path))
        counts = optimize.optimize_model(model, passes)
        assert counts[passes[0]] == count and _ops(model)[op] == count, passes
        for a, b in zip(ref, _run(model, pixels)):
            # float sums in another order: a few int8 roundings downstream may flip; embeddings stay put
            cos = (a.reshape(len(a), -1) * b.reshape(len(b), -1)).sum(-1) / (
                np.linalg.norm(a.reshape(len(a), -1), axis=-1) * np.linalg.norm(b.reshape(len(b), -1), axis=-1))
            assert cos.min() > 0.999, (passes, cos)


def test_skip_layernorm_hands_the_residual_sum_on(int8_encoder):
    model = onnx.load(str(int8_encoder[0]))
    optimize.optimize_model(model, ("skip_layernorm",))
    sln = [n for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    readers = {i for n in model.graph.node if n.op_type != "SkipLayerNormalization" for i in n.input}
    # the residual stream goes on to the next block's Add: those nodes expose the sum as output 3
    assert any(len(n.output) == 4 and n.output[3] in readers for n in sln)


def test_passes_leave_a_masked_attention_alone(int8_encoder):
    # the text encoder's causal attention adds a mask before its Softmax: not the pattern, nothing changes
    model = onnx.load(str(int8_encoder[1]))
    before = model.SerializeToString()
    assert optimize.optimize_model(model, ("qattention", "mha")) == {"qattention": 0, "mha": 0}
    assert model.SerializeToString() == before


def test_optimize_file_writes_the_result_and_default_passes_exist(int8_encoder, tmp_path, pixels):
    src, dst = int8_encoder[0], tmp_path / "out.onnx"
    counts = optimize.optimize_file(src, dst, ("qattention",))
    assert counts == {"qattention": 2} and _ops(onnx.load(str(dst)))["QAttention"] == 2
    assert any(o.domain == "com.microsoft" for o in onnx.load(str(dst)).opset_import)
    assert all(p in optimize.PASSES for p in optimize.DEFAULT_PASSES)


def test_an_unknown_pass_is_an_error_naming_it(int8_encoder):
    with pytest.raises(ConfigError, match=r"unknown graph pass\(es\) \['flash'\].*'mha'"):
        optimize.optimize_model(onnx.load(str(int8_encoder[0])), ("flash",))


def test_fold_key_transpose_gives_the_same_numbers(int8_encoder, pixels):
    path, _ = int8_encoder
    model = onnx.load(str(path))
    assert optimize.optimize_model(model, ("fold_key_transpose",)) == {"fold_key_transpose": 2}
    perms = [list(onnx.helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Transpose"
             for a in n.attribute if a.name == "perm"]
    assert [0, 2, 3, 1] not in perms
    scores = [n for n in model.graph.node if n.op_type == "FusedMatMul"]
    assert len(scores) == 2 and all(
        onnx.helper.get_attribute_value(a) == 1 for n in scores for a in n.attribute if a.name == "transB")
    for a, b in zip(_run(path, pixels), _run(model, pixels)):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the same products with B read transposed


def test_no_passes_in_place_leaves_the_file_untouched(int8_encoder, tmp_path):
    # what export_bundle does with DEFAULT_PASSES empty: the saved encoder stays byte for byte what it was
    path = tmp_path / "enc.onnx"
    path.write_bytes(int8_encoder[0].read_bytes())
    before = path.stat().st_mtime_ns, path.read_bytes()
    assert optimize.optimize_file(path, path, ()) == {}
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
