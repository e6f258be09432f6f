"""Trace CLIP's two towers to ONNX, optimize the graphs for a platform, stamp metadata.

One function per step, file in, file out. The image tower is exported through
``CLIP.encode_image`` and the text tower through ``CLIP.encode_text``, so the ONNX outputs are
exactly the L2-normalized embeddings the torch model returns.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``; it emits the opset we ask
for (each platform's in ``vlmedge.platforms.PLATFORMS``: 16 for JetPack 5, whose TensorRT 8.5 has
no LayerNormalization importer), while the dynamo exporter only emits opset >= 18.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from vlmedge.errors import ArtifactError, ConfigError
from vlmedge.platforms import Platform

log = logging.getLogger(__name__)

IMAGE_INPUT, IMAGE_OUTPUTS = "pixel_values", ("image_embeds", "patch_embeds")
TEXT_INPUT, TEXT_OUTPUTS = "input_ids", ("text_embeds",)
MAX_ONNX_BYTES = 2 * 1024 ** 3  # protobuf's hard limit for a single-file model


class _ImageTower(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor):
        return self.clip.encode_image(pixel_values)


class _TextTower(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor):
        return self.clip.encode_text(input_ids)


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def check_single_file(path: str | Path) -> int:
    """Refuse an ONNX file that protobuf cannot hold in one file; return its size."""
    size = Path(path).stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ArtifactError(f"{path}: {size / 1e9:.2f} GB exceeds the 2 GB single-file ONNX limit; "
                            "vlmedge bundles do not use external data (export a smaller model or image size)")
    return size


def _export(module: nn.Module, args: tuple, path: Path, input_name: str, output_names: tuple,
            dynamic_axes: dict, opset: int) -> None:
    est = _param_bytes(module)
    if est > MAX_ONNX_BYTES:
        raise ConfigError(f"the model's weights take {est / 1e9:.2f} GB, over the 2 GB single-file ONNX limit "
                          "(vlmedge bundles do not use external data)")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation / tracer chatter
        torch.onnx.export(module, args, str(path), input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=dynamic_axes or None, opset_version=opset, dynamo=False,
                          do_constant_folding=True, external_data=False)
    check_single_file(path)
    onnx.checker.check_model(str(path))


def export_image_encoder(model: nn.Module, path: str | Path, *, opset: int = 17, dynamic_batch: bool = True) -> None:
    """Write ``pixel_values`` f32 [B,3,H,W] -> ``image_embeds`` [B,D], ``patch_embeds`` [B,h,w,D]."""
    h, w = model.image_size
    dummy = torch.zeros(1, 3, h, w, dtype=torch.float32)
    axes = {IMAGE_INPUT: {0: "batch"}, **{o: {0: "batch"} for o in IMAGE_OUTPUTS}} if dynamic_batch else {}
    _export(_ImageTower(model).eval(), (dummy,), Path(path), IMAGE_INPUT, IMAGE_OUTPUTS, axes, opset)


def export_text_encoder(model: nn.Module, path: str | Path, *, opset: int = 17) -> None:
    """Write ``input_ids`` i64 [N,L] -> ``text_embeds`` [N,D] (N always dynamic: texts are few and rare)."""
    n = model.spec.text.context_length
    dummy = torch.zeros(2, n, dtype=torch.int64)
    dummy[:, 0], dummy[:, 1] = 1, 2  # argmax pooling must not see an all-zero row only
    axes = {TEXT_INPUT: {0: "batch"}, TEXT_OUTPUTS[0]: {0: "batch"}}
    _export(_TextTower(model).eval(), (dummy,), Path(path), TEXT_INPUT, TEXT_OUTPUTS, axes, opset)


def ort_optimize(src: str | Path, dst: str | Path, level: str) -> None:
    """Save ONNX Runtime's offline graph optimizations (``basic`` keeps standard ONNX ops only)."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst))
    prune_opset_imports(model)
    onnx.save(model, str(dst))
    check_single_file(dst)


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """Drop opset imports of domains no node uses (ORT lists all of its own; TensorRT needn't see them)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def max_abs_diff_on(src: str | Path, dst: str | Path, feeds: dict[str, np.ndarray], optimized: bool = False) -> float:
    """Largest output difference between two ONNX files on the same inputs (CPU).

    ``optimized=False`` runs the graphs exactly as written; True as ONNX Runtime runs them by
    default (e.g. QDQ pairs executed as integer kernels).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    a = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    return max(float(np.abs(x.astype(np.float32) - y.astype(np.float32)).max()) for x, y in zip(a, b))


def optimize_for_platform(src: str | Path, dst: str | Path, platform: Platform, feeds: dict[str, np.ndarray],
                          tol: float = 1e-4) -> str:
    """Optimize ``src`` into ``dst`` for ``platform``; keep a level only if outputs stay within ``tol``.

    Tries the platform's ``ort_level``, then the lower ones. Returns the level that was saved
    ("extended", "basic" or "none").
    """
    levels = ["extended", "basic"] if platform.ort_level == "extended" else ["basic"]
    for level in levels:
        ort_optimize(src, dst, level)
        diff = max_abs_diff_on(src, dst, feeds)
        if diff <= tol:
            return level
        log.warning("ORT %s optimization moved outputs by %.2e (> %.0e); trying a lower level", level, diff, tol)
    Path(dst).write_bytes(Path(src).read_bytes())
    return "none"


def set_metadata(path: str | Path, props: dict[str, object]) -> None:
    """Replace the model's ``metadata_props``; non-string values are stored as JSON."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.save(model, str(path))
    check_single_file(path)


def io_shapes(path: str | Path) -> tuple[list[tuple[str, str, tuple]], list[tuple[str, str, tuple]]]:
    """(inputs, outputs) of an ONNX file as (name, numpy dtype name, shape with str for dynamic dims)."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
            out.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
        return out

    return describe(model.graph.input), describe(model.graph.output)


def session_with_outputs(model: onnx.ModelProto, names: list[str], path: Path):
    """A CPU session of ``model`` (optimizations off: the graph as written) that also outputs ``names``."""
    import onnxruntime as ort

    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in have)
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
