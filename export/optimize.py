"""Graph passes on the ONNX Runtime CPU form of an int8 image encoder, applied at export time.

The int8 bundle for the ``cpu`` platform is saved in the form ONNX Runtime's CPU provider runs
(``quantize.fuse_for_cpu``: ``QuantizeLinear -> MatMulIntegerToFloat`` for every projection). Each
pass here rewrites a pattern of that form into fewer, fused com.microsoft ops, file in, file out:

``qattention``
    the three q/k/v projections that read one quantized input, the head split (``Reshape ->
    Transpose``), ``FusedMatMul``/``MatMul`` scores, ``Softmax``, the ``MatMul`` with v and the head
    merge (``Transpose -> Reshape``) -> one ``QAttention`` (int8 q/k/v GEMMs written straight into
    the per-head layout, float attention core, merged heads out). Same math: the same int8 weights,
    scales and zero points, concatenated per column.
``mha``
    the float attention core between the projections and the head merge -> ``MultiHeadAttention``
    (the projections stay ``MatMulIntegerToFloat``; ORT's CPU kernel may run MLAS flash attention).
``skip_layernorm``
    a residual ``Add`` feeding a ``LayerNormalization`` -> ``SkipLayerNormalization`` (its fourth
    output carries the sum on to the next residual when something else reads it).
``fold_key_transpose``
    the key's head split ``Transpose(0,2,3,1)`` -> ``Transpose(0,2,1,3)`` read by the scores matmul
    with ``transB=1`` (moves whole head_dim rows instead of transposing every head; same numbers).

Which passes run by default (``DEFAULT_PASSES``) is decided by measurement: a pass is on only when
it won over paired interleaved rounds on both ViT-B/16 and ViT-B/32 int8 encoders and kept patch
agreement (``benchmarks/bench_ort_fusion.py``, results in ``benchmarks/results/``). The others stay
available by name for that benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vlmedge.export.onnx_export import check_single_file

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


class _Index:
    """Who produces and who reads each value of a graph, and its constant initializers."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inits = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    @staticmethod
    def attr(node, name, default=None):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant" and p.attribute and p.attribute[0].name == "value":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    def only_user(self, name: str, op_type: str | None = None):
        """The single node reading ``name`` (of ``op_type`` when given) if nothing else, not even a graph
        output, reads it; else None."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs or (op_type and users[0].op_type != op_type):
            return None
        return users[0]

    def made_by(self, name: str, op_type: str):
        p = self.producer.get(name)
        return p if p is not None and p.op_type == op_type else None


def _perm(g: _Index, node) -> list[int]:
    return [int(p) for p in g.attr(node, "perm", [])]


def _split_heads(g: _Index, name: str, perm: list[int]):
    """``name = Transpose(perm)(Reshape(x, [*, *, H, D]))``, both used once -> (x, (H, D), [nodes])."""
    tr = g.made_by(name, "Transpose")
    if tr is None or _perm(g, tr) != perm or g.only_user(name) is None:
        return None
    rs = g.made_by(tr.input[0], "Reshape")
    if rs is None or g.only_user(rs.output[0]) is None:
        return None
    shape = g.const(rs.input[1])
    if shape is None or shape.shape != (4,) or min(int(shape[2]), int(shape[3])) <= 0:
        return None
    return rs.input[0], (int(shape[2]), int(shape[3])), [tr, rs]


class _Core:
    """One float attention core of the CPU form, matched around its Softmax."""

    def __init__(self, q, k, v, heads: int, head_dim: int, scale: float, nodes: list, ctx_quant, out_name: str):
        self.q, self.k, self.v = q, k, v  # the projections' outputs [B, S, H*D]
        self.heads, self.head_dim, self.scale = heads, head_dim, scale
        self.nodes = nodes  # replaced (head split, scores, softmax, context, head merge)
        self.ctx_quant = ctx_quant  # QuantizeLinear of the context before the merge, or None
        self.out_name = out_name  # the merged heads [B, S, H*D] (uint8 when ctx_quant is set)


def _scores(g: _Index, sm):
    """The scores node feeding Softmax ``sm`` -> (q heads, k heads, scale, [nodes]) or None."""
    mm = g.producer.get(sm.input[0])
    if mm is None or g.only_user(mm.output[0]) is None:
        return None
    if mm.op_type == "FusedMatMul" and mm.domain == MS_DOMAIN:
        if any(int(g.attr(mm, a, 0)) for a in ("transA", "transBatchA", "transBatchB")):
            return None
        k_perm = [0, 2, 1, 3] if int(g.attr(mm, "transB", 0)) else [0, 2, 3, 1]
        scale = float(g.attr(mm, "alpha", 1.0))
    elif mm.op_type == "MatMul":
        k_perm, scale = [0, 2, 3, 1], 1.0
    else:
        return None
    q_name, extra = mm.input[0], []
    mul = g.made_by(q_name, "Mul")
    if mul is not None and g.only_user(mul.output[0]) is not None:
        c = [g.const(i) for i in mul.input]
        for j in (0, 1):
            if c[j] is not None and c[j].size == 1:
                scale *= float(c[j].reshape(()))
                q_name, extra = mul.input[1 - j], [mul]
                break
    q, k = _split_heads(g, q_name, [0, 2, 1, 3]), _split_heads(g, mm.input[1], k_perm)
    if q is None or k is None or q[1] != k[1]:
        return None
    return q, k, scale, [mm, *extra]


def _attention_core(g: _Index, sm) -> _Core | None:
    if int(g.attr(sm, "axis", -1)) not in (-1, 3):
        return None
    found = _scores(g, sm)
    av = g.only_user(sm.output[0], "MatMul")
    if found is None or av is None or av.input[0] != sm.output[0]:
        return None
    q, k, scale, score_nodes = found
    v = _split_heads(g, av.input[1], [0, 2, 1, 3])
    if v is None or v[1] != q[1]:
        return None
    name, ctx_quant = av.output[0], None
    ql = g.only_user(name, "QuantizeLinear")
    if ql is not None:  # ORT moves the out projection's QuantizeLinear above the merge: keep it there
        scale_ok = all(g.const(i) is not None and g.const(i).size == 1 for i in ql.input[1:3])
        if not scale_ok:
            return None
        name, ctx_quant = ql.output[0], ql
    back = g.only_user(name, "Transpose")
    if back is None or _perm(g, back) != [0, 2, 1, 3]:
        return None
    merge = g.only_user(back.output[0], "Reshape")
    heads, head_dim = q[1]
    shape = g.const(merge.input[1]) if merge is not None else None
    if shape is None or shape.shape != (3,) or int(shape[2]) not in (-1, heads * head_dim):
        return None
    nodes = q[2] + k[2] + v[2] + score_nodes + [sm, av] + ([ql] if ql is not None else []) + [back, merge]
    return _Core(q[0], k[0], v[0], heads, head_dim, scale, nodes, ctx_quant, merge.output[0])


def _output_nodes(core: _Core, out: str, prefix: str) -> list:
    """After the fused node writing float ``out`` [B,S,H*D]: the context's QuantizeLinear, if any."""
    if core.ctx_quant is None:
        return []
    q = core.ctx_quant
    return [helper.make_node("QuantizeLinear", [out, *q.input[1:]], [core.out_name], name=f"{prefix}/QuantizeLinear",
                             **{a.name: helper.get_attribute_value(a) for a in q.attribute})]


