"""Is the default CPU encoder path the fastest one? The image encoder of ViT-B/16 and ViT-B/32 (real shapes,
random weights) on every int8 CPU path we know of, timed side by side in ONE run. Not a unit test: heavy,
run it by hand (issue #17).

    python benchmarks/alternatives.py make --out /tmp/alt-bench            # bundles, NNCF IR, frames (~15 min)
    python benchmarks/alternatives.py compare --out /tmp/alt-bench \\
        --json benchmarks/results/alternatives-vitb16-vitb32-DATE.json --md benchmarks/results/alternatives-DATE.md

``--tiny`` (both subcommands) does the same with toy towers (width 64, 2 layers, 64x64 input, patch 16 and
32): the smoke test of the script itself, its numbers mean nothing (times below).

Variants (batch 1, ``--threads`` 2, the same random input of the real shape):
  ort-int8         ONNX Runtime on the int8 bundle's ``image_encoder.onnx``, spinning off (the project default)
  ort-int8-spin    the same, spinning on
  openvino-bundle  OpenVINO (``OpenVinoSession``: 1 stream, LATENCY, unpinned, f32 inference precision) on the
                   same int8 ONNX file
  openvino-nncf    OpenVINO, same settings, on an IR that NNCF quantized from the fp32 bundle's image encoder
                   (``nncf.quantize``, model_type TRANSFORMER, the preset of ``make --nncf-preset``)
  torch-pt2e       the fp32 torch image tower (``CLIP.encode_image``, what the export traces), quantized with
                   PT2E (``X86InductorQuantizer``, prepare_pt2e, calibration, convert_pt2e) and run under
                   ``torch.compile`` (inductor, freezing on), ``torch.set_num_threads``, inference_mode
  ort-fp32         (not in the default set) ONNX Runtime on the fp32 bundle, for scale
  openvino-bundle-onnx, openvino-bundle-tbb-static, openvino-bundle-tbb-auto
                   (not in the default set) openvino-bundle compiling the ONNX file itself instead of its cached IR
                   (the memory-hungry form), or with OpenVINO's TBB partitioner named
  ort-int8-block4   (not in the default set) ort-int8 with ONNX Runtime's ``session.dynamic_block_base`` 4
  openvino-bundle-bf16
                   (not in the default set) openvino-bundle with the float parts in bf16 (OpenVINO's own
                   default on CPUs with AMX; the runtime asks for f32)
The default path, ``--backend auto``, runs the faster of ort-int8 and openvino-bundle (spinning off).

Measurement: R interleaved rounds, the order of the variants rotating every round. In each round every
variant runs in a fresh child process (load the model, ``--warmup`` calls, ``--per-round`` timed calls);
torch-pt2e alone keeps ONE child per ViT for all rounds, because its graph is not cheaply saveable: it is
built (export, calibrate, convert, compile: timed and reported apart) before the first round and only its
timed calls run in turn with the others. Reported per variant: median and p10 over all timed calls, ratio
to the fastest median, load/build time, and the agreement with the fp32 ONNX model (ONNX Runtime, fp32
bundle) on 8 rendered scenes (``EVAL_SEED_OFFSET``, like the export's int8 report): the minimum cosine of
image embeddings and of patch embeddings, and the mean patch cosine, so that a fast-but-wrong variant shows.
Also recorded: CPU model and flags, versions, the load average before and after, the load average and the
share of the CPUs other processes used during each timed block.

Calibration everywhere: the 32 rendered scenes (seeds 0..31) ``export_bundle(calib="synthetic")`` calibrates
the int8 bundle with, preprocessed with the bundle's own preprocessing; NNCF and PT2E get the same tensors.

Time on a quiet 2-core x86 machine (an estimate, not measured at full size: from the int8 encode times in
benchmarks/results/backends-compare-*, ~65-90 ms B/16 and ~20-35 ms B/32, and the tiny smoke run):
``compare`` with the defaults (8 rounds x 10 timed calls) about 8-10 minutes for both ViTs: per round ~17 s
(B/16) and ~10 s (B/32), mostly process start and session load/compile, ~3.5 minutes in all; plus torch-pt2e's
build per ViT, ~1.5-3 minutes each (export, prepare, calibration on 32 frames in eager fp32 with histogram
observers, and a cold inductor compile of its C++ kernels: the compile cache is a fresh folder each run
unless ``--inductor-cache`` names one). ``make`` is separate: two fp32 and two int8 exports (with
calibration) plus two NNCF quantizations, about 10-15 minutes. ``--tiny``: ~30 s for make, ~1-2 minutes
for compare (nearly all of it torch-pt2e's cold compile; ``--variants`` without torch-pt2e: seconds).

nncf is not a project dependency: ``pip install nncf``. Without it ``make`` records openvino-nncf as skipped
(with that reason) and ``compare`` reports it so. PT2E lives in ``torch.ao.quantization`` in older torch and
in ``torchao`` (``pip install torchao``) since torch removed it; without either, or when inductor cannot
compile (it needs a C++ compiler), torch-pt2e is reported as skipped with the exact error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

log = logging.getLogger("alternatives")

HERE = Path(__file__).resolve().parent
MARK = "@@ "  # the child's protocol lines on stdout start with this (libraries print to stdout too)
CALIB_COUNT = 32  # what export_bundle(calib="synthetic") calibrates with by default
EVAL_FRAMES = 8
# ViT name -> (patch, tiny)
VITS = {"vitb16": (16, False), "vitb32": (32, False)}
TINY_VITS = {"tiny-p16": (16, True), "tiny-p32": (32, True)}
# name -> (runner, model file under the ViT folder, options, what it is)
VARIANTS = {
    "ort-int8": ("onnxruntime", "int8/image_encoder.onnx", {"spinning": False},
                 "ONNX Runtime, int8 bundle, spinning off (project default)"),
    "ort-int8-spin": ("onnxruntime", "int8/image_encoder.onnx", {"spinning": True},
                      "ONNX Runtime, int8 bundle, spinning on"),
    "ort-int8-block4": ("onnxruntime", "int8/image_encoder.onnx", {"spinning": False, "block_base": 4},
                        "ONNX Runtime, int8 bundle, spinning off, session.dynamic_block_base 4"),
    "openvino-bundle": ("openvino", "int8/image_encoder.onnx", {},
                        "OpenVINO on the int8 bundle's ONNX (its image_encoder_openvino.onnx when it has one)"),
    "openvino-nncf": ("openvino", "nncf/image_encoder.xml", {}, "OpenVINO on the NNCF int8 IR"),
    # OpenVINO's TBB work split named (openvino-bundle: the runtime's OPENVINO_PARTITIONER)
    "openvino-bundle-tbb-static": ("openvino", "int8/image_encoder.onnx", {"partitioner": "STATIC"},
                                   "OpenVINO on the int8 bundle's ONNX, TBB static partitioner"),
    "openvino-bundle-onnx": ("openvino", "int8/image_encoder.onnx", {"ir": False},
                             "OpenVINO compiling the int8 bundle's ONNX file itself (not its cached IR)"),
    "openvino-bundle-tbb-auto": ("openvino", "int8/image_encoder.onnx", {"partitioner": "AUTO"},
                                 "OpenVINO on the int8 bundle's ONNX, TBB auto partitioner"),
    # OpenVINO's own default on CPUs with AMX (bf16 float parts): faster there, below the runtime's agreement bar
    "openvino-bundle-bf16": ("openvino", "int8/image_encoder.onnx", {"precision": "bf16"},
                             "OpenVINO on the int8 bundle's ONNX, float parts in bf16 (not the runtime's f32)"),
    "torch-pt2e": ("torch", "model.pt", {}, "torch PT2E X86InductorQuantizer + torch.compile (inductor)"),
    "ort-fp32": ("onnxruntime", "fp32/image_encoder.onnx", {"spinning": False}, "ONNX Runtime, fp32 bundle"),
}
DEFAULT_VARIANTS = ("ort-int8", "ort-int8-spin", "openvino-bundle", "openvino-nncf", "torch-pt2e")
DEFAULT_PATH = ("ort-int8", "openvino-bundle")  # what --backend auto chooses between (spinning off)
# the other int8 paths the default must beat; spinning on (a setting the project turned off for the busy case,
# see OrtSession) and fp32 are reported beside the verdict, not in it
ALTERNATIVES = ("openvino-nncf", "torch-pt2e")
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                         "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16")
NNCF_HINT = "pip install nncf"
PT2E_HINT = "pip install torchao (PT2E moved there from torch.ao.quantization)"


# ---------------------------------------------------------------------------------------------- models
def build_model(patch: int, tiny: bool, seed: int = 0):
    """The real-shaped random CLIP of ``contention.build_model(patch, 1)`` (ViT-B image tower, tiny text tower),
    or with ``tiny`` a toy one (vision width 64, 2 layers, 2 heads, 64x64 input) initialized the same way."""
    import torch

    if not tiny:
        sys.path.insert(0, str(HERE))
        from contention import build_model as real

        return real(patch, 1, seed)
    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

    torch.manual_seed(seed)
    model = CLIP(ClipSpec(VisionSpec((64, 64), patch, 64, 2, 2), TextSpec(64, 1, 1), 32)).eval()
    with torch.no_grad():
        model.visual.pos_embed.normal_(0, 0.02)
        model.visual.class_embedding.normal_(0, 0.02)
    return model


def _image_tower(model):
    """``CLIP.encode_image`` as a module: the forward the export traces into ``image_encoder.onnx``."""
    from torch import nn

    class ImageTower(nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return self.clip.encode_image(pixel_values)

    return ImageTower(model).eval()


def _split(outputs) -> tuple[np.ndarray, np.ndarray]:
    """(image_embeds [B,D], patch_embeds [B,h,w,D]) from a backend's outputs, by rank (order-proof)."""
    arrays = [np.asarray(o, dtype=np.float32) for o in outputs]
    image = next(a for a in arrays if a.ndim == 2)
    patches = next(a for a in arrays if a.ndim == 4)
    return image, patches


