"""``export_bundle``: CLIP checkpoint -> self-describing, verified bundle directory, written atomically.

The export is a row of step functions, each returning a small record: load, trace, optimize,
[calibrate, quantize | fp16, compare], vocab, tokenizer, manifest, verify. ``_step`` times and logs
every one of them (its success with the time and the sizes of the files it wrote, or its failure,
which it re-raises); ``_build`` composes them; ``_extra`` assembles the manifest's report from their
records in one place. Everything is written into a hidden temporary sibling of ``out`` and renamed
into place only once the bundle is complete and verified, so a failed or interrupted export never
leaves a half-written bundle nor destroys an existing one. See docs/BUNDLE.md for the format.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vlmedge import __version__
from vlmedge.errors import ArtifactError, ConfigError, check_choice
from vlmedge.export import calibration, onnx_export, progress, quantize, tensorrt
from vlmedge.export.loaders import LoadedClip, load_clip
from vlmedge.export.onnx_export import IMAGE_INPUT, IMAGE_OUTPUTS, TEXT_INPUT, TEXT_OUTPUTS
from vlmedge.manifest import (
    DENSE_HEADS,
    MANIFEST_NAME,
    PRECISIONS,
    EncoderEntry,
    GroundingDefaults,
    Manifest,
    TensorSpec,
    file_entry,
    open_bundle,
)
from vlmedge.platforms import (
    CALIBRATION_METHODS,
    DEFAULT_PLATFORM,
    PLATFORMS,
    WEIGHT_ROUNDINGS,
    Int8Recipe,
    Platform,
    fp16_platforms,
)
from vlmedge.spec import RESIZE_MODES, PreprocessSpec, hw_pair

log = logging.getLogger(__name__)

IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE, VOCAB_FILE = (
    "image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "text_embeddings.npz")
IMAGE_OPENVINO_FILE = "image_encoder_openvino.onnx"  # the QDQ graph beside the ORT CPU form (recipe.openvino_qdq)
DEFAULT_CALIB_COUNT = 32
EVAL_FRAMES = 8
ERROR_TABLE_FRAMES = 4  # calibration frames the per-layer int8 error table is measured on
DEMO_MODEL_ID = "vlmedge-tabletop-demo"  # the embedded demo model: calibrated on its own synthetic world by default
CALIB_HELP = ("pass --calib with a folder of images or a video of the robot's own camera frames (what it will "
              "see: its scenes, lighting and objects; 32+ frames), or --calib synthetic to calibrate on vlmedge's "
              "rendered tabletop scenes knowingly (fine for a smoke test, poor scales for a real camera)")
# Queries the int8/fp16 report labels patches with (plus the grounding background prompts).
REPORT_QUERIES = ("a red cup", "a blue ball", "a green block", "a yellow box", "a bottle", "a hand")
# The steps whose durations extra.timings_s reports (docs/BUNDLE.md). The tokenizer, manifest and verify
# steps are logged like the others but not reported: the manifest cannot time its own writing, and the
# report keeps the fields that bundles have always had.
REPORTED_STEPS = ("load", "trace", "optimize", "calibrate", "quantize", "fp16", "compare", "vocab")


def parse_image_size(value) -> tuple[int, int] | None:
    """None, 224, (224, 320), "224" or "224x320" -> (H, W)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"image size {value!r} must look like H or HxW, e.g. 224 or 224x320") from None
        if len(nums) not in (1, 2):
            raise ConfigError(f"image size {value!r} must look like H or HxW, e.g. 224 or 224x320")
        value = nums[0] if len(nums) == 1 else tuple(nums)
    return hw_pair("image_size", value)


