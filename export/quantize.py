"""Reduced-precision graphs: static int8 QDQ and fp16, file in, file out.

int8 recipe (image encoder): ``quant_pre_process`` (shape inference + basic optimization), then
``quantize_static`` in QDQ format over the MatMuls with a constant weight (q/k/v/out projections,
MLP, final projection); per-channel weights; Q/DQ on the MatMul inputs only. LayerNorm, Softmax,
GELU, residual Adds, the attention score MatMuls (activation x activation) and the final L2
normalization stay float. Activations are uint8 asymmetric on CPU (ONNX Runtime's fast U8S8
VNNI kernels) and int8 symmetric on TensorRT targets (TensorRT only accepts symmetric QDQ).

fp16 recipe: ONNX Runtime's bundled copy of onnxconverter-common's ``convert_float_to_float16``
with float32 inputs/outputs (``keep_io_types``) and the precision-sensitive ops kept in float32.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from vlmedge.errors import ConfigError, check_choice

from .onnx_export import check_single_file

log = logging.getLogger(__name__)

TENSORRT_TARGETS = ("cuda", "jetson-orin-jp6", "jetson-xavier-jp5")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Ops left in float32 by the fp16 conversion: normalizations (incl. LayerNorm decomposed at
# opset 16), softmax, and the L2 norm of the outputs.
FP16_BLOCK_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "Pow", "Sqrt")


@dataclass(frozen=True)
class Int8Recipe:
    """How the image encoder is quantized (recorded in the manifest's ``extra``)."""

    activation: str = "uint8"  # uint8 (asymmetric, CPU U8S8) or int8
    symmetric_activations: bool = False  # TensorRT needs True (zero point 0)
    per_channel: bool = True  # per output channel weight scales
    reduce_range: bool = False  # 7-bit weights; only for CPUs without VNNI (slow-path overflow)
    # The Conv patch embedding is ~0.7% of ViT-B/16's MACs and measured slightly worse patch
    # agreement when quantized, so it stays float by default (add "Conv" to quantize it).
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    const_weight_matmuls_only: bool = True  # leave q@k^T and attn@v (activation x activation) float
    quantize_outputs: bool = False  # False: Q/DQ on inputs only (ORT MatMulIntegerToFloat; TensorRT's advice)
    calibrate_method: str = "minmax"

    def __post_init__(self):
        check_choice("Int8Recipe.activation", self.activation, ("uint8", "int8"))
        check_choice("Int8Recipe.calibrate_method", self.calibrate_method, CALIBRATION_METHODS)
        if self.activation == "uint8" and self.symmetric_activations:
            raise ConfigError("Int8Recipe: symmetric activations need activation='int8'")

    def to_dict(self) -> dict:
        return {"format": "QDQ", "activation": self.activation, "weight": "int8",
                "symmetric_activations": self.symmetric_activations, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "op_types": list(self.op_types),
                "const_weight_matmuls_only": self.const_weight_matmuls_only,
                "quantize_outputs": self.quantize_outputs,
                "calibrate_method": self.calibrate_method}


def recipe_for_target(target: str) -> Int8Recipe:
    """U8S8 asymmetric for the ONNX Runtime CPU target, S8S8 symmetric for TensorRT targets."""
    if target in TENSORRT_TARGETS:
        return Int8Recipe(activation="int8", symmetric_activations=True)
    return Int8Recipe()


def quantize_int8(src: str | Path, dst: str | Path, reader, recipe: Int8Recipe) -> None:
    """Static QDQ quantization of ``src`` into ``dst`` calibrated with ``reader``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="vlmedge-quant-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        model = onnx.load(str(pre))
        if unshare_initializers(model.graph, recipe.op_types):
            onnx.save(model, str(pre))
        exclude = activation_matmuls(pre) if recipe.const_weight_matmuls_only else []
        quantize_static(
            str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.op_types), per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8 if recipe.activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[recipe.calibrate_method],
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True,
                           "OpTypesToExcludeOutputQuantization":
                               [] if recipe.quantize_outputs else list(recipe.op_types)},
        )
    check_single_file(dst)


def fuse_for_cpu(src: str | Path, dst: str | Path) -> int:
    """ONNX Runtime CPU form of a QDQ graph: ORT's offline "extended" optimization (QDQ pairs ->
    ``MatMulIntegerToFloat``), then each following bias ``Add`` folded into that op's bias input
    (ORT fuses it for quantize_dynamic graphs but not for QDQ ones). Returns the number of biases
    folded. The result runs on ONNX Runtime's CPU provider only.
    """
    from .onnx_export import ort_optimize

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


def activation_matmuls(path: str | Path) -> list[str]:
    """Names of MatMul nodes whose B input is computed (not a weight), e.g. q @ k^T and attn @ v.

    (``MatMulConstBOnly`` is ignored by the QDQ quantizer, hence this explicit exclusion list.)
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in consts]


def convert_fp16(src: str | Path, dst: str | Path, block_ops: tuple[str, ...] = FP16_BLOCK_OPS) -> None:
    """fp16 weights and compute, float32 graph inputs/outputs, ``block_ops`` kept in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(block_ops))
    onnx.save(model, str(dst))
    check_single_file(dst)


def op_counts(path: str | Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def qdq_report(path: str | Path) -> dict:
    """Q/DQ node counts, and for each op type how many nodes read a DequantizeLinear output."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    quantized, float_ = Counter(), Counter()
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        reads_dq = any(producer.get(i) == "DequantizeLinear" for i in n.input)
        (quantized if reads_dq else float_)[n.op_type] += 1
    counts = Counter(n.op_type for n in graph.node)
    const_matmuls = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and
                        (n.input[1] in inits or producer.get(n.input[1]) == "DequantizeLinear"))
    return {"QuantizeLinear": counts["QuantizeLinear"], "DequantizeLinear": counts["DequantizeLinear"],
            "quantized": dict(quantized), "float": dict(float_), "weight_matmuls": const_matmuls}
