"""Reduced-precision graphs: static int8 QDQ and fp16, file in, file out.

int8 recipe (image encoder; ``Int8Recipe``, one per platform in ``vlmedge.platforms.PLATFORMS``):
``quant_pre_process`` (shape inference + basic optimization), then ``quantize_static`` in QDQ format
over the MatMuls with a constant weight (q/k/v/out projections, MLP, final projection); per-channel
weights; Q/DQ on the MatMul inputs only. LayerNorm, Softmax, GELU, residual Adds, the attention
score MatMuls (activation x activation) and the final L2 normalization stay float. Activations are
uint8 asymmetric on the cpu platform (ONNX Runtime's fast U8S8 VNNI kernels) and int8 symmetric on
TensorRT platforms (TensorRT only accepts symmetric QDQ). On the cpu platform the patch-embedding
Conv (kernel == stride) is first rewritten as patchify + MatMul (``conv_as_matmul``) so that it is
quantized like the other projections; ONNX Runtime's ``MultiHeadAttention`` fusion of the float
attention core (``fuse_attention``) is opt-in: it slowed ViT-B/16-sized towers down on a small CPU
(``benchmarks/bench_export.py`` times it).

fp16 recipe: ONNX Runtime's bundled copy of onnxconverter-common's ``convert_float_to_float16``
with float32 inputs/outputs (``keep_io_types``) and the precision-sensitive ops kept in float32.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from vlmedge.export.onnx_export import check_single_file
from vlmedge.platforms import CALIBRATION_METHODS, Int8Recipe  # noqa: F401  (the recipe is platform data)

log = logging.getLogger(__name__)

# Ops left in float32 by the fp16 conversion: normalizations (incl. LayerNorm decomposed at
# opset 16), softmax, and the L2 norm of the outputs.
FP16_BLOCK_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "Pow", "Sqrt")


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
        changed = unshare_initializers(model.graph, recipe.op_types)
        if recipe.conv_as_matmul:
            changed += patch_conv_as_matmul(model.graph)
        if recipe.fuse_attention:
            fused = fuse_attention(model.graph)
            log.info("fused %d attention cores into MultiHeadAttention", fused)
            if fused:
                _use_ms_domain(model)
            changed += fused
        if changed:
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
