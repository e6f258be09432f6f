"""Deployment platforms: the one table every exporter and runtime decision about a platform reads.

A platform is where a bundle runs (``vlmedge export --platform P``): it fixes the ONNX opset, whether
the image batch axis stays dynamic, which offline ONNX Runtime optimization is saved into the fp32
graphs, how int8 quantizes the image encoder, whether fp16 is offered, and the execution providers
tried on the device. Torch-free and onnx-free: the runtime reads it too.

A bundle records its platform in ``manifest.json`` (under the key ``"target"``, see ``vlmedge.manifest``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmedge.errors import ConfigError, check_choice

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
WEIGHT_ROUNDINGS = ("nearest", "gptq")
ORT_LEVELS = ("extended", "basic")


@dataclass(frozen=True)
class Int8Recipe:
    """How the image encoder is quantized (recorded in the manifest's ``extra.int8.recipe``)."""

    activation: str = "uint8"  # uint8 (asymmetric, CPU U8S8) or int8
    symmetric_activations: bool = False  # TensorRT needs True (zero point 0)
    per_channel: bool = True  # per output channel weight scales
    reduce_range: bool = False  # 7-bit weights; only for CPUs without VNNI (slow-path overflow)
    # A QDQ Conv has no fast int8 kernel in ONNX Runtime here: the patch embedding is quantized through
    # conv_as_matmul instead (adding "Conv" quantizes it as a Conv).
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    const_weight_matmuls_only: bool = True  # leave q@k^T and attn@v (activation x activation) float
    quantize_outputs: bool = False  # False: Q/DQ on inputs only (ORT MatMulIntegerToFloat; TensorRT's advice)
    calibrate_method: str = "minmax"
    # Fuse the float attention core into com.microsoft MultiHeadAttention (ONNX Runtime only). Opt-in:
    # it paid off for shallow towers and cost time for deep ones (benchmarks/bench_export.py times both).
    fuse_attention: bool = False
    # Rewrite the patch-embedding Conv (kernel == stride) as patchify + MatMul, so that it is
    # quantized like the other projections (ORT has no fast int8 path for a QDQ Conv here).
    conv_as_matmul: bool = True
    # The patch MatMul reads the 8-bit pixel values themselves (scale 1, zero point 0), its weights absorbing
    # the normalization, instead of the normalized values on a calibrated grid (export/quantize.py
    # exact_pixel_input). Needs conv_as_matmul and uint8 activations.
    exact_pixels: bool = True
    # How the int8 weight values are chosen for their per-channel scales: "nearest" (each weight on its own),
    # or "gptq" (for the layer's output on the calibration frames; export/gptq.py). Same graph, same speed.
    weight_rounding: str = "gptq"
    # Leave the output projections (the last MatMuls before the image/patch embedding outputs) in float: their
    # input's activation quantization reaches the embeddings with nothing after it to average it out (ViT-B/16:
    # patch agreement with fp32 98.6% -> 99.1-99.3% with GPTQ, ~1% encode time; benchmarks/results/int8-gptq-*).
    float_output_projections: bool = True
    # q@k^T in int8 with q and k on signed symmetric grids (attn@v stays float): OpenVINO runs each block's
    # attention in its int8 fused kernel from the QDQ graph, as it does for an NNCF-quantized model (ViT-B/16:
    # float 8.6 ms; int8 8.0 ms, NNCF's 7.8 in the same run; benchmarks/results/openvino-profile-vitb16-vitb32-*). Needs
    # const_weight_matmuls_only. ONNX Runtime's CPU form of it measured level with float attention.
    int8_attention_scores: bool = False
    # Where the image encoder is saved in ONNX Runtime's CPU form (platforms with ort_level "extended"), also save
    # the QDQ graph it was fused from as the OpenVINO image encoder (encoders.image_openvino): the CPU form makes
    # int8 q and k uint8 with a zero point, which OpenVINO does not take into its int8 attention. One quantization,
    # two files: each backend runs its own (ViT-B/16: +88 MB on disk, nothing more in memory).
    openvino_qdq: bool = False

    def __post_init__(self):
        check_choice("Int8Recipe.activation", self.activation, ("uint8", "int8"))
        check_choice("Int8Recipe.calibrate_method", self.calibrate_method, CALIBRATION_METHODS)
        check_choice("Int8Recipe.weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        if self.activation == "uint8" and self.symmetric_activations:
            raise ConfigError("Int8Recipe: symmetric activations need activation='int8'")
        if self.exact_pixels and not (self.conv_as_matmul and self.activation == "uint8"):
            raise ConfigError("Int8Recipe: exact_pixels needs conv_as_matmul=True and activation='uint8' "
                              f"(got conv_as_matmul={self.conv_as_matmul}, activation={self.activation!r})")
        if self.int8_attention_scores and not self.const_weight_matmuls_only:
            raise ConfigError("Int8Recipe: int8_attention_scores picks q@k^T out of the activation MatMuls, which "
                              "const_weight_matmuls_only=False quantizes all of; set one of the two")

    def to_dict(self) -> dict:
        return {"format": "QDQ", "activation": self.activation, "weight": "int8",
                "symmetric_activations": self.symmetric_activations, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "op_types": list(self.op_types),
                "const_weight_matmuls_only": self.const_weight_matmuls_only,
                "quantize_outputs": self.quantize_outputs,
                "calibrate_method": self.calibrate_method, "fuse_attention": self.fuse_attention,
                "conv_as_matmul": self.conv_as_matmul, "exact_pixels": self.exact_pixels,
                "weight_rounding": self.weight_rounding, "float_output_projections": self.float_output_projections,
                "int8_attention_scores": self.int8_attention_scores, "openvino_qdq": self.openvino_qdq}


@dataclass(frozen=True)
class Platform:
    """One deployment platform and everything an export for it, or a device running it, needs to know."""

    name: str  # the value of --platform and of the manifest's "target"
    description: str  # one line, for --help and docs
    opset: int  # ONNX opset of both encoders
    dynamic_batch: bool  # image encoder batch axis; False: static batch 1 (what TensorRT on a Jetson builds)
    # Offline ONNX Runtime optimization saved into the fp32 graphs: "extended" bakes com.microsoft fused
    # ops that only ONNX Runtime's CPU provider runs, "basic" keeps standard ONNX ops (TensorRT parses them).
    ort_level: str
    providers: tuple[str, ...]  # ONNX Runtime execution providers tried in order when the caller names none
    int8: Int8Recipe  # how --precision int8 quantizes the image encoder
    fp16: bool  # --precision fp16 offered (ONNX Runtime's CPU provider runs fp16 graphs slower than fp32)

    def __post_init__(self):
        check_choice(f"platform {self.name!r} ort_level", self.ort_level, ORT_LEVELS)
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or self.opset < 1:
            raise ConfigError(f"platform {self.name!r}: opset must be a positive int, got {self.opset!r}")
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise ConfigError(f"platform {self.name!r}: providers must be a non-empty tuple of provider names, "
                              f"got {self.providers!r}")


# TensorRT only accepts symmetric QDQ (int8, zero point 0) and standard ONNX ops (no com.microsoft fusion);
# the Conv rewrite works around ONNX Runtime CPU kernels, so TensorRT gets the patch Conv as exported.
_TENSORRT_INT8 = Int8Recipe(activation="int8", symmetric_activations=True, fuse_attention=False, conv_as_matmul=False,
                            exact_pixels=False, float_output_projections=False)
_TENSORRT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

PLATFORMS: dict[str, Platform] = {p.name: p for p in (
    Platform("cpu", "ONNX Runtime on the CPU (x86 or ARM); uint8 activations for the fast U8S8 kernels",
             opset=17, dynamic_batch=True, ort_level="extended", providers=("CPUExecutionProvider",),
             int8=Int8Recipe(int8_attention_scores=True, openvino_qdq=True), fp16=False),
    Platform("cuda", "ONNX Runtime CUDA or TensorRT on a desktop or server NVIDIA GPU",
             opset=17, dynamic_batch=True, ort_level="basic",
             providers=("CUDAExecutionProvider", "CPUExecutionProvider"), int8=_TENSORRT_INT8, fp16=True),
    Platform("jetson-orin-jp6", "Jetson Orin with JetPack 6 (TensorRT 8.6 / 10), static batch 1",
             opset=17, dynamic_batch=False, ort_level="basic", providers=_TENSORRT_PROVIDERS,
             int8=_TENSORRT_INT8, fp16=True),
    # TensorRT 8.5 has no LayerNormalization importer: opset 16 exports LayerNorm decomposed.
    Platform("jetson-xavier-jp5", "Jetson Xavier with JetPack 5 (TensorRT 8.5), static batch 1, opset 16",
             opset=16, dynamic_batch=False, ort_level="basic", providers=_TENSORRT_PROVIDERS,
             int8=_TENSORRT_INT8, fp16=True),
)}
DEFAULT_PLATFORM = "cpu"


def get_platform(name: str) -> Platform:
    """The platform called ``name``; ConfigError with a "did you mean" otherwise."""
    check_choice("platform", name, PLATFORMS)
    return PLATFORMS[name]


def fp16_platforms() -> tuple[str, ...]:
    """Names of the platforms that offer --precision fp16."""
    return tuple(name for name, p in PLATFORMS.items() if p.fp16)
