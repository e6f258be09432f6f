"""Reduced-precision graphs: static int8 QDQ and fp16, file in, file out.

int8 recipe (image encoder; ``Int8Recipe``, one per platform in ``vlmedge.platforms.PLATFORMS``):
``quant_pre_process`` (shape inference + basic optimization), then ``quantize_static`` in QDQ format
over the MatMuls with a constant weight (q/k/v/out projections, MLP, final projection); per-channel
weights, their integers then chosen again for each layer's output (GPTQ, ``vlmedge.export.gptq``,
``weight_rounding``); Q/DQ on the MatMul inputs only. LayerNorm, Softmax, GELU, residual Adds, the attention
score MatMuls (activation x activation) and the final L2 normalization stay float, and on the cpu platform the
two output projections too (``float_output_projections``: their input's int8 noise reaches the embeddings
unaveraged). Activations are
uint8 asymmetric on the cpu platform (ONNX Runtime's fast U8S8 VNNI kernels) and int8 symmetric on
TensorRT platforms (TensorRT only accepts symmetric QDQ). On the cpu platform the patch-embedding
Conv (kernel == stride) is first rewritten as patchify + MatMul (``conv_as_matmul``) so that it is
quantized like the other projections, and that MatMul reads the 8-bit pixels themselves (``exact_pixels``,
:func:`exact_pixel_input`); ONNX Runtime's ``MultiHeadAttention`` fusion of the float
attention core (``fuse_attention``) is opt-in: it slowed ViT-B/16-sized towers down on a small CPU
(``benchmarks/bench_export.py`` times it).

fp16 recipe: ONNX Runtime's bundled copy of onnxconverter-common's ``convert_float_to_float16``
with float32 inputs/outputs (``keep_io_types``) and the precision-sensitive ops kept in float32.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vlmedge.errors import BackendUnavailable, ConfigError
from vlmedge.export import gptq
from vlmedge.export.onnx_export import check_single_file, session_with_outputs
from vlmedge.platforms import CALIBRATION_METHODS, Int8Recipe  # noqa: F401  (the recipe is platform data)
from vlmedge.spec import PreprocessSpec

log = logging.getLogger(__name__)

# quantize_static hands its entropy calibrator 128 histogram bins for 128 quantized levels (it passes no bin counts
# on), so the KL search has a single candidate, the full range: the bundle comes out byte-identical to minmax's
# (ViT-B/16, onnxruntime 1.32; benchmarks/results/int8-agreement-vitb16-2026-11-30.md)
ENTROPY_WARNING = ("calibration method 'entropy': ONNX Runtime's quantize_static runs its entropy calibrator with "
                   "128 histogram bins for 128 levels, which leaves the full range as its only candidate: the result "
                   "is the same as 'minmax'. 'percentile' clips outliers")

# Ops left in float32 by the fp16 conversion: normalizations (incl. LayerNorm decomposed at
# opset 16), softmax, and the L2 norm of the outputs.
FP16_BLOCK_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "Pow", "Sqrt")


@dataclass(frozen=True)
class LayerError:
    """Quantization error at one quantized layer's activation input (signal-to-quantization-noise, dB:
    higher is better; every 6 dB is one bit)."""

    layer: str  # the MatMul/Gemm node reading the activation
    activation: str  # the activation tensor quantized at its input
    qdq_db: float  # this Q/DQ alone: the activation before vs after its own Quantize/Dequantize
    cumulative_db: float  # the QDQ graph's dequantized activation vs the float graph's (all errors upstream)
    weight_db: float | None  # the layer's weight after vs before quantization

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def quantize_int8(src: str | Path, dst: str | Path, reader, recipe: Int8Recipe, *, smooth_quant: float | None = None,
                  error_frames: int = 0, preprocess: PreprocessSpec | None = None) -> list[LayerError]:
    """Static QDQ quantization of ``src`` into ``dst`` calibrated with ``reader``.

    Biases stay float (``QuantizeBias`` off): TensorRT's parser takes only int8 DequantizeLinear inputs, and
    ONNX Runtime's CPU form folds a float bias into its int8 MatMul. ``smooth_quant``: SmoothQuant's alpha
    (ONNX Runtime runs it through Intel Neural Compressor). ``error_frames`` > 0: return the per-layer
    error table (:func:`layer_errors`, worst first) on that many calibration frames. ``preprocess``: the
    bundle's preprocessing (its mean and std), needed by ``recipe.exact_pixels`` (:func:`exact_pixel_input`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if recipe.calibrate_method == "entropy":
        log.warning(ENTROPY_WARNING)
    extra = {"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True, "QuantizeBias": False,
             "OpTypesToExcludeOutputQuantization": [] if recipe.quantize_outputs else list(recipe.op_types)}
    if smooth_quant is not None:
        check_smooth_quant(smooth_quant)
        extra.update(SmoothQuant=True, SmoothQuantAlpha=float(smooth_quant), SmoothQuantFolding=True)
    with tempfile.TemporaryDirectory(prefix="vlmedge-quant-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        _pre_process(src, pre)
        model = onnx.load(str(pre))
        changed = unshare_initializers(model.graph, recipe.op_types)
        if recipe.conv_as_matmul:
            changed += patch_conv_as_matmul(model.graph)
        pixels = None
        if recipe.exact_pixels:
            if preprocess is None:
                raise ConfigError("quantize_int8: recipe.exact_pixels needs the bundle's preprocess spec")
            pixels = exact_pixel_input(model.graph, model.graph.input[0].name, preprocess.mean, preprocess.std)
            if pixels is None:
                log.warning("int8: the patch embedding keeps a calibrated input range (no patchify MatMul on the "
                            "image input, or mean/std that do not map 8-bit values back to themselves)")
            else:
                # the pixels 0..255 as they are; uint8 with scale 1 and zero point 0 holds them exactly
                extra["TensorQuantOverrides"] = {
                    pixels.input: [{"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}]}
                changed += 1
        if recipe.fuse_attention:
            fused = fuse_attention(model.graph)
            log.info("fused %d attention cores into MultiHeadAttention", fused)
            if fused:
                _use_ms_domain(model)
            changed += fused
        if changed:
            onnx.save(model, str(pre))
        exclude = activation_matmuls(model.graph) if recipe.const_weight_matmuls_only else []
        if recipe.int8_attention_scores:  # (the recipe checks that const_weight_matmuls_only is on)
            scores = attention_score_matmuls(model.graph, exclude)
            if not scores:
                log.warning("int8: no q@k^T MatMul found (activation x activation, its output read by a Softmax): "
                            "attention stays float")
            score_names = {s.name for s in scores}
            exclude = [n for n in exclude if n not in score_names]
            # signed, zero point 0: the form OpenVINO's int8 attention kernel takes (uint8 activations elsewhere)
            overrides = extra.setdefault("TensorQuantOverrides", {})
            for t in {t for s in scores for t in s.input[:2]}:
                overrides[t] = [{"quant_type": QuantType.QInt8, "symmetric": True}]
        if recipe.float_output_projections:
            exclude += output_matmuls(model.graph)
        quantize_static(
            str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.op_types), per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8 if recipe.activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[recipe.calibrate_method],
            nodes_to_exclude=exclude, extra_options=extra,
        )
        if recipe.weight_rounding == "gptq" or pixels is not None:
            quantized = onnx.load(str(dst))
            if recipe.weight_rounding == "gptq":
                _gptq(model, quantized, reader, recipe, pixels)  # the float graph as saved in ``pre``
            if pixels is not None:  # after GPTQ: the bias is settled on the integers as they end up
                log.info("int8: patch embedding reads 8-bit pixels; bias settled on its int8 weights (moved %.2e)",
                         settle_exact_pixel_bias(quantized, pixels))
            onnx.save(quantized, str(dst))
        check_single_file(dst)
        if error_frames <= 0:
            return []
        return layer_errors(pre, dst, reader, error_frames, Path(tmp))


# what onnxruntime's symbolic shape inference writes into the working directory when it cannot infer every shape
_SYMBOLIC_DEBRIS = "sym_shape_infer_temp.onnx"


def _pre_process(src: str | Path, dst: Path) -> None:
    """``quant_pre_process`` with symbolic shape inference, or without it (ONNX's own) where that fails.

    When symbolic inference stops short, ONNX Runtime saves its partial model into the *current directory* (the
    graph plus a uuid-named external data file as large as the weights) and raises a bare ``Exception``. Those
    files are removed again, and the graph is pre-processed with ONNX's shape inference instead, with a warning."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cwd = Path.cwd()
    before = set(cwd.iterdir())
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return
    except Exception as e:  # noqa: BLE001  (onnxruntime raises a bare Exception here)
        if "symbolic shape inference" not in str(e):
            raise
        _remove_debris(cwd / _SYMBOLIC_DEBRIS, before)
        log.warning("int8: ONNX Runtime's symbolic shape inference could not infer every shape of %s (%s); "
                    "pre-processing with ONNX's shape inference instead", Path(src).name, e)
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _remove_debris(model: Path, before: set[Path]) -> None:
    """Delete ``model`` and the external data files it names, if the failed call wrote them (not in ``before``)."""
    if model in before or not model.is_file():
        return
    try:
        files = {e.value for t in onnx.load(str(model), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    except Exception:  # noqa: BLE001  (a half-written file: delete what is certainly ours)
        files = set()
    for name in files:
        path = model.parent / name
        if path.parent == model.parent and path not in before:
            path.unlink(missing_ok=True)
    model.unlink(missing_ok=True)


def _gptq(float_model: onnx.ModelProto, quantized: onnx.ModelProto, reader, recipe: Int8Recipe,
          pixels: ExactPixels | None) -> None:
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qmin, qmax = (int(v) for v in get_qmin_qmax_for_qType(onnx.TensorProto.INT8, recipe.reduce_range, True))
    # the exact-pixel input's constant part (255 * mean) is carried by the settled bias, not by the weights
    centered = {pixels.input: pixels.row_offsets} if pixels is not None else {}
    rows = gptq.round_weights(float_model, quantized, reader, centered=centered, qmin=qmin, qmax=qmax)
    if rows:
        before = np.array([r.nearest_error for r in rows])
        after = np.array([r.gptq_error for r in rows])
        log.info("int8: GPTQ rounding of %d weights: output error on the calibration frames %.1f dB -> %.1f dB "
                 "(median over layers), %.1f%% of the int8 values moved off nearest",
                 len(rows), -10 * np.log10(np.median(before)), -10 * np.log10(np.median(after)),
                 100 * np.mean([r.changed for r in rows]))
    else:
        log.warning("int8: GPTQ rounding found no per-channel symmetric int8 MatMul weight; nearest rounding kept")


def check_smooth_quant(alpha) -> None:
    """SmoothQuant needs alpha in [0, 1] and Intel Neural Compressor (ONNX Runtime imports it for the pass)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"smooth_quant (SmoothQuant alpha) must be a number in [0, 1], got {alpha!r}")
    try:
        import neural_compressor.adaptor.ox_utils.smooth_quant  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import
        raise BackendUnavailable(
            "SmoothQuant (ONNX Runtime runs it through Intel Neural Compressor, which failed to import: "
            f"{type(e).__name__})", 'pip install "neural-compressor<3", or drop --smooth-quant') from None


def layer_errors(float_path: str | Path, qdq_path: str | Path, reader, frames: int, work: Path) -> list[LayerError]:
    """Per quantized layer, how much precision int8 costs, worst (lowest cumulative SQNR) first.

    The activation entering each quantized MatMul/Gemm is compared three ways on ``frames`` calibration
    inputs: before vs after its own Quantize/Dequantize in the QDQ graph, and the QDQ graph's dequantized value
    vs the float graph's (every upstream error included). ONNX Runtime's QDQ debugging utilities
    (``onnxruntime.quantization.qdq_loss_debug``) give the weight errors and the SQNR definition; the
    activations are accumulated frame by frame (sums of squares), so memory stays one frame's tensors."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    feeds = _first(reader, frames)
    if not feeds:
        return []
    qdq = onnx.load(str(qdq_path), load_external_data=False)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    layers = []  # (layer, float activation name = the Q input, dequantized name, weight name)
    for n in qdq.graph.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        a, w = (producer.get(i) for i in n.input[:2])
        q = producer.get(a.input[0]) if a is not None and a.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or w is None or w.op_type != "DequantizeLinear":
            continue
        weight = w.input[0][: -len("_quantized")] if w.input[0].endswith("_quantized") else w.input[0]
        layers.append((n.name, q.input[0], a.output[0], weight))
    if not layers:
        return []
    pre = sorted({x[1] for x in layers})
    post = sorted({x[2] for x in layers})
    ref_sess = session_with_outputs(onnx.load(str(float_path), load_external_data=False), pre, work / "float_dbg.onnx")
    qdq_sess = session_with_outputs(qdq, pre + post, work / "qdq_dbg.onnx")
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}

    def add(key: str, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        signal[key] = signal.get(key, 0.0) + float(x @ x)
        noise[key] = noise.get(key, 0.0) + float((x - y) @ (x - y))

    for feed in feeds:
        ref = dict(zip(pre, ref_sess.run(pre, feed)))
        got = dict(zip(pre + post, qdq_sess.run(pre + post, feed)))
        for _, p, d, _ in layers:
            add(f"qdq:{d}", got[p], got[d])
            add(f"x:{d}", ref[p], got[d])
        del ref, got

    def db(key: str) -> float:
        return round(10 * np.log10(max(signal[key], 1e-30) / max(noise[key], 1e-30)), 2)

    weights = dbg.compute_weight_error(dbg.create_weight_matching(str(float_path), str(qdq_path)))
    rows = [LayerError(name, p, db(f"qdq:{d}"), db(f"x:{d}"),
                       None if weights.get(w) is None else round(float(weights[w]), 2))
            for name, p, d, w in layers]
    return sorted(rows, key=lambda r: r.cumulative_db)


def _first(reader, count: int) -> list[dict]:
    if hasattr(reader, "rewind"):
        reader.rewind()
    out = []
    while len(out) < count and (item := reader.get_next()) is not None:
        out.append(item)
    if hasattr(reader, "rewind"):
        reader.rewind()
    return out


def error_table(rows: list[LayerError], limit: int = 12) -> str:
    """The per-layer error table as text (the export log prints it), worst layers first."""
    if not rows:
        return "(no quantized layers)"
    width = min(max(len(r.layer) for r in rows), 64)
    lines = [f"{'layer':<{width}}  {'cumulative dB':>13}  {'this Q/DQ dB':>12}  {'weight dB':>9}"]
    for r in rows[:limit]:
        name = r.layer if len(r.layer) <= width else "..." + r.layer[-(width - 3):]
        weight = "-" if r.weight_db is None else f"{r.weight_db:.1f}"
        lines.append(f"{name:<{width}}  {r.cumulative_db:>13.1f}  {r.qdq_db:>12.1f}  {weight:>9}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more layers (all in the manifest's extra.int8.layer_errors)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- text encoder
TEXT_INT8_OPS = ("MatMul", "Gather")  # projections and MLPs; the token embedding table (the biggest tensor)


def quantize_text_dynamic(src: str | Path, dst: str | Path) -> None:
    """The text encoder in int8 with dynamic activation scales: per-channel int8 weights of every MatMul and
    the token embedding table (``quantize_dynamic``: activations get their scale per run, no calibration
    texts). It runs rarely (new commands only) and is what makes a full CLIP text tower small."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # quantize_dynamic warns on the root logger about pre-processing; we know
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(TEXT_INT8_OPS),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    check_single_file(dst)


def fuse_for_cpu(src: str | Path, dst: str | Path) -> int:
    """ONNX Runtime CPU form of a QDQ graph: ORT's offline "extended" optimization (QDQ pairs ->
    ``MatMulIntegerToFloat``), then each following bias ``Add`` folded into that op's bias input
    (ORT fuses it for quantize_dynamic graphs but not for QDQ ones). Returns the number of biases
    folded. The result runs on ONNX Runtime's CPU provider only.
    """
    from vlmedge.export.onnx_export import ort_optimize

    ort_optimize(src, dst, "extended")
    model = onnx.load(str(dst))
    folded = fold_matmul_integer_bias(model.graph)
    onnx.save(model, str(dst))
    check_single_file(dst)
    return folded


def fold_matmul_integer_bias(graph: onnx.GraphProto) -> int:
    """``MatMulIntegerToFloat(A, B, ...) -> Add(const bias [N])`` becomes one op with its bias input."""
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    folded = []
    for n in graph.node:
        if n.op_type != "MatMulIntegerToFloat" or (len(n.input) >= 7 and n.input[6]):
            continue
        y = n.output[0]
        users = consumers.get(y, [])
        if y in graph_outputs or len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = add.input[1] if add.input[0] == y else add.input[0]
        b = inits.get(n.input[1])
        if bias not in inits or len(inits[bias].dims) != 1 or b is None or inits[bias].dims[0] != b.dims[-1]:
            continue
        inputs = list(n.input) + [""] * (6 - len(n.input))
        del n.input[:]
        n.input.extend(inputs[:6] + [bias])
        n.output[0] = add.output[0]
        folded.append(add)
    for add in folded:
        graph.node.remove(add)
    return len(folded)


def unshare_initializers(graph: onnx.GraphProto, op_types: tuple[str, ...]) -> int:
    """Give quantized ops their own copy of initializers they share with float ops.

    Exporters deduplicate equal tensors (e.g. all-zero q/k/v and LayerNorm biases); the quantizer
    would then turn the LayerNorm's bias into a dequantized int32 tensor. Returns copies made.
    """
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    made = 0
    for init in list(graph.initializer):
        nodes = users.get(init.name, [])
        quantized = [n for n in nodes if n.op_type in op_types]
        if not quantized or len(quantized) == len(nodes):
            continue
        for k, n in enumerate(quantized):
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = f"{init.name}__q{k}"
            graph.initializer.append(copy)
            n.input[:] = [copy.name if i == init.name else i for i in n.input]
            made += 1
    return made


def patch_conv_as_matmul(graph: onnx.GraphProto) -> int:
    """Rewrite each non-overlapping patch Conv (kernel == stride, no padding, one group, constant
    weight, static C/H/W) as ``Reshape -> Transpose -> Reshape`` (patchify) ``-> MatMul`` with the
    flattened weight, then back to the Conv's NCHW output. Same sums in another order. Returns the
    number of Convs rewritten."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input)}
    done = 0
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        a = {x.name: helper.get_attribute_value(x) for x in conv.attribute}
        k, st = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
        x_shape, w = shapes.get(conv.input[0], []), inits.get(conv.input[1])
        plain = (len(k) == 2 and k == st and a.get("group", 1) == 1 and not any(a.get("pads", [0] * 4))
                 and all(d == 1 for d in a.get("dilations", [1, 1]))
                 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
        if not plain or w is None or len(x_shape) != 4 or min(x_shape[1:]) <= 0 \
                or x_shape[2] % k[0] or x_shape[3] % k[1]:
            continue
        c, (gh, gw) = x_shape[1], (x_shape[2] // k[0], x_shape[3] // k[1])
        weight = numpy_helper.to_array(w)
        o = weight.shape[0]
        pre = f"{conv.name or conv.output[0]}/patchify"
        consts = {f"{pre}/shape6": [0, c, gh, k[0], gw, k[1]], f"{pre}/shape3": [0, gh * gw, c * k[0] * k[1]],
                  f"{pre}/nchw": [0, o, gh, gw]}
        for name, v in consts.items():
            graph.initializer.append(numpy_helper.from_array(np.asarray(v, dtype=np.int64), name))
        graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.reshape(o, -1).T), f"{pre}/weight"))
        nodes = [helper.make_node("Reshape", [conv.input[0], f"{pre}/shape6"], [f"{pre}/x6"], name=f"{pre}/Reshape6"),
                 helper.make_node("Transpose", [f"{pre}/x6"], [f"{pre}/xt"], name=f"{pre}/Transpose",
                                  perm=[0, 2, 4, 1, 3, 5]),
                 helper.make_node("Reshape", [f"{pre}/xt", f"{pre}/shape3"], [f"{pre}/patches"],
                                  name=f"{pre}/Reshape3"),
                 helper.make_node("MatMul", [f"{pre}/patches", f"{pre}/weight"], [f"{pre}/y"], name=f"{pre}/MatMul")]
        last = f"{pre}/y"
        if len(conv.input) > 2 and conv.input[2]:
            nodes.append(helper.make_node("Add", [last, conv.input[2]], [f"{pre}/yb"], name=f"{pre}/Bias"))
            last = f"{pre}/yb"
        nodes += [helper.make_node("Transpose", [last], [f"{pre}/yt"], name=f"{pre}/TransposeBack", perm=[0, 2, 1]),
                  helper.make_node("Reshape", [f"{pre}/yt", f"{pre}/nchw"], [conv.output[0]],
                                   name=f"{pre}/ReshapeNCHW")]
        at = list(graph.node).index(conv)
        graph.node.remove(conv)
        for j, n in enumerate(nodes):
            graph.node.insert(at + j, n)
        if not any(w.name in n.input for n in graph.node):
            graph.initializer.remove(w)
        done += 1
    return done


@dataclass(frozen=True)
class ExactPixels:
    """What ``exact_pixel_input`` changed, for pinning the quantizer and settling the bias afterwards."""

    input: str  # the patch MatMul's input: uint8, scale 1, zero point 0
    matmul: str  # the patch MatMul node
    bias: str  # the bias initializer that carries the normalization's offset
    base_bias: np.ndarray  # the patch embedding's own bias (zeros when it has none), [out]
    row_offsets: np.ndarray  # 255 * mean of each weight row's channel, [C * kh * kw]


def exact_pixel_input(graph: onnx.GraphProto, input_name: str, mean, std) -> ExactPixels | None:
    """Let the patch embedding's uint8 input be the camera's own 8-bit pixel values.

    ``pixel_values`` is ``(v / 255 - mean_c) / std_c`` of a uint8 pixel ``v`` (``vlmedge.preprocess``). Quantized
    per tensor over a calibrated range, those 3 x 256 values fall between the steps of the uint8 grid: noise at the
    very input of the tower (ViT-B/16, random weights: the largest single source of int8's patch disagreement with
    fp32, benchmarks/results/int8-exact-pixels-*). Here the graph first maps them back to ``v`` (one Mul and one
    Add per channel, values 0..255), the rows of the patch MatMul's weight and its bias absorb the normalization,
    and the caller pins that MatMul input's quantization to scale 1, zero point 0: the uint8 it reads is the
    pixel itself. Needs ``patch_conv_as_matmul``'s patchify (channel-major rows) as the input's only reader.
    Once the weights are quantized, :func:`settle_exact_pixel_bias` recomputes the bias from them. Returns what
    changed, or None (graph unchanged) when the graph does not have that form or the normalization does not map
    every 8-bit value back to itself in float32."""
    from onnx import helper, numpy_helper

    from vlmedge.preprocess import normalize_table

    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale, offset = (255.0 * std).astype(np.float32), (255.0 * mean).astype(np.float32)
    table = normalize_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))  # what preprocess writes
    if not np.array_equal(np.rint(table * scale[:, None] + offset[:, None]), np.tile(np.arange(256.0), (3, 1))):
        return None
    g = _GraphIndex(graph)
    r6 = g.only_user(input_name)
    tr = g.only_user(r6.output[0]) if r6 is not None and r6.op_type == "Reshape" else None
    r3 = g.only_user(tr.output[0]) if tr is not None and tr.op_type == "Transpose" else None
    mm = g.only_user(r3.output[0]) if r3 is not None and r3.op_type == "Reshape" else None
    shape6 = g.const(r6.input[1]) if r6 is not None else None
    if mm is None or mm.op_type != "MatMul" or mm.input[0] != r3.output[0] or mm.input[1] not in g.inits \
            or list(g.attr(tr, "perm", [])) != [0, 2, 4, 1, 3, 5] or shape6 is None or len(shape6) != 6 \
            or int(shape6[1]) != len(mean):
        return None
    weight = numpy_helper.to_array(g.inits[mm.input[1]]).astype(np.float64)  # [C * kh * kw, out], rows c-major
    rows = weight.shape[0] // len(mean)
    per_row_scale = np.repeat(scale.astype(np.float64), rows)[:, None]
    per_row_offset = np.repeat(offset.astype(np.float64), rows)[:, None]
    # x = (v - offset_c) / scale_c, so x @ W = v @ (W / scale_c) - sum_k (offset_c / scale_c) W_k
    correction = -(weight * (per_row_offset / per_row_scale)).sum(axis=0)
    pre = f"{mm.name or mm.output[0]}/exact_pixels"
    graph.initializer.remove(g.inits[mm.input[1]])
    graph.initializer.extend([
        numpy_helper.from_array((weight / per_row_scale).astype(np.float32), mm.input[1]),
        numpy_helper.from_array(scale.reshape(1, -1, 1, 1), f"{pre}/scale"),
        numpy_helper.from_array(offset.reshape(1, -1, 1, 1), f"{pre}/offset")])
    pixels = f"{pre}/pixels"
    head = [helper.make_node("Mul", [input_name, f"{pre}/scale"], [f"{pre}/scaled"], name=f"{pre}/Mul"),
            helper.make_node("Add", [f"{pre}/scaled", f"{pre}/offset"], [pixels], name=f"{pre}/Add")]
    r6.input[0] = pixels
    bias_add = g.only_user(mm.output[0])
    bias = None
    if bias_add is not None and bias_add.op_type == "Add":
        other = bias_add.input[1] if bias_add.input[0] == mm.output[0] else bias_add.input[0]
        bias = g.inits.get(other)
    base = np.zeros(weight.shape[1])
    if bias is not None and len(bias.dims) == 1 and bias.dims[0] == weight.shape[1]:
        base = numpy_helper.to_array(bias).astype(np.float64)  # a new tensor below: this one may be shared
        graph.initializer.append(numpy_helper.from_array((base + correction).astype(np.float32), f"{pre}/bias"))
        bias_add.input[list(bias_add.input).index(bias.name)] = f"{pre}/bias"
    else:  # no bias (CLIP's patch Conv has none): one that carries the normalization's offset
        graph.initializer.append(numpy_helper.from_array(correction.astype(np.float32), f"{pre}/bias"))
        out = mm.output[0]
        mm.output[0] = f"{pre}/matmul"
        at = list(graph.node).index(mm)
        graph.node.insert(at + 1, helper.make_node("Add", [mm.output[0], f"{pre}/bias"], [out], name=f"{pre}/Bias"))
    for j, n in enumerate(head):
        graph.node.insert(j, n)
    return ExactPixels(mm.input[0], mm.name, f"{pre}/bias", base, per_row_offset[:, 0])


def settle_exact_pixel_bias(model: onnx.ModelProto, plan: ExactPixels) -> float:
    """The bias of ``exact_pixel_input`` from the weights as quantized: pixels 0..255 carry a large constant part
    (255 * mean), and the int8 error of each weight times that constant adds up to a fixed offset per output (on
    ViT-B/16: 36 of 1568 patches disagreed with fp32 without this step, 22 with it). Exact once computed from the
    dequantized weights. Returns the largest change to the bias."""
    from onnx import numpy_helper

    g = _GraphIndex(model.graph)
    mm = next(n for n in model.graph.node if n.name == plan.matmul)
    dq = g.producer.get(mm.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits or plan.bias not in g.inits:
        # not a user's configuration: quantize_static wrote another form than the one this code was written for
        raise RuntimeError(f"int8: the patch MatMul {plan.matmul} lost its quantized weight or bias {plan.bias}; "
                           "the exact-pixel input needs both (quantize_static changed its output?)")
    q = numpy_helper.to_array(g.inits[dq.input[0]]).astype(np.float64)
    scale = np.asarray(g.const(dq.input[1]), np.float64)
    zero = np.asarray(g.const(dq.input[2]), np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
    axis = int(g.attr(dq, "axis", 1)) % 2
    shape = (1, -1) if axis == 1 else (-1, 1)
    weight = (q - zero.reshape(shape)) * scale.reshape(shape) if scale.size > 1 else (q - zero) * scale
    bias = plan.base_bias - plan.row_offsets @ weight
    old = numpy_helper.to_array(g.inits[plan.bias]).astype(np.float64)
    g.inits[plan.bias].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), plan.bias))
    return float(np.abs(bias - old).max())


def _use_ms_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def fuse_attention(graph: onnx.GraphProto) -> int:
    """Replace each float attention core by one ``com.microsoft.MultiHeadAttention`` node.

    Matched (the exporter's form of ``model.Attention``): ``Xq/Xk/Xv -> Reshape [B,N,H,D]``,
    ``Transpose`` to heads (k to [B,H,D,N]), an optional scalar ``Mul`` on q, ``MatMul``,
    ``Softmax(-1)``, ``MatMul`` with v, ``Transpose`` back and ``Reshape`` to [B,N,H*D]. The
    result reads the projections ``Xq, Xk, Xv`` [B,N,H*D] and writes the merged heads; same math
    (scale applied to the scores instead of q). Anything else (masks, other layouts) is left as
    is. Returns the number of cores fused.
    """
    g = _GraphIndex(graph)  # of the graph as it was: the fused nodes never take part in another match
    fused, dead = 0, []
    for sm in [n for n in graph.node if n.op_type == "Softmax"]:
        found = _attention_core(g, sm)
        if found is None:
            continue
        mha, merge, replaced = found
        graph.node.insert(list(graph.node).index(merge), mha)
        dead += replaced
        fused += 1
    for n in dead:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for n in dead for i in n.input if i in g.inits and i not in used]:
        if g.inits.pop(init, None) is not None:  # shape tensors and the q scale the fused nodes read
            graph.initializer.remove(next(t for t in graph.initializer if t.name == init))
    return fused


class _GraphIndex:
    """Who produces and who reads each value of a graph, its constants and known shapes (for matching)."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {i.name: i for i in graph.initializer}
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                       for v in graph.value_info}

    @staticmethod
    def attr(n, name, default=None):
        return next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == name), default)

    def const(self, name):
        if name in self.inits:
            return onnx.numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        return onnx.numpy_helper.to_array(p.attribute[0].t) if p is not None and p.op_type == "Constant" else None

    def only_user(self, name):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def heads_of(self, name, perm):
        """``Transpose(perm)(Reshape(x))`` with single users -> (x, (H, D), nodes)."""
        tr = self.producer.get(name)
        if tr is None or tr.op_type != "Transpose" or list(self.attr(tr, "perm", [])) != perm \
                or not self.only_user(name):
            return None
        rs = self.producer.get(tr.input[0])
        if rs is None or rs.op_type != "Reshape" or not self.only_user(rs.output[0]):
            return None
        shape = self.const(rs.input[1])
        shape = list(shape) if shape is not None and len(shape) == 4 else self.shapes.get(rs.output[0], [])
        if len(shape) != 4 or min(shape[2], shape[3]) <= 0:
            return None
        return rs.input[0], (int(shape[2]), int(shape[3])), [tr, rs]