def read_vocab(path: str | Path) -> list[str]:
    """One command per line; blank lines and lines starting with '#' are skipped; duplicates dropped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"vocab file {str(path)!r} does not exist")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    queries = list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
    if not queries:
        raise ConfigError(f"vocab file {str(path)!r} holds no commands (one per line)")
    return queries


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The validated options of one export (see ``export_bundle``)."""

    image_size: tuple[int, int] | None = None
    dense: str = "naive"
    precision: str = "fp32"
    platform: str = DEFAULT_PLATFORM
    calib: str | None = None  # an image folder, a video, "synthetic"; None: synthetic for the demo model only
    calib_count: int = DEFAULT_CALIB_COUNT
    calib_method: str | None = None  # minmax, percentile, entropy; None: the platform recipe's (minmax)
    smooth_quant: float | None = None  # SmoothQuant alpha (ONNX Runtime + Intel Neural Compressor); None: off
    weight_rounding: str | None = None  # nearest, gptq; None: the platform recipe's
    int8_outputs: bool | None = None  # True: the output projections int8 too; None: the platform recipe's
    openvino_file: bool | None = None  # the QDQ graph for OpenVINO beside the ORT CPU form; None: the recipe's
    vocab: tuple[str, ...] | None = None
    preprocess_mode: str | None = None
    grounding: GroundingDefaults = dataclasses.field(default_factory=GroundingDefaults)

    def __post_init__(self):
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        check_choice("dense head", self.dense, DENSE_HEADS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("platform", self.platform, PLATFORMS)
        if self.preprocess_mode is not None:
            check_choice("preprocess mode", self.preprocess_mode, RESIZE_MODES)
        if self.precision == "fp16" and not PLATFORMS[self.platform].fp16:
            raise ConfigError(f"precision 'fp16' is for GPU platforms ({', '.join(fp16_platforms())}): "
                              "ONNX Runtime's CPU provider runs fp16 graphs slower than fp32; "
                              f"use --precision int8 (fastest) or fp32 for --platform {self.platform}")
        if not isinstance(self.calib_count, int) or isinstance(self.calib_count, bool) or self.calib_count <= 0:
            raise ConfigError(f"calib_count must be a positive int, got {self.calib_count!r}")
        if self.precision == "int8" and self.calib is not None and str(self.calib) != "synthetic" \
                and not Path(self.calib).exists():
            raise ConfigError(f"calib {str(self.calib)!r} does not exist; give an image folder, a video file "
                              "or 'synthetic'")
        if self.calib_method is not None:
            check_choice("calibration method", self.calib_method, CALIBRATION_METHODS)
        if self.weight_rounding is not None:
            check_choice("weight rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        if self.int8_outputs is not None and not isinstance(self.int8_outputs, bool):
            raise ConfigError(f"int8_outputs must be True, False or None, got {self.int8_outputs!r}")
        if self.openvino_file is not None and not isinstance(self.openvino_file, bool):
            raise ConfigError(f"openvino_file must be True, False or None, got {self.openvino_file!r}")
        if self.openvino_file and PLATFORMS[self.platform].ort_level != "extended":
            raise ConfigError(f"openvino_file: --platform {self.platform} saves the QDQ graph itself, which OpenVINO "
                              "runs as it is; the extra OpenVINO file is for --platform cpu (ONNX Runtime's CPU form)")
        if self.smooth_quant is not None and self.precision == "int8":
            quantize.check_smooth_quant(self.smooth_quant)
        if isinstance(self.grounding, dict):
            object.__setattr__(self, "grounding", GroundingDefaults.from_dict(self.grounding))
        elif not isinstance(self.grounding, GroundingDefaults):
            raise ConfigError(f"grounding must be a GroundingDefaults or dict, got {type(self.grounding).__name__}")


# ----------------------------------------------------------------------------- step records
@dataclasses.dataclass
class _Job:
    """One export in progress: what every step reads, and the steps' timings."""

    opts: ExportOptions
    platform: Platform
    tmp: Path  # the bundle being written: a hidden sibling of the output, renamed into place at the end
    work: Path  # scratch (raw and intermediate graphs), deleted afterwards
    t_start: float = dataclasses.field(default_factory=time.perf_counter)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # step name -> seconds


class _Result:
    """A step's record; ``files`` are the files it wrote (their sizes go into the step's log line)."""

    @property
    def files(self) -> tuple[Path, ...]:
        return ()


@dataclasses.dataclass(frozen=True)
class _Loaded(_Result):
    clip: LoadedClip  # ready to export: tokenizer, the bundle's preprocess, the manifest's source entry
    restore: Callable[[], None]  # puts a caller's model back as it was (dense head, image size)


@dataclasses.dataclass(frozen=True)
class _Graphs(_Result):
    """An image and a text encoder graph."""

    image: Path
    text: Path

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.image, self.text)


@dataclasses.dataclass(frozen=True)
class _Fp32(_Result):
    graphs: _Graphs  # optimized for the platform
    levels: dict[str, str]  # ORT optimization level saved, per encoder (image, text)
    parity: dict[str, float]  # max |d| of the graphs vs the torch model on a sample

    @property
    def files(self) -> tuple[Path, ...]:
        return self.graphs.files


@dataclasses.dataclass(frozen=True)
class _Calibration(_Result):
    source: str  # "synthetic", an image folder or a video file
    frames: list  # BGR frames as read
    reader: calibration.TensorCalibrationReader  # the frames through the bundle's preprocessing
    preprocess: PreprocessSpec

    def to_dict(self) -> dict:
        return {"source": self.source, "frames": len(self.reader), "preprocess": self.preprocess.to_dict()}


@dataclasses.dataclass(frozen=True)
class _Int8(_Result):
    graphs: _Graphs  # the bundle's encoders: int8 image, fp32 text
    recipe: Int8Recipe
    qdq: dict  # Q/DQ node counts of the QDQ graph (quantize.qdq_report)
    form: str  # "QDQ", or the ONNX Runtime CPU form it was fused into
    layer_errors: list  # quantize.LayerError per quantized layer, worst first
    openvino: Path | None = None  # the QDQ graph saved for OpenVINO beside the ORT CPU form (recipe.openvino_qdq)

    @property
    def files(self) -> tuple[Path, ...]:
        return self.graphs.files + ((self.openvino,) if self.openvino else ())


@dataclasses.dataclass(frozen=True)
class _Built:
    """What the steps between load and manifest produced: everything the manifest describes."""

    fp32: _Fp32
    encoders: _Graphs  # the bundle's two encoder files
    calibration: _Calibration | None  # int8 only
    int8: _Int8 | None
    report: dict | None  # reduced precision vs fp32 (verify.agreement); None for fp32
    vocab: Path | None
    tokenizer: Path


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


def _sizes(result) -> str:
    files = (result,) if isinstance(result, Path) else result.files if isinstance(result, _Result) else ()
    return ": " + ", ".join(f"{p.name} {_mb(p)}" for p in files) if files else ""


def _step(name: str):
    """Decorate a step ``fn(job, ...)``: log its start, then its success with its time and the sizes of the
    files it returns, or its failure with its time; re-raise the failure. Times go to ``job.timings``."""
    def decorate(fn):
        @functools.wraps(fn)
        def run(job: _Job, *args, **kwargs):
            t = time.perf_counter()
            log.info("%s ...", name)
            try:
                with progress.activity(name):
                    result = fn(job, *args, **kwargs)
            except BaseException as e:
                log.error("%s failed after %.2f s: %s", name, time.perf_counter() - t, str(e) or type(e).__name__)
                raise
            dt = time.perf_counter() - t
            job.timings[name] = round(job.timings.get(name, 0.0) + dt, 3)
            log.info("%s done in %.2f s%s", name, dt, _sizes(result))
            return result
        return run
    return decorate


# ----------------------------------------------------------------------------- entry point
def export_bundle(source, out: str | Path, *, image_size=None, dense: str = "naive", precision: str = "fp32",
                  platform: str | None = None, calib: str | Path | None = None,
                  calib_count: int = DEFAULT_CALIB_COUNT, calib_method: str | None = None,
                  smooth_quant: float | None = None, weight_rounding: str | None = None,
                  int8_outputs: bool | None = None, openvino_file: bool | None = None,
                  vocab: str | Path | list[str] | None = None,
                  preprocess_mode: str | None = None, grounding: GroundingDefaults | dict | None = None,
                  force: bool = False, act: str | None = None, target: str | None = None) -> Manifest:
    """Export ``source`` into the bundle directory ``out`` for ``platform`` (default "cpu").

    ``source``: a checkpoint path or hub id, a :class:`~vlmedge.export.loaders.LoadedClip`, or a bare
    CLIP module (default tokenizer and preprocessing); a caller's model gets its dense head and image
    size back afterwards. ``vocab``: a file with one command per line (or a list of commands) whose
    text embeddings are stored in ``text_embeddings.npz``. ``target``: deprecated name of ``platform``.
    int8: ``calib`` is an image folder or video of the robot's own frames, or "synthetic" (rendered
    tabletop scenes); None is "synthetic" for the embedded demo model and refused for any other model.
    ``calib_method``: minmax (default), percentile or entropy; ``smooth_quant``: SmoothQuant alpha.
    ``weight_rounding``: nearest or gptq, ``int8_outputs``: quantize the output projections too,
    ``openvino_file``: save the QDQ graph for OpenVINO beside ONNX Runtime's CPU form (None: the platform's int8
    recipe, ``vlmedge.platforms``).
    ``act``: the MLP activation of a bare OpenAI/OpenCLIP state dict (see ``load_clip``).
    Returns the written manifest. Raises ConfigError for bad options before any work is done.
    """
    queries = None
    if vocab is not None:
        queries = tuple(read_vocab(vocab)) if isinstance(vocab, (str, Path)) else tuple(dict.fromkeys(vocab))
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ConfigError(f"vocab must be a file or a non-empty list of non-empty strings, got {vocab!r}")
    opts = ExportOptions(image_size=image_size, dense=dense, precision=precision,
                         platform=_platform_arg(platform, target), calib=None if calib is None else str(calib),
                         calib_count=calib_count, calib_method=calib_method, smooth_quant=smooth_quant,
                         weight_rounding=weight_rounding, int8_outputs=int8_outputs, openvino_file=openvino_file,
                         vocab=queries,
                         preprocess_mode=preprocess_mode,
                         grounding=grounding if grounding is not None else GroundingDefaults())
    out = Path(out)
    _check_out(out, force)
    with tempfile.TemporaryDirectory(prefix="vlmedge-export-") as work:
        job = _Job(opts, PLATFORMS[opts.platform], out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}"),
                   Path(work))
        loaded = _load(job, source, act)
        try:
            job.opts = _settle_calibration(opts, loaded.clip)
            out.parent.mkdir(parents=True, exist_ok=True)
            job.tmp.mkdir()
            try:
                manifest = _build(job, loaded.clip)
                _verify(job)
                _replace_dir(job.tmp, out)
            except BaseException:
                shutil.rmtree(job.tmp, ignore_errors=True)
                raise
        finally:
            loaded.restore()
    log.info("bundle written: %s", out)
    return manifest