def _replace(graph: onnx.GraphProto, dead: list, new: list, before) -> None:
    at = list(graph.node).index(before)
    for j, n in enumerate(new):
        graph.node.insert(at + j, n)
    for n in dead:
        graph.node.remove(n)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _fresh(g: _Index, base: str) -> str:
    name, k = base, 0
    while name in g.inits or name in g.producer:
        k += 1
        name = f"{base}_{k}"
    return name


def _add_init(graph: onnx.GraphProto, g: _Index, base: str, value: np.ndarray) -> str:
    name = _fresh(g, base)
    t = numpy_helper.from_array(value, name)
    graph.initializer.append(t)
    g.inits[name] = t
    return name


def fuse_mha(graph: onnx.GraphProto) -> int:
    """Float attention cores -> ``com.microsoft.MultiHeadAttention``. Returns the number fused."""
    g = _Index(graph)
    done = 0
    for sm in [n for n in graph.node if n.op_type == "Softmax"]:
        core = _attention_core(g, sm)
        if core is None:
            continue
        prefix = f"{sm.name or core.out_name}/MultiHeadAttention"
        out = core.out_name if core.ctx_quant is None else f"{prefix}/output"
        mha = helper.make_node("MultiHeadAttention", [core.q, core.k, core.v], [out], name=prefix,
                               domain=MS_DOMAIN, num_heads=core.heads, scale=core.scale)
        _replace(graph, core.nodes, [mha, *_output_nodes(core, out, prefix)], core.nodes[-1])
        done += 1
    _drop_unused_initializers(graph)
    return done