def _attention_core(g: _GraphIndex, sm):
    """The attention core around Softmax ``sm`` (see ``fuse_attention``) as (its MultiHeadAttention node,
    the merging Reshape it goes before, the nodes it replaces), or None when the pattern does not match."""
    qk = g.producer.get(sm.input[0])
    if qk is None or qk.op_type != "MatMul" or g.attr(sm, "axis", -1) not in (-1, 3) \
            or not g.only_user(qk.output[0]):
        return None
    scale, q_in, extra = 1.0, qk.input[0], []
    mul = g.producer.get(q_in)
    if mul is not None and mul.op_type == "Mul" and g.only_user(mul.output[0]):
        c = [g.const(i) for i in mul.input]
        if c[1] is not None and c[1].size == 1:
            scale, q_in, extra = float(c[1].reshape(())), mul.input[0], [mul]
        elif c[0] is not None and c[0].size == 1:
            scale, q_in, extra = float(c[0].reshape(())), mul.input[1], [mul]
    q, k = g.heads_of(q_in, [0, 2, 1, 3]), g.heads_of(qk.input[1], [0, 2, 3, 1])
    av = g.only_user(sm.output[0])
    if q is None or k is None or av is None or av.op_type != "MatMul" or av.input[0] != sm.output[0]:
        return None
    v = g.heads_of(av.input[1], [0, 2, 1, 3])
    back = g.only_user(av.output[0])
    if v is None or q[1] != k[1] or q[1] != v[1] or back is None or back.op_type != "Transpose" \
            or list(g.attr(back, "perm", [])) != [0, 2, 1, 3]:
        return None
    merge = g.only_user(back.output[0])
    if merge is None or merge.op_type != "Reshape":
        return None
    heads, head_dim = q[1]
    out = g.shapes.get(merge.output[0])
    if out is not None and (len(out) != 3 or out[2] not in (-1, heads * head_dim)):
        return None
    mha = onnx.helper.make_node("MultiHeadAttention", [q[0], k[0], v[0]], [merge.output[0]],
                                name=f"{sm.name or merge.output[0]}/MultiHeadAttention", domain="com.microsoft",
                                num_heads=heads, scale=scale)
    return mha, merge, q[2] + k[2] + v[2] + extra + [qk, sm, av, back, merge]


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and Identities of those (a weight used twice is traced as an Identity of the
    first use's initializer)."""
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return consts | {n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in consts}


def activation_matmuls(graph: onnx.GraphProto) -> list[str]:
    """Names of MatMul nodes whose B input is computed (not a weight), e.g. q @ k^T and attn @ v.

    (``MatMulConstBOnly`` is ignored by the QDQ quantizer, hence this explicit exclusion list.)
    """
    consts = _constant_names(graph)
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in consts]


