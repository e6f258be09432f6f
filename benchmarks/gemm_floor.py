"""The GEMM floor of an image encoder on this CPU: its multiply-accumulates over the best int8 matmul
rate measured here for its own GEMM shapes. Heavy-ish (a minute or two); run it by hand.

    python benchmarks/gemm_floor.py BUNDLE [BUNDLE ...] [--threads 2] [--rounds 5] [--floor-file PATH]
        [--json benchmarks/results/gemm-floor-DATE.json]

1. MACs: ``gemms(model)`` lists every matrix product of the ONNX graph (MatMul, Gemm, Conv, the
   integer matmuls, FusedMatMul, the com.microsoft attention ops), each as batch x (M x K) @ (K x N)
   with ``weight`` saying whether B is a constant; symbolic dims (the batch) count as 1. Shapes come
   from shape inference, or, better, from one ONNX Runtime run of the graph (``observed_shapes``: an
   int8 graph saved by ONNX Runtime records a Reshape whose target is computed at run time with
   symbolic dims, which inference would count as 1). ``count_macs`` sums the products; both are
   unit-tested in tests/test_gemm_floor.py.
2. Rates: for each distinct shape, single-node models timed at ``--threads`` threads: ONNX Runtime
   ``MatMulInteger`` (uint8 x int8 -> int32) and ``MatMulIntegerToFloat`` (the op the int8 bundle
   runs, per-column scales), ``torch._int_mm`` (int8 x int8 -> int32) when torch is installed, and
   OpenVINO's int8 FullyConnected kernel when OpenVINO is installed (a QDQ MatMul with a constant
   weight, compiled with the runtime's settings; its kernel time from OpenVINO's per-node profile,
   without the call's own overhead: the profile keeps running means, so this one is the best round's
   mean); the best call of ``--repeats`` (a rate the hardware reaches, which load from other
   processes can only lower). fp32 ``MatMul`` is timed too for the activation x
   activation products (the attention scores and context, which the int8 bundle runs in float).
3. Floor: ``floor_ms`` = sum over the graph's products of MACs / the best int8 rate for that shape;
   ``floor_ms_uniform`` = all MACs / the best rate of any shape (the issue's "MACs / rate").
   ``floor_ms_streamed``: the same with each weight product at ``torch._int_mm``'s rate when every call
   takes the next of as many distinct weights as the encoder has of that shape (a rate timed on one
   weight matrix has it in the core's cache; in the encoder each weight is read once per frame).
4. Encoder: the bundle's image encoder timed the same way (best and median call), and the sum of
   each node's fastest time in ONNX Runtime's profile of those calls (the load-robust figure on a
   shared machine: a 60 ms call is rarely left alone, a 1 ms node often is), as multiples of the floor.
   With OpenVINO installed, also the file OpenVINO runs (a bundle's ``image_file("openvino")``: the
   default CPU path, ``--backend auto``, on x86), in the same run: best and median call, and per call
   the mean of its GEMM nodes (FullyConnected, MatMul, Convolution) and of the rest, from OpenVINO's
   per-node profile (running means read before and after each round), as multiples of the same floor.
5. Rounds (``--rounds``, default 5): every product's methods, then every encoder, in turn, so that the
   drift of a shared machine falls on both sides. ``paired_multiple``: per backend, the encoder's median
   call in a round over that round's floor, the median over rounds (and the range). The floor itself
   (``floor_ms``) stays the best calls over all rounds.

The floor file (JSON, format in ``vlmedge/floor.py``; ``$VLMEDGE_GEMM_FLOOR``, else ``gemm-floor.json``
in the runtime's cache folder: ``$VLMEDGE_CACHE_DIR``, else ``~/.cache/vlmedge``) gets one entry per
image encoder, keyed by the sha256 of its ONNX file, merged into what the file already holds; ``vlmedge bench``
reads it and prints the encoder time as a multiple of the floor.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling openvino_profile.py (not a package)
log = logging.getLogger("gemm_floor")

MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "MatMulIntegerToFloat": (0, 1), "FusedMatMul": (0, 1),
              "QLinearMatMul": (0, 3), "DynamicQuantizeMatMul": (0, 1), "MatMulInteger16": (0, 1)}
CONV_OPS = ("Conv", "ConvInteger", "QLinearConv")
ATTENTION_OPS = ("QAttention", "Attention")  # packed q/k/v weight; MultiHeadAttention takes q, k, v as inputs
PRODUCT_OPS = {*MATMUL_OPS, "Gemm", *CONV_OPS, *ATTENTION_OPS, "MultiHeadAttention"}  # every op gemms() counts


@dataclass(frozen=True)
class Product:
    """One matrix product of a graph: ``batch`` x (M x K) @ (K x N)."""

    node: str
    op: str
    batch: int
    m: int
    k: int
    n: int
    weight: bool  # B is a constant (a learned projection), else both operands are computed

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n


def _shapes(model: onnx.ModelProto, dims: dict[str, int]) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # graphs with ops onnx does not know: what the file records is used as is
        inferred = model
    g = inferred.graph
    out: dict[str, list[int | None]] = {}
    for v in [*g.input, *g.value_info, *g.output]:
        if not v.type.tensor_type.HasField("shape"):
            continue
        out[v.name] = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 1)
                       for d in v.type.tensor_type.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = list(n.attribute[0].t.dims)
    return out


def _attr(node, name, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _product_inputs(model: onnx.ModelProto) -> list[str]:
    return list(dict.fromkeys(i for n in model.graph.node if n.op_type in PRODUCT_OPS for i in n.input if i))


def observed_shapes(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict[str, list[int]]:
    """The shapes the inputs of ``model``'s matrix products have when ONNX Runtime runs it (graph
    optimizations off) on zeros, symbolic input dims given by ``dims`` (default 1)."""
    import onnxruntime as ort

    dims = dims or {}
    consts = {i.name for i in model.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in _product_inputs(model):
        if name not in consts and name not in outputs:  # ONNX Runtime infers the element type itself
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    feeds = {}
    for v in probe.graph.input:
        if v.name not in consts:
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 1) for d in t.shape.dim]
            feeds[v.name] = np.zeros(shape, helper.tensor_dtype_to_np_dtype(t.elem_type))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: list(a.shape) for n, a in zip(names, session.run(None, feeds))}


def gemms(model: onnx.ModelProto, dims: dict[str, int] | None = None,
          observed: dict[str, list[int]] | None = None) -> list[Product]:
    """Every matrix product of ``model``'s main graph (see the module docstring). ``dims`` gives values to
    symbolic dimensions by name (default 1); ``observed``: shapes seen in a run (``observed_shapes``), used
    before inferred ones. Raises ValueError naming the node when a shape is unknown."""
    dims = dims or {}
    shapes = {**_shapes(model, dims), **(observed or {})}
    consts = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    # a QDQ graph's weight: an int8 constant dequantized (OpenVINO's form of the int8 bundles)
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}

    def shape(node, i: int) -> list[int]:
        name = node.input[i] if i < len(node.input) else ""
        s = shapes.get(name)
        if not name or s is None or any(d is None or d < 0 for d in s):
            raise ValueError(f"node {node.name or node.op_type!r} ({node.op_type}): shape of input {i} "
                             f"({name!r}) unknown; run shape inference on the graph first")
        return [int(d) for d in s]

    found = []
    for node in model.graph.node:
        label = node.name or node.output[0]
        op = node.op_type
        if op in MATMUL_OPS:
            ia, ib = MATMUL_OPS[op]
            a, b = shape(node, ia), shape(node, ib)
            a = [1, *a] if len(a) == 1 else a
            b = [*b, 1] if len(b) == 1 else b
            if op == "FusedMatMul":
                if _attr(node, "transA", 0):
                    a = [*a[:-2], a[-1], a[-2]]
                if _attr(node, "transB", 0):
                    b = [*b[:-2], b[-1], b[-2]]
            batch = math.prod(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
            found.append(Product(label, op, batch, a[-2], a[-1], b[-1], node.input[ib] in consts))
        elif op == "Gemm":
            a, b = shape(node, 0), shape(node, 1)
            m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
            n = b[0] if _attr(node, "transB", 0) else b[1]
            found.append(Product(label, op, 1, m, k, n, node.input[1] in consts))
        elif op in CONV_OPS:
            x, w = (shape(node, 0), shape(node, 3)) if op == "QLinearConv" else (shape(node, 0), shape(node, 1))
            group = int(_attr(node, "group", 1))
            kernel = w[2:]
            strides = list(_attr(node, "strides", [1] * len(kernel)))
            dil = list(_attr(node, "dilations", [1] * len(kernel)))
            pads = list(_attr(node, "pads", [0] * 2 * len(kernel)))
            auto = _attr(node, "auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            out = []
            for j, (size, kk) in enumerate(zip(x[2:], kernel)):
                if auto in ("SAME_UPPER", "SAME_LOWER"):
                    out.append(-(-size // strides[j]))
                else:
                    span = size + pads[j] + pads[j + len(kernel)] - dil[j] * (kk - 1) - 1
                    out.append(span // strides[j] + 1)
            found.append(Product(label, op, group, x[0] * math.prod(out), w[1] * math.prod(kernel), w[0] // group,
                                 node.input[3 if op == "QLinearConv" else 1] in consts))
        elif op in ATTENTION_OPS:
            x, w = shape(node, 0), shape(node, 1)
            heads = int(_attr(node, "num_heads"))
            bsz, s = x[0], x[1]
            sizes = list(_attr(node, "qkv_hidden_sizes", []) or [w[1] // 3] * 3)
            found.append(Product(f"{label}/qkv", op, 1, bsz * s, x[2], w[1], node.input[1] in consts))
            found.append(Product(f"{label}/scores", op, bsz * heads, s, sizes[0] // heads, s, False))
            found.append(Product(f"{label}/context", op, bsz * heads, s, s, sizes[2] // heads, False))
        elif op == "MultiHeadAttention":
            q = shape(node, 0)
            if len(q) != 3:
                raise ValueError(f"node {label!r} (MultiHeadAttention): only [B, S, D] query/key/value are counted")
            k, v = shape(node, 1), shape(node, 2)
            heads = int(_attr(node, "num_heads"))
            found.append(Product(f"{label}/scores", op, q[0] * heads, q[1], q[2] // heads, k[1], False))
            found.append(Product(f"{label}/context", op, q[0] * heads, q[1], k[1], v[2] // heads, False))
    return found


def count_macs(model: onnx.ModelProto, dims: dict[str, int] | None = None,
               observed: dict[str, list[int]] | None = None) -> dict:
    """Multiply-accumulates of ``model``: total, in products with a constant B (``weight``) and in the rest
    (``activation``), and per op type (``dims``, ``observed``: as ``gemms``)."""
    products = gemms(model, dims, observed)
    by_op: dict[str, int] = {}
    for p in products:
        by_op[p.op] = by_op.get(p.op, 0) + p.macs
    weight = sum(p.macs for p in products if p.weight)
    total = sum(p.macs for p in products)
    return {"total": total, "weight": weight, "activation": total - weight, "by_op": by_op,
            "products": len(products)}


# ----------------------------------------------------------------------------- rates
def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class Timer:
    """One thing timed in rounds: ``fn()`` runs it once and returns the seconds that count (a call's wall time,
    or a kernel's time from a profile). ``round`` adds one round of calls; rounds of several timers interleave,
    so that a shared machine's drift falls on all of them alike."""

    def __init__(self, fn, warmup: int = 2):
        self.fn = fn
        self.rounds: list[list[float]] = []
        for _ in range(warmup):
            fn()

    def round(self, calls: int, min_seconds: float = 0.0, settle: float = 0.0) -> None:
        """``calls`` calls (and at least ``min_seconds`` of them) after ``settle`` idle seconds: the worker threads
        of what ran before (ONNX Runtime's pool, torch's OpenMP, OpenVINO's TBB) spin-wait for a while after
        each call of theirs, and would take the cores from the first calls of this one."""
        time.sleep(settle)
        times, t_end = [], time.perf_counter() + min_seconds
        while len(times) < calls or time.perf_counter() < t_end:
            times.append(self.fn())
        self.rounds.append(times)

    def times(self, r: int | None = None) -> list[float]:
        """Round ``r``'s times, or all; zeros (a kernel under its profile's resolution) left out."""
        got = self.rounds[r] if r is not None else [t for rr in self.rounds for t in rr]
        return [t for t in got if t > 0]


def _wall(call):
    def fn() -> float:
        t = time.perf_counter()
        call()
        return time.perf_counter() - t
    return fn


def single_node(op: str, batch: int, m: int, k: int, n: int, weight: bool, seed: int = 0):
    """A one-node model computing one product of the shape, and its feeds."""
    rng = np.random.default_rng(seed)
    bshape = [k, n] if weight else [batch, k, n]
    ashape = [m, k] if weight and batch == 1 else [batch, m, k]
    if op == "MatMul":
        a = rng.normal(0, 1, ashape).astype(np.float32)
        b = rng.normal(0, 1, bshape).astype(np.float32)
        inputs, inits = ["A", "B"], []
        node = helper.make_node("MatMul", inputs, ["Y"])
        feeds = {"A": a, "B": b}
        types = {"A": TensorProto.FLOAT, "B": TensorProto.FLOAT}
        out = TensorProto.FLOAT
        opsets = [helper.make_opsetid("", 17)]
    else:
        a = rng.integers(0, 256, ashape, dtype=np.uint8)
        b = rng.integers(-127, 128, bshape, dtype=np.int8)
        inits = [numpy_helper.from_array(np.array(128, np.uint8), "a_zp"),
                 numpy_helper.from_array(np.zeros(n, np.int8) if weight else np.array(0, np.int8), "b_zp")]
        feeds, types = {"A": a}, {"A": TensorProto.UINT8}
        if weight:
            inits.append(numpy_helper.from_array(b, "B"))
        else:
            feeds["B"], types["B"] = b, TensorProto.INT8
        if op == "MatMulInteger":
            node = helper.make_node("MatMulInteger", ["A", "B", "a_zp", "b_zp"], ["Y"])
            out = TensorProto.INT32
        elif op == "MatMulIntegerToFloat":
            b_scale = np.full(n, 0.01, np.float32) if weight else np.array(0.01, np.float32)
            inits += [numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
                      numpy_helper.from_array(b_scale, "b_scale"),
                      numpy_helper.from_array(np.zeros(n, np.float32), "bias")]
            node = helper.make_node("MatMulIntegerToFloat", ["A", "B", "a_scale", "b_scale", "a_zp", "b_zp", "bias"],
                                    ["Y"], domain="com.microsoft")
            out = TensorProto.FLOAT
        else:
            raise ValueError(f"unknown op {op!r}")
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    inputs = [helper.make_tensor_value_info(name, types[name], list(v.shape)) for name, v in feeds.items()]
    graph = helper.make_graph([node], f"{op}_{batch}x{m}x{k}x{n}", inputs,
                              [helper.make_tensor_value_info("Y", out, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=opsets), feeds


def _torch_timer(batch: int, m: int, k: int, n: int, threads: int, copies: int = 1):
    """A call of ``torch._int_mm`` (int8 x int8 -> int32) at the shape, or None without torch or the op. With
    ``copies`` > 1 (weight products only), each call takes the next of that many distinct weights: the encoder
    has that many products of the shape and reads each weight once per frame, so between two uses of one the
    others pass through the caches (a rate timed on one weight matrix has it in the core's cache)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(copies)
    a = torch.randint(-128, 128, (batch, m, k), dtype=torch.int8, generator=g)
    b = [torch.randint(-127, 128, (batch, k, n), dtype=torch.int8, generator=g) for _ in range(copies)]
    try:
        torch._int_mm(a[0], b[0][0])
    except (RuntimeError, AttributeError) as e:
        log.info("torch._int_mm %dx%dx%d not measured: %s", m, k, n, e)
        return None
    if copies > 1:
        turn = iter(range(1 << 62))
        return _wall(lambda: torch._int_mm(a[0], b[next(turn) % copies][0]))
    if batch == 1:
        return _wall(lambda: torch._int_mm(a[0], b[0][0]))
    return _wall(lambda: [torch._int_mm(a[i], b[0][i]) for i in range(batch)])


def single_node_qdq(m: int, k: int, n: int, seed: int = 0):
    """A QDQ model of one weight product as the int8 bundles write it for OpenVINO: float X [m, k] quantized
    to uint8 (per tensor) and back, times an int8 weight [k, n] dequantized per column; and its feed."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(n, np.int8), "w_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zp"], ["Xq"]),
             helper.make_node("DequantizeLinear", ["Xq", "x_scale", "x_zp"], ["Xd"]),
             helper.make_node("DequantizeLinear", ["W", "w_scale", "w_zp"], ["Wd"], axis=1),
             helper.make_node("MatMul", ["Xd", "Wd"], ["Y"], name="product")]
    graph = helper.make_graph(nodes, f"qdq_{m}x{k}x{n}",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], initializer=inits)
    x = rng.normal(0, 1, (m, k)).astype(np.float32)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"X": x}


