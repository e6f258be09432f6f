"""Build a TensorRT engine from a bundle's image encoder (on the device that will run it).

The engine file is named by TensorRT version, GPU compute capability and precision, e.g.
``image_encoder.trt10.3.sm87.fp16.engine``, and has a JSON sidecar (``.engine.json``) with the
TensorRT version, GPU, precision, the sha256 of the ONNX it came from, and the build time.
TensorRT (>= 8.5 Python bindings) is imported lazily; without it or a CUDA GPU,
BackendUnavailable says what is needed.
"""

from __future__ import annotations

import ctypes
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vlmedge.errors import ArtifactError, BackendUnavailable, ConfigError, check_choice
from vlmedge.manifest import open_bundle

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
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise BackendUnavailable("a CUDA GPU (NVIDIA driver library libcuda)", TRT_HINT)
    if lib.cuInit(0) != 0:
        raise BackendUnavailable("a CUDA GPU (cuInit failed: no usable device)", TRT_HINT)
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), device) != 0:
        raise BackendUnavailable(f"CUDA device {device}", TRT_HINT)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, 256, dev)
    return GpuInfo(buf.value.decode(errors="replace"), (major.value, minor.value))


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
    stem = Path(onnx_file).stem
    short = ".".join(trt_version.split(".")[:2])
    return f"{stem}.trt{short}.{gpu.sm}.{precision}.engine"


def build_engine(bundle_dir: str | Path, precision: str = "fp16", workspace_mb: int = 1024, max_batch: int = 8,
                 out_dir: str | Path | None = None) -> Path:
    """Build the image encoder engine of ``bundle_dir``; returns the engine path (sidecar next to it).

    ``int8`` needs an int8 bundle (explicit QDQ scales from calibration, symmetric for TensorRT
    platforms); fp16 also enables fp16 kernels for the layers TensorRT keeps in float.
    """
    check_choice("engine precision", precision, ENGINE_PRECISIONS)
    if not isinstance(workspace_mb, int) or workspace_mb <= 0:
        raise ConfigError(f"workspace must be a positive number of MB, got {workspace_mb!r}")
    bundle_dir = Path(bundle_dir)
    manifest = open_bundle(bundle_dir)
    if precision == "int8" and manifest.precision != "int8":
        raise ConfigError(f"--int8 needs an int8 bundle (QDQ scales from calibration); {bundle_dir} is "
                          f"{manifest.precision}: re-export with --precision int8 --platform {manifest.platform}")
    if manifest.precision == "int8" and manifest.extra.get("int8", {}).get("recipe", {}).get(
            "symmetric_activations") is False:
        raise ConfigError(f"{bundle_dir} was quantized for the CPU (asymmetric uint8 activations), which TensorRT "
                          "rejects; re-export with --platform cuda or a jetson platform")
    trt = import_tensorrt()
    gpu = gpu_info()
    onnx_path = bundle_dir / manifest.image_encoder.file
    out_dir = Path(out_dir) if out_dir else bundle_dir
    logger = trt.Logger(trt.Logger.WARNING)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implicit in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
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
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
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
