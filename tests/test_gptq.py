"""GPTQ rounding of the int8 weights (export/gptq.py) and the float output projections of the cpu int8 recipe."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from vlmedge.export import calibration  # noqa: E402
from vlmedge.export.gptq import gptq_int8, output_errors  # noqa: E402
from vlmedge.export.onnx_export import export_image_encoder  # noqa: E402
from vlmedge.export.quantize import output_matmuls, quantize_int8  # noqa: E402
from vlmedge.platforms import PLATFORMS, Int8Recipe  # noqa: E402
from vlmedge.preprocess import preprocess  # noqa: E402
from vlmedge.spec import PreprocessSpec  # noqa: E402

from _bundles import tiny_clip  # noqa: E402


def _correlated_inputs(rows: int, n: int, rng) -> np.ndarray:
    """Inputs with correlated features and a few strong ones, as a transformer's LayerNorm outputs have."""
    mix = np.eye(n) + 0.5 * rng.normal(0, 1, (n, n)) / np.sqrt(n)
    x = rng.normal(0, 1, (rows, n)) @ mix
    x[:, :4] *= 8
    return x


def _nearest(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(w / s), -127, 127)


def test_gptq_lowers_the_output_error_on_held_out_inputs_with_the_same_scales():
    rng = np.random.default_rng(0)
    n, out = 96, 48
    w = rng.normal(0, 0.05, (n, out))
    s = np.abs(w).max(axis=0) / 127  # per output column, as quantize_static chooses them (symmetric int8)
    calib, held_out = np.split(_correlated_inputs(4000, n, rng), 2)  # one distribution, two samples
    q = gptq_int8(w, s, calib.T @ calib / len(calib))
    assert q.dtype == np.int8 and q.shape == w.shape and np.abs(q.astype(int)).max() <= 127
    h = held_out.T @ held_out / len(held_out)
    nearest, gptq = output_errors(w, h, _nearest(w, s) * s, q * s)
    assert gptq < 0.8 * nearest, (nearest, gptq)
    assert 0.02 < np.mean(q != _nearest(w, s)) < 0.5  # the same grid: most values stay, some move one step


def test_gptq_with_uncorrelated_inputs_is_nearest_rounding_and_keeps_the_range():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (32, 16))
    s = np.abs(w).max(axis=0) / 127
    h = np.diag(rng.uniform(0.5, 2.0, 32))
    assert np.array_equal(gptq_int8(w, s, h), _nearest(w, s).astype(np.int8))
    # 7-bit weights (reduce_range): the integers stay inside the range asked for
    x = _correlated_inputs(500, 32, rng)
    q = gptq_int8(w, s, x.T @ x / 500, -64, 64)
    assert q.min() >= -64 and q.max() <= 64
    # an input that is always 0 leaves H singular: its row is rounded on its own
    h0 = x.T @ x / 500
    h0[5, :] = h0[:, 5] = 0
    assert np.array_equal(gptq_int8(w, s, h0)[5], _nearest(w[5:6], s)[0].astype(np.int8))
    with pytest.raises(ValueError, match="do not fit"):
        gptq_int8(w, s, np.eye(31))


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    clip = tiny_clip(seed=3)
    path = root / "image_raw.onnx"
    export_image_encoder(clip.model, path, opset=17)
    static = root / "image_raw_static.onnx"  # what a TensorRT platform traces (batch 1)
    export_image_encoder(clip.model, static, opset=PLATFORMS["jetson-orin-jp6"].opset, dynamic_batch=False)
    return clip, path, root, static


def test_output_matmuls_are_the_projections_found_through_the_outputs_not_through_shapes(tiny_graph):
    _, path, _, _ = tiny_graph
    # the traced graph reads the patch embedding's shape (Shape -> ... -> Reshape of the patch outputs):
    # following that edge would also call the patch embedding an output projection
    graph = onnx.load(str(path)).graph
    assert any(n.op_type == "Shape" for n in graph.node)
    assert output_matmuls(graph) == ["/visual/proj/MatMul", "/visual/proj_1/MatMul"]


def _patch_embeds(model_path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(["patch_embeds"], {"pixel_values": p[None]})[0] for p in pixels])