GEMM_LAYERS = ("FullyConnected", "MatMul", "Convolution")  # OpenVINO layer types (prefixes) that run a product


def is_gemm_layer(node_type: str) -> bool:
    return node_type.startswith(GEMM_LAYERS)


def _openvino_available() -> bool:
    from vlmedge.runtime.grounding.backends import openvino_version

    return openvino_version() is not None


class ProfiledTimer(Timer):
    """A Timer over an OpenVINO infer request compiled with PERF_COUNT: ``rounds`` hold each call's wall time;
    ``windows`` each round's ms per call by (layer type, kernel) group, worked out from OpenVINO's running means
    read before and after the round (``openvino_profile.window_means``: the profile holds no per-call times)."""

    def __init__(self, request, x: np.ndarray, warmup: int = 3):
        self.request, self.x, self.calls, self.windows = request, x, 0, []
        self.first = self.last = None
        super().__init__(self._call, warmup)

    def _call(self) -> float:
        t = time.perf_counter()
        self.request.infer({0: self.x})
        self.calls += 1
        return time.perf_counter() - t

    def round(self, calls: int, min_seconds: float = 0.0, settle: float = 0.0) -> None:
        from openvino_profile import counters, window_means

        before, n0 = counters(self.request), self.calls
        self.first = self.first or (before, n0)
        super().round(calls, min_seconds, settle)
        self.last = (counters(self.request), self.calls)
        self.windows.append(window_means(before, self.last[0], n0, self.calls))

    def split(self, r: int | None = None) -> tuple[float, float]:
        """(GEMM nodes, other nodes) ms per call in round ``r``, or over all rounds."""
        from openvino_profile import window_means

        # over all rounds: from before the first to after the last (nothing else calls this request in between)
        groups = self.windows[r] if r is not None else window_means(self.first[0], self.last[0], self.first[1],
                                                                     self.last[1])
        gemm = sum(v for (kind, _), v in groups.items() if is_gemm_layer(kind))
        return gemm, sum(groups.values()) - gemm