def attention_score_matmuls(graph: onnx.GraphProto, activation: list[str] | None = None) -> list[onnx.NodeProto]:
    """The q @ k^T MatMuls: activation x activation (``activation``: their names, when already found by
    :func:`activation_matmuls`), their output read by a Softmax directly or through the scale/mask elementwise ops
    (Mul, Div, Add). attn @ v (whose input is the Softmax's output) is not one."""
    names = set(activation_matmuls(graph) if activation is None else activation)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches_softmax(tensor: str, steps: int = 3) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type == "Softmax" or (steps > 0 and c.op_type in ("Mul", "Div", "Add")
                                           and reaches_softmax(c.output[0], steps - 1)):
                return True
        return False

    return [n for n in graph.node if n.name in names and reaches_softmax(n.output[0])]


def output_matmuls(graph: onnx.GraphProto) -> list[str]:
    """Names of the MatMul/Gemm nodes with a constant weight that write the graph's outputs: those reached from an
    output going upstream without passing another MatMul/Gemm (a CLIP image encoder's output projections)."""
    consts = _constant_names(graph)
    producer = {o: n for n in graph.node for o in n.output}
    found, seen, todo = [], set(), [o.name for o in graph.output]
    while todo:
        n = producer.get(todo.pop())
        if n is None or id(n) in seen or n.op_type in ("Shape", "Size"):  # these read a shape, not the values
            continue
        seen.add(id(n))
        if n.op_type in ("MatMul", "Gemm"):
            if len(n.input) > 1 and n.input[1] in consts:
                found.append(n.name)
            continue
        todo.extend(n.input)
    return sorted(found)