def _projection(g: _Index, name: str):
    """``name`` written by a ``MatMulIntegerToFloat`` with constant weight, scales, zero points and bias
    (read by nothing else) -> (node, dict of arrays)."""
    mm = g.producer.get(name)
    if mm is None or mm.op_type != "MatMulIntegerToFloat" or len(mm.input) < 6 or g.only_user(name) is None:
        return None
    arr = {k: g.const(mm.input[i]) if i < len(mm.input) and mm.input[i] else None
           for k, i in (("w", 1), ("a_scale", 2), ("w_scale", 3), ("a_zp", 4), ("w_zp", 5), ("bias", 6))}
    w = arr["w"]
    if w is None or w.ndim != 2 or w.dtype != np.int8 or arr["w_scale"] is None or arr["a_scale"] is None \
            or arr["a_scale"].size != 1:
        return None
    n = w.shape[1]
    arr["w_scale"] = np.broadcast_to(arr["w_scale"].astype(np.float32).reshape(-1), (n,))
    arr["w_zp"] = np.broadcast_to((np.zeros(1, np.int8) if arr["w_zp"] is None else arr["w_zp"]).reshape(-1), (n,))
    arr["bias"] = np.zeros(n, np.float32) if arr["bias"] is None else arr["bias"].astype(np.float32).reshape(n)
    if arr["w_zp"].dtype != np.int8 or arr["w_zp"].size != n:
        return None
    return mm, arr


def fuse_qattention(graph: onnx.GraphProto) -> int:
    """Quantized q/k/v projections of one input plus their float attention core -> ``com.microsoft.QAttention``.
    Returns the number fused."""
    g = _Index(graph)
    done = 0
    for sm in [n for n in graph.node if n.op_type == "Softmax"]:
        core = _attention_core(g, sm)
        if core is None:
            continue
        projs = [_projection(g, x) for x in (core.q, core.k, core.v)]
        if any(p is None for p in projs):
            continue
        nodes = [p[0] for p in projs]
        # one quantized input, one activation scale and zero point, read by all three
        if len({(n.input[0], n.input[2], n.input[4] if len(n.input) > 4 else "") for n in nodes}) != 1:
            continue
        arrs = [p[1] for p in projs]
        width = core.heads * core.head_dim
        if any(a["w"].shape[1] != width for a in arrs) or len({a["w"].shape[0] for a in arrs}) != 1:
            continue
        prefix = f"{sm.name or core.out_name}/QAttention"
        cat = {k: np.ascontiguousarray(np.concatenate([a[k] for a in arrs], axis=-1))
               for k in ("w", "w_scale", "w_zp", "bias")}
        names = {k: _add_init(graph, g, f"{prefix}/{k}", v) for k, v in cat.items()}
        first = nodes[0]
        a_zp = first.input[4] if len(first.input) > 4 else ""
        out = core.out_name if core.ctx_quant is None else f"{prefix}/output"
        qa = helper.make_node("QAttention", [first.input[0], names["w"], names["bias"], first.input[2],
                                             names["w_scale"], "", a_zp, names["w_zp"]], [out],
                              name=prefix, domain=MS_DOMAIN, num_heads=core.heads, scale=core.scale)
        _replace(graph, nodes + core.nodes, [qa, *_output_nodes(core, out, prefix)], core.nodes[-1])
        done += 1
    _drop_unused_initializers(graph)
    return done