class OpenVinoKernelTimer(ProfiledTimer):
    """OpenVINO's GEMM kernel for one weight product (a QDQ MatMul, ``single_node_qdq``, compiled with the
    runtime's settings): ``times`` are each round's mean kernel seconds per call from the profile (the call's own
    overhead, ~0.1-0.3 ms here, left out: an encoder makes one call per frame, not one per product)."""

    def __init__(self, m: int, k: int, n: int, threads: int):
        from openvino_profile import compile_profiled

        model, feeds = single_node_qdq(m, k, n)
        with tempfile.TemporaryDirectory(prefix="gemm-floor-ov-") as tmp:
            path = Path(tmp) / "product.onnx"
            onnx.save(model, str(path))
            compiled, _, _ = compile_profiled(path, threads, ir_cache=False)
            request = compiled.create_infer_request()
        super().__init__(request, feeds["X"])

    def times(self, r: int | None = None) -> list[float]:
        rounds = [r] if r is not None else range(len(self.windows))
        return [g / 1e3 for g in (self.split(i)[0] for i in rounds) if g > 0]


SETTLE_S = 0.1  # idle before each timer's calls in a round (Timer.round)
INT8_METHODS = ("ort_MatMulInteger", "ort_MatMulIntegerToFloat", "torch_int_mm", "openvino_fc_kernel")