def convert_fp16(src: str | Path, dst: str | Path, block_ops: tuple[str, ...] = FP16_BLOCK_OPS,
                 block_nodes: tuple[str, ...] | list[str] = ()) -> None:
    """fp16 weights and compute, float32 graph inputs/outputs; ``block_ops`` and the nodes named in
    ``block_nodes`` (e.g. a decomposed LayerNorm's eps Add and Div, the L2 norm's Div) kept in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(block_ops),
                                     node_block_list=list(block_nodes))
    twins = drop_duplicate_nodes(model)
    if twins:
        log.info("fp16: %d duplicate Cast nodes of the converter removed", twins)
    dropped = drop_fp16_round_trips(model)
    log.info("fp16: %d float32 -> float16 -> float32 cast pairs between float32 nodes removed", dropped)
    onnx.save(model, str(dst))
    check_single_file(dst)


def drop_duplicate_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs and attributes).

    ONNX Runtime's bundled converter before 1.31 adds one ``NAME_cast_to_fp32_node`` Cast per float32 consumer of
    a float16 initializer, all with the same name and output, and ORT then refuses the model ("two nodes with same
    node name"); found exporting fp16 with onnxruntime 1.30. A second producer of a value that is *not* a copy is
    a broken graph: that raises, naming the value. Returns the number of nodes removed."""
    graph = model.graph
    first: dict[str, onnx.NodeProto] = {}
    twins = []
    for n in graph.node:
        earlier = next((first[o] for o in n.output if o in first), None)
        if earlier is None:
            first.update({o: n for o in n.output})
        elif earlier.SerializeToString(deterministic=True) == n.SerializeToString(deterministic=True):
            twins.append(n)
        else:
            clash = next(o for o in n.output if o in first)
            raise ValueError(f"fp16 conversion: value {clash!r} is produced by two different nodes "
                             f"({earlier.name!r} {earlier.op_type} and {n.name!r} {n.op_type})")
    for n in twins:
        graph.node.remove(n)
    return len(twins)