# the texts of the patch-label agreement (as benchmarks/bench_ort_fusion.py): a patch agrees when its best text is
# the same as the fp32 model's; with random weights near-ties make this a harsh measure
QUERIES = ("a red cup", "a blue ball", "a green block", "a yellow box", "a bottle", "a hand", "background",
           "a table", "a wall", "the floor", "a plate", "a spoon", "a white mug", "a black phone", "a book",
           "a shadow")


def text_embeddings(fp32_bundle: Path) -> np.ndarray:
    """The fp32 bundle's text encoder on QUERIES (ONNX Runtime): the labels every variant's patches get."""
    import onnxruntime as ort

    from vlmedge.tokenizer import ClipTokenizer

    ids = np.asarray(ClipTokenizer.default().encode(list(QUERIES)), dtype=np.int64)
    s = ort.InferenceSession(str(fp32_bundle / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, {"input_ids": ids})[0]


def agreement(outs: list, ref_image: np.ndarray, ref_patches: np.ndarray, texts: np.ndarray | None = None) -> dict:
    """Cosine of each frame's image embedding and each patch embedding against the fp32 reference; with ``texts``,
    the share of patches whose best text is the reference's (patch agreement)."""
    image = np.concatenate([_split(o)[0] for o in outs])
    patches = np.concatenate([_split(o)[1] for o in outs])

    def cos(a, b):
        a = a.reshape(-1, a.shape[-1]).astype(np.float64)
        b = b.reshape(-1, b.shape[-1]).astype(np.float64)
        return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)

    ci, cp = cos(image, ref_image), cos(patches, ref_patches)
    out = {"image_cos_min": round(float(ci.min()), 6), "patch_cos_min": round(float(cp.min()), 6),
           "patch_cos_mean": round(float(cp.mean()), 6), "frames": len(outs)}
    if texts is not None:
        same = (patches @ texts.T).argmax(-1) == (ref_patches @ texts.T).argmax(-1)
        out["patch_agreement"] = round(float(same.mean()), 5)
        out["queries"] = len(texts)
    return out