def rate_timers(shapes: list[tuple[int, int, int, int, bool]], threads: int,
                copies: dict[tuple[int, int, int, int], int] | None = None) -> dict[tuple, dict[str, Timer]]:
    """Per shape (batch, m, k, n, weight), a Timer per method that runs here: ONNX Runtime ``MatMulInteger`` and
    ``MatMulIntegerToFloat`` (and fp32 ``MatMul`` for activation products), ``torch._int_mm``, OpenVINO's kernel
    (weight products), and ``torch_int_mm_streamed`` for a weight shape the encoder has 2 or more of
    (``copies``; see ``_torch_timer``; not one of the floor's methods)."""
    copies = copies or {}
    out: dict[tuple, dict[str, Timer]] = {}
    for batch, m, k, n, weight in shapes:
        fns = {}
        for op in ["MatMulInteger", "MatMulIntegerToFloat"] + ([] if weight else ["MatMul"]):
            model, feeds = single_node(op, batch, m, k, n, weight)
            fns[{"MatMul": "ort_fp32_matmul"}.get(op, f"ort_{op}")] = _wall(
                functools.partial(_session(model, threads).run, None, feeds))
        fns["torch_int_mm"] = _torch_timer(batch, m, k, n, threads)
        if weight and batch == 1 and copies.get((batch, m, k, n), 1) > 1:
            fns["torch_int_mm_streamed"] = _torch_timer(batch, m, k, n, threads, copies[(batch, m, k, n)])
        timers = {key: Timer(fn) for key, fn in fns.items() if fn is not None}
        if weight and batch == 1 and _openvino_available():
            timers["openvino_fc_kernel"] = OpenVinoKernelTimer(m, k, n, threads)
        out[(batch, m, k, n, weight)] = timers
    return out


