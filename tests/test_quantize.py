"""int8 static QDQ and fp16 bundles, and the calibration readers (image folder, video, synthetic)."""

from __future__ import annotations

import logging
from collections import Counter

import cv2
import numpy as np
import onnx
import pytest
import torch

from vlmedge.errors import ConfigError, InputError  # noqa: E402
from vlmedge.export import calibration  # noqa: E402
from vlmedge.export.bundle import export_bundle  # noqa: E402
from vlmedge.export.quantize import Int8Recipe, qdq_report  # noqa: E402
from vlmedge.export.verify import agreement, cosine_rows  # noqa: E402
from vlmedge.manifest import open_bundle  # noqa: E402
from vlmedge.preprocess import preprocess  # noqa: E402
from vlmedge.runtime.grounding.encoders import BundleEncoders  # noqa: E402
from vlmedge.spec import PreprocessSpec  # noqa: E402

from _bundles import tiny_clip  # noqa: E402

torch.set_num_threads(1)
QUERIES = ["the red cup", "a blue ball", "the green bottle", "a yellow box", "background", "a table"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    model = tiny_clip(seed=2)
    return {
        "fp32": (export_bundle(model, root / "fp32"), root / "fp32"),
        "int8": (export_bundle(model, root / "int8", precision="int8", calib="synthetic", calib_count=16),
                 root / "int8"),
        "int8-no-ov": (export_bundle(model, root / "int8-no-ov", precision="int8", calib="synthetic",
                                     calib_count=16, openvino_file=False), root / "int8-no-ov"),
        "int8-trt": (export_bundle(model, root / "int8-trt", precision="int8", platform="jetson-orin-jp6",
                                   calib="synthetic", calib_count=16), root / "int8-trt"),
        "fp16": (export_bundle(model, root / "fp16", precision="fp16", platform="cuda"), root / "fp16"),
    }


def _eval_pixels(spec, n: int = 6) -> np.ndarray:
    """Held-out synthetic scenes (the calibration distribution, other seeds)."""
    frames = calibration.frames_synthetic(n, seed=5000)
    return np.concatenate([preprocess(f, spec) for f in frames])


def _compare(bundles, name: str) -> dict:
    ref = BundleEncoders(bundles["fp32"][1], providers=["CPUExecutionProvider"])
    test = BundleEncoders(bundles[name][1], providers=["CPUExecutionProvider"])
    pixels = _eval_pixels(ref.manifest.preprocess)
    return agreement(ref.encode_image(pixels), test.encode_image(pixels), ref.encode_text(QUERIES))


@pytest.mark.parametrize("name", ["int8", "int8-trt"])
def test_int8_matches_fp32_on_calibration_like_frames(bundles, name):
    rep = _compare(bundles, name)
    print(f"{name}: {rep}")  # measured figures, visible with -s
    assert rep["image_cosine_mean"] >= 0.99 and rep["image_cosine_min"] >= 0.99
    assert rep["patch_argmax_agreement"] >= 0.95
    m = bundles[name][0]
    stored = m.extra["int8_report"]  # the export measured it too, on its own held-out frames
    # (10 report queries on a random model: the per-patch label margins are tiny, so a looser bound)
    assert stored["image_cosine_min"] >= 0.99 and stored["patch_argmax_agreement"] >= 0.93
    assert m.extra["encoder_precision"] == {"image": "int8", "text": "int8"}
    assert m.extra["int8"]["calibration"]["frames"] == 16
    assert stored["text_cosine_min"] >= 0.995  # the int8 text encoder vs the torch model's text embeddings


def _check_qdq_counts(rep: dict, layers: int = 2, conv_as_matmul: bool = False, float_outputs: int = 0,
                      int8_scores: bool = False) -> None:
    assert rep["QuantizeLinear"] > 0 and rep["DequantizeLinear"] > 0
    # every weight MatMul (q, k, v, out, fc1, fc2 per block + the output projections unless they stay float
    # (float_outputs: image and patch); + the patch embedding when its Conv was rewritten as a MatMul) reads int8
    # inputs (static-batch graphs hold them as Gemm after the basic optimization); q @ k^T too with int8_scores
    scores = layers if int8_scores else 0
    quantized = rep["quantized"].get("MatMul", 0) + rep["quantized"].get("Gemm", 0) - scores
    assert quantized >= layers * 6 + int(conv_as_matmul) + (0 if float_outputs else 1)
    assert rep["weight_matmuls"] == quantized + float_outputs  # attn @ v (and q @ k^T unless int8_scores) float
    assert rep["float"].get("MatMul", 0) == 2 * layers - scores + float_outputs
    for op in ("LayerNormalization", "Softmax", "Sigmoid", "ReduceL2", "Conv"):
        assert op not in rep["quantized"], f"{op} must stay float"
        if op != "Conv" or not conv_as_matmul:
            assert rep["float"].get(op, 0) > 0
    if conv_as_matmul:
        assert "Conv" not in rep["float"]


def test_int8_qdq_graph_quantizes_weight_matmuls_and_keeps_norms_float(bundles):
    """The TensorRT-platform bundle keeps the QDQ graph itself: count its nodes."""
    path = bundles["int8-trt"][1] / "image_encoder.onnx"
    rep = qdq_report(path)
    _check_qdq_counts(rep)
    assert bundles["int8-trt"][0].extra["int8"]["form"] == "QDQ"
    graph = onnx.load(str(path)).graph
    # per-channel weights: the weight DequantizeLinear scales are vectors
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    weight_dq = [producer[n.input[1]] for n in graph.node if n.op_type in ("MatMul", "Gemm")
                 and n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(weight_dq) == rep["weight_matmuls"]
    assert all(len(inits[dq.input[1]].dims) == 1 and inits[dq.input[1]].dims[0] > 1 for dq in weight_dq)


def test_int8_cpu_bundle_has_the_qdq_graph_with_int8_attention_scores_for_openvino(bundles):
    """The cpu default saves, beside ONNX Runtime's CPU form, the QDQ graph it was fused from for OpenVINO
    (encoders.image_openvino): standard QDQ ops with q@k^T in int8 on signed symmetric grids, the form OpenVINO
    runs in its int8 attention kernel (the CPU form turns int8 q and k into uint8 with a zero point); attn@v and
    the output projections float; uint8 activations and int8 per-channel weights elsewhere."""
    from onnx import numpy_helper

    m, path = bundles["int8"]
    recipe = m.extra["int8"]["recipe"]
    assert m.extra["int8"]["form"].startswith("onnxruntime-cpu") and recipe["openvino_qdq"] is True
    assert recipe["int8_attention_scores"] is True and recipe["float_output_projections"] is True
    assert m.image_openvino is not None and m.image_openvino.file == "image_encoder_openvino.onnx"
    assert (m.image_openvino.inputs, m.image_openvino.outputs) == (m.image_encoder.inputs, m.image_encoder.outputs)
    assert m.image_file("openvino") in m.files and m.image_file("onnxruntime") == "image_encoder.onnx"
    graph = onnx.load(str(path / "image_encoder_openvino.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    ops = Counter(n.op_type for n in graph.node)
    assert ops["MatMulIntegerToFloat"] == 0 and ops["Softmax"] == 2

    def dq_of(tensor):
        n = producer.get(tensor)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    consts = set(inits)
    activation_mm = [n for n in graph.node if n.op_type == "MatMul" and dq_of(n.input[1]) is not None
                     and dq_of(n.input[1]).input[0] not in consts]
    scores = [n for n in activation_mm if producer[n.input[0]].op_type == "DequantizeLinear"]
    assert len(scores) == 2 == len(activation_mm)  # one q@k^T per layer; nothing else activation x activation
    for n in scores:
        for t in n.input[:2]:
            dq = dq_of(t)
            assert inits[dq.input[2]].dtype == np.int8 and int(inits[dq.input[2]]) == 0  # signed, symmetric
    attn_v = [n for n in graph.node if n.op_type == "MatMul" and producer[n.input[0]].op_type == "Softmax"]
    assert len(attn_v) == 2 and all(dq_of(n.input[1]) is None for n in attn_v)  # float
    weight_dq = [dq_of(n.input[1]) for n in graph.node if n.op_type == "MatMul" and dq_of(n.input[1]) is not None
                 and dq_of(n.input[1]).input[0] in consts]
    _check_qdq_counts(m.extra["int8"]["qdq"], conv_as_matmul=True, float_outputs=2, int8_scores=True)
    assert len(weight_dq) == m.extra["int8"]["qdq"]["weight_matmuls"] - 2  # the output projections float
    assert {inits[dq.input[0]].dtype for dq in weight_dq} == {np.dtype(np.int8)}
    assert all(inits[dq.input[1]].ndim == 1 for dq in weight_dq)  # per output channel
    # every other activation: uint8 (the U8S8 kernels); the patch embedding reads the pixels at scale 1
    act_zps = [inits[dq.input[2]] for n in graph.node if n.op_type == "MatMul" and n not in scores
               for dq in [dq_of(n.input[0])] if dq is not None]
    assert act_zps and {z.dtype for z in act_zps} == {np.dtype(np.uint8)}


def test_the_openvino_file_is_the_same_quantization_and_can_be_left_out(bundles):
    """The two image encoder files of a cpu bundle compute the same numbers (one quantization, two forms: ONNX
    Runtime runs both here); --no-openvino-file leaves the second out and the manifest says so."""
    import onnxruntime as ort

    m, path = bundles["int8"]
    x = _eval_pixels(m.preprocess, 2)
    outs = [ort.InferenceSession(str(path / f), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})
            for f in (m.image_encoder.file, m.image_openvino.file)]
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, atol=1e-4)
    m2, path2 = bundles["int8-no-ov"]
    assert m2.image_openvino is None and m2.extra["int8"]["recipe"]["openvino_qdq"] is False
    assert not (path2 / "image_encoder_openvino.onnx").exists() and m2.image_file("openvino") == "image_encoder.onnx"
    assert m2.extra["int8"]["recipe"]["int8_attention_scores"] is True  # the same quantization recipe otherwise


def test_int8_cpu_bundle_is_ort_fused_form_of_the_same_quantization(bundles):
    m, path = bundles["int8"]
    # the QDQ graph it was fused from; the image and patch output projections stay float
    _check_qdq_counts(m.extra["int8"]["qdq"], conv_as_matmul=True, float_outputs=2, int8_scores=True)
    assert m.extra["int8"]["recipe"]["conv_as_matmul"] is True
    assert m.extra["int8"]["recipe"]["float_output_projections"] is True
    assert m.extra["int8"]["form"].startswith("onnxruntime-cpu")
    graph = onnx.load(str(path / "image_encoder.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # the int8 weight MatMuls (all but the 2 float output projections) and the 2 layers' q @ k^T
    assert ops.count("MatMulIntegerToFloat") == m.extra["int8"]["qdq"]["weight_matmuls"] - 2 + 2
    inits_f = {i.name: i.data_type for i in graph.initializer}
    outputs = [n for n in graph.node if n.name in ("/visual/proj/MatMul", "/visual/proj_1/MatMul")]
    assert [n.op_type for n in outputs] == ["MatMul", "MatMul"]  # float, weights float32
    assert all(inits_f[n.input[1]] == onnx.TensorProto.FLOAT for n in outputs)
    assert "DequantizeLinear" not in ops and "LayerNormalization" in ops and "Softmax" in ops
    inits = {i.name: i for i in graph.initializer}
    # biases folded into the int8 MatMuls (2 layers x 6 projections with bias, and the patch embedding's, which
    # carries the pixel normalization's offset: exact_pixels)
    assert sum(1 for n in graph.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) == 7) == 13
    # uint8 activations (U8S8, the fast x86 path) and int8 weights
    zps = {inits[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear"}
    assert zps == {onnx.TensorProto.UINT8}
    assert {inits[n.input[1]].data_type for n in graph.node if n.op_type == "MatMulIntegerToFloat"
            and n.input[1] in inits} == {onnx.TensorProto.INT8}
    text_ops = {n.op_type for n in onnx.load(str(path / "text_encoder.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in text_ops and "QuantizeLinear" not in text_ops  # dynamic scales, no calib


def test_tensorrt_int8_is_symmetric_and_static(bundles):
    m, path = bundles["int8-trt"]
    graph = onnx.load(str(path / "image_encoder.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # int8, zero point 0
    assert m.image_encoder.inputs[0].shape == (1, 3, 64, 64)
    assert m.extra["int8"]["recipe"]["symmetric_activations"] is True


def test_fp16_bundle_runs_on_cpu_with_float32_io(bundles):
    m, path = bundles["fp16"]
    model = onnx.load(str(path / "image_encoder.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # LayerNorm kept in float32: its weights are float32
    inits = {i.name: i for i in model.graph.initializer}
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert ln and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in ln)
    rep = _compare(bundles, "fp16")
    assert rep["image_cosine_min"] >= 0.999 and rep["patch_cosine_min"] >= 0.99
    assert m.extra["encoder_precision"] == {"image": "fp16", "text": "fp16"}
    text = BundleEncoders(path, providers=["CPUExecutionProvider"]).encode_text(QUERIES)
    ref = BundleEncoders(bundles["fp32"][1]).encode_text(QUERIES)
    assert cosine_rows(text, ref).min() >= 0.999


def test_calibration_from_image_folder_and_video(tmp_path):
    frames = calibration.frames_synthetic(6, seed=11)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    (folder / "readme.txt").write_text("not an image")
    got = calibration.calibration_frames(folder, 4)
    assert len(got) == 4 and all(g.shape == (480, 640, 3) for g in got)
    assert np.array_equal(got[0], frames[0]) and np.array_equal(got[-1], frames[5])  # spread over the folder

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert writer.isOpened()
    for _ in range(3):
        for f in frames:
            writer.write(f)
    writer.release()
    vid = calibration.calibration_frames(video, 5)
    assert len(vid) == 5 and vid[0].shape == (480, 640, 3)

    spec = PreprocessSpec(size=(64, 64))
    reader = calibration.frame_reader(got, spec)
    first = reader.get_next()["pixel_values"]
    assert first.shape == (1, 3, 64, 64) and first.dtype == np.float32
    assert np.array_equal(first, preprocess(got[0], spec))  # the runtime's own preprocessing
    n = 1 + sum(1 for _ in iter(reader.get_next, None))
    assert n == 4
    reader.rewind()
    assert np.array_equal(reader.get_next()["pixel_values"], first)


def test_calibration_errors(tmp_path):
    with pytest.raises(InputError, match="no images"):
        calibration.calibration_frames(tmp_path, 4)
    with pytest.raises(ConfigError, match="neither"):
        calibration.calibration_frames(tmp_path / "missing", 4)
    with pytest.raises(ConfigError, match="calib_count"):
        calibration.calibration_frames("synthetic", 0)
    with pytest.raises(ConfigError, match="activation"):
        Int8Recipe(activation="uint8", symmetric_activations=True)
    with pytest.raises(ConfigError, match="exact_pixels needs conv_as_matmul"):
        Int8Recipe(conv_as_matmul=False)
    with pytest.raises(ConfigError, match="exact_pixels needs"):
        Int8Recipe(activation="int8", symmetric_activations=True)


def test_int8_export_from_an_image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(calibration.frames_synthetic(5, seed=300)):
        cv2.imwrite(str(folder / f"{i}.jpg"), f)
    m = export_bundle(tiny_clip(seed=2), tmp_path / "b", precision="int8", calib=folder, calib_count=5,
                      preprocess_mode="full-frame")
    assert m.extra["int8"]["calibration"] == {"source": str(folder), "frames": 5,
                                              "preprocess": m.preprocess.to_dict()}
    assert m.preprocess.mode == "full-frame"
    assert m.extra["int8_report"]["image_cosine_min"] >= 0.99


def test_int8_on_the_trained_demo_model_when_present(tmp_path):
    """The acceptance bound on a trained model (skipped until `vlmedge train-demo` has been run)."""
    from vlmedge.embedded import embedded_model_dir
    from vlmedge.errors import ArtifactError

    try:
        src = embedded_model_dir()
    except ArtifactError as e:
        pytest.skip(str(e))
    fp32 = tmp_path / "fp32"
    export_bundle(src, fp32)
    m = export_bundle(src, tmp_path / "int8", precision="int8", calib_count=32)  # the demo model: synthetic
    ref = BundleEncoders(fp32)
    test = BundleEncoders(tmp_path / "int8")
    pixels = _eval_pixels(ref.manifest.preprocess, n=8)
    queries = QUERIES + ["a red cup", "a blue bowl", "a green bottle"]
    rep = agreement(ref.encode_image(pixels), test.encode_image(pixels), ref.encode_text(queries))
    text = cosine_rows(ref.encode_text(queries), test.encode_text(queries))
    print(f"demo model int8: {rep}; text cosine min {text.min():.5f} mean {text.mean():.5f}; "
          f"export report {m.extra['int8_report']}")
    assert m.extra["int8"]["calibration"]["source"] == "synthetic"
    assert rep["image_cosine_min"] >= 0.99 and rep["patch_argmax_agreement"] >= 0.95
    assert text.min() >= 0.995 and m.extra["int8_report"]["text_cosine_min"] >= 0.995


def _image_folder(tmp_path, n: int = 6, seed: int = 300):
    folder = tmp_path / "robot_frames"
    folder.mkdir()
    for i, f in enumerate(calibration.frames_synthetic(n, seed=seed)):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), f)
    return folder


def test_int8_of_a_real_checkpoint_needs_calibration_frames(tmp_path, capsys):
    """Not the demo model, no --calib: refused, saying what to pass; --calib synthetic is an explicit choice."""
    from vlmedge.cli import main
    from vlmedge.export.loaders import save_clip

    src = str(save_clip(tiny_clip(seed=2), tmp_path / "checkpoint"))
    assert main(["export", src, "--out", str(tmp_path / "b"), "--precision", "int8"]) == 1
    err = capsys.readouterr().err
    assert "int8 needs calibration frames" in err and "--calib" in err and "video" in err
    assert "--calib synthetic" in err and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="calibration frames"):
        export_bundle(tiny_clip(seed=2), tmp_path / "c", precision="int8")
    assert export_bundle(src, tmp_path / "d", precision="int8", calib="synthetic", calib_count=4
                         ).extra["int8"]["calibration"]["source"] == "synthetic"
    export_bundle(src, tmp_path / "e")  # fp32 needs no frames


def test_export_log_prints_the_per_layer_error_table_worst_first(tmp_path, capsys, caplog):
    from vlmedge.cli import main
    from vlmedge.export.loaders import save_clip

    src = str(save_clip(tiny_clip(seed=2), tmp_path / "checkpoint"))
    folder = _image_folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="vlmedge.export.bundle"):
        assert main(["export", src, "--out", str(tmp_path / "b"), "--precision", "int8", "--calib", str(folder),
                     "--calib-count", "6"]) == 0
    log_text = caplog.text
    assert "int8 error per layer on 4 calibration frames" in log_text
    assert "cumulative dB" in log_text and "this Q/DQ dB" in log_text and "weight dB" in log_text
    m = open_bundle(tmp_path / "b")
    rows = m.extra["int8"]["layer_errors"]
    # every quantized weight MatMul has a row (2 blocks x 6, the patch embedding), and each block's q @ k^T (q's
    # error, no weight); the projections of the class token and of the patches stay float (the cpu recipe's
    # float_output_projections)
    assert m.extra["int8"]["qdq"]["weight_matmuls"] == 15
    assert len(rows) == 15 and not any("/visual/proj" in r["layer"] for r in rows)
    scores = [r for r in rows if r["weight_db"] is None]
    assert len(scores) == 2 and all("/attn/" in r["layer"] for r in scores)
    cumulative = [r["cumulative_db"] for r in rows]
    assert cumulative == sorted(cumulative)  # worst first
    assert all(np.isfinite(r["qdq_db"]) and r["qdq_db"] > 10 for r in rows)
    assert all(r["weight_db"] > 20 for r in rows if r not in scores)
    assert rows[0]["layer"] in log_text.split("worst first):", 1)[1].splitlines()[2]  # the first row is the worst
    out = capsys.readouterr().out
    assert f"int8 worst layer: {rows[0]['layer']}" in out and out.count(" s\n") + out.count(" s  ") <= 1


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_percentile_and_entropy_calibration(tmp_path, method, caplog):
    folder = _image_folder(tmp_path, n=4)
    with caplog.at_level(logging.WARNING, logger="vlmedge.export.quantize"):
        m = export_bundle(tiny_clip(seed=2), tmp_path / "b", precision="int8", platform="jetson-orin-jp6",
                          calib=folder, calib_count=4, calib_method=method)
    # entropy through quantize_static is minmax in disguise (one KL candidate): the export says so
    assert any("same as 'minmax'" in r.getMessage() for r in caplog.records) == (method == "entropy")
    assert m.extra["int8"]["recipe"]["calibrate_method"] == method
    rep = m.extra["int8_report"]
    print(f"{method}: {rep}")
    assert rep["image_cosine_min"] >= 0.98 and rep["patch_argmax_agreement"] >= 0.9
    with pytest.raises(ConfigError, match="did you mean 'entropy'"):
        export_bundle(tiny_clip(seed=2), tmp_path / "c", precision="int8", calib=folder, calib_method="entropi")


def test_smooth_quant_needs_neural_compressor_and_a_valid_alpha(tmp_path):
    from vlmedge.errors import BackendUnavailable

    with pytest.raises(ConfigError, match=r"alpha.*\[0, 1\]"):
        export_bundle(tiny_clip(seed=2), tmp_path / "b", precision="int8", calib="synthetic", smooth_quant=1.5)
    try:
        import neural_compressor  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="neural-compressor"):
            export_bundle(tiny_clip(seed=2), tmp_path / "b", precision="int8", calib="synthetic", smooth_quant=0.5)
        assert not (tmp_path / "b").exists()
    else:
        m = export_bundle(tiny_clip(seed=2), tmp_path / "b", precision="int8", calib="synthetic", calib_count=4,
                          smooth_quant=0.5)
        assert m.extra["int8"]["smooth_quant"] == 0.5 and m.extra["int8_report"]["image_cosine_min"] >= 0.98


TEXT_QUERIES = ["the red cup", "a blue ball", "the cup next to the plate", "pick up the green block",
                "the second bottle from the left", "a yellow box on the table", "the black can behind the book",
                "every banana", "not the white plate", "the orange near the robot arm", "a photo of a dog",
                "the tallest bottle", "background", "a table", "a wall", "the floor"]


@pytest.mark.slow
def test_int8_text_encoder_of_a_full_clip_text_tower(tmp_path):
    """OpenAI CLIP's text tower shape (width 512, 12 layers, 8 heads, 49408 tokens, 77 positions; random weights)
    with a small vision tower: the int8 text encoder keeps cosine >= 0.995 with the fp32 one, at a quarter size."""
    from vlmedge.export.loaders import LoadedClip
    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec
    from vlmedge.tokenizer import ClipTokenizer

    torch.manual_seed(0)
    spec = ClipSpec(vision=VisionSpec(64, 16, 64, 1, 2), text=TextSpec(512, 12, 8, vocab_size=49408,
                                                                        context_length=77), embed_dim=512)
    clip = LoadedClip(CLIP(spec).eval(), ClipTokenizer.default(), None,
                      {"id": "random-clip-text-tower", "layout": "in-memory"})
    fp32 = export_bundle(clip, tmp_path / "fp32")
    m = export_bundle(clip, tmp_path / "int8", precision="int8", calib="synthetic", calib_count=2,
                      vocab=TEXT_QUERIES)
    ref = BundleEncoders(tmp_path / "fp32", providers=["CPUExecutionProvider"]).encode_text(TEXT_QUERIES)
    got = BundleEncoders(tmp_path / "int8", providers=["CPUExecutionProvider"]).encode_text(TEXT_QUERIES)
    cos = cosine_rows(ref, got)
    size32, size8 = fp32.files["text_encoder.onnx"]["bytes"], m.files["text_encoder.onnx"]["bytes"]
    print(f"full text tower int8 vs fp32 on {len(TEXT_QUERIES)} queries: cosine min {cos.min():.5f} "
          f"mean {cos.mean():.5f}; text_encoder.onnx {size32 / 1e6:.1f} -> {size8 / 1e6:.1f} MB")
    assert cos.min() >= 0.995 and m.extra["int8_report"]["text_cosine_min"] >= 0.995
    assert size8 < 0.3 * size32
    stored = np.load(tmp_path / "int8" / "text_embeddings.npz")["embeds"]  # the vocabulary from the int8 encoder
    assert cosine_rows(stored, got).min() >= 0.9999


def _model_with_twin_casts(second_cast_to: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    """What onnxruntime <= 1.30's float16 converter writes for a float16 initializer read by two float32 nodes:
    one ``b_cast_to_fp32_node`` per reader, same name, same output."""
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.array([0.5, -2.0], np.float16), "b")
    casts = [helper.make_node("Cast", ["b"], ["b_cast_to_fp32"], to=TensorProto.FLOAT, name="b_cast_to_fp32_node"),
             helper.make_node("Cast", ["b"], ["b_cast_to_fp32"], to=second_cast_to, name="b_cast_to_fp32_node")]
    graph = helper.make_graph(
        casts + [helper.make_node("Add", ["x", "b_cast_to_fp32"], ["s"], name="add"),
                 helper.make_node("Mul", ["s", "b_cast_to_fp32"], ["y"], name="mul")],
        "twins", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_twin_casts_of_older_onnxruntime_converters_are_merged():
    import onnxruntime as ort

    from vlmedge.export.quantize import drop_duplicate_nodes

    model = _model_with_twin_casts()
    with pytest.raises(Exception, match="same node name"):  # what ORT says about the converter's output
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert drop_duplicate_nodes(model) == 1
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, 3.0], np.float32)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, (x + [0.5, -2.0]) * [0.5, -2.0])


def test_two_different_producers_of_one_value_are_an_error_not_merged():
    from vlmedge.export.quantize import drop_duplicate_nodes

    model = _model_with_twin_casts(second_cast_to=onnx.TensorProto.DOUBLE)
    with pytest.raises(ValueError, match="'b_cast_to_fp32' is produced by two different nodes"):
        drop_duplicate_nodes(model)
    assert len(model.graph.node) == 4  # nothing removed


# ---------------------------------------------------------------------------------------- exact pixels
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _patch_conv_graph(bias: bool) -> onnx.ModelProto:
    """pixel_values [1, 3, 32, 32] -> a 16x16 stride-16 patch Conv (8 channels), random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (8, 3, 16, 16)).astype(np.float32), "w")]
    inputs = ["pixel_values", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, 8).astype(np.float32), "b"))
        inputs.append("b")
    conv = helper.make_node("Conv", inputs, ["y"], kernel_shape=[16, 16], strides=[16, 16])
    graph = helper.make_graph([conv], "patch", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                               [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _run(model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in outputs or []:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"pixel_values": x})


@pytest.mark.parametrize("bias", [False, True])
def test_exact_pixel_input_maps_pixel_values_back_to_8_bit_and_keeps_the_function(bias):
    """The rewrite computes the same Conv, and the patch MatMul's input holds the 8-bit pixels themselves."""
    from vlmedge.export.quantize import exact_pixel_input, patch_conv_as_matmul

    spec = PreprocessSpec(size=(32, 32), mean=CLIP_MEAN, std=CLIP_STD)
    frame = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frame[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]  # the ends of the range
    x = preprocess(frame, spec)
    model = _patch_conv_graph(bias)
    want = _run(model, x)[0]
    assert patch_conv_as_matmul(model.graph) == 1
    plan = exact_pixel_input(model.graph, "pixel_values", spec.mean, spec.std)
    assert plan is not None
    got, pixels = _run(model, x, [plan.input])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    rgb = frame[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)  # what the patches were cut from
    patches = rgb.reshape(3, 2, 16, 2, 16).transpose(1, 3, 0, 2, 4).reshape(4, 3 * 256)
    assert np.array_equal(np.rint(pixels[0]), patches)
    assert np.abs(pixels[0] - patches).max() < 1e-3  # float32 rounding only, far from a rounding boundary


def test_exact_pixel_input_leaves_other_graphs_alone():
    """No patchify on the input, or a mean/std that does not map the 8-bit values back: the graph is unchanged."""
    from vlmedge.export.quantize import exact_pixel_input, patch_conv_as_matmul

    model = _patch_conv_graph(bias=False)
    before = model.SerializeToString()
    assert exact_pixel_input(model.graph, "pixel_values", CLIP_MEAN, CLIP_STD) is None  # still a Conv
    assert model.SerializeToString() == before
    patch_conv_as_matmul(model.graph)
    before = model.SerializeToString()
    # mean 1e5: v / 255 - mean in float32 (ulp 0.008 there) loses the 8-bit value
    assert exact_pixel_input(model.graph, "pixel_values", (1e5, 1e5, 1e5), CLIP_STD) is None
    assert model.SerializeToString() == before


def test_int8_cpu_bundle_reads_the_pixels_at_scale_1_with_a_bias_from_its_int8_weights(bundles):
    """The exported cpu bundle: the patch embedding's uint8 input is the frame's pixels (scale 1, zero point 0:
    before exact_pixels it was a calibrated grid of the normalized values), and its bias is the normalization's
    offset through the weights as quantized (exact), not as they were in float."""
    from onnx import numpy_helper

    m, path = bundles["int8"]
    assert m.extra["int8"]["recipe"]["exact_pixels"] is True
    model = onnx.load(str(path / "image_encoder.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    patch = next(n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat" and "patch_embed" in n.name)
    q = producer[patch.input[0]]
    while q.op_type != "QuantizeLinear":  # the patchify Reshape/Transpose run on the uint8 pixels
        q = producer[q.input[0]]
    assert float(inits[q.input[1]]) == 1.0 and int(inits[q.input[2]]) == 0
    frame = np.random.default_rng(5).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    x = preprocess(frame, m.preprocess)
    pixels = _run(model, x, [q.input[0]])[-1]  # the float tensor quantized: 8-bit values, float32 rounding
    assert np.abs(pixels - np.rint(pixels)).max() < 1e-3 and pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    weight = inits[patch.input[1]].astype(np.float64) * inits[patch.input[3]].astype(np.float64)
    offsets = np.repeat(255.0 * np.asarray(m.preprocess.mean, np.float32).astype(np.float64),
                        weight.shape[0] // 3)
    np.testing.assert_allclose(inits[patch.input[6]], -(offsets @ weight), rtol=0, atol=1e-5)  # no Conv bias


def test_int8_of_a_graph_symbolic_inference_cannot_finish_leaves_no_debris_in_the_working_directory(
        tmp_path, monkeypatch, caplog):
    """An ORT-optimized graph (com.microsoft ops) stops ONNX Runtime's symbolic shape inference, which then saves its
    partial model, with an external data file the size of the weights, into the current directory and raises a
    bare Exception. quantize_int8 removes both and pre-processes with ONNX's shape inference instead."""
    from vlmedge.export.quantize import quantize_int8
    from vlmedge.platforms import PLATFORMS

    m = export_bundle(tiny_clip(seed=2), tmp_path / "fp32")
    fused = tmp_path / "fp32" / m.image_encoder.file
    assert any(n.domain == "com.microsoft" for n in onnx.load(str(fused)).graph.node)
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "mine.data").write_bytes(b"x")  # a user's file in the same directory stays
    monkeypatch.chdir(work)
    reader = calibration.frame_reader(calibration.frames_synthetic(4, seed=0), m.preprocess)
    with caplog.at_level(logging.WARNING, logger="vlmedge.export.quantize"):
        quantize_int8(fused, tmp_path / "q.onnx", reader, PLATFORMS["cpu"].int8, preprocess=m.preprocess)
    assert sorted(p.name for p in work.iterdir()) == ["mine.data"]
    assert "symbolic shape inference could not infer every shape" in caplog.text
    assert qdq_report(tmp_path / "q.onnx")["quantized"].get("MatMul", 0) > 0


def test_attention_score_matmuls_are_the_ones_a_softmax_reads():
    """q @ k^T: an activation x activation MatMul whose output reaches a Softmax, directly or through the scale
    and mask (Mul, Div, Add); attn @ v (reading the Softmax) and any other activation product are not."""
    from onnx import TensorProto, helper, numpy_helper

    from vlmedge.export.quantize import attention_score_matmuls

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    s = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], name="q_proj"),  # a weight: not an activation product
             helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 2, 1], name="kt"),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
             helper.make_node("Div", ["scores", "s"], ["scaled"], name="scale"),
             helper.make_node("Add", ["scaled", "s"], ["masked"], name="mask"),
             helper.make_node("Softmax", ["masked"], ["attn"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["attn", "x"], ["ctx"], name="attn_v"),
             helper.make_node("MatMul", ["ctx", "kt"], ["other"], name="other"),  # activations, no Softmax after
             helper.make_node("MatMul", ["other", "x"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "g", [x], [y], [w, s])
    assert [n.name for n in attention_score_matmuls(graph)] == ["qk"]


def test_the_openvino_file_option_is_checked_before_any_work(tmp_path):
    """--platform jetson-* saves the QDQ graph itself (OpenVINO runs it as it is): asking for the extra file there
    is refused, as is a value that is not a bool, before anything is exported."""
    for kwargs, message in (({"platform": "jetson-orin-jp6", "openvino_file": True},
                             "openvino_file: --platform jetson-orin-jp6 saves the QDQ graph itself"),
                            ({"openvino_file": "yes"}, "openvino_file must be True, False or None, got 'yes'")):
        with pytest.raises(ConfigError, match=message):
            export_bundle(tiny_clip(seed=2), tmp_path / "b", precision="int8", calib="synthetic", **kwargs)
        assert not (tmp_path / "b").exists()
