"""Build a TensorRT engine from a bundle's image encoder (on the device that will run it).

The engine file is named by the full TensorRT version, GPU compute capability and precision, e.g.
``image_encoder.trt10.3.0.30.sm87.int8.engine`` (:func:`engine_name`), and has a JSON sidecar
(``<engine>.json``) with the TensorRT version, GPU, precision, typing, the sha256 of the ONNX it came from
and of every bundle file, and the build time. The engine precision defaults to the bundle's.

Precision islands: LayerNorm (fused, or decomposed at opset 16), Softmax and the L2 normalizations are
kept in fp32 (:func:`fp32_islands` finds them in the graph; the export records them in the ONNX metadata
and the manifest). Where TensorRT >= 9 builds a bundle at its own precision the network is strongly typed:
the ONNX types are the law (an fp16 bundle keeps those ops in fp32, an int8 bundle runs Q/DQ in int8 and the
rest in fp32). Otherwise (TensorRT 8.x, or fp16 kernels for an fp32 bundle) the network is weakly typed
with FP16 (and INT8) enabled, and the island layers are pinned to fp32 with precision constraints that
the builder must obey (:func:`layers_to_pin`, :func:`engine_plan`: pure functions, tested without TensorRT).
TensorRT (>= 8.5 Python bindings) is imported lazily; without it or a CUDA GPU, BackendUnavailable
says what is needed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmedge.errors import ArtifactError, BackendUnavailable, ConfigError, check_choice
from vlmedge.gpu import cuda_device
from vlmedge.manifest import Manifest, open_bundle

log = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
TRT_HINT = ("build engines on the device that runs them: a CUDA GPU and TensorRT >= 8.5 Python bindings "
            "(JetPack: `sudo apt install python3-libnvinfer`; x86: `pip install tensorrt`)")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of a CUDA GPU via the driver API (libcuda), no extra packages."""
    name, cc = cuda_device(device, TRT_HINT)
    return GpuInfo(name, cc)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable("TensorRT Python bindings", TRT_HINT) from e
    major, minor = (int(x) for x in trt.__version__.split(".")[:2])
    if (major, minor) < (8, 5):
        raise BackendUnavailable(f"TensorRT >= 8.5 (found {trt.__version__})", TRT_HINT)
    return trt


def engine_name(onnx_file: str, trt_version: str, gpu: GpuInfo, precision: str) -> str:
    """``<onnx stem>.trt<full TensorRT version>.sm<cc>.<precision>.engine``: an engine runs only with the
    TensorRT build that wrote it (serialized engines are not portable across any version change, patch
    releases included) and on GPUs of its compute capability."""
    return f"{Path(onnx_file).stem}.trt{trt_version}.{gpu.sm}.{precision}.engine"


# ----------------------------------------------------------------------------- precision islands
ISLANDS_KEY = "vlmedge.fp32_islands"  # ONNX metadata_props key (JSON {"nodes": [...], "outputs": [...]})
_ISLAND_OPS = ("LayerNormalization", "Softmax", "ReduceL2")
# between ReduceL2 and the Div by the norm (F.normalize's clamp and expand; a Cast in a converted graph)
_L2_TAIL_OPS = ("Clip", "Max", "Expand", "Add", "Cast")
_PIN_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")  # TensorRT layer kinds pinned whatever their names
_NO_PIN_LAYER_TYPES = ("CONSTANT", "SHAPE", "QUANTIZE", "DEQUANTIZE")