def fuse_skip_layernorm(graph: onnx.GraphProto) -> int:
    """``LayerNormalization(Add(a, b))`` over the last axis -> ``com.microsoft.SkipLayerNormalization``
    (the sum as its fourth output when anything else reads it). Returns the number fused."""
    g = _Index(graph)
    done = 0
    for ln in [n for n in graph.node if n.op_type == "LayerNormalization"]:
        add = g.made_by(ln.input[0], "Add")
        if add is None or int(g.attr(ln, "axis", -1)) != -1 or len(ln.output) > 1 and any(ln.output[1:]) \
                or len(ln.input) < 3 or not ln.input[2] or any(g.const(i) is not None for i in add.input):
            continue
        if g.const(ln.input[1]) is None or g.const(ln.input[2]) is None:
            continue
        others = [n for n in g.consumers.get(add.output[0], []) if n is not ln] or add.output[0] in g.outputs
        prefix = f"{ln.name or ln.output[0]}/SkipLayerNormalization"
        outs = [ln.output[0], "", "", add.output[0]] if others else [ln.output[0]]
        sln = helper.make_node("SkipLayerNormalization", [add.input[0], add.input[1], ln.input[1], ln.input[2]],
                               outs, name=prefix, domain=MS_DOMAIN, epsilon=float(g.attr(ln, "epsilon", 1e-5)))
        _replace(graph, [add, ln], [sln], add)
        done += 1
    return done


def fold_key_transpose(graph: onnx.GraphProto) -> int:
    """``MatMul/FusedMatMul(q, Transpose(0,2,3,1)(k))`` -> ``FusedMatMul(q, Transpose(0,2,1,3)(k), transB=1)``:
    the head split of k moves whole rows of head_dim floats instead of transposing every head, and the
    matmul reads k transposed (it packs B either way). Returns the number folded."""
    g = _Index(graph)
    done = 0
    for mm in [n for n in graph.node if n.op_type in ("MatMul", "FusedMatMul")]:
        if mm.op_type == "FusedMatMul" and (mm.domain != MS_DOMAIN or any(
                int(g.attr(mm, a, 0)) for a in ("transB", "transBatchA", "transBatchB"))):
            continue
        tr = g.made_by(mm.input[1], "Transpose")
        if tr is None or _perm(g, tr) != [0, 2, 3, 1] or g.only_user(tr.output[0]) is None:
            continue
        for a in [a for a in tr.attribute if a.name == "perm"]:
            tr.attribute.remove(a)
        tr.attribute.append(helper.make_attribute("perm", [0, 2, 1, 3]))
        if mm.op_type == "MatMul":
            mm.op_type, mm.domain = "FusedMatMul", MS_DOMAIN
            mm.attribute.extend([helper.make_attribute("alpha", 1.0), helper.make_attribute("transA", 0)])
        for a in [a for a in mm.attribute if a.name == "transB"]:
            mm.attribute.remove(a)
        mm.attribute.append(helper.make_attribute("transB", 1))
        done += 1
    return done


PASSES: dict[str, Callable[[onnx.GraphProto], int]] = {
    "qattention": fuse_qattention, "mha": fuse_mha, "skip_layernorm": fuse_skip_layernorm,
    "fold_key_transpose": fold_key_transpose}
# What export_bundle applies to the cpu platform's int8 image encoder. Empty: on a 2-core Intel Xeon
# (AVX-512 VNNI, no AMX) no pass won on both ViT-B/16 and ViT-B/32 over 16 paired rounds, and
# skip_layernorm lost on both (benchmarks/results/ort-fusion-2026-11-30.md).
DEFAULT_PASSES: tuple[str, ...] = ()


def _use_ms_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def optimize_model(model: onnx.ModelProto, passes=DEFAULT_PASSES) -> dict[str, int]:
    """Apply ``passes`` (names of ``PASSES``, in order) to ``model`` in place; returns rewrites per pass."""
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        from vlmedge.errors import ConfigError

        raise ConfigError(f"unknown graph pass(es) {unknown}; expected names from {sorted(PASSES)}")
    counts = {p: PASSES[p](model.graph) for p in passes}
    if any(counts.values()):
        _use_ms_domain(model)
    return counts


def optimize_file(src: str | Path, dst: str | Path, passes=DEFAULT_PASSES) -> dict[str, int]:
    """``optimize_model`` file in, file out (``dst`` may be ``src``; with no passes and ``dst`` == ``src`` the
    file is left untouched)."""
    if not passes and Path(src).resolve() == Path(dst).resolve():
        return {}
    model = onnx.load(str(src))
    counts = optimize_model(model, passes)
    onnx.save(model, str(dst))
    check_single_file(dst)
    if counts:
        log.info("graph passes on %s: %s", Path(dst).name, ", ".join(f"{k} x{v}" for k, v in counts.items()))
    return counts
