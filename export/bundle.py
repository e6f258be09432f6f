"""``export_bundle``: CLIP checkpoint -> self-describing, verified bundle directory, written atomically.

Steps (each logged with its time and artifact sizes): load, trace, optimize, [calibrate,
quantize | fp16], vocab, verify. Everything is written into a hidden temporary sibling of
``out`` and renamed into place only once the bundle is complete and verified, so a failed or
interrupted export never leaves a half-written bundle nor destroys an existing one.
See docs/BUNDLE.md for the format.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vlmedge import __version__
from vlmedge.errors import ArtifactError, ConfigError, check_choice
from vlmedge.manifest import (
    DENSE_HEADS, MANIFEST_NAME, PRECISIONS, TARGETS, EncoderEntry, GroundingDefaults, Manifest, TensorSpec,
    file_entry, open_bundle,
)
from vlmedge.spec import RESIZE_MODES, PreprocessSpec, hw_pair

from vlmedge.export import calibration, onnx_export, quantize
from vlmedge.export.onnx_export import IMAGE_INPUT, IMAGE_OUTPUTS, TARGET_PROFILES, TEXT_INPUT, TEXT_OUTPUTS

log = logging.getLogger(__name__)

IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE, VOCAB_FILE = (
    "image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "text_embeddings.npz")
DEFAULT_CALIB_COUNT = 32
EVAL_FRAMES = 8
# Queries the int8/fp16 report labels patches with (plus the grounding background prompts).
REPORT_QUERIES = ("a red cup", "a blue ball", "a green block", "a yellow box", "a bottle", "a hand")
GPU_TARGETS = ("cuda", "jetson-orin-jp6", "jetson-xavier-jp5")


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
    target: str = "cpu"
    calib: str = "synthetic"
    calib_count: int = DEFAULT_CALIB_COUNT
    vocab: tuple[str, ...] | None = None
    preprocess_mode: str | None = None
    grounding: GroundingDefaults = dataclasses.field(default_factory=GroundingDefaults)

    def __post_init__(self):
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        check_choice("dense head", self.dense, DENSE_HEADS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("target", self.target, TARGETS)
        if self.preprocess_mode is not None:
            check_choice("preprocess mode", self.preprocess_mode, RESIZE_MODES)
        if self.precision == "fp16" and self.target not in GPU_TARGETS:
            raise ConfigError("precision 'fp16' is for GPU targets (cuda, jetson-orin-jp6, jetson-xavier-jp5): "
                              "ONNX Runtime's CPU provider runs fp16 graphs slower than fp32; "
                              "use --precision int8 (fastest) or fp32 for --target cpu")
        if not isinstance(self.calib_count, int) or isinstance(self.calib_count, bool) or self.calib_count <= 0:
            raise ConfigError(f"calib_count must be a positive int, got {self.calib_count!r}")
        if self.precision == "int8" and str(self.calib) != "synthetic" and not Path(self.calib).exists():
            raise ConfigError(f"calib {str(self.calib)!r} does not exist; give an image folder, a video file "
                              "or 'synthetic'")
        if isinstance(self.grounding, dict):
            object.__setattr__(self, "grounding", GroundingDefaults.from_dict(self.grounding))
        elif not isinstance(self.grounding, GroundingDefaults):
            raise ConfigError(f"grounding must be a GroundingDefaults or dict, got {type(self.grounding).__name__}")


class _Progress:
    """Times each step and logs it (with sizes) or its failure."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        t = time.perf_counter()
        log.info("%s ...", name)
        try:
            yield
        except BaseException as e:
            log.error("%s failed after %.2f s: %s", name, time.perf_counter() - t, e or type(e).__name__)
            raise
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 3)
        log.info("%s done in %.2f s", name, self.timings[name])


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


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


def _load(source, opts: ExportOptions):
    """A CLIP module configured for the export, and a function restoring a caller's module."""
    if hasattr(source, "encode_image") and hasattr(source, "encode_text"):
        model = source.eval()
        prev_size, prev_head = tuple(model.image_size), model.dense_head
        if opts.image_size:
            model.set_image_size(opts.image_size)  # validates first: a bad size leaves the model untouched
        model.dense_head = opts.dense

        def restore():
            model.dense_head = prev_head
            model.set_image_size(prev_size)
        return model, restore
    from vlmedge.export.loaders import load_clip

    model = load_clip(source, dense=opts.dense, image_size=opts.image_size).eval()
    return model, lambda: None


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok
    from vlmedge.tokenizer import ClipTokenizer

    tok = ClipTokenizer.default()
    if tok.vocab_size != model.spec.text.vocab_size:
        raise ConfigError(f"the model has no tokenizer and its vocab_size ({model.spec.text.vocab_size}) does not "
                          f"match the default CLIP tokenizer ({tok.vocab_size}); set model.tokenizer")
    log.info("model has no tokenizer; using the default OpenAI CLIP BPE tokenizer")
    return tok


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


