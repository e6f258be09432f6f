"""The TensorRT path end to end on a machine with an NVIDIA GPU, in one table (run by benchmarks/gpu_check.sh).

1. a ViT-B/16-shaped CLIP with random weights (vision 224 px, patch 16, width 768, 12 layers; the full
   12-layer text tower, width 512, OpenAI's vocabulary) saved in the native layout;
2. `vlmedge export` of fp32, fp16 and int8 bundles for `cuda` and `jetson-orin-jp6` (in parallel, CPU);
3. `build_engine` of each fp16 and int8 bundle at the bundle's precision (what `vlmedge build-engine` does);
4. each engine vs the platform's fp32 bundle on ONNX Runtime CPU, on rendered scenes: image-embedding cosine,
   patch cosine, patch argmax agreement over a set of queries; the bundle itself on ORT CPU alongside;
5. the engine's latency, batch 1 (p50 / p99 over --runs);
6. `vlmedge run --bundle B --backend tensorrt --headless --max-frames 300` on the synthetic source.

``--dry-run`` (no GPU needed) does 1, 2 and the ORT CPU column of 4 and marks the engine columns "not run";
``--tiny`` uses a small model (seconds, for the test that keeps this script working without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PLATFORMS = ("cuda", "jetson-orin-jp6")
PRECISIONS = ("fp32", "fp16", "int8")
QUERIES = ("a red cup", "a blue ball", "a green bottle", "a yellow box", "a book", "a banana", "a plate",
           "a black can", "a table", "a wall", "the floor", "background")
VIT_B16 = dict(image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
               text_width=512, text_layers=12, text_heads=8, embed_dim=512)
TINY = dict(image_size=64, patch_size=16, vision_width=64, vision_layers=2, vision_heads=2,
            text_width=64, text_layers=2, text_heads=2, embed_dim=32)


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_checkpoint(path: Path, shape: dict) -> Path:
    """A random CLIP of ``shape`` with OpenAI's tokenizer, in the native layout (what `vlmedge export` reads)."""
    import torch

    from vlmedge.export.loaders import LoadedClip, save_clip
    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec
    from vlmedge.tokenizer import ClipTokenizer

    torch.manual_seed(0)
    s = shape
    spec = ClipSpec(vision=VisionSpec(s["image_size"], s["patch_size"], s["vision_width"], s["vision_layers"],
                                      s["vision_heads"]),
                    text=TextSpec(s["text_width"], s["text_layers"], s["text_heads"], vocab_size=49408,
                                  context_length=77),
                    embed_dim=s["embed_dim"])
    source = {"id": f"random-vit-b16-shaped-{s['vision_width']}", "revision": None, "layout": "in-memory",
              "weights_sha256": None}
    return save_clip(LoadedClip(CLIP(spec).eval(), ClipTokenizer.default(), None, source), path)


def export_all(ckpt: Path, work: Path, calib_count: int, jobs: int, platforms=PLATFORMS) -> dict[tuple[str, str], Path]:
    """Every (platform, precision) bundle through the real CLI, ``jobs`` at a time."""
    threads = max(1, (os.cpu_count() or 2) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLMEDGE_PROGRESS": "0"}

    def one(key):
        platform, precision = key
        out = work / f"{platform}-{precision}"
        cmd = [sys.executable, "-m", "vlmedge.cli", "export", str(ckpt), "--out", str(out), "--force",
               "--platform", platform, "--precision", precision, "--calib", "synthetic",
               "--calib-count", str(calib_count)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"export {platform} {precision} failed:\n{proc.stderr[-3000:]}")
        log(f"exported {out.name} in {time.perf_counter() - t:.0f} s")
        return key, out

    keys = [(p, q) for p in platforms for q in PRECISIONS]
    with ThreadPoolExecutor(jobs) as pool:
        return dict(pool.map(one, keys))


def eval_inputs(bundle: Path, frames: int):
    """Rendered scenes through the bundle's preprocessing, and the fp32 bundle's query embeddings."""
    from vlmedge.manifest import open_bundle
    from vlmedge.preprocess import preprocess
    from vlmedge.scenes.render import render_scene

    m = open_bundle(bundle)
    return [np.ascontiguousarray(preprocess(render_scene(2_000_000 + i).frame, m.preprocess), np.float32)
            for i in range(frames)]


def ort_outputs(bundle: Path, pixels: list[np.ndarray]):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    enc = BundleEncoders(bundle, providers=["CPUExecutionProvider"])
    outs = [enc.encode_image(x) for x in pixels]
    return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])), enc


def compare(ref, got, text) -> dict:
    from vlmedge.export.verify import agreement

    rep = agreement(ref, got, text)
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in rep.items()}


def build(bundle: Path) -> tuple[Path, float]:
    from vlmedge.export.tensorrt import build_engine

    t = time.perf_counter()
    engine = build_engine(bundle)  # the bundle's precision
    return engine, time.perf_counter() - t