def _settle_calibration(opts: ExportOptions, clip: LoadedClip) -> ExportOptions:
    """int8 without ``calib``: the demo model calibrates on its own synthetic world; any other model must be
    told what its camera sees (refused with what to pass)."""
    if opts.precision != "int8" or opts.calib is not None:
        return opts
    if clip.source.get("id") == DEMO_MODEL_ID:
        log.info("calibration: the demo model's own synthetic tabletop scenes (its training world)")
        return dataclasses.replace(opts, calib="synthetic")
    raise ConfigError(f"int8 needs calibration frames for {clip.source.get('id') or 'this model'}: {CALIB_HELP}")


def _build(job: _Job, clip: LoadedClip) -> Manifest:
    """The steps from the traced graphs to the manifest, all writing into ``job.tmp``."""
    precision = job.opts.precision
    raw = _trace(job, clip.model)
    fp32 = _optimize(job, clip, raw)
    calib = _calibrate(job, clip.preprocess) if precision == "int8" else None
    int8 = _quantize(job, raw, fp32, calib) if calib is not None else None
    if int8 is not None:
        encoders = int8.graphs
    else:
        encoders = _to_fp16(job, fp32) if precision == "fp16" else _copy_fp32(job, fp32)
    report = _compare(job, clip, fp32, encoders, calib) if precision != "fp32" else None
    vocab = _vocab(job, clip.tokenizer, encoders) if job.opts.vocab else None
    tokenizer = _write_tokenizer(job, clip.tokenizer)
    return _manifest(job, clip, _Built(fp32, encoders, calib, int8, report, vocab, tokenizer))