def _torch_reference(model, pixels: np.ndarray, ids: np.ndarray):
    import torch

    with torch.no_grad():
        img, patch = model.encode_image(torch.from_numpy(pixels))
        text = model.encode_text(torch.from_numpy(ids))
    return img.numpy(), patch.numpy(), text.numpy()


def export_bundle(source, out: str | Path, *, image_size=None, dense: str = "naive", precision: str = "fp32",
                  target: str = "cpu", calib: str | Path = "synthetic", calib_count: int = DEFAULT_CALIB_COUNT,
                  vocab: str | Path | list[str] | None = None, preprocess_mode: str | None = None,
                  grounding: GroundingDefaults | dict | None = None, force: bool = False) -> Manifest:
    """Export ``source`` (path, hub id or loaded CLIP) into the bundle directory ``out``.

    ``vocab``: a file with one command per line (or a list of commands) whose text embeddings are
    stored in ``text_embeddings.npz``. Returns the written manifest. Raises ConfigError for bad
    options before any work is done.
    """
    queries = None
    if vocab is not None:
        queries = tuple(read_vocab(vocab)) if isinstance(vocab, (str, Path)) else tuple(dict.fromkeys(vocab))
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ConfigError(f"vocab must be a file or a non-empty list of non-empty strings, got {vocab!r}")
    opts = ExportOptions(image_size=image_size, dense=dense, precision=precision, target=target, calib=str(calib),
                         calib_count=calib_count, vocab=queries, preprocess_mode=preprocess_mode,
                         grounding=grounding if grounding is not None else GroundingDefaults())
    out = Path(out)
    _check_out(out, force)
    progress = _Progress()
    t_start = time.perf_counter()

    with progress.step("load"):
        model, restore = _load(source, opts)
    try:
        p = model.spec.vision.patch_size
        h, w = model.image_size
        if h % p or w % p:
            raise ConfigError(f"image size {(h, w)} must be a multiple of the patch size {p}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            with tempfile.TemporaryDirectory(prefix="vlmedge-export-") as work:
                manifest = _build(model, opts, tmp, Path(work), progress, source)
            manifest = dataclasses.replace(manifest, extra={**manifest.extra, "timings_s": {
                **progress.timings, "total": round(time.perf_counter() - t_start, 3)}})
            _write_manifest(tmp, manifest)
            with progress.step("verify"):
                from vlmedge.export.verify import verify_bundle

                report = verify_bundle(tmp, providers=["CPUExecutionProvider"])
                for line in report.checks:
                    log.info("verify: %s", line)
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        restore()
    log.info("bundle written: %s (%.1f s)", out, time.perf_counter() - t_start)
    return manifest


def _write_manifest(bundle: Path, manifest: Manifest) -> None:
    path = bundle / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    open_bundle(bundle)  # round-trip: the file we wrote must read back and verify


def _build(model, opts: ExportOptions, tmp: Path, work: Path, progress: _Progress, source) -> Manifest:
    import onnx
    import onnxruntime
    import torch

    profile = TARGET_PROFILES[opts.target]
    opset, dynamic = profile["opset"], profile["dynamic_batch"]
    h, w = model.image_size
    gh, gw = model.grid
    d = model.spec.embed_dim
    ctx = model.spec.text.context_length
    tok = _tokenizer(model)
    base_pre = model.preprocess_spec or PreprocessSpec(size=(h, w))
    pre = dataclasses.replace(base_pre, size=(h, w), mode=opts.preprocess_mode or base_pre.mode)
    extra: dict = {"toolchain": {"torch": torch.__version__, "onnx": onnx.__version__,
                                 "onnxruntime": onnxruntime.__version__}}

    raw_img, raw_txt = work / "image_raw.onnx", work / "text_raw.onnx"
    with progress.step("trace"):
        onnx_export.export_image_encoder(model, raw_img, opset=opset, dynamic_batch=dynamic)
        onnx_export.export_text_encoder(model, raw_txt, opset=opset)
        log.info("traced %s (%s) and %s (%s) at opset %d", raw_img.name, _mb(raw_img), raw_txt.name, _mb(raw_txt), opset)

    rng = np.random.default_rng(0)
    sample_px = rng.normal(0, 1, (1, 3, h, w)).astype(np.float32)
    sample_ids = np.asarray(tok.encode(["a photo of a red cup", "background"]), dtype=np.int64)
    opt_img, opt_txt = work / "image_fp32.onnx", work / "text_fp32.onnx"
    with progress.step("optimize"):
        lvl_img = onnx_export.optimize_for_target(raw_img, opt_img, opts.target, {IMAGE_INPUT: sample_px})
        lvl_txt = onnx_export.optimize_for_target(raw_txt, opt_txt, opts.target, {TEXT_INPUT: sample_ids})
        ref_img, ref_patch, ref_txt = _torch_reference(model, sample_px, sample_ids)
        got_img, got_patch = _ort_session(opt_img).run(None, {IMAGE_INPUT: sample_px})
        (got_txt,) = _ort_session(opt_txt).run(None, {TEXT_INPUT: sample_ids})
        parity = {"image_max_abs": float(np.abs(got_img - ref_img).max()),
                  "patch_max_abs": float(np.abs(got_patch - ref_patch).max()),
                  "text_max_abs": float(np.abs(got_txt - ref_txt).max())}
        extra["optimization"] = {"image": lvl_img, "text": lvl_txt}
        extra["fp32_parity_vs_torch"] = parity
        log.info("ORT optimization: image %s, text %s; fp32 max |d| vs torch: %s", lvl_img, lvl_txt,
                 ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
        if max(parity.values()) > 1e-3:
            raise ArtifactError(f"fp32 ONNX disagrees with the torch model (max |d| {max(parity.values()):.2e}); "
                                "this is an exporter bug, please report it with the model spec")

    image_out, text_out = tmp / IMAGE_FILE, tmp / TEXT_FILE
    encoder_precision = {"image": opts.precision, "text": "fp32"}
    if opts.precision == "fp32":
        shutil.copyfile(opt_img, image_out)
        shutil.copyfile(opt_txt, text_out)
    else:
        report_queries = list(opts.vocab or REPORT_QUERIES + tuple(opts.grounding.background_prompts))
        report_text = _torch_reference(model, sample_px, np.asarray(tok.encode(report_queries), dtype=np.int64))[2]
        if opts.precision == "int8":
            with progress.step("calibrate"):
                frames = calibration.calibration_frames(opts.calib, opts.calib_count)
                reader = calibration.frame_reader(frames, pre, IMAGE_INPUT)
                eval_frames = calibration.evaluation_frames(opts.calib, EVAL_FRAMES, frames)
                log.info("calibration: %d frames from %s, preprocessed to [1,3,%d,%d] (%s)",
                         len(reader), opts.calib, h, w, pre.mode)
            recipe = quantize.recipe_for_target(opts.target)
            with progress.step("quantize"):
                qdq_img = work / "image_int8_qdq.onnx"
                quantize.quantize_int8(raw_img, qdq_img, reader, recipe)
                shutil.copyfile(opt_txt, text_out)
                qdq = quantize.qdq_report(qdq_img)
                log.info("int8 QDQ image encoder %s: %d QuantizeLinear, %d DequantizeLinear, quantized %s",
                         _mb(qdq_img), qdq["QuantizeLinear"], qdq["DequantizeLinear"], qdq["quantized"])
                form = "QDQ"
                if profile["ort_level"] == "extended":  # CPU target: save ORT's fused int8 form
                    folded = quantize.fuse_for_cpu(qdq_img, image_out)
                    diff = onnx_export.max_abs_diff_on(qdq_img, image_out, {IMAGE_INPUT: reader.tensors[0]},
                                                       optimized=True)  # vs the QDQ graph as ORT runs it
                    if diff <= 1e-4:
                        form = f"onnxruntime-cpu (MatMulIntegerToFloat, {folded} biases folded)"
                        log.info("saved ORT CPU form: %s, max |d| vs QDQ %.1e", form, diff)
                    else:
                        log.warning("ORT CPU fusion moved outputs by %.2e; keeping the QDQ graph", diff)
                if form == "QDQ":
                    shutil.copyfile(qdq_img, image_out)
            extra["int8"] = {"recipe": recipe.to_dict(), "qdq": qdq, "form": form,
                             "text_encoder": "fp32 (not quantized)",
                             "calibration": {"source": opts.calib, "frames": len(reader),
                                             "preprocess": pre.to_dict()}}
        else:  # fp16
            eval_frames = calibration.evaluation_frames(opts.calib, EVAL_FRAMES, []) if opts.calib == "synthetic" \
                else calibration.calibration_frames(opts.calib, EVAL_FRAMES)
            with progress.step("fp16"):
                quantize.convert_fp16(opt_img, image_out)
                quantize.convert_fp16(opt_txt, text_out)
                encoder_precision["text"] = "fp16"
                extra["fp16"] = {"block_ops": list(quantize.FP16_BLOCK_OPS), "keep_io_types": True}
        with progress.step("compare"):
            tensors = calibration.preprocess_frames(eval_frames, pre)
            ref = _run_image(_ort_session(opt_img), tensors, not dynamic)
            test = _run_image(_ort_session(image_out), tensors, not dynamic)
            from vlmedge.export.verify import agreement

            rep = agreement(ref, test, report_text)
            extra[f"{opts.precision}_report"] = rep
            log.info("%s vs fp32 on %d frames: image cosine mean %.5f min %.5f, patch argmax agreement %.2f%%",
                     opts.precision, rep["frames"], rep["image_cosine_mean"], rep["image_cosine_min"],
                     100 * rep["patch_argmax_agreement"])
    extra["encoder_precision"] = encoder_precision

    vocab_name = None
    if opts.vocab:
        with progress.step("vocab"):
            (embeds,) = _ort_session(text_out).run(None, {TEXT_INPUT: np.asarray(tok.encode(list(opts.vocab)),
                                                                                 dtype=np.int64)})
            np.savez(tmp / VOCAB_FILE, queries=np.asarray(opts.vocab, dtype=np.str_),
                     embeds=embeds.astype(np.float32))
            vocab_name = VOCAB_FILE
    tok.save(tmp / TOKENIZER_FILE)

    info = dict(getattr(model, "source_info", None) or {})
    model_id = str(info.get("id") or (source if isinstance(source, (str, Path)) else "in-memory-model"))
    source_entry = {"id": model_id, "revision": info.get("revision"), "layout": info.get("layout", "in-memory"),
                    "weights_sha256": info.get("weights_sha256")}
    batch = "batch" if dynamic else 1
    img_entry = EncoderEntry(IMAGE_FILE, (TensorSpec(IMAGE_INPUT, "float32", (batch, 3, h, w)),),
                             (TensorSpec(IMAGE_OUTPUTS[0], "float32", (batch, d)),
                              TensorSpec(IMAGE_OUTPUTS[1], "float32", (batch, gh, gw, d))))
    txt_entry = EncoderEntry(TEXT_FILE, (TensorSpec(TEXT_INPUT, "int64", ("batch", ctx)),),
                             (TensorSpec(TEXT_OUTPUTS[0], "float32", ("batch", d)),))
    summary = {"format_version": 1, "vlmedge_version": __version__, "model_id": model_id, "source": source_entry,
               "precision": opts.precision, "target": opts.target, "dense_head": opts.dense,
               "image_size": [h, w], "patch_grid": [gh, gw], "embed_dim": d, "opset": opset,
               "preprocess": pre.to_dict()}
    for entry, role in ((img_entry, "image"), (txt_entry, "text")):
        path = tmp / entry.file
        _check_io(path, entry)
        onnx_export.set_metadata(path, {"vlmedge.manifest": summary, "vlmedge.role": role,
                                        "vlmedge.precision": encoder_precision[role]})
    files = {name: file_entry(tmp / name) for name in sorted(p.name for p in tmp.iterdir())}
    extra["sizes_bytes"] = {k: v["bytes"] for k, v in files.items()}
    log.info("artifacts: %s", ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in files.items()))
    return Manifest(
        model_id=model_id, source=source_entry, spec=model.spec, image_size=(h, w), patch_grid=(gh, gw),
        embed_dim=d, logit_scale=float(model.logit_scale.detach().exp()), dense_head=opts.dense,
        precision=opts.precision, target=opts.target, opset=opset, preprocess=pre, image_encoder=img_entry,
        text_encoder=txt_entry, tokenizer=TOKENIZER_FILE, context_length=ctx, text_embeddings=vocab_name,
        grounding=opts.grounding, files=files, vlmedge_version=__version__, extra=extra)


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


def summarize(manifest: Manifest, out: str | Path) -> str:
    """A short human summary of an export (the CLI prints it)."""
    m = manifest
    h, w = m.image_size
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in m.files.items())
    total = m.extra.get("timings_s", {}).get("total")
    lines = [f"exported {m.model_id} -> {out}  [{m.precision}, target {m.target}, dense {m.dense_head}, "
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
                         f"patch argmax agreement {100 * rep['patch_argmax_agreement']:.1f}%")
    return "\n".join(lines)