def rates_of(timers: dict[tuple, dict[str, Timer]]) -> list[dict]:
    """GMAC/s per shape and method from the timers' calls: the best call over all rounds (``gmacs``: a rate the
    hardware reached, which load from other processes can only lower), the median one, and the best call of
    each round (``gmacs_by_round``); ``best_by`` / ``best_gmacs``: the fastest int8 method (INT8_METHODS)."""
    rows = []
    for (batch, m, k, n, weight), by_method in timers.items():
        macs = batch * m * k * n
        row = {"batch": batch, "m": m, "k": k, "n": n, "weight": weight, "gmacs": {}, "gmacs_median": {},
               "gmacs_by_round": {}}
        for key, t in by_method.items():
            if not t.times():
                log.info("%s timed nothing for %dx%dx%dx%d (under its resolution)", key, batch, m, k, n)
                continue
            row["gmacs"][key] = macs / min(t.times()) / 1e9
            row["gmacs_median"][key] = macs / float(np.median(t.times())) / 1e9
            row["gmacs_by_round"][key] = [macs / min(t.times(r)) / 1e9 if t.times(r) else None
                                          for r in range(len(t.rounds))]
        int8 = {kk: v for kk, v in row["gmacs"].items() if kk in INT8_METHODS}
        row["best_by"] = max(int8, key=int8.get)
        row["best_gmacs"] = int8[row["best_by"]]
        rows.append(row)
    return rows


def measure_rates(shapes: list[tuple[int, int, int, int, bool]], threads: int, repeats: int,
                  copies: dict[tuple[int, int, int, int], int] | None = None, rounds: int = 1,
                  between=None) -> list[dict]:
    """``rate_timers`` run for ``rounds`` rounds of ``repeats / rounds`` calls each (at least one), every timer
    once per round; ``between(r)``, when given, runs after round r's products (the encoders' round, so that
    encoder and floor are timed side by side). Returns ``rates_of`` those timers."""
    timers = rate_timers(shapes, threads, copies)
    calls = max(1, math.ceil(repeats / rounds))
    for r in range(rounds):
        for by_method in timers.values():
            for t in by_method.values():
                t.round(calls, settle=SETTLE_S)
        if between is not None:
            between(r)
    rows = rates_of(timers)
    for row in rows:
        log.info("%s %dx(%dx%d @ %dx%d): %s", "weight" if row["weight"] else "act", row["batch"], row["m"],
                 row["k"], row["k"], row["n"], ", ".join(f"{kk} {v:.0f}" for kk, v in row["gmacs"].items()))
    return rows