def engine_outputs(engine: Path, pixels: list[np.ndarray], runs: int):
    """The engine's outputs on ``pixels`` (batch 1 each) and its latency p50/p99 in ms over ``runs`` calls."""
    from vlmedge.runtime.grounding.backends import TensorRTSession

    session = TensorRTSession(engine, "pixel_values")
    outs = [session.run(x) for x in pixels]
    names = session._outputs  # image_embeds, patch_embeds in the engine's order
    order = [names.index("image_embeds"), names.index("patch_embeds")]
    got = tuple(np.concatenate([o[i] for o in outs]) for i in order)
    for _ in range(20):
        session.run(pixels[0])
    times = []
    for i in range(runs):
        t = time.perf_counter()
        session.run(pixels[i % len(pixels)])
        times.append((time.perf_counter() - t) * 1e3)
    p50, p99 = (round(float(np.percentile(times, q)), 3) for q in (50, 99))
    return got, {"p50_ms": p50, "p99_ms": p99}


def run_pipeline(bundle: Path, frames: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "vlmedge.cli", "run", "--bundle", str(bundle), "--backend", "tensorrt",
           "--headless", "--max-frames", str(frames), "-v"]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "VLMEDGE_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        return {"rc": "timeout", "seconds": round(timeout, 1)}
    text = proc.stdout + proc.stderr
    fps = re.findall(r"(\d+(?:\.\d+)?) ?fps", text)
    engine_used = re.search(r"\S+\.engine", text)
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t, 1), "last_fps": fps[-1] if fps else None,
            "engine_in_log": engine_used.group(0) if engine_used else None,
            "tail": proc.stderr[-600:] if proc.returncode else ""}


def table(rows: list[dict]) -> str:
    head = ("| platform | bundle | ORT CPU vs fp32: image cos min / patch agree | engine | build s | "
            "engine vs ORT CPU fp32: image cos min / patch cos mean / patch agree | p50 / p99 ms | "
            "vlmedge run (300 frames) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ort = r.get("ort_cpu")
        eng = r.get("engine_vs_fp32")
        lat = r.get("latency")
        run = r.get("run")
        lines.append("| " + " | ".join([
            r["platform"], r["precision"],
            f"{ort['image_cosine_min']:.4f} / {100 * ort['patch_argmax_agreement']:.1f}%" if ort else "reference",
            r.get("engine", "not run"),
            f"{r['build_s']:.0f}" if "build_s" in r else "-",
            (f"{eng['image_cosine_min']:.4f} / {eng['patch_cosine_mean']:.4f} / "
             f"{100 * eng['patch_argmax_agreement']:.1f}%") if eng else "-",
            f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}" if lat else "-",
            (f"rc {run['rc']}, {run['seconds']} s, {run['last_fps'] or '?'} fps, "
             f"{'engine' if run['engine_in_log'] else 'no engine in log'}") if run else "-",
        ]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="no GPU: exports and the ORT CPU comparison only")
    ap.add_argument("--tiny", action="store_true", help="a small model instead of ViT-B/16 (seconds)")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--calib-count", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16, help="rendered scenes the outputs are compared on")
    ap.add_argument("--runs", type=int, default=200, help="timed engine calls")
    ap.add_argument("--run-frames", type=int, default=300, help="frames of the `vlmedge run` check")
    ap.add_argument("--jobs", type=int, default=3, help="exports at once")
    ap.add_argument("--platforms", default=",".join(PLATFORMS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlmedge-gpu-check-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        shape = TINY if args.tiny else VIT_B16
        ckpt = make_checkpoint(work / "checkpoint", shape)
        log(f"checkpoint {ckpt} ({'tiny' if args.tiny else 'ViT-B/16-shaped'}, random weights)")
        platforms = [p for p in args.platforms.split(",") if p]
        bundles = export_all(ckpt, work, args.calib_count, args.jobs, platforms)
        rows = []
        for platform in platforms:
            pixels = eval_inputs(bundles[platform, "fp32"], args.frames)
            ref, enc = ort_outputs(bundles[platform, "fp32"], pixels)
            text = enc.encode_text(list(QUERIES))
            rows.append({"platform": platform, "precision": "fp32"})
            for precision in ("fp16", "int8"):
                bundle = bundles[platform, precision]
                row = {"platform": platform, "precision": precision,
                       "ort_cpu": compare(ref, ort_outputs(bundle, pixels)[0], text)}
                if not args.dry_run:
                    try:
                        engine, seconds = build(bundle)
                        row.update(engine=engine.name, build_s=round(seconds, 1))
                        got, row["latency"] = engine_outputs(engine, pixels, args.runs)
                        row["engine_vs_fp32"] = compare(ref, got, text)
                        row["run"] = run_pipeline(bundle, args.run_frames, timeout=180)
                    except Exception as e:  # one failing engine must not hide the others' figures
                        row["engine"] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                        log(row["engine"])
                else:
                    row["engine"] = "not run (--dry-run)"
                rows.append(row)
                log(f"{platform} {precision}: {json.dumps({k: v for k, v in row.items() if k != 'platform'})}")
        machine = _machine()
        print(f"vlmedge GPU check ({'tiny' if args.tiny else 'ViT-B/16-shaped, 12-layer text'}, random weights) "
              f"on {machine}; {time.perf_counter() - t0:.0f} s")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0 if all(not str(r.get("engine", "")).startswith("FAILED") for r in rows) else 1


def _machine() -> str:
    try:
        from vlmedge.runtime.grounding.backends import tensorrt_environment

        version, gpu = tensorrt_environment()
    except Exception:  # the runtime side is optional here
        version, gpu = None, None
    gpu_text = f"{gpu[0]} (sm{gpu[1][0]}{gpu[1][1]})" if gpu else "no GPU"
    return f"{gpu_text}, TensorRT {version or 'not installed'}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    raise SystemExit(main())