@pytest.mark.parametrize("platform", ["cpu", "jetson-orin-jp6"])
def test_gptq_keeps_the_graph_and_scales_and_brings_the_patch_embeddings_closer_to_float(tiny_graph, platform):
    """quantize_int8 with the platform's recipe against the same recipe rounding to nearest: the same graph and the
    same per-channel scales, other integers, and patch embeddings closer to the float graph's on held-out frames.
    The TensorRT platform's static-batch graph holds some projections as Gemm."""
    from onnx import numpy_helper

    clip, dynamic, root, static = tiny_graph
    path = dynamic if platform == "cpu" else static
    spec = clip.preprocess or PreprocessSpec(size=clip.model.spec.vision.image_size)  # OpenAI's mean and std
    reader = calibration.frame_reader(calibration.frames_synthetic(24, seed=0), spec)
    recipe = PLATFORMS[platform].int8
    assert recipe.weight_rounding == "gptq"
    out = {}
    for rounding in ("nearest", "gptq"):
        out[rounding] = root / f"{platform}-{rounding}.onnx"
        quantize_int8(path, out[rounding], reader, dataclasses.replace(recipe, weight_rounding=rounding),
                      preprocess=spec)
        reader.rewind()
    models = {k: onnx.load(str(v)) for k, v in out.items()}
    assert [n.op_type for n in models["nearest"].graph.node] == [n.op_type for n in models["gptq"].graph.node]
    inits = {k: {i.name: numpy_helper.to_array(i) for i in m.graph.initializer} for k, m in models.items()}
    producer = {o: n for n in models["gptq"].graph.node for o in n.output}
    weights = [producer[n.input[1]] for n in models["gptq"].graph.node if n.op_type in ("MatMul", "Gemm")
               and n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"
               and producer[n.input[1]].input[0] in inits["gptq"]]  # not q @ k^T's dequantized k (cpu)
    # 2 blocks x 6 projections, + the patch embedding (cpu: a MatMul) or + the output projections (TensorRT)
    assert len(weights) >= 13
    moved = {}
    for dq in weights:
        np.testing.assert_array_equal(inits["gptq"][dq.input[1]], inits["nearest"][dq.input[1]])  # same scales
        moved[dq.input[0]] = int(np.sum(inits["gptq"][dq.input[0]] != inits["nearest"][dq.input[0]]))
    assert sum(v > 0 for v in moved.values()) >= len(weights) - 1, moved
    frames = calibration.frames_synthetic(8, seed=5000)
    pixels = np.concatenate([preprocess(f, spec) for f in frames])
    ref = _patch_embeds(path, pixels)
    err = {k: float(np.mean((_patch_embeds(v, pixels) - ref) ** 2)) for k, v in out.items()}
    assert err["gptq"] < err["nearest"], err
    if platform == "cpu":  # the output projections stay float: float32 weights, no Q/DQ
        outputs = output_matmuls(onnx.load(str(path)).graph)
        projections = [n for n in models["gptq"].graph.node if n.name in outputs]
        assert [n.op_type for n in projections] == ["MatMul", "MatMul"]
        assert all(inits["gptq"][n.input[1]].dtype == np.float32 for n in projections)


def test_weight_rounding_is_validated():
    from vlmedge.errors import ConfigError

    with pytest.raises(ConfigError, match="weight_rounding"):
        Int8Recipe(weight_rounding="adaround")
    assert Int8Recipe().to_dict()["weight_rounding"] == "gptq"
    assert PLATFORMS["jetson-orin-jp6"].int8.weight_rounding == "gptq"
    assert PLATFORMS["jetson-orin-jp6"].int8.float_output_projections is False


def test_cli_export_chooses_the_weight_rounding_and_int8_outputs(tmp_path, capsys):
    """--weight-rounding nearest --int8-outputs: the recipe of before (recorded in the manifest, the output
    projections quantized); a rounding that does not exist is refused before any work, naming the choices."""
    from vlmedge.cli import main
    from vlmedge.export.loaders import save_clip
    from vlmedge.manifest import open_bundle

    src = str(save_clip(tiny_clip(seed=4), tmp_path / "checkpoint"))
    assert main(["export", src, "--out", str(tmp_path / "b"), "--precision", "int8", "--calib", "synthetic",
                 "--calib-count", "4", "--weight-rounding", "nearest", "--int8-outputs", "--no-openvino-file"]) == 0
    m = open_bundle(tmp_path / "b")
    recipe = m.extra["int8"]["recipe"]
    assert recipe["weight_rounding"] == "nearest" and recipe["float_output_projections"] is False
    assert recipe["openvino_qdq"] is False and m.image_openvino is None
    assert not (tmp_path / "b" / "image_encoder_openvino.onnx").exists()
    rows = m.extra["int8"]["layer_errors"]
    weights = [r for r in rows if r["weight_db"] is not None]  # the others: each block's q @ k^T
    assert len(weights) == m.extra["int8"]["qdq"]["weight_matmuls"] == 15  # the output projections quantized too
    assert len(rows) == 17
    capsys.readouterr()
    assert main(["export", src, "--out", str(tmp_path / "c"), "--precision", "int8", "--calib", "synthetic",
                 "--weight-rounding", "adaround"]) != 0
    err = capsys.readouterr().err
    assert "adaround" in err and "nearest" in err and "gptq" in err
    assert not (tmp_path / "c").exists()