def floor_of(products: list[Product], rates: list[dict]) -> dict:
    """Floor ms of ``products`` at the best int8 rate measured for each one's shape, and at the best rate of
    any shape."""
    best = {(r["batch"], r["m"], r["k"], r["n"], r["weight"]): r["best_gmacs"] for r in rates}
    floor_s = sum(p.macs / (best[(p.batch, p.m, p.k, p.n, p.weight)] * 1e9) for p in products)
    top = max(best.values())
    total = sum(p.macs for p in products)
    out = {"floor_ms": floor_s * 1e3, "floor_ms_uniform": total / (top * 1e9) * 1e3, "best_rate_gmacs": top}
    streamed = {(r["batch"], r["m"], r["k"], r["n"]): r.get("gmacs", {}).get("torch_int_mm_streamed")
                for r in rates if r["weight"]}
    if any(streamed.values()):  # weight products at their streamed rate where measured, the rest at the best
        out["floor_ms_streamed"] = sum(
            p.macs / ((streamed.get((p.batch, p.m, p.k, p.n)) if p.weight else None)
                      or best[(p.batch, p.m, p.k, p.n, p.weight)]) / 1e9 for p in products) * 1e3
    return out


def floors_by_round(products: list[Product], rates: list[dict]) -> list[float]:
    """The floor (ms, per-shape best int8 rate) of each round alone, from ``rates_of``'s ``gmacs_by_round``: what
    the encoder timed in the same round is divided by (a ratio of two things timed side by side)."""
    by_shape = {(r["batch"], r["m"], r["k"], r["n"], r["weight"]): r for r in rates}
    n_rounds = max(len(v) for r in rates for v in r.get("gmacs_by_round", {}).values())
    out = []
    for i in range(n_rounds):
        total = 0.0
        for p in products:
            row = by_shape[(p.batch, p.m, p.k, p.n, p.weight)]
            got = [v[i] for k, v in row["gmacs_by_round"].items() if k in INT8_METHODS and v[i]]
            total += p.macs / ((max(got) if got else row["best_gmacs"]) * 1e9)
        out.append(total * 1e3)
    return out


def weight_gemms_by_method(products: list[Product], rates: list[dict]) -> dict[str, float]:
    """Ms of the products with a constant weight at each method's own measured rate for their shapes (the best
    call of each), for the methods measured at every one of those shapes; ``best`` at the best of them per shape.
    Where an encoder's GEMM time comes from: the kernels a backend has, or how it runs them in the model."""
    by_shape = {(r["batch"], r["m"], r["k"], r["n"], r["weight"]): r for r in rates}
    weight = [p for p in products if p.weight]
    methods = set.intersection(*(set(by_shape[(p.batch, p.m, p.k, p.n, True)]["gmacs"]) for p in weight)) \
        if weight else set()
    out = {m: sum(p.macs / (by_shape[(p.batch, p.m, p.k, p.n, True)]["gmacs"][m] * 1e9) for p in weight) * 1e3
           for m in sorted(methods)}
    out["best"] = sum(p.macs / (by_shape[(p.batch, p.m, p.k, p.n, True)]["best_gmacs"] * 1e9) for p in weight) * 1e3
    return out


# ----------------------------------------------------------------------------- encoder, files
def encoder_path(arg: str, backend: str = "onnxruntime") -> Path:
    """The image encoder file ``backend`` runs: a bundle's (``Manifest.image_file``), or the ONNX file given."""
    p = Path(arg)
    if p.is_dir():
        from vlmedge.manifest import read_manifest

        return p / read_manifest(p).image_file(backend)
    return p