# ------------------------------------------------------------------------------------------------ make
def _nncf_ir(fp32_onnx: Path, calib: np.ndarray, target: Path, preset: str) -> dict:
    """NNCF post-training int8 of the fp32 image encoder, saved as an IR (float weights not compressed)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    t = time.perf_counter()
    model = core.read_model(str(fp32_onnx))
    quantized = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                              preset=getattr(nncf.QuantizationPreset, preset.upper()),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    seconds = time.perf_counter() - t
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    fq = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    return {"status": "ok", "file": str(target), "nncf": nncf.__version__, "openvino": ov.get_version(),
            "preset": preset, "model_type": "TRANSFORMER", "calibration_frames": len(calib),
            "fake_quantize_ops": fq, "quantize_s": round(seconds, 1),
            "source": f"{fp32_onnx} (read by openvino.Core().read_model)"}


def make(out: Path, tiny: bool, preset: str, force: bool) -> dict:
    """Per ViT: fp32 and int8 bundles, the torch weights, calibration/evaluation frames, the fp32 reference
    outputs and the NNCF IR; a summary in ``out/make.json`` (merged with what is there)."""
    import onnxruntime as ort
    import torch

    from vlmedge.export.bundle import export_bundle
    from vlmedge.export.calibration import EVAL_SEED_OFFSET, frames_synthetic, preprocess_frames
    from vlmedge.manifest import open_bundle

    torch.set_num_threads(os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "make.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name, (patch, is_tiny) in (TINY_VITS if tiny else VITS).items():
        d = out / name
        d.mkdir(exist_ok=True)
        info: dict = {"patch": patch, "tiny": is_tiny}
        model = build_model(patch, is_tiny)
        torch.save(model.state_dict(), d / "model.pt")
        for precision in ("fp32", "int8"):
            target = d / precision
            if (target / "manifest.json").is_file() and not force:
                log.info("%s exists, kept", target)
                continue
            t = time.perf_counter()
            # int8 exactly as benchmarks/contention.py and bench_export.py export it for the CPU
            kw = {"calib": "synthetic", "calib_count": CALIB_COUNT} if precision == "int8" else {}
            export_bundle(model, target, precision=precision, force=True, **kw)
            info[f"{precision}_export_s"] = round(time.perf_counter() - t, 1)
            log.info("%s written in %.0f s", target, time.perf_counter() - t)
        m = open_bundle(d / "int8", verify=False)
        calib = np.concatenate(preprocess_frames(frames_synthetic(CALIB_COUNT), m.preprocess))
        evals = np.concatenate(preprocess_frames(frames_synthetic(EVAL_FRAMES, seed=EVAL_SEED_OFFSET), m.preprocess))
        np.savez(d / "frames.npz", calib=calib, eval=evals, input_shape=np.array(calib.shape[1:]))
        # the reference every variant is compared with: the fp32 ONNX model as ONNX Runtime runs it
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(str(d / "fp32" / "image_encoder.onnx"), so, providers=["CPUExecutionProvider"])
        ref = [s.run(None, {s.get_inputs()[0].name: evals[i:i + 1]}) for i in range(len(evals))]
        ref_image = np.concatenate([_split(o)[0] for o in ref])
        ref_patches = np.concatenate([_split(o)[1] for o in ref])
        np.savez(d / "reference.npz", image=ref_image, patches=ref_patches)
        with torch.no_grad():
            tower = _image_tower(model)
            eager = [[t.numpy() for t in tower(torch.from_numpy(evals[i:i + 1]))] for i in range(len(evals))]
        info["torch_fp32_vs_onnx_fp32"] = agreement(eager, ref_image, ref_patches)  # the PT2E starting point
        try:
            import nncf  # noqa: F401
        except ImportError as e:
            info["nncf"] = {"status": "skipped", "reason": f"{e} ({NNCF_HINT})"}
            log.warning("%s: NNCF IR skipped: %s (%s)", name, e, NNCF_HINT)
        else:
            xml = d / "nncf" / "image_encoder.xml"
            if xml.is_file() and not force and summary.get(name, {}).get("nncf", {}).get("status") == "ok":
                info["nncf"] = summary[name]["nncf"]
                log.info("%s exists, kept", xml)
            else:
                info["nncf"] = _nncf_ir(d / "fp32" / "image_encoder.onnx", calib, xml, preset)
                log.info("%s: NNCF IR written in %.0f s", name, info["nncf"]["quantize_s"])
        summary[name] = {**summary.get(name, {}), **info}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ------------------------------------------------------------------------------------------------ child
def _pt2e_api():
    """(prepare_pt2e, convert_pt2e, X86InductorQuantizer, default config function, where they came from)."""
    try:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torch.ao.quantization.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
        source = "torch.ao.quantization"
    except ImportError as torch_error:
        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )
        except ImportError as e:
            raise ImportError(f"{torch_error}; and {e} ({PT2E_HINT})") from e
        import torchao

        source = f"torchao {torchao.__version__} (torch.ao.quantization has none: {torch_error})"
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config, source


def _open_torch_pt2e(vit: Path, meta: dict, threads: int, calib: np.ndarray, build: dict):
    """The PT2E int8 image tower compiled by inductor; a ``run(x) -> [outputs]`` function. Fills ``build``."""
    import torch

    torch.set_num_threads(threads)
    prepare_pt2e, convert_pt2e, quantizer_cls, default_config, source = _pt2e_api()
    build.update({"torch": torch.__version__, "pt2e": source, "threads": torch.get_num_threads()})
    model = build_model(meta["patch"], meta["tiny"])
    model.load_state_dict(torch.load(vit / "model.pt", weights_only=True))
    t = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(_image_tower(model), (torch.from_numpy(calib[:1]),)).module()
    build["export_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    quantizer = quantizer_cls()
    quantizer.set_global(default_config())
    prepared = prepare_pt2e(exported, quantizer)
    build["prepare_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
    build["calibrate_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    converted = convert_pt2e(prepared)
    build["convert_s"] = round(time.perf_counter() - t, 2)
    # proof that the graph is quantized (0 would mean the quantizer matched nothing: an fp32 model timed)
    build["quantize_nodes"] = sum(1 for n in converted.graph.nodes if "quantize_per" in str(n.target))
    # freezing: constant-folds the int8 weights into oneDNN's prepacked layout (the PT2E x86 tutorial's setting)
    torch._inductor.config.freezing = True
    compiled = torch.compile(converted, backend="inductor")

    def run(x: np.ndarray) -> list[np.ndarray]:
        # the input made inside inference_mode every time: a tensor made outside it has another dispatch key
        # set, which fails dynamo's guard and recompiles (seconds) on the first call of the other kind
        with torch.inference_mode():
            return [o.numpy() for o in compiled(torch.from_numpy(x))]

    t = time.perf_counter()
    run(calib[:1])  # compiles
    build["compile_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    run(calib[1:2])
    build["second_call_ms"] = round((time.perf_counter() - t) * 1e3, 2)  # seconds here would mean a recompile
    build["dynamo_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    build["inductor_cache"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "(default)")
    try:  # the compile worker processes are done: none lingers beside the timed calls
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()
    except ImportError:
        pass
    return run


def _openvino_int8_gemms(session) -> str | None:
    """"int8/all" matrix-product and convolution layers of what OpenVINO compiled (its runtime model's
    ``layerType`` and ``runtimePrecision``): the share it really runs in int8."""
    try:
        int8 = total = 0
        for op in session._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in ("FullyConnected", "MatMul", "Convolution"):
                total += 1
                prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
                int8 += prec.lower() in ("i8", "u8")
        return f"{int8}/{total}"
    except Exception:  # an introspection detail, not worth failing the variant for
        return None


def _open(spec: dict, build: dict):
    runner, rel, opts, _ = VARIANTS[spec["variant"]]
    vit, threads = Path(spec["vit_dir"]), spec["threads"]
    if runner == "torch":
        frames = np.load(vit / "frames.npz")
        return _open_torch_pt2e(vit, spec["meta"], threads, frames["calib"], build)
    path = vit / rel
    if runner == "openvino" and rel == "int8/image_encoder.onnx":  # the file the runtime's OpenVINO runs: the
        from vlmedge.manifest import read_manifest  # bundle's own QDQ graph for it when it has one

        path = vit / "int8" / read_manifest(vit / "int8").image_file("openvino")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (run make first)")
    from vlmedge.runtime.grounding.backends import OpenVinoSession, OrtSession

    if runner == "openvino":
        # the runtime's own settings (1 stream, LATENCY, unpinned, f32, its partitioner) unless the variant names one
        s = OpenVinoSession(path, threads=threads, **opts)
        build.update({"openvino": s.version, "config": {k: str(v) for k, v in s.config.items()},
                      "compiled_from": str(s.compiled_from or path),
                      "int8_gemms": _openvino_int8_gemms(s)})
    else:
        s = OrtSession(path, threads=threads, **opts)
        build.update({"onnxruntime": s.version, **opts})
    return s.run


def _send(msg: dict) -> None:
    sys.stdout.write(MARK + json.dumps(msg) + "\n")
    sys.stdout.flush()


def child(spec: dict) -> int:
    """One variant in this process: load/build, optionally the accuracy check, then serve timing commands
    from stdin (``{"op": "time", "warmup": W, "n": N}`` or ``{"op": "quit"}``)."""
    from vlmedge.runtime.grounding.backends import _cpu_ticks, others_cpu_share

    build: dict = {}
    try:
        t = time.perf_counter()
        run = _open(spec, build)
        build["load_s"] = round(time.perf_counter() - t, 2)
        msg: dict = {"ok": True, "build": build}
        if spec.get("accuracy"):
            vit = Path(spec["vit_dir"])
            evals, ref = np.load(vit / "frames.npz")["eval"], np.load(vit / "reference.npz")
            msg["accuracy"] = agreement([run(evals[i:i + 1]) for i in range(len(evals))], ref["image"],
                                        ref["patches"], text_embeddings(vit / "fp32"))
    except Exception as e:  # any failure to build is a result: reported, the variant skipped
        _send({"ok": False, "error": f"{type(e).__name__}: {e}"[:6000], "build": build,
               "traceback": traceback.format_exc()[-6000:]})
        return 1
    _send(msg)
    x = np.random.default_rng(0).normal(0, 1, tuple(spec["input_shape"])).astype(np.float32)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] != "time":
            break
        for _ in range(cmd["warmup"]):
            run(x)
        times = []
        ticks, t0 = _cpu_ticks(), time.perf_counter()
        for _ in range(cmd["n"]):
            t = time.perf_counter()
            run(x)
            times.append((time.perf_counter() - t) * 1e3)
        _send({"times_ms": [round(v, 3) for v in times], "loadavg_1min": round(os.getloadavg()[0], 2),
               "others_cpu": others_cpu_share(ticks, _cpu_ticks(), time.perf_counter() - t0)})
    return 0


class Child:
    """A child process running one variant; its protocol lines are read by a thread (timeouts, no deadlock)."""

    def __init__(self, spec: dict, env: dict | None = None):
        self.err = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "child", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     bufsize=1, env={**os.environ, **(env or {})})
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(json.loads(line[len(MARK):]))
        self.lines.put(None)

    def stderr_tail(self, chars: int = 3000) -> str:
        self.err.seek(0)
        return self.err.read()[-chars:].strip()

    def recv(self, timeout: float) -> dict:
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            return {"ok": False, "error": f"no answer within {timeout:.0f} s", "stderr": self.stderr_tail()}
        if msg is None:
            self.proc.wait()
            return {"ok": False, "error": f"the child exited ({self.proc.returncode}) without an answer",
                    "stderr": self.stderr_tail()}
        return msg

    def send(self, cmd: dict) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.err.close()


# --------------------------------------------------------------------------------------------- compare
def _summary(times: list[float]) -> dict:
    return {"median_ms": round(float(np.median(times)), 2), "p10_ms": round(float(np.percentile(times, 10)), 2),
            "n": len(times)}


def compare_vit(name: str, vit_dir: Path, meta: dict, variants: list[str], args) -> dict:
    """All variants on one ViT, interleaved rounds (see the module docstring)."""
    shape = [1, *np.load(vit_dir / "frames.npz")["input_shape"].tolist()]
    res: dict = {v: {"what": VARIANTS[v][3], "status": "pending", "rounds": []} for v in variants}
    if "openvino-nncf" in res and meta.get("nncf", {}).get("status") != "ok":
        res["openvino-nncf"].update(status="skipped", reason=meta.get("nncf", {}).get("reason", "make wrote no IR"))
    cache = None
    persistent: dict[str, Child] = {}

    def spec(v: str, accuracy: bool) -> dict:
        return {"variant": v, "vit_dir": str(vit_dir), "meta": meta, "threads": args.threads,
                "input_shape": shape, "accuracy": accuracy}

    def failed(v: str, msg: dict, when: str) -> None:
        res[v].update(status="skipped" if when == "build" else "failed", reason=msg.get("error"),
                      **{k: msg[k] for k in ("traceback", "stderr", "build") if k in msg})
        log.warning("%s %s: %s at %s: %s", name, v, res[v]["status"], when, msg.get("error"))

    def ready(v: str, c: Child, timeout: float) -> bool:
        msg = c.recv(timeout)
        if not msg.get("ok"):
            c.close()
            failed(v, msg, "build")
            return False
        res[v].setdefault("builds", []).append(msg["build"])
        if "accuracy" in msg:
            res[v]["accuracy"] = msg["accuracy"]
        return True

    try:
        if "torch-pt2e" in res:
            env = {}
            if args.inductor_cache:
                env["TORCHINDUCTOR_CACHE_DIR"] = str(args.inductor_cache)
            else:  # cold compile, as a deployment's first start sees it
                cache = tempfile.mkdtemp(prefix="alt-inductor-")
                env["TORCHINDUCTOR_CACHE_DIR"] = cache
            t = time.perf_counter()
            c = Child(spec("torch-pt2e", True), env)
            if ready("torch-pt2e", c, 3600):
                persistent["torch-pt2e"] = c
                log.info("%s torch-pt2e built in %.0f s: %s", name, time.perf_counter() - t,
                         res["torch-pt2e"]["builds"][0])
        for r in range(args.rounds):
            active = [v for v in variants if res[v]["status"] in ("pending", "ok")]
            k = r % max(len(active), 1)
            for v in active[k:] + active[:k]:  # rotate: no variant always first or always after another
                c = persistent.get(v)
                if c is None:
                    c = Child(spec(v, accuracy="accuracy" not in res[v]))
                    if not ready(v, c, 900):
                        continue
                c.send({"op": "time", "warmup": args.warmup, "n": args.per_round})
                msg = c.recv(900)
                if v not in persistent:
                    c.close()
                if "times_ms" not in msg:
                    failed(v, msg, f"round {r + 1}")
                    continue
                res[v]["status"] = "ok"
                res[v]["rounds"].append({"round": r + 1, **msg})
                log.info("%s round %d %-16s median %.2f ms (load %.2f, others %s)", name, r + 1, v,
                         float(np.median(msg["times_ms"])), msg["loadavg_1min"], msg["others_cpu"])
    finally:
        for c in persistent.values():
            c.close()
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    for e in res.values():
        if e["rounds"]:
            e.update(_summary([t for rd in e["rounds"] for t in rd["times_ms"]]))
            e["round_medians_ms"] = [round(float(np.median(rd["times_ms"])), 2) for rd in e["rounds"]]
    timed = {v: e["median_ms"] for v, e in res.items() if "median_ms" in e}
    if timed:
        fastest = min(timed.values())
        for v, ms in timed.items():
            res[v]["x_fastest"] = round(ms / fastest, 3)
    return {"variants": res, "verdict": verdict(res)}


def verdict(res: dict) -> dict:
    """The default path (the faster of its two backends here) against the fastest of ALTERNATIVES."""
    timed = {v: e["median_ms"] for v, e in res.items() if "median_ms" in e}
    default = {v: timed[v] for v in DEFAULT_PATH if v in timed}
    others = {v: ms for v, ms in timed.items() if v in ALTERNATIVES}
    if not default or not others:
        missing = [f"no {what} timed (any of {', '.join(names)})" for what, names, got in
                   (("default-path variant", DEFAULT_PATH, default), ("alternative", ALTERNATIVES, others)) if not got]
        untimed = sorted(v for v in res if v not in timed)
        return {"note": "nothing to compare: " + "; ".join(missing)
                        + (f"; asked for but not timed: {', '.join(untimed)}" if untimed else "")}
    d_name, d_ms = min(default.items(), key=lambda kv: kv[1])
    o_name, o_ms = min(others.items(), key=lambda kv: kv[1])
    out = {"default": d_name, "default_ms": d_ms, "best_alternative": o_name, "best_alternative_ms": o_ms,
           "alternative_over_default": round(o_ms / d_ms, 3), "default_is_fastest": d_ms <= o_ms,
           "not_timed": sorted(v for v in res if v not in timed)}
    if "ort-int8-spin" in timed:
        out["spinning_on_over_default"] = round(timed["ort-int8-spin"] / d_ms, 3)
    return {**out,
            "note": "auto runs the faster of ort-int8 and openvino-bundle (it keeps ONNX Runtime unless OpenVINO "
                    "wins by more than 3%, and within its memory budget: see runtime/grounding/backends.py)"}


# ---------------------------------------------------------------------------------------------- report
def cpu_info() -> dict:
    from vlmedge.runtime.grounding.backends import cpu_model

    name, flags = "", []
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    return {"model": name or platform.processor(), "key": cpu_model(), "cpus": os.cpu_count(),
            "flags_of_interest": [f for f in CPU_FLAGS_OF_INTEREST if f in flags], "flags": sorted(flags),
            "platform": platform.platform()}


def versions() -> dict:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "onnxruntime", "openvino", "nncf", "torch", "torchao"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def table(results: dict) -> list[list[str]]:
    rows = [["ViT", "variant", "median ms", "p10 ms", "x fastest", "image cos min", "patch cos min",
             "patch cos mean", "patch agree", "load/build s", "int8", "status"]]
    for vit, r in results.items():
        for v, e in r["variants"].items():
            acc = e.get("accuracy", {})
            b = (e.get("builds") or [{}])[0]
            build = (f"{b['load_s']:.1f}" if v != "torch-pt2e" else
                     f"{b['load_s']:.1f} (compile {b['compile_s']:.1f})") if "load_s" in b else "-"
            status = e["status"] if e["status"] == "ok" else f"{e['status']}: {str(e.get('reason'))[:90]}"
            # what really runs in int8: OpenVINO's int8/all GEMM layers, PT2E's quantize nodes
            int8 = b.get("int8_gemms") or (f"{b['quantize_nodes']} q" if "quantize_nodes" in b else "-")
            rows.append([vit, v, *(f"{e[k]:.2f}" if k in e else "-" for k in ("median_ms", "p10_ms")),
                         f"{e['x_fastest']:.2f}" if "x_fastest" in e else "-",
                         *(f"{acc[k]:.4f}" if k in acc else "-" for k in ("image_cos_min", "patch_cos_min",
                                                                            "patch_cos_mean")),
                         f"{100 * acc['patch_agreement']:.2f}%" if "patch_agreement" in acc else "-",
                         build, int8, status])
    return rows


def print_table(results: dict) -> None:
    rows = table(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              + "  " + r[-1])
    for vit, r in results.items():
        v = r["verdict"]
        if "default" in v:
            print(f"{vit}: default path {v['default']} {v['default_ms']:.2f} ms, fastest alternative "
                  f"{v['best_alternative']} {v['best_alternative_ms']:.2f} ms (x{v['alternative_over_default']}): "
                  + ("the default is at least as fast" if v["default_is_fastest"] else "an ALTERNATIVE IS FASTER")
                  + (f"; ort-int8-spin x{v['spinning_on_over_default']}" if "spinning_on_over_default" in v else "")
                  + (f"; not timed: {', '.join(v['not_timed'])}" if v["not_timed"] else ""))
        else:
            print(f"{vit}: {v['note']}")


def markdown(report: dict) -> str:
    rows = table(report["results"])
    lines = [f"# Image encoder: the default CPU path against the alternatives ({report['date']})", "",
             report["what"], "",
             f"CPU: {report['machine']['cpu']['model']} ({report['machine']['cpu']['cpus']} CPUs; "
             f"{' '.join(report['machine']['cpu']['flags_of_interest'])}); versions: "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + "; load average before "
             f"{report['loadavg_before']}, after {report['loadavg_after']}; {report['rounds']} rounds x "
             f"{report['per_round']} calls per variant.", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    lines.append("")
    for vit, r in report["results"].items():
        v = r["verdict"]
        if "default" in v:
            lines.append(f"- {vit}: default {v['default']} {v['default_ms']} ms; fastest alternative "
                         f"{v['best_alternative']} {v['best_alternative_ms']} ms (x{v['alternative_over_default']})"
                         + (f"; not timed: {', '.join(v['not_timed'])}" if v["not_timed"] else ""))
    return "\n".join(lines) + "\n"


def compare(args) -> dict:
    summary_path = args.out / "make.json"
    if not summary_path.is_file():
        raise SystemExit(f"{summary_path} is missing: run `python {Path(__file__).name} make --out {args.out}"
                         f"{' --tiny' if args.tiny else ''}` first")
    made = json.loads(summary_path.read_text())
    names = list(TINY_VITS if args.tiny else VITS)
    missing = [n for n in names if n not in made]
    if missing:
        raise SystemExit(f"{summary_path} has no {', '.join(missing)}: run make{' --tiny' if args.tiny else ''}")
    t0, before = time.time(), [round(v, 2) for v in os.getloadavg()]
    results = {n: compare_vit(n, args.out / n, made[n], args.variants, args) for n in names}
    return {"what": "image encoder, batch 1, {t} threads, random input of the real shape; a fresh child process per "
                    "variant and round (torch-pt2e: one child per ViT, built before the rounds), {w} warm-up then "
                    "{n} timed calls per round, rounds interleaved with a rotating order; accuracy against the fp32 "
                    "ONNX model (ONNX Runtime) on {e} rendered scenes, patch agreement over 16 texts of the fp32 "
                    "bundle's text encoder".format(t=args.threads, w=args.warmup,
                                                                             n=args.per_round, e=EVAL_FRAMES),
            "models": "tiny towers (smoke test, numbers mean nothing)" if args.tiny else
                      "ViT-B/16 and ViT-B/32 image towers (width 768, 12 layers, 224x224), random weights",
            "date": datetime.date.today().isoformat(), "machine": {"cpu": cpu_info()}, "versions": versions(),
            "threads": args.threads, "rounds": args.rounds, "per_round": args.per_round, "warmup": args.warmup,
            "loadavg_before": before, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "seconds": round(time.time() - t0, 1), "make": made, "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="bundles (fp32, int8), NNCF IR, frames and fp32 reference outputs")
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=False, help="toy towers (smoke test)")
    mk.add_argument("--nncf-preset", choices=("mixed", "performance"), default="mixed",
                    help="NNCF preset: mixed = asymmetric activations, symmetric weights (NNCF's choice for "
                         "transformers); performance = symmetric both (default mixed)")
    mk.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                    help="redo what already exists")
    cp = sub.add_parser("compare", help="time every variant, interleaved, and compare accuracy")
    cp.add_argument("--out", type=Path, required=True, help="the folder make wrote")
    cp.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=False,
                    help="the toy towers of make --tiny")
    cp.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS))
    cp.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    cp.add_argument("--per-round", type=int, default=10, help="timed calls per variant and round (default 10)")
    cp.add_argument("--warmup", type=int, default=3, help="untimed calls before them (default 3)")
    cp.add_argument("--threads", type=int, default=2)
    cp.add_argument("--inductor-cache", type=Path, default=None,
                    help="inductor's compile cache folder (default: a fresh one, so compile_s is a cold compile)")
    cp.add_argument("--json", type=Path, default=None, help="write everything here")
    cp.add_argument("--md", type=Path, default=None, help="write the table as markdown here")
    ch = sub.add_parser("child")
    ch.add_argument("spec")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.cmd == "child":
        return child(json.loads(args.spec))
    if args.cmd == "make":
        summary = make(args.out, args.tiny, args.nncf_preset, args.force)
        for name, info in summary.items():
            print(f"{name}: {args.out / name}; NNCF {info['nncf']['status']}"
                  f"{': ' + info['nncf']['reason'] if info['nncf']['status'] != 'ok' else ''}; torch fp32 vs "
                  f"ONNX fp32 {info['torch_fp32_vs_onnx_fp32']}")
        return 0
    for name, value in (("rounds", args.rounds), ("per-round", args.per_round), ("threads", args.threads)):
        if value < 1:
            ap.error(f"--{name} must be >= 1, got {value}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    report = compare(args)
    print()
    print_table(report["results"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.md:
        args.md.write_text(markdown(report), encoding="utf-8")
        print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
