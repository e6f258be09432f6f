"""Graph passes of ``vlmedge.export.optimize`` on int8 image encoders: paired timings, per-op profiles,
accuracy. Not a unit test: heavy, run it by hand.

    python benchmarks/bench_ort_fusion.py [--models b16,b32] [--variants qattention,mha,...]
        [--rounds 12] [--workdir DIR] [--out benchmarks/results/ort-fusion-DATE]

Models: ViT-B/16 and ViT-B/32-shaped CLIP image towers with random weights (width 768, 12 layers,
12 heads, 224x224; tiny text tower), exported with ``export_bundle`` as fp32 and int8 bundles for
the ``cpu`` platform, exactly like ``benchmarks/bench_export.py`` builds its model. Each variant is
the int8 bundle's ``image_encoder.onnx`` with some passes applied (``a+b`` applies a then b).

Timing, made for a shared machine whose load changes from second to second: the baseline and a
variant are timed in PAIRED rounds. In each round both sessions are alive and their calls alternate
(A B A B ..., the order flipped every round), ``--calls`` each; the round's figure is the ratio of
the two medians. Reported: the median of the per-round ratios (< 1: the variant is faster), how
many rounds the variant won, and the medians of the per-round medians in ms. ONNX Runtime's thread
spinning is off while pairing (an idle spinning session would steal the cores of the one being
timed); the work of each kernel is the same either way.

Profiles: ONNX Runtime's per-node profile (``--profile-runs`` calls after a warm-up), summed per op
type, per variant. Accuracy: image cosine and patch argmax agreement vs the fp32 bundle (and vs the
unmodified int8 encoder) on ``--eval-frames`` held-out synthetic scenes, labels over 16 queries.

Writes ``<out>.json`` (everything) and ``<out>.md`` (tables).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from vlmedge.floor import cpu_model

log = logging.getLogger("bench_ort_fusion")

INPUT = "pixel_values"
QUERIES = ("a red cup", "a blue ball", "a green block", "a yellow box", "a bottle", "a hand", "background",
           "a table", "a wall", "the floor", "a plate", "a spoon", "a white mug", "a black phone", "a book",
           "a shadow")
PATCHES = {"b16": 16, "b32": 32}


def build_bundles(name: str, work: Path, calib_count: int) -> Path:
    """fp32 and int8 bundles of a random-weight ViT-B/<patch> CLIP under ``work/name`` (kept when present)."""
    root = work / name
    if (root / "int8" / "manifest.json").exists() and (root / "fp32" / "manifest.json").exists():
        return root
    import torch

    from vlmedge.export.bundle import export_bundle
    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

    torch.manual_seed(0)
    spec = ClipSpec(VisionSpec((224, 224), PATCHES[name], 768, 12, 12), TextSpec(64, 1, 1), 512)
    model = CLIP(spec).eval()
    with torch.no_grad():
        model.visual.pos_embed.normal_(0, 0.02)
        model.visual.class_embedding.normal_(0, 0.02)
    export_bundle(model, root / "fp32", force=True)
    export_bundle(model, root / "int8", precision="int8", calib="synthetic", calib_count=calib_count, force=True)
    return root


def session(path: Path, threads: int = 2, spinning: bool = False, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def make_variants(root: Path, specs: list[str]) -> dict[str, Path]:
    from vlmedge.export.optimize import optimize_file

    base = root / "int8" / "image_encoder.onnx"
    paths = {"baseline": base}
    for spec in specs:
        out = root / f"variant-{spec.replace('+', '_')}.onnx"
        counts = optimize_file(base, out, tuple(spec.split("+")))
        log.info("%s %s: %s", root.name, spec, counts)
        paths[spec] = out
    return paths


def paired(base: Path, variant: Path, x: np.ndarray, rounds: int, calls: int, threads: int) -> dict:
    """Per-round ratio variant/baseline of alternating calls (see the module docstring), of wall time and of
    the process's CPU time (all threads; with spinning off it counts the work done, not the waits for a core
    that other processes hold)."""
    feeds = {INPUT: x}
    a, b = session(base, threads), session(variant, threads)
    for s in (a, b, a, b):
        s.run(None, feeds)
    wall = {"a": [], "b": []}
    cpu = {"a": [], "b": []}
    for r in range(rounds):
        w = {"a": [], "b": []}
        c = {"a": [], "b": []}
        order = (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))
        for _ in range(calls):
            for key, s in order:
                t, p = time.perf_counter(), time.process_time()
                s.run(None, feeds)
                w[key].append((time.perf_counter() - t) * 1e3)
                c[key].append((time.process_time() - p) * 1e3)
        for key in ("a", "b"):
            wall[key].append(float(np.median(w[key])))
            cpu[key].append(float(np.median(c[key])))
    ratios = [vb / va for va, vb in zip(wall["a"], wall["b"])]
    cpu_ratios = [vb / va for va, vb in zip(cpu["a"], cpu["b"])]
    return {"ratio_median": float(np.median(ratios)), "ratio_p25": float(np.percentile(ratios, 25)),
            "ratio_p75": float(np.percentile(ratios, 75)), "wins": int(sum(x < 1 for x in ratios)),
            "cpu_ratio_median": float(np.median(cpu_ratios)), "cpu_wins": int(sum(x < 1 for x in cpu_ratios)),
            "rounds": rounds, "calls_per_round": calls, "baseline_ms_median": float(np.median(wall["a"])),
            "variant_ms_median": float(np.median(wall["b"])), "baseline_cpu_ms_median": float(np.median(cpu["a"])),
            "variant_cpu_ms_median": float(np.median(cpu["b"])), "ratios": ratios, "cpu_ratios": cpu_ratios,
            "loadavg_after": list(os.getloadavg())}


def profile(path: Path, x: np.ndarray, runs: int, threads: int, prefix: str) -> dict:
    """Per op type: the sum over its nodes of each node's median (``ms``) and fastest (``ms_min``: what the
    node takes when it gets the cores, robust to load from other processes) time per run (ORT's node
    profile); and the wall time of the profiled runs."""
    s = session(path, threads, spinning=True, profile=prefix)
    for _ in range(3):
        s.run(None, {INPUT: x})
    t = time.perf_counter()
    for _ in range(runs):
        s.run(None, {INPUT: x})
    wall = (time.perf_counter() - t) * 1e3 / runs
    events = json.loads(Path(s.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_node: dict[str, list] = {}
    for e in nodes:
        per_node.setdefault(e["name"], [e["args"]["op_name"], []])[1].append(e["dur"] / 1e3)
    ops: dict[str, dict] = {}
    for op, durs in per_node.values():
        durs = durs[3:]  # the warm-up runs
        o = ops.setdefault(op, {"ms": 0.0, "ms_min": 0.0, "nodes": 0})
        o["ms"] += float(np.median(durs))
        o["ms_min"] += float(np.min(durs))
        o["nodes"] += 1
    total = sum(o["ms"] for o in ops.values())
    table = {op: {"ms": round(o["ms"], 3), "ms_min": round(o["ms_min"], 3), "share": round(o["ms"] / total, 4),
                  "nodes": o["nodes"]} for op, o in sorted(ops.items(), key=lambda kv: -kv[1]["ms"])}
    return {"wall_ms_per_run": round(wall, 3), "kernel_ms_per_run": round(total, 3),
            "kernel_min_ms_per_run": round(sum(o["ms_min"] for o in ops.values()), 3), "ops": table,
            "runs": runs, "loadavg_after": list(os.getloadavg())}


def accuracy(root: Path, paths: dict[str, Path], frames: int, threads: int) -> dict:
    from vlmedge.export import calibration
    from vlmedge.export.verify import agreement
    from vlmedge.manifest import open_bundle
    from vlmedge.tokenizer import ClipTokenizer

    fp32 = root / "fp32"
    pre = open_bundle(fp32).preprocess
    px = np.concatenate(calibration.preprocess_frames(calibration.frames_synthetic(frames, seed=200_000), pre))
    ids = np.asarray(ClipTokenizer.default().encode(list(QUERIES)), dtype=np.int64)
    (text,) = session(fp32 / "text_encoder.onnx", threads).run(None, {"input_ids": ids})
    ref = session(fp32 / "image_encoder.onnx", threads).run(None, {INPUT: px})
    outs = {k: session(p, threads).run(None, {INPUT: px}) for k, p in paths.items()}
    return {k: {"vs_fp32": agreement(ref, o, text), "vs_int8_baseline": agreement(outs["baseline"], o, text),
                "max_abs_vs_int8_baseline": max(float(np.abs(a - b).max()) for a, b in zip(o, outs["baseline"]))}
            for k, o in outs.items()}


def write_markdown(result: dict, path: Path) -> None:
    lines = [f"# ORT CPU graph passes on int8 image encoders ({result['date']})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs "
             f"({result['machine']['note']}); onnxruntime {result['versions']['onnxruntime']}, "
             f"{result['threads']} threads, batch 1. Models: {result['model']}.", "",
             "Paired rounds: baseline and variant alternate call by call; ratio = variant / baseline per round "
             "(< 1 is faster); spinning off while pairing.", ""]
    for m, r in result["models"].items():
        lines += [f"## {m}", "", "| variant | wall ratio (median of rounds) | p25-p75 | wins | baseline ms "
                  "| variant ms | CPU-time ratio | CPU wins | patch agree vs fp32 | vs int8 | image cos min vs fp32 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k in dict.fromkeys(["baseline", *r["accuracy"], *r["timing"]]):
            t, acc = r["timing"].get(k), r["accuracy"].get(k)
            timing = ("| 1 | - | - | - | - | 1 | - " if t is None else
                      f"| {t['ratio_median']:.3f} | {t['ratio_p25']:.3f}-{t['ratio_p75']:.3f} "
                      f"| {t['wins']}/{t['rounds']} "
                      f"| {t['baseline_ms_median']:.1f} | {t['variant_ms_median']:.1f} "
                      f"| {t['cpu_ratio_median']:.3f} | {t['cpu_wins']}/{t['rounds']} ")
            quality = ("| - | - | - |" if acc is None else
                       f"| {100 * acc['vs_fp32']['patch_argmax_agreement']:.2f}% "
                       f"| {100 * acc['vs_int8_baseline']['patch_argmax_agreement']:.2f}% "
                       f"| {acc['vs_fp32']['image_cosine_min']:.5f} |")
            lines.append(f"| {k} {timing}{quality}")
        if not r["profiles"]:
            lines.append("")
            continue
        lines += ["", "Per-op profile (ms per run: sum of per-node medians / of per-node minima (nodes); ORT node "
                  "profile, spinning on):", ""]
        variants = list(r["profiles"])
        ops = sorted({op for p in r["profiles"].values() for op in p["ops"]},
                     key=lambda op: -max(p["ops"].get(op, {}).get("ms", 0) for p in r["profiles"].values()))
        lines += ["| op | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for op in ops:
            cells = [f"{p['ops'][op]['ms']:.2f} / {p['ops'][op]['ms_min']:.2f} ({p['ops'][op]['nodes']})"
                     if op in p["ops"] else "-" for p in r["profiles"].values()]
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        totals = [f"{p['kernel_ms_per_run']:.1f} / {p['kernel_min_ms_per_run']:.1f}" for p in r["profiles"].values()]
        lines.append("| kernels total | " + " | ".join(totals) + " |")
        lines.append("| wall per run | " + " | ".join(f"{p['wall_ms_per_run']:.1f}" for p in r["profiles"].values())
                     + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="b16,b32", help="comma-separated: b16, b32")
    ap.add_argument("--variants", default="qattention,mha,skip_layernorm,qattention+skip_layernorm",
                    help="comma-separated pass lists (a+b applies a then b)")
    ap.add_argument("--rounds", type=int, default=12, help="paired rounds per variant (>= 12 to keep a pass)")
    ap.add_argument("--calls", type=int, default=7, help="calls per session and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-runs", type=int, default=20)
    ap.add_argument("--eval-frames", type=int, default=32)
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--no-timing", action="store_true", help="profiles and accuracy only")
    ap.add_argument("--no-profile", action="store_true", help="no per-op profiles")
    ap.add_argument("--no-accuracy", action="store_true", help="no accuracy check")
    ap.add_argument("--workdir", default="/tmp/vlmedge-ort-fusion", help="bundles are built here once and reused")
    ap.add_argument("--out", default=None, help="output path without extension "
                    "(default benchmarks/results/ort-fusion-<date>)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import onnxruntime as ort

    date = datetime.date.today().isoformat()
    out = Path(args.out or f"benchmarks/results/ort-fusion-{date}")
    work = Path(args.workdir)
    specs = [s for s in args.variants.split(",") if s]
    result = {"date": date, "threads": args.threads, "versions": {"onnxruntime": ort.__version__},
              "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                          "note": "shared with other processes; load average in each record"},
              "model": "CLIP ViT-B/16 and ViT-B/32 image towers, random weights, width 768, 12 layers, 224x224",
              "models": {}}
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
    for name in args.models.split(","):
        root = build_bundles(name, work, args.calib_count)
        paths = make_variants(root, specs)
        r = {"accuracy": {} if args.no_accuracy else accuracy(root, paths, args.eval_frames, args.threads),
             "profiles": {}, "timing": {}}
        for k, p in ([] if args.no_profile else paths.items()):
            r["profiles"][k] = profile(p, x, args.profile_runs, args.threads, str(work / f"prof-{name}"))
            log.info("%s %s profile: %.1f ms wall", name, k, r["profiles"][k]["wall_ms_per_run"])
        if not args.no_timing:
            for k in specs:
                r["timing"][k] = paired(paths["baseline"], paths[k], x, args.rounds, args.calls, args.threads)
                t = r["timing"][k]
                log.info("%s %s: wall ratio %.3f (wins %d/%d), CPU-time ratio %.3f (wins %d); baseline %.1f ms, "
                         "variant %.1f ms", name, k, t["ratio_median"], t["wins"], t["rounds"], t["cpu_ratio_median"],
                         t["cpu_wins"], t["baseline_ms_median"], t["variant_ms_median"])
        result["models"][name] = r
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))  # partial results survive a crash
    write_markdown(result, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