def _encoder_session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _encoder_feeds(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    x = np.random.default_rng(0).normal(0, 1, [d.dim_value or 1 for d in dims]).astype(np.float32)
    return {model.graph.input[0].name: x}


class OrtEncoder:
    """The encoder on ONNX Runtime (profiling on), timed in rounds; ``result()`` adds ``kernel_min_ms``: the sum
    over its nodes of each node's fastest time in ONNX Runtime's profile of the same calls (what the encoder
    takes when every node gets the cores: on a machine shared with other processes a whole call rarely does,
    one node often does), and the same for its matmul nodes."""

    def __init__(self, path: Path, threads: int, tmp: str):
        feeds = _encoder_feeds(path)
        self.path = path
        self.session = _encoder_session(path, threads, profile=str(Path(tmp) / "prof"))
        self.timer = Timer(_wall(lambda: self.session.run(None, feeds)))

    def result(self) -> dict:
        events = json.loads(Path(self.session.end_profiling()).read_text())
        per_node: dict[str, list] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                per_node.setdefault(e["name"], [e["args"]["op_name"], []])[1].append(e["dur"] / 1e3)
        kernel_min = sum(min(d[2:] or d) for _, d in per_node.values())  # the first two calls warm up (Timer)
        gemm_min = sum(min(d[2:] or d) for op, d in per_node.values() if op in MATMUL_OPS)
        times = self.timer.times()
        return {"file": str(self.path), "best_ms": min(times) * 1e3, "median_ms": float(np.median(times)) * 1e3,
                "kernel_min_ms": kernel_min, "matmul_kernel_min_ms": gemm_min, "calls": len(times),
                "median_ms_by_round": [float(np.median(self.timer.times(r))) * 1e3
                                       for r in range(len(self.timer.rounds))]}


class OpenVinoEncoder:
    """The encoder on OpenVINO, compiled as the runtime compiles it (its IR cache, its settings) with per-node
    profiling, timed in rounds; ``result()``: best and median call, and per call its GEMM nodes' time
    (``GEMM_LAYERS``) and the rest's, means over the rounds' calls from the profile (``ProfiledTimer``)."""

    def __init__(self, path: Path, threads: int):
        from openvino_profile import compile_profiled

        x = next(iter(_encoder_feeds(path).values()))
        compiled, _, self.source = compile_profiled(path, threads)
        self.path = path
        self.timer = ProfiledTimer(compiled.create_infer_request(), x)

    def result(self) -> dict:
        times = self.timer.times()
        gemm, other = self.timer.split()
        return {"file": str(self.path), "compiled_from": str(self.source), "best_ms": min(times) * 1e3,
                "median_ms": float(np.median(times)) * 1e3, "mean_ms": float(np.mean(times)) * 1e3,
                "gemm_nodes_mean_ms": gemm, "other_nodes_mean_ms": other, "calls": len(times),
                "gemm_nodes_ms_by_round": [self.timer.split(r)[0] for r in range(len(self.timer.rounds))],
                "other_nodes_ms_by_round": [self.timer.split(r)[1] for r in range(len(self.timer.rounds))],
                "median_ms_by_round": [float(np.median(self.timer.times(r))) * 1e3
                                       for r in range(len(self.timer.rounds))]}


def encoder_round(encoders: list, calls: int, r: int) -> None:
    """Round ``r`` of the encoders: ``calls`` each, the order reversed every other round."""
    for e in (encoders if r % 2 == 0 else encoders[::-1]):
        e.timer.round(calls, settle=SETTLE_S)


def paired_multiples(ms_by_round: list[float], floors: list[float]) -> dict:
    """Round by round, a time of that round (an encoder's median call) over that round's floor: the median and
    the range."""
    ratios = [ms / f for ms, f in zip(ms_by_round, floors)]
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def parse_args(argv=None) -> argparse.Namespace:
    from vlmedge.floor import default_floor_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("encoders", nargs="+", help="bundle directories or image encoder ONNX files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=60,
                    help="calls per shape and method over all rounds (the best one counts)")
    ap.add_argument("--encoder-repeats", type=int, default=30, help="encoder calls per backend over all rounds")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds: every product and then every encoder, in turn (default 5)")
    ap.add_argument("--floor-file", default=None, help=f"floor file to update (default {default_floor_path()})")
    ap.add_argument("--json", default=None, help="also write this run's full results here")
    args = ap.parse_args(argv)
    for name in ("threads", "repeats", "encoder_repeats", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import onnxruntime as ort

    from vlmedge.floor import FLOOR_SCHEMA, cpu_model, default_floor_path, read_floor_file
    from vlmedge.manifest import sha256_file

    floor_path = Path(args.floor_file) if args.floor_file else default_floor_path()
    data = read_floor_file(floor_path) if floor_path.exists() else {}
    cpu = cpu_model()
    if data and (data.get("cpu") != cpu or data.get("threads") != args.threads):
        log.info("%s was measured on %r at %s threads: starting a new file", floor_path, data.get("cpu"),
                 data.get("threads"))
        data = {}
    versions = {"onnxruntime": ort.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    data.update({"schema": FLOOR_SCHEMA, "cpu": cpu, "threads": args.threads, "cpus": os.cpu_count(),
                 "versions": versions, "date": datetime.date.today().isoformat()})
    entries = data.setdefault("encoders", {})
    run = {}
    for arg in args.encoders:
        path = encoder_path(arg)
        model = onnx.load(str(path))
        observed = observed_shapes(model)
        products = gemms(model, observed=observed)
        macs = count_macs(model, observed=observed)
        shapes = sorted({(p.batch, p.m, p.k, p.n, p.weight) for p in products})
        copies: dict[tuple[int, int, int, int], int] = {}
        for p in products:
            if p.weight:
                copies[(p.batch, p.m, p.k, p.n)] = copies.get((p.batch, p.m, p.k, p.n), 0) + 1
        with tempfile.TemporaryDirectory(prefix="gemm-floor-") as tmp:
            encoders = {"onnxruntime": OrtEncoder(path, args.threads, tmp)}
            if _openvino_available():
                encoders["openvino"] = OpenVinoEncoder(encoder_path(arg, "openvino"), args.threads)
            per_round = max(1, math.ceil(args.encoder_repeats / args.rounds))
            rates = measure_rates(shapes, args.threads, args.repeats, copies, args.rounds,
                                  functools.partial(encoder_round, list(encoders.values()), per_round))
            enc = encoders["onnxruntime"].result()
            ov_enc = encoders["openvino"].result() if "openvino" in encoders else None
        floor = floor_of(products, rates)
        floors = floors_by_round(products, rates)
        weight_ms = weight_gemms_by_method(products, rates)
        paired = {"onnxruntime": paired_multiples(enc["median_ms_by_round"], floors)}
        if ov_enc is not None:
            paired["openvino"] = paired_multiples(ov_enc["median_ms_by_round"], floors)
            paired["openvino GEMM nodes (mean)"] = paired_multiples(ov_enc["gemm_nodes_ms_by_round"], floors)
            paired["openvino other nodes (mean)"] = paired_multiples(ov_enc["other_nodes_ms_by_round"], floors)
        entry = {"file": str(path), "macs": macs["total"], "weight_macs": macs["weight"],
                 "activation_macs": macs["activation"], **{k: round(v, 4) for k, v in floor.items()},
                 "encoder_best_ms": round(enc["best_ms"], 3), "encoder_median_ms": round(enc["median_ms"], 3),
                 "encoder_kernel_min_ms": round(enc["kernel_min_ms"], 3),
                 "matmul_kernel_min_ms": round(enc["matmul_kernel_min_ms"], 3),
                 "weight_gemms_ms_by_method": {k: round(v, 3) for k, v in weight_ms.items()},
                 "floor_ms_by_round": [round(f, 3) for f in floors],
                 "paired_multiple": {k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                                     for k, v in paired.items()},
                 "rounds": args.rounds, "loadavg": list(os.getloadavg())}
        if ov_enc is not None:
            entry["openvino"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in ov_enc.items()
                                 if not k.endswith("_by_round")}
        entries[sha256_file(path)] = entry
        run[str(path)] = {**entry, "macs_by_op": macs["by_op"], "rates": rates,
                          "products": [asdict(p) for p in products]}
        print(f"\n{path}: {macs['total'] / 1e9:.3f} GMAC ({macs['weight'] / 1e9:.3f} in weight GEMMs, "
              f"{macs['activation'] / 1e9:.3f} activation x activation), {cpu}, {args.threads} threads")
        for r in rates:
            print(f"  {'weight' if r['weight'] else 'act   '} {r['batch']:>3}x({r['m']}x{r['k']} @ {r['k']}x{r['n']}): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["gmacs"].items()) + " GMAC/s")
        print(f"  floor {floor['floor_ms']:.2f} ms (per-shape best rates); {floor['floor_ms_uniform']:.2f} ms at the "
              f"best rate of any shape ({floor['best_rate_gmacs']:.0f} GMAC/s)")
        if "floor_ms_streamed" in floor:
            print(f"  floor with each weight read as in the encoder (torch._int_mm cycling over the encoder's "
                  f"copies of each shape): {floor['floor_ms_streamed']:.2f} ms")
        print("  weight GEMMs alone at each method's rates: "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in weight_ms.items()))
        for label, ms in (("encoder best call", enc["best_ms"]), ("encoder, per-node fastest", enc["kernel_min_ms"]),
                          ("its matmul nodes, per-node fastest", enc["matmul_kernel_min_ms"])):
            print(f"  {label:<36} {ms:8.2f} ms = {ms / floor['floor_ms']:.2f}x floor "
                  f"({ms / floor['floor_ms_uniform']:.2f}x uniform)")
        print(f"  encoder median call {enc['median_ms']:.2f} ms (load average {os.getloadavg()[0]:.1f})")
        for backend, pm in paired.items():
            print(f"  {backend}: / the same round's floor, {pm['rounds']} rounds: median "
                  f"{pm['median']:.2f}x (range {pm['min']:.2f}-{pm['max']:.2f}x); floors by round "
                  + ", ".join(f"{f:.1f}" for f in floors) + " ms")
        if ov_enc is not None:
            print(f"  OpenVINO on {ov_enc['file']}:")
            for label, ms in (("best call", ov_enc["best_ms"]), ("median call", ov_enc["median_ms"]),
                              ("mean call", ov_enc["mean_ms"]),
                              ("its GEMM nodes, mean per call", ov_enc["gemm_nodes_mean_ms"]),
                              ("its other nodes, mean per call", ov_enc["other_nodes_mean_ms"])):
                print(f"    {label:<34} {ms:8.2f} ms = {ms / floor['floor_ms']:.2f}x floor")
    floor_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = floor_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(floor_path)
    print(f"wrote {floor_path}")
    if args.json:
        Path(args.json).write_text(json.dumps({**data, "run": run}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