def _platform_arg(platform: str | None, target: str | None) -> str:
    """``platform``, or its deprecated name ``target`` (with a DeprecationWarning); default "cpu"."""
    if target is None:
        return DEFAULT_PLATFORM if platform is None else platform
    warnings.warn("export_bundle(target=...) is deprecated; use platform=...", DeprecationWarning, stacklevel=3)
    if platform is not None and platform != target:
        raise ConfigError(f"platform={platform!r} and target={target!r} (its deprecated name) disagree; "
                          "pass platform= only")
    return target


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"output directory {str(out)!r} is not empty; pass force=True (--force) to replace "
                              "the bundle in it")
        if not (out / MANIFEST_NAME).is_file():
            raise ConfigError(f"refusing to replace {str(out)!r}: it is not a vlmedge bundle (no {MANIFEST_NAME}); "
                              "choose another output directory")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished bundle ``tmp`` to ``out``; an existing ``out`` is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- load
@_step("load")
def _load(job: _Job, source, act: str | None = None) -> _Loaded:
    """The model configured for the export, with its tokenizer, the bundle's preprocessing and source entry."""
    clip, restore = _configure(source, job.opts, act)
    try:
        return _Loaded(_ready(clip, job.opts, source), restore)
    except BaseException:
        restore()
        raise


def _configure(source, opts: ExportOptions, act: str | None = None) -> tuple[LoadedClip, Callable[[], None]]:
    """``source`` as a LoadedClip with the export's dense head and image size, and a function restoring a
    caller's model."""
    if isinstance(source, (str, os.PathLike)):
        return load_clip(source, dense=opts.dense, image_size=opts.image_size, act=act), lambda: None
    if act is not None:
        raise ConfigError("act= applies to a checkpoint path (an OpenAI/OpenCLIP state dict), not to a loaded model")
    clip = source if isinstance(source, LoadedClip) else LoadedClip(_check_model(source))
    model = clip.model.eval()
    prev_size, prev_head = tuple(model.image_size), model.dense_head
    if opts.image_size:
        model.set_image_size(opts.image_size)  # validates first: a bad size leaves the model untouched
    model.dense_head = opts.dense

    def restore():
        model.dense_head = prev_head
        model.set_image_size(prev_size)
    return clip, restore


def _check_model(source):
    if not isinstance(source, torch.nn.Module):
        raise ConfigError(f"source must be a checkpoint path, a hub id, a LoadedClip or a CLIP module, got "
                          f"{type(source).__name__}")
    return source


def _ready(clip: LoadedClip, opts: ExportOptions, source) -> LoadedClip:
    """``clip`` with everything the steps read settled: tokenizer, preprocessing at the export size (and
    mode), and the manifest's source entry."""
    model = clip.model
    p = model.spec.vision.patch_size
    h, w = model.image_size
    if h % p or w % p:
        raise ConfigError(f"image size {(h, w)} must be a multiple of the patch size {p}")
    base = clip.preprocess or PreprocessSpec(size=(h, w))
    pre = dataclasses.replace(base, size=(h, w), mode=opts.preprocess_mode or base.mode)
    info = clip.source
    model_id = str(info.get("id") or (source if isinstance(source, (str, Path)) else "in-memory-model"))
    entry = {"id": model_id, "revision": info.get("revision"), "layout": info.get("layout", "in-memory"),
             "weights_sha256": info.get("weights_sha256")}
    return dataclasses.replace(clip, tokenizer=_tokenizer(clip), preprocess=pre, source=entry)


def _tokenizer(clip: LoadedClip):
    if clip.tokenizer is not None:
        return clip.tokenizer
    from vlmedge.tokenizer import ClipTokenizer

    tok = ClipTokenizer.default()
    vocab = clip.model.spec.text.vocab_size
    if tok.vocab_size != vocab:
        raise ConfigError(f"the model has no tokenizer and its vocab_size ({vocab}) does not match the default "
                          f"CLIP tokenizer ({tok.vocab_size}); pass LoadedClip(model, tokenizer=...)")
    log.info("model has no tokenizer; using the default OpenAI CLIP BPE tokenizer")
    return tok