def fp32_islands(graph) -> dict[str, list[str]]:
    """The nodes of an ONNX ``graph`` that must compute in fp32 and their outputs, in graph order:
    LayerNormalization, its opset-16 decomposition (ReduceMean -> Sub -> Pow -> ReduceMean -> Add(eps) ->
    Sqrt -> Div, then the affine Mul/Add), Softmax, and the L2 normalizations (ReduceL2 [-> Clip/Expand] ->
    Div). Pure: reads ``graph.node`` only (no onnx import)."""
    nodes = list(graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only(name: str, op: str, *, reads: str | None = None):
        users = [u for u in consumers.get(name, []) if u.op_type == op and (reads is None or reads in u.input)]
        return users[0] if len(users) == 1 else None

    picked: set[int] = set()
    for n in nodes:
        if n.op_type in _ISLAND_OPS:
            picked.add(id(n))
        if n.op_type == "ReduceL2":  # the division by the norm, through the clamp/expand of F.normalize
            chain, value = [], n.output[0]
            while True:
                users = consumers.get(value, [])
                div = next((u for u in users if u.op_type == "Div" and u.input[1] == value), None)
                if div is not None:
                    chain.append(div)
                    break
                nxt = users[0] if len(users) == 1 and users[0].op_type in _L2_TAIL_OPS else None
                if nxt is None:
                    chain = []
                    break
                chain.append(nxt)
                value = nxt.output[0]
            picked.update(id(c) for c in chain)
        if n.op_type == "ReduceMean":  # a decomposed LayerNorm starts with the mean of its input
            ln = _decomposed_layer_norm(n, only)
            picked.update(id(c) for c in ln)
    chosen = [n for n in nodes if id(n) in picked]
    return {"nodes": [n.name for n in chosen if n.name],
            "outputs": [o for n in chosen for o in n.output if o]}


def _decomposed_layer_norm(mean, only) -> list:
    """``mean`` = ReduceMean(x) of ``x - mean, pow 2, ReduceMean, + eps, Sqrt, (x - mean) / that``, and the
    affine Mul/Add after it; [] when the pattern does not follow."""
    x = mean.input[0]
    sub = only(mean.output[0], "Sub", reads=x)
    if sub is None or sub.input[0] != x:
        return []
    pow_ = only(sub.output[0], "Pow")
    var = only(pow_.output[0], "ReduceMean") if pow_ is not None else None
    eps = only(var.output[0], "Add") if var is not None else None
    sqrt = only(eps.output[0], "Sqrt") if eps is not None else None
    div = only(sqrt.output[0], "Div", reads=sub.output[0]) if sqrt is not None else None
    if div is None:
        return []
    chain = [mean, sub, pow_, var, eps, sqrt, div]
    mul = only(div.output[0], "Mul")
    if mul is not None:
        chain.append(mul)
        add = only(mul.output[0], "Add")
        if add is not None:
            chain.append(add)
    return chain


def layers_to_pin(layers: Iterable[tuple[str, str, Sequence[str]]], islands: dict) -> list[int]:
    """Indices of the network layers to pin to fp32. ``layers``: (name, TensorRT layer type name such as
    "SOFTMAX", output tensor names) per layer, in network order; ``islands``: :func:`fp32_islands` of the
    ONNX the network was parsed from. The ONNX parser names a layer after its node and the tensor a node
    writes after the node's output, so a layer is pinned when its name is an island node's, when it writes
    an island output, or when it is a normalization or softmax layer; never a constant, shape or Q/DQ layer."""
    names, outputs = set(islands.get("nodes", ())), set(islands.get("outputs", ()))
    pinned = []
    for i, (name, kind, outs) in enumerate(layers):
        kind = str(kind).rsplit(".", 1)[-1].upper()  # "LayerType.SOFTMAX" or "SOFTMAX"
        if kind in _NO_PIN_LAYER_TYPES:
            continue
        if name in names or kind in _PIN_LAYER_TYPES or any(o in outputs for o in outs):
            pinned.append(i)
    return pinned


def bundle_islands(manifest: Manifest, onnx_path: Path) -> dict:
    """The image encoder's fp32 islands as the export recorded them in the manifest; bundles exported before
    they were recorded: found in the ONNX file (needs the ``onnx`` package)."""
    recorded = manifest.extra.get("fp32_islands", {}).get("image")
    if recorded:
        return recorded
    try:
        import onnx
    except ImportError:
        log.warning("%s records no fp32 islands and the onnx package is missing: only normalization and softmax "
                    "layers are pinned to fp32 (pip install onnx, or re-export the bundle)", onnx_path.parent)
        return {}
    return fp32_islands(onnx.load(str(onnx_path), load_external_data=False).graph)


# ----------------------------------------------------------------------------- build plan
@dataclass(frozen=True)
class EnginePlan:
    """How the network is built for one (TensorRT version, bundle precision, engine precision)."""

    precision: str  # of the engine
    strongly_typed: bool  # the ONNX types decide every layer's precision (TensorRT >= 9)
    flags: tuple[str, ...]  # BuilderFlag names set (weak typing only): FP16, INT8
    pin_fp32: bool  # weak typing with reduced precision: pin the fp32 islands, obey the constraints

    @property
    def typing(self) -> str:
        return "strong" if self.strongly_typed else "weak"


def engine_precision(manifest: Manifest, requested: str | None) -> str:
    """The engine precision for ``requested`` (None: the bundle's own); ConfigError for a combination that
    the bundle's graph cannot give."""
    if requested is None:
        return manifest.precision
    check_choice("engine precision", requested, ENGINE_PRECISIONS)
    have, where = manifest.precision, f"the bundle is {manifest.precision}"
    if requested == "int8" and have != "int8":
        raise ConfigError(f"--int8 needs an int8 bundle (QDQ scales from calibration); {where}: re-export with "
                          f"--precision int8 --platform {manifest.platform}")
    if have == "int8" and requested != "int8":
        raise ConfigError(f"--{requested} on an int8 bundle: its graph is a Q/DQ network, which TensorRT builds "
                          f"with INT8 only; build it with --int8 (the default), or export a {requested} bundle "
                          f"(--precision {requested} --platform {manifest.platform})")
    if have == "fp16" and requested == "fp32":
        raise ConfigError(f"--fp32 on an fp16 bundle: its weights are fp16; export an fp32 bundle "
                          f"(--precision fp32 --platform {manifest.platform})")
    return requested


def engine_plan(trt_version: str, bundle_precision: str, precision: str, *, strong_typing_api: bool = True
                ) -> EnginePlan:
    """Strongly typed where TensorRT >= 9 builds the bundle at its own precision (and the bindings have the
    STRONGLY_TYPED flag, ``strong_typing_api``); otherwise weakly typed with FP16 (fp16), INT8 + FP16
    (int8) and the fp32 islands pinned whenever a reduced precision is enabled."""
    major = int(str(trt_version).split(".")[0])
    if major >= 9 and precision == bundle_precision and strong_typing_api:
        return EnginePlan(precision, True, (), False)
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
    return EnginePlan(precision, False, flags, bool(flags))


# ----------------------------------------------------------------------------- build
def build_engine(bundle_dir: str | Path, precision: str | None = None, workspace_mb: int = 1024,
                 max_batch: int = 8, out_dir: str | Path | None = None) -> Path:
    """Build the image encoder engine of ``bundle_dir``; returns the engine path (sidecar next to it).

    ``precision``: None (the bundle's), or fp16 for an fp32 bundle; int8 needs an int8 bundle exported for a
    GPU platform (symmetric QDQ scales, no int32 bias Q/DQ). See :func:`engine_plan` for the typing.
    """
    if not isinstance(workspace_mb, int) or workspace_mb <= 0:
        raise ConfigError(f"workspace must be a positive number of MB, got {workspace_mb!r}")
    bundle_dir = Path(bundle_dir)
    manifest = open_bundle(bundle_dir)
    precision = engine_precision(manifest, precision)
    if manifest.precision == "int8" and manifest.extra.get("int8", {}).get("recipe", {}).get(
            "symmetric_activations") is False:
        raise ConfigError(f"{bundle_dir} was quantized for the CPU (asymmetric uint8 activations), which TensorRT "
                          "rejects; re-export with --platform cuda or a jetson platform")
    trt = import_tensorrt()
    gpu = gpu_info()
    onnx_path = bundle_dir / manifest.image_encoder.file
    out_dir = Path(out_dir) if out_dir else bundle_dir
    plan = engine_plan(trt.__version__, manifest.precision, precision,
                       strong_typing_api=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    logger = trt.Logger(trt.Logger.WARNING)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implicit in 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} could not parse it:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # TensorRT 8.0-8.3 API
        config.max_workspace_size = workspace_mb << 20
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    pinned = _pin_islands(trt, network, config, bundle_islands(manifest, onnx_path)) if plan.pin_fp32 else 0
    log.info("TensorRT %s: %s engine, %s typed network%s", trt.__version__, precision, plan.typing,
             f", {pinned} layers pinned to fp32" if plan.pin_fp32 else "")
    inp = network.get_input(0)
    if inp.shape[0] == -1:  # dynamic batch: one optimization profile 1..max_batch
        h, w = manifest.image_size
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, 3, h, w), (1, 3, h, w), (max_batch, 3, h, w))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine "
                            f"({precision}, workspace {workspace_mb} MB); see the TensorRT log above")
    build_s = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = out_dir / engine_name(manifest.image_encoder.file, trt.__version__, gpu, precision)
    tmp = engine.with_suffix(".engine.partial")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine)
    sidecar = {"tensorrt_version": trt.__version__, "gpu": gpu.name,
               "compute_capability": list(gpu.compute_capability), "precision": precision,
               "typing": plan.typing, "fp32_pinned_layers": pinned,
               "workspace_mb": workspace_mb, "max_batch": max_batch if inp.shape[0] == -1 else int(inp.shape[0]),
               "onnx": manifest.image_encoder.file,
               "onnx_sha256": manifest.files[manifest.image_encoder.file]["sha256"],
               "bundle_files": {k: v["sha256"] for k, v in manifest.files.items()},
               "bundle_precision": manifest.precision, "bundle_target": manifest.platform,  # key as in manifest.json
               "build_seconds": round(build_s, 2), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(str(engine) + ".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    log.info("built %s (%.1f MB) in %.1f s on %s (%s)", engine.name, engine.stat().st_size / 1e6, build_s,
             gpu.name, gpu.sm)
    return engine


def _pin_islands(trt, network, config, islands: dict) -> int:
    """Pin the island layers of a weakly typed ``network`` to fp32 and make the builder obey; returns how many."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    records = [(layer.name, str(layer.type), [layer.get_output(j).name for j in range(layer.num_outputs)])
               for layer in layers]
    floats = (trt.float32, trt.float16)
    pinned = 0
    for i in layers_to_pin(records, islands):
        layer = layers[i]
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outs:
            continue
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) or trt.BuilderFlag.STRICT_TYPES
    config.set_flag(flag)
    if islands and not pinned:
        log.warning("no layer of the network matched the bundle's fp32 islands; LayerNorm/Softmax precision is "
                    "left to TensorRT")
    return pinned
