"""GPTQ rounding of int8 weights: the same scales, integers chosen for the layer's output instead of each weight.

``quantize_static`` rounds every weight to its nearest int8 step. Rounding to nearest minimizes each weight's own
error, not the error of the layer's output ``x @ W`` on the inputs the layer actually sees. GPTQ (Frantar et al.,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022; itself Optimal Brain
Quantization applied row by row) quantizes the rows of ``W`` (input features) one at a time and moves each row's
rounding error onto the rows not yet quantized, weighted by the inverse of the inputs' second-moment matrix
``H = X^T X``, so the errors cancel in the output. The per-channel scales stay those ``quantize_static`` chose and the
graph is unchanged: only the int8 values differ, so every backend runs it at the same speed.

Here it runs after ``quantize_static`` on its QDQ graph (:func:`round_weights`): ``H`` comes from the float graph
``quantize_static`` was given, on the same calibration frames.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vlmedge.export import progress
from vlmedge.export.onnx_export import session_with_outputs

log = logging.getLogger(__name__)

DAMP = 0.01  # the paper's dampening: 1% of H's mean diagonal added to it, so its inverse is well conditioned
BLOCK = 128  # rows quantized between two full updates of the rest of W (the paper's lazy batch updates)


@dataclass(frozen=True)
class RoundedLayer:
    """One weight re-rounded: its output error on the calibration inputs before (nearest) and after (GPTQ)."""

    matmul: str
    nearest_error: float  # trace((W - Wq) ^T H (W - Wq)) / trace(W^T H W), nearest rounding
    gptq_error: float  # the same with GPTQ's integers
    changed: float  # share of the int8 values that differ from nearest rounding


def gptq_int8(weight: np.ndarray, scale: np.ndarray, hessian: np.ndarray, qmin: int = -127, qmax: int = 127, *,
              damp: float = DAMP, block: int = BLOCK) -> np.ndarray:
    """Integers ``Q`` (int8, ``weight``'s shape ``[in, out]``) with ``weight ~ Q * scale`` (``scale`` per output
    column, fixed) that keep ``x @ weight`` close on inputs whose second moment is ``hessian`` (``[in, in]``).

    Rows are visited by decreasing ``H`` diagonal (the paper's act-order: the inputs with the most energy are
    rounded first, while the most rows are left to absorb their error). With ``H`` diagonal it is nearest rounding.
    """
    w = np.array(weight, np.float64)
    s = np.asarray(scale, np.float64).reshape(1, -1)
    h = np.array(hessian, np.float64)
    n = w.shape[0]
    if h.shape != (n, n) or s.shape[1] != w.shape[1]:
        raise ValueError(f"gptq_int8: weight {w.shape}, scale {s.shape}, hessian {h.shape} do not fit")
    dead = np.diag(h) <= 0  # an input that is always 0: its row cannot matter, round it alone
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(n)
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[order], h[np.ix_(order, order)]
    # the upper Cholesky factor of H^-1: row i holds how row i's error spreads over the rows after it
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.empty_like(w)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        wb = w[i1:i2].copy()
        err = np.empty_like(wb)
        for i in range(i2 - i1):
            q[i1 + i] = np.clip(np.rint(wb[i] / s[0]), qmin, qmax)
            err[i] = (wb[i] - q[i1 + i] * s[0]) / u[i1 + i, i1 + i]
            wb[i + 1:] -= np.outer(u[i1 + i, i1 + i + 1:i2], err[i])
        w[i2:] -= u[i1:i2, i2:].T @ err
    out = np.empty_like(q)
    out[order] = q
    return out.astype(np.int8)


def output_errors(weight: np.ndarray, hessian: np.ndarray, *approx: np.ndarray) -> tuple[float, ...]:
    """Relative output error of each ``approx`` for ``weight`` on inputs with second moment ``hessian``."""
    w = np.asarray(weight, np.float64)
    signal = max(float(np.sum(w * (hessian @ w))), 1e-30)
    return tuple(float(np.sum((w - a) * (hessian @ (w - a)))) / signal for a in approx)


def round_weights(float_model: onnx.ModelProto, quantized: onnx.ModelProto, reader, *, centered: dict | None = None,
                  qmin: int = -127, qmax: int = 127) -> list[RoundedLayer]:
    """Replace, in place, every per-channel int8 weight of a MatMul in ``quantized`` (``quantize_static``'s QDQ
    graph of ``float_model``) by GPTQ's integers for the same scales.

    ``H`` of each MatMul's input comes from ``float_model`` run over ``reader``'s frames (it gets those inputs as
    extra outputs). ``centered``: MatMul input
    name -> a per-row offset subtracted from that input before ``H`` (the exact-pixel patch embedding, whose
    constant part the settled bias carries exactly: only the rest needs the weights). Returns per layer the
    output error before and after, on those frames."""
    from onnx import numpy_helper

    centered = centered or {}
    finits = {i.name: i for i in float_model.graph.initializer}
    fnodes = {n.name: n for n in float_model.graph.node if n.op_type in ("MatMul", "Gemm") and n.name}
    inits = {i.name: i for i in quantized.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    jobs = []  # (node, float input, float weight [in, out], int8 initializer, scale, stored transposed)
    for n in quantized.graph.node:
        dq = producer.get(n.input[1]) if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 else None
        f = fnodes.get(n.name)
        if dq is None or dq.op_type != "DequantizeLinear" or f is None or f.input[1] not in finits \
                or dq.input[0] not in inits or inits[dq.input[0]].data_type != onnx.TensorProto.INT8 \
                or _attr(n, "transA", 0):
            continue
        flip = bool(_attr(n, "transB", 0))  # a static-batch graph's Gemm may hold its weight as [out, in]
        scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else None
        weight = numpy_helper.to_array(finits[f.input[1]])
        weight = weight.T if flip and weight.ndim == 2 else weight
        if scale is None or scale.ndim != 1 or weight.ndim != 2 or _attr(dq, "axis", 1) % 2 != int(not flip) \
                or scale.size != weight.shape[1] or (zero is not None and np.any(zero != 0)):
            continue  # per-tensor or asymmetric weights: not this rounding's form
        jobs.append((n.name, f.input[0], weight, inits[dq.input[0]], scale, flip))
    if not jobs:
        return []
    hessians = input_hessians(float_model, sorted({j[1] for j in jobs}), reader, centered)
    rows = []
    for name, x, weight, init, scale, flip in progress.bar(jobs, desc="int8 weights: GPTQ rounding", unit="layer"):
        h = hessians[x]
        stored = numpy_helper.to_array(init).astype(np.float64)
        nearest = (stored.T if flip else stored) * scale
        q = gptq_int8(weight, scale, h, qmin, qmax)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q.T) if flip else q, init.name))
        rows.append(RoundedLayer(name, *output_errors(weight, h, nearest, q.astype(np.float64) * scale),
                                 float(np.mean(q != np.rint(nearest / scale)))))
    return rows


def _attr(node, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def input_hessians(model: onnx.ModelProto, names: list[str], reader, centered: dict[str, np.ndarray]) \
        -> dict[str, np.ndarray]:
    """``X^T X / rows`` of each named float tensor (last axis = features) over ``reader``'s frames. ``model`` gets
    those tensors as extra outputs (no copy: a ViT-B float graph is ~350 MB)."""
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    reader.rewind()
    with tempfile.TemporaryDirectory(prefix="vlmedge-gptq-") as tmp:
        session = session_with_outputs(model, names, Path(tmp) / "inputs.onnx")
        frames = progress.bar(total=len(reader) if hasattr(reader, "__len__") else None,
                              desc="int8 weights: GPTQ input statistics", unit="frame")
        while (feed := reader.get_next()) is not None:
            frames.update(1)
            got = session.run(names, feed)
            for name, x in zip(names, got):
                x = x.reshape(-1, x.shape[-1])
                if name in centered:
                    x = (x - centered[name]).astype(np.float32)
                # float32 sums (a few dozen frames: ~1e-6 relative): held for every layer at once, ViT-B/16's 12
                # fc2 inputs alone are 12 x 3072^2 values (450 MB in float32, twice that in float64)
                sums[name] = sums.get(name, 0.0) + x.T @ x
                rows[name] = rows.get(name, 0) + x.shape[0]
        del session
        frames.close()
    reader.rewind()
    return {k: v / rows[k] for k, v in sums.items()}