def drop_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Remove ``Cast(to=float16) -> Cast(to=float32)`` round trips of float32 values.

    The converter casts every kept-float32 node's output to float16 and back at each float32 consumer, so two
    float32 nodes in a row (a decomposed LayerNorm's variance, mean and eps) still pass their value through
    float16 and can overflow there. The float32 consumers read the original value instead; the float16 cast
    stays only while float16 nodes read it. Returns the number of float32 casts removed."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(onnx.shape_inference.infer_shapes(model).graph.value_info) + list(graph.input)}
    types.update({i.name: i.data_type for i in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}

    def cast_to(n) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    graph_outputs = {o.name for o in graph.output}
    rename, dead = {}, []
    for c2 in graph.node:
        c1 = producer.get(c2.input[0]) if c2.op_type == "Cast" else None
        if c1 is None or cast_to(c2) != onnx.TensorProto.FLOAT or cast_to(c1) != onnx.TensorProto.FLOAT16:
            continue
        if types.get(c1.input[0]) != onnx.TensorProto.FLOAT or c2.output[0] in graph_outputs:
            continue
        rename[c2.output[0]] = c1.input[0]
        dead.append(c2)
    for n in graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    for n in dead:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | graph_outputs
    for n in [n for n in graph.node if cast_to(n) == onnx.TensorProto.FLOAT16 and n.output[0] not in used]:
        graph.node.remove(n)
    return len(dead)


def op_counts(path: str | Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def qdq_report(path: str | Path) -> dict:
    """Q/DQ node counts, and for each op type how many nodes read a DequantizeLinear output."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    quantized, float_ = Counter(), Counter()
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        reads_dq = any(getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in n.input)
        (quantized if reads_dq else float_)[n.op_type] += 1
    counts = Counter(n.op_type for n in graph.node)

    def constant(name: str) -> bool:  # an initializer, or one dequantized (q @ k^T's B is a dequantized activation)
        dq = producer.get(name)
        return name in inits or (dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits)

    const_matmuls = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and constant(n.input[1]))
    return {"QuantizeLinear": counts["QuantizeLinear"], "DequantizeLinear": counts["DequantizeLinear"],
            "quantized": dict(quantized), "float": dict(float_), "weight_matmuls": const_matmuls}