# ----------------------------------------------------------------------------- graphs
def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_image(session, tensors: list[np.ndarray], static: bool) -> tuple[np.ndarray, np.ndarray]:
    if static:
        outs = [session.run(None, {IMAGE_INPUT: t}) for t in tensors]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    image, patches = session.run(None, {IMAGE_INPUT: np.concatenate(tensors)})
    return image, patches


def _torch_image(model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        img, patch = model.encode_image(torch.from_numpy(pixels))
    return img.numpy(), patch.numpy()


def _torch_text(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode_text(torch.from_numpy(ids)).numpy()


@_step("trace")
def _trace(job: _Job, model) -> _Graphs:
    """Both towers to ONNX at the platform's opset (the image batch axis dynamic or static 1)."""
    raw = _Graphs(job.work / "image_raw.onnx", job.work / "text_raw.onnx")
    onnx_export.export_image_encoder(model, raw.image, opset=job.platform.opset,
                                     dynamic_batch=job.platform.dynamic_batch)
    onnx_export.export_text_encoder(model, raw.text, opset=job.platform.opset)
    log.info("traced at opset %d, image batch %s", job.platform.opset,
             "dynamic" if job.platform.dynamic_batch else "static 1")
    return raw


@_step("optimize")
def _optimize(job: _Job, clip: LoadedClip, raw: _Graphs) -> _Fp32:
    """ONNX Runtime's offline optimization for the platform, checked against the torch model."""
    h, w = clip.model.image_size
    pixels = np.random.default_rng(0).normal(0, 1, (1, 3, h, w)).astype(np.float32)
    ids = np.asarray(clip.tokenizer.encode(["a photo of a red cup", "background"]), dtype=np.int64)
    graphs = _Graphs(job.work / "image_fp32.onnx", job.work / "text_fp32.onnx")
    optimize = functools.partial(onnx_export.optimize_for_platform, platform=job.platform)
    levels = {"image": optimize(raw.image, graphs.image, feeds={IMAGE_INPUT: pixels}),
              "text": optimize(raw.text, graphs.text, feeds={TEXT_INPUT: ids})}
    ref_img, ref_patch = _torch_image(clip.model, pixels)
    got_img, got_patch = _ort_session(graphs.image).run(None, {IMAGE_INPUT: pixels})
    (got_txt,) = _ort_session(graphs.text).run(None, {TEXT_INPUT: ids})
    parity = {"image_max_abs": float(np.abs(got_img - ref_img).max()),
              "patch_max_abs": float(np.abs(got_patch - ref_patch).max()),
              "text_max_abs": float(np.abs(got_txt - _torch_text(clip.model, ids)).max())}
    log.info("ORT optimization: image %s, text %s; fp32 max |d| vs torch: %s", levels["image"], levels["text"],
             ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    if max(parity.values()) > 1e-3:
        raise ArtifactError(f"fp32 ONNX disagrees with the torch model (max |d| {max(parity.values()):.2e}); "
                            "this is an exporter bug, please report it with the model spec")
    return _Fp32(graphs, levels, parity)


def _copy_fp32(job: _Job, fp32: _Fp32) -> _Graphs:
    encoders = _Graphs(job.tmp / IMAGE_FILE, job.tmp / TEXT_FILE)
    shutil.copyfile(fp32.graphs.image, encoders.image)
    shutil.copyfile(fp32.graphs.text, encoders.text)
    return encoders


# ----------------------------------------------------------------------------- reduced precision
@_step("calibrate")
def _calibrate(job: _Job, pre: PreprocessSpec) -> _Calibration:
    """Calibration frames through the bundle's own preprocessing."""
    calib = job.opts.calib
    frames = calibration.calibration_frames(calib, job.opts.calib_count)
    reader = calibration.frame_reader(frames, pre, IMAGE_INPUT)
    log.info("calibration: %d frames from %s, preprocessed to [1,3,%d,%d] (%s)",
             len(reader), calib, pre.size[0], pre.size[1], pre.mode)
    return _Calibration(calib, frames, reader, pre)


class _TickingReader(calibration.CalibrationDataReader):
    """A calibration reader that advances a progress bar per frame handed to the quantizer."""

    def __init__(self, reader, bar):
        self.reader, self.bar = reader, bar

    def get_next(self):
        item = self.reader.get_next()
        if item is not None and self.bar.n < (self.bar.total or 0):  # the error table re-reads a few frames
            self.bar.update(1)
        return item

    def rewind(self) -> None:
        self.reader.rewind()

    def __len__(self) -> int:
        return len(self.reader)


@_step("quantize")
def _quantize(job: _Job, raw: _Graphs, fp32: _Fp32, calib: _Calibration) -> _Int8:
    """Static int8 QDQ of the image encoder with the platform's recipe (and the export's calibration method),
    its per-layer error table; the text encoder in int8 with dynamic activation scales."""
    recipe = job.platform.int8
    if job.opts.calib_method is not None:
        recipe = dataclasses.replace(recipe, calibrate_method=job.opts.calib_method)
    if job.opts.weight_rounding is not None:
        recipe = dataclasses.replace(recipe, weight_rounding=job.opts.weight_rounding)
    if job.opts.int8_outputs is not None:
        recipe = dataclasses.replace(recipe, float_output_projections=not job.opts.int8_outputs)
    if job.opts.openvino_file is not None:
        recipe = dataclasses.replace(recipe, openvino_qdq=job.opts.openvino_file)
    qdq_img, encoders = job.work / "image_int8_qdq.onnx", _Graphs(job.tmp / IMAGE_FILE, job.tmp / TEXT_FILE)
    calib.reader.rewind()
    with progress.bar(total=len(calib.reader), desc=f"calibrating ({recipe.calibrate_method})", unit="frame") as bar:
        errors = quantize.quantize_int8(raw.image, qdq_img, _TickingReader(calib.reader, bar), recipe,
                                        smooth_quant=job.opts.smooth_quant,
                                        error_frames=min(ERROR_TABLE_FRAMES, len(calib.reader)),
                                        preprocess=calib.preprocess)
    calib.reader.rewind()
    qdq = quantize.qdq_report(qdq_img)
    log.info("int8 QDQ image encoder %s: %d QuantizeLinear, %d DequantizeLinear, quantized %s; %s calibration",
             _mb(qdq_img), qdq["QuantizeLinear"], qdq["DequantizeLinear"], qdq["quantized"], recipe.calibrate_method)
    log.info("int8 error per layer on %d calibration frames (SQNR in dB, higher is better; worst first):\n%s",
             min(ERROR_TABLE_FRAMES, len(calib.reader)), quantize.error_table(errors))
    with progress.activity("text encoder to int8"):
        quantize.quantize_text_dynamic(raw.text, encoders.text)  # the traced graph: standard ops, typed
    log.info("int8 text encoder (dynamic activation scales, per-channel weights): %s -> %s",
             _mb(fp32.graphs.text), _mb(encoders.text))
    form = "QDQ"
    openvino = None
    if job.platform.ort_level == "extended":  # a platform that runs ONNX Runtime's CPU ops: save its fused form
        folded = quantize.fuse_for_cpu(qdq_img, encoders.image)
        from vlmedge.export import optimize  # graph passes kept only when measured faster (none now), #17

        optimize.optimize_file(encoders.image, encoders.image, optimize.DEFAULT_PASSES)
        diff = onnx_export.max_abs_diff_on(qdq_img, encoders.image, {IMAGE_INPUT: calib.reader.tensors[0]},
                                           optimized=True)  # vs the QDQ graph as ORT runs it
        if diff <= 1e-4:
            form = f"onnxruntime-cpu (MatMulIntegerToFloat, {folded} biases folded)"
            log.info("saved ORT CPU form: %s, max |d| vs QDQ %.1e", form, diff)
            if recipe.openvino_qdq:
                openvino = job.tmp / IMAGE_OPENVINO_FILE
                shutil.copyfile(qdq_img, openvino)
                log.info("saved the QDQ graph for OpenVINO: %s (%s)", openvino.name, _mb(openvino))
        else:
            log.warning("ORT CPU fusion moved outputs by %.2e; keeping the QDQ graph", diff)
    if form == "QDQ":
        shutil.copyfile(qdq_img, encoders.image)
    return _Int8(encoders, recipe, qdq, form, errors, openvino)


@_step("fp16")
def _to_fp16(job: _Job, fp32: _Fp32) -> _Graphs:
    """Both encoders in fp16 with float32 inputs and outputs; the fp32 islands (LayerNorm whole, also when
    decomposed, Softmax, the L2 normalizations) stay float32."""
    import onnx

    encoders = _Graphs(job.tmp / IMAGE_FILE, job.tmp / TEXT_FILE)
    for src, dst in ((fp32.graphs.image, encoders.image), (fp32.graphs.text, encoders.text)):
        islands = tensorrt.fp32_islands(onnx.load(str(src), load_external_data=False).graph)
        quantize.convert_fp16(src, dst, block_nodes=islands["nodes"])
    return encoders


def _eval_frames(opts: ExportOptions, calib: _Calibration | None) -> list[np.ndarray]:
    """Held-out frames for the report: fresh synthetic scenes, else the first calibration frames."""
    if calib is not None:
        return calibration.evaluation_frames(opts.calib, EVAL_FRAMES, calib.frames)
    if opts.calib is None or opts.calib == "synthetic":  # fp16 without frames: rendered scenes for the report
        return calibration.evaluation_frames("synthetic", EVAL_FRAMES, [])
    return calibration.calibration_frames(opts.calib, EVAL_FRAMES)


@_step("compare")
def _compare(job: _Job, clip: LoadedClip, fp32: _Fp32, encoders: _Graphs, calib: _Calibration | None) -> dict:
    """The reduced-precision image encoder vs the fp32 one: embedding cosine and patch label agreement."""
    from vlmedge.export.verify import agreement, cosine_rows

    opts = job.opts
    queries = list(opts.vocab or REPORT_QUERIES + tuple(opts.grounding.background_prompts))
    text = _torch_text(clip.model, np.asarray(clip.tokenizer.encode(queries), dtype=np.int64))
    tensors = calibration.preprocess_frames(_eval_frames(opts, calib), clip.preprocess)
    static = not job.platform.dynamic_batch
    ref = _run_image(_ort_session(fp32.graphs.image), tensors, static)
    rep = agreement(ref, _run_image(_ort_session(encoders.image), tensors, static), text)
    ids = np.asarray(clip.tokenizer.encode(queries), dtype=np.int64)
    (got_text,) = _ort_session(encoders.text).run(None, {TEXT_INPUT: ids})
    cos = cosine_rows(got_text, text)
    rep.update(text_cosine_mean=float(cos.mean()), text_cosine_min=float(cos.min()))
    log.info("%s vs fp32 on %d frames: image cosine mean %.5f min %.5f, patch argmax agreement %.2f%%; "
             "text embeddings of %d queries: cosine mean %.5f min %.5f", opts.precision, rep["frames"],
             rep["image_cosine_mean"], rep["image_cosine_min"], 100 * rep["patch_argmax_agreement"], len(queries),
             rep["text_cosine_mean"], rep["text_cosine_min"])
    return rep


# ----------------------------------------------------------------------------- small files, manifest
@_step("vocab")
def _vocab(job: _Job, tokenizer, encoders: _Graphs) -> Path:
    """The fixed vocabulary's text embeddings, from the bundle's own text encoder."""
    ids = np.asarray(tokenizer.encode(list(job.opts.vocab)), dtype=np.int64)
    (embeds,) = _ort_session(encoders.text).run(None, {TEXT_INPUT: ids})
    path = job.tmp / VOCAB_FILE
    np.savez(path, queries=np.asarray(job.opts.vocab, dtype=np.str_), embeds=embeds.astype(np.float32))
    return path


@_step("tokenizer")
def _write_tokenizer(job: _Job, tokenizer) -> Path:
    path = job.tmp / TOKENIZER_FILE
    tokenizer.save(path)
    return path


def _encoder_precision(precision: str) -> dict[str, str]:
    """Per encoder: int8 and fp16 convert both (the int8 text encoder with dynamic activation scales)."""
    return {"image": precision, "text": precision}


@_step("manifest")
def _manifest(job: _Job, clip: LoadedClip, built: _Built) -> Manifest:
    """Describe the bundle: encoder I/O, ONNX metadata, file hashes, the report; write manifest.json."""
    model, opts, tmp = clip.model, job.opts, job.tmp
    (h, w), (gh, gw), d = model.image_size, model.grid, model.spec.embed_dim
    ctx = model.spec.text.context_length
    batch = "batch" if job.platform.dynamic_batch else 1
    img_entry = EncoderEntry(IMAGE_FILE, (TensorSpec(IMAGE_INPUT, "float32", (batch, 3, h, w)),),
                             (TensorSpec(IMAGE_OUTPUTS[0], "float32", (batch, d)),
                              TensorSpec(IMAGE_OUTPUTS[1], "float32", (batch, gh, gw, d))))
    txt_entry = EncoderEntry(TEXT_FILE, (TensorSpec(TEXT_INPUT, "int64", ("batch", ctx)),),
                             (TensorSpec(TEXT_OUTPUTS[0], "float32", ("batch", d)),))
    ov_entry = None
    if built.int8 is not None and built.int8.openvino is not None:
        ov_entry = dataclasses.replace(img_entry, file=built.int8.openvino.name)  # the same inputs and outputs
    # The summary keeps the manifest's JSON key "target" for the platform (see vlmedge.manifest).
    summary = {"format_version": 1, "vlmedge_version": __version__, "model_id": clip.source["id"],
               "source": clip.source, "precision": opts.precision, "target": opts.platform,
               "dense_head": opts.dense, "image_size": [h, w], "patch_grid": [gh, gw], "embed_dim": d,
               "opset": job.platform.opset, "preprocess": clip.preprocess.to_dict()}
    precision = _encoder_precision(opts.precision)
    islands = _islands(job, tmp / IMAGE_FILE)
    for entry, role in ((img_entry, "image"), (txt_entry, "text")) + (((ov_entry, "image"),) if ov_entry else ()):
        _check_io(tmp / entry.file, entry)
        props = {"vlmedge.manifest": summary, "vlmedge.role": role, "vlmedge.precision": precision[role]}
        if role == "image" and islands is not None:
            props[tensorrt.ISLANDS_KEY] = islands
        onnx_export.set_metadata(tmp / entry.file, props)
    files = {name: file_entry(tmp / name) for name in sorted(p.name for p in tmp.iterdir())}
    log.info("artifacts: %s", ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in files.items()))
    manifest = Manifest(
        model_id=clip.source["id"], source=clip.source, spec=model.spec, image_size=(h, w), patch_grid=(gh, gw),
        embed_dim=d, logit_scale=float(model.logit_scale.detach().exp()), dense_head=opts.dense,
        precision=opts.precision, platform=opts.platform, opset=job.platform.opset, preprocess=clip.preprocess,
        image_encoder=img_entry, text_encoder=txt_entry, image_openvino=ov_entry, tokenizer=built.tokenizer.name,
        context_length=ctx,
        text_embeddings=built.vocab.name if built.vocab else None, grounding=opts.grounding, files=files,
        vlmedge_version=__version__, extra=_extra(job, built, files, islands))
    path = tmp / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    open_bundle(tmp)  # round-trip: the file we wrote must read back and verify
    return manifest


def _islands(job: _Job, image: Path) -> dict | None:
    """The fp32 islands of the image encoder for the platforms TensorRT builds (standard-op graphs); the
    engine builder pins them (``tensorrt.fp32_islands``)."""
    if job.platform.ort_level != "basic":
        return None
    import onnx

    islands = tensorrt.fp32_islands(onnx.load(str(image), load_external_data=False).graph)
    log.info("fp32 islands marked for TensorRT: %d nodes (LayerNorm, Softmax, L2 normalization)",
             len(islands["nodes"]))
    return islands


def _extra(job: _Job, built: _Built, files: dict, islands: dict | None = None) -> dict:
    """The manifest's ``extra``: the export's report, assembled here and only here from the step records."""
    import onnx
    import onnxruntime

    precision = job.opts.precision
    extra: dict = {"toolchain": {"torch": torch.__version__, "onnx": onnx.__version__,
                                 "onnxruntime": onnxruntime.__version__},
                   "optimization": built.fp32.levels, "fp32_parity_vs_torch": built.fp32.parity}
    if built.int8 is not None:
        extra["int8"] = {"recipe": built.int8.recipe.to_dict(), "qdq": built.int8.qdq, "form": built.int8.form,
                         "bias": "float (not quantized)", "smooth_quant": job.opts.smooth_quant,
                         "text_encoder": {"form": "dynamic", "weights": "int8 per-channel",
                                          "op_types": list(quantize.TEXT_INT8_OPS)},
                         "calibration": built.calibration.to_dict(),
                         "layer_errors": [e.to_dict() for e in built.int8.layer_errors]}
    elif precision == "fp16":
        extra["fp16"] = {"block_ops": list(quantize.FP16_BLOCK_OPS), "keep_io_types": True}
    if built.report is not None:
        extra[f"{precision}_report"] = built.report
    if islands is not None:
        extra["fp32_islands"] = {"image": islands}
    extra["encoder_precision"] = _encoder_precision(precision)
    extra["sizes_bytes"] = {k: v["bytes"] for k, v in files.items()}
    extra["timings_s"] = {**{k: v for k, v in job.timings.items() if k in REPORTED_STEPS},
                          "total": round(time.perf_counter() - job.t_start, 3)}
    return extra


def _check_io(path: Path, entry: EncoderEntry) -> None:
    inputs, outputs = onnx_export.io_shapes(path)
    want_in = [t.name for t in entry.inputs]
    want_out = [t.name for t in entry.outputs]
    if [i[0] for i in inputs] != want_in or [o[0] for o in outputs] != want_out:
        raise ArtifactError(f"{path}: graph inputs/outputs {[i[0] for i in inputs]} -> {[o[0] for o in outputs]}, "
                            f"expected {want_in} -> {want_out}")
    for (name, dtype, _), spec in zip(inputs + outputs, entry.inputs + entry.outputs):
        if dtype != spec.dtype:
            raise ArtifactError(f"{path}: {name} is {dtype}, expected {spec.dtype}")


@_step("verify")
def _verify(job: _Job):
    """The finished bundle through the device's own loader: hashes, both encoders, stored embeddings."""
    from vlmedge.export.verify import verify_bundle

    report = verify_bundle(job.tmp, providers=["CPUExecutionProvider"])
    for line in report.checks:
        log.info("verify: %s", line)
    return report


def summarize(manifest: Manifest, out: str | Path, seconds: float | None = None) -> str:
    """A short human summary of an export (the CLI prints it). ``seconds``: the command's duration, start to
    end (the one the CLI reports); default the manifest's ``timings_s.total`` (up to writing the manifest)."""
    m = manifest
    h, w = m.image_size
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in m.files.items())
    total = seconds if seconds is not None else m.extra.get("timings_s", {}).get("total")
    lines = [f"exported {m.model_id} -> {out}  [{m.precision}, platform {m.platform}, dense {m.dense_head}, "
             f"{h}x{w}, grid {m.patch_grid[0]}x{m.patch_grid[1]}, D={m.embed_dim}, opset {m.opset}]"
             + (f" in {total:.1f} s" if total is not None else ""),
             f"  files: {sizes}"]
    par = m.extra.get("fp32_parity_vs_torch")
    if par:
        lines.append(f"  fp32 ONNX vs torch: max |d| {max(par.values()):.1e}")
    for prec in ("int8", "fp16"):
        rep = m.extra.get(f"{prec}_report")
        if rep:
            lines.append(f"  {prec} vs fp32 ({rep['frames']} frames, {rep['queries']} queries): image cosine mean "
                         f"{rep['image_cosine_mean']:.5f} min {rep['image_cosine_min']:.5f}, "
                         f"patch argmax agreement {100 * rep['patch_argmax_agreement']:.1f}%"
                         + (f"; text cosine min {rep['text_cosine_min']:.5f}" if "text_cosine_min" in rep else ""))
    errors = m.extra.get("int8", {}).get("layer_errors")
    if errors:
        worst = errors[0]
        lines.append(f"  int8 worst layer: {worst['layer']} ({worst['cumulative_db']:.1f} dB SQNR vs fp32; table in "
                     "the log and in manifest extra.int8.layer_errors)")
    return "\n".join(lines)
