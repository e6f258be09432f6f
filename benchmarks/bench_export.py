"""Image-encoder speed on this CPU: PyTorch eager fp32 vs ONNX Runtime fp32 / int8 static QDQ /
quantize_dynamic, on a ViT-B/16-shaped CLIP with random weights (vision width 768, 12 layers,
224x224; tiny text tower). Not a unit test: heavy, run it by hand.

    python benchmarks/bench_export.py [--layers 12] [--runs 20] [--json bench_export.json]

All variants are timed in interleaved rounds (batch 1, median of per-call times) so that load
from other processes on a shared machine hits them alike. In every round each ONNX Runtime
variant gets a fresh session that is released after its runs: only one thread pool exists at a
time, so spinning worker threads of idle sessions do not steal the cores (several live spinning
sessions in one process slowed every variant down).

ONNX Runtime is timed twice: with its default thread spinning (``--spinning on``: worker threads
busy-wait between operators, as PyTorch's OpenMP threads do; the isolated-encoder figure) and
without (``off``: ``vlmedge run --no-ort-spinning``, for boards where other busy processes need
those cycles; ``vlmedge run`` spins by default, only while an encode runs). Accuracy vs the fp32
ONNX (image cosine, patch argmax agreement) is measured on held-out synthetic scenes.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_export")


def build_model(layers: int, seed: int = 0):
    import torch

    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

    torch.manual_seed(seed)
    spec = ClipSpec(VisionSpec((224, 224), 16, 768, layers, 12), TextSpec(64, 1, 1), 512)
    model = CLIP(spec).eval()
    with torch.no_grad():
        model.visual.pos_embed.normal_(0, 0.02)
        model.visual.class_embedding.normal_(0, 0.02)
    return model


def session(path: Path, threads: int, spinning: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6,
                    help="interleaved rounds (each times every variant --per-round times)")
    ap.add_argument("--per-round", type=int, default=5, help="timed calls per variant and round")
    ap.add_argument("--spinning", choices=("on", "off", "both"), default="both",
                    help="ONNX Runtime worker-thread spinning (default: time both)")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts for torch and ORT, e.g. 1,2 (default: physical cores)")
    ap.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                    help="also time other int8 forms/recipes (plain QDQ file, S8S8 symmetric, Q/DQ on outputs, "
                         "Conv quantized)")
    ap.add_argument("--json", default="bench_export.json", help="where to write the results")
    ap.add_argument("--workdir", default=None, help="keep the bundles here (default: a temporary directory)")
    return ap.parse_args(argv)


def export_variants(model, args: argparse.Namespace, work: Path) -> tuple[dict, dict, object, object]:
    """Every image encoder to time: the fp32 and int8 bundles, ORT's plain quantize_dynamic and the int8
    recipe variants. Returns (name -> ONNX path, export seconds per bundle, fp32 manifest, int8 manifest)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vlmedge.export import calibration, quantize
    from vlmedge.export.bundle import export_bundle
    from vlmedge.export.onnx_export import export_image_encoder

    export_s = {}
    t = time.perf_counter()
    fp32 = export_bundle(model, work / "fp32", force=True)
    export_s["fp32"] = time.perf_counter() - t
    t = time.perf_counter()
    int8 = export_bundle(model, work / "int8", precision="int8", calib="synthetic", calib_count=args.calib_count,
                         force=True)
    export_s["int8"] = time.perf_counter() - t

    # Plain quantize_dynamic of the same (unoptimized-for-quantization) fp32 graph, ORT's defaults
    raw = work / "image_raw.onnx"
    export_image_encoder(model, raw)
    dyn = work / "image_dynamic.onnx"
    t = time.perf_counter()
    quantize_dynamic(str(raw), str(dyn), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    export_s["dynamic"] = time.perf_counter() - t

    paths = {"ort_fp32": work / "fp32" / "image_encoder.onnx", "ort_int8_qdq": work / "int8" / "image_encoder.onnx",
             "ort_int8_dynamic": dyn}
    reader = calibration.frame_reader(calibration.calibration_frames("synthetic", args.calib_count), fp32.preprocess)
    # the same recipe plus ORT's MultiHeadAttention fusion (opt-in)
    recipes = {"ort_int8_qdq_mha": quantize.Int8Recipe(fuse_attention=True)}
    if args.variants:
        recipes.update({
            "ort_int8_qdq_unfused": quantize.Int8Recipe(),  # same recipe, QDQ left to ORT at load
            "ort_int8_s8s8_sym": quantize.Int8Recipe(activation="int8", symmetric_activations=True,
                                                     exact_pixels=False),
            "ort_int8_qdq_outputs": quantize.Int8Recipe(quantize_outputs=True),
            "ort_int8_conv_float": quantize.Int8Recipe(conv_as_matmul=False, exact_pixels=False),
            "ort_int8_qdq_conv": quantize.Int8Recipe(conv_as_matmul=False, exact_pixels=False,
                                                     op_types=("MatMul", "Gemm", "Conv"))})
    for name, recipe in recipes.items():
        reader.rewind()
        out = work / f"{name}.onnx"
        quantize.quantize_int8(raw, out, reader, recipe, preprocess=fp32.preprocess)
        paths[name] = out
    return paths, export_s, fp32, int8


def time_variants(model, paths: dict, x: np.ndarray, thread_counts: list[int], spins: list[bool],
                  args: argparse.Namespace) -> tuple[dict, dict]:
    """Median and 10th percentile ms per variant, per thread count and spinning mode, in interleaved rounds."""
    import torch

    xt = torch.from_numpy(x)
    med, p10 = {}, {}

    def eager():
        with torch.no_grad():
            model.encode_image(xt)

    for th in thread_counts:
        torch.set_num_threads(th)
        for spin in spins:
            key = f"{th}t-spin-{'on' if spin else 'off'}"
            times = {k: [] for k in ["torch_eager_fp32", *paths]}
            eager()
            for _ in range(args.rounds):
                for k in times:
                    if k == "torch_eager_fp32":
                        fn = eager
                    else:
                        sess = session(paths[k], th, spin)
                        fn = functools.partial(sess.run, None, {"pixel_values": x})
                        fn()
                        fn()
                    for _ in range(args.per_round):
                        t = time.perf_counter()
                        fn()
                        times[k].append((time.perf_counter() - t) * 1e3)
                    fn = sess = None  # release the session (and its thread pool) before the next variant
            med[key] = {k: float(np.median(v)) for k, v in times.items()}
            p10[key] = {k: float(np.percentile(v, 10)) for k, v in times.items()}
            log.info("%s: %s", key, {k: round(v, 1) for k, v in med[key].items()})
    return med, p10


def accuracy(model, paths: dict, eval_px: list[np.ndarray], threads: int) -> dict:
    """Every variant vs the fp32 ONNX on held-out synthetic frames (verify.agreement)."""
    import torch

    from vlmedge.export.verify import agreement
    from vlmedge.tokenizer import ClipTokenizer

    sessions = {k: session(p, threads) for k, p in paths.items()}
    with torch.no_grad():
        queries = ["a red cup", "a blue ball", "a green block", "a yellow box", "a bottle", "a hand",
                   "background", "a table", "a wall", "the floor"]
        # the random tower has CLIP's vocabulary size: the default BPE is what export_bundle gives it too
        ids = np.asarray(ClipTokenizer.default().encode(queries))
        text = model.encode_text(torch.from_numpy(ids)).numpy()
    ref = sessions["ort_fp32"].run(None, {"pixel_values": np.concatenate(eval_px)})
    return {k: agreement(ref, s.run(None, {"pixel_values": np.concatenate(eval_px)}), text)
            for k, s in sessions.items() if k != "ort_fp32"}


def print_table(result: dict, acc: dict, args: argparse.Namespace) -> None:
    med, p10 = result["median_ms"], result["p10_ms"]
    print(f"\nimage encoder, batch 1, median of {args.rounds} interleaved rounds x {args.per_round} calls "
          f"(shared machine; load avg at end {os.getloadavg()[0]:.1f}):")
    for th, m in med.items():
        base = m["torch_eager_fp32"]
        print(f" {th}:")
        for k, v in m.items():
            a = acc.get(k)
            extra = (f"  cos min {a['image_cosine_min']:.4f}  patch agree {100 * a['patch_argmax_agreement']:.1f}%"
                     if a else "")
            print(f"  {k:22s} {v:8.1f} ms (p10 {p10[th][k]:7.1f})  x{base / v:5.2f} vs torch eager{extra}")
        print(f"  int8 static QDQ vs quantize_dynamic: x{result['int8_qdq_vs_dynamic'][th]:.2f}")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import onnxruntime as ort
    import torch

    from vlmedge.export import calibration
    from vlmedge.runtime.grounding.encoders import physical_cores

    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [physical_cores()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlmedge-bench-"))
    model = build_model(args.layers)
    paths, export_s, fp32, int8 = export_variants(model, args, work)
    eval_px = calibration.preprocess_frames(calibration.frames_synthetic(8, seed=100_000), fp32.preprocess)
    spins = {"on": [True], "off": [False], "both": [True, False]}[args.spinning]
    med, p10 = time_variants(model, paths, eval_px[0], thread_counts, spins, args)
    acc = accuracy(model, paths, eval_px, thread_counts[-1])

    result = {
        "model": f"ViT-B/16-shaped CLIP image tower, random weights, {args.layers} layers, 224x224, batch 1",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
                    "load_avg_at_end": os.getloadavg(), "shared": True},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "median_ms": med, "p10_ms": p10,
        "speedup_vs_torch_eager": {th: {k: m["torch_eager_fp32"] / v for k, v in m.items()} for th, m in med.items()},
        "int8_qdq_vs_dynamic": {th: m["ort_int8_dynamic"] / m["ort_int8_qdq"] for th, m in med.items()},
        "accuracy_vs_ort_fp32": acc, "int8_export_report": int8.extra.get("int8_report"),
        "export_seconds": export_s, "sizes_mb": {k: p.stat().st_size / 1e6 for k, p in paths.items()},
        "rounds": args.rounds, "per_round": args.per_round,
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print_table(result, acc, args)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
