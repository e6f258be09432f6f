"""Encoder backends and thread settings under CPU contention: how much each slows down when one other busy
process shares the cores. Not a unit test: heavy, run it by hand (issue #17 item 4).

    python benchmarks/contention.py make-bundles --out /tmp/bench-bundles     # ViT-B/16 and B/32 int8, random
    python benchmarks/contention.py measure --bundles /tmp/bench-bundles [--rounds 8] [--json OUT]

Bundles: CLIP image towers at real shapes with random weights (width 768, 12 layers, 224x224; patch 16 and 32),
exported by ``export_bundle`` to int8 for the CPU like ``benchmarks/bench_export.py`` does, with a tiny text
tower. ``--full-text`` also writes a ViT-B/16 int8 bundle with the full 12-layer, width-512 text tower (CLIP's
vocabulary and context) and a vocabulary covering what ``vlmedge bench`` asks for (the memory measurement of
issue #15 item 7).

Measurement: for every (bundle, setting) a fresh child process loads the image encoder with that setting and
times batch-1 encodes. Settings: ONNX Runtime with 1 or 2 intra-op threads, spinning on or off, or 4 threads
(more than the cores); OpenVINO with 1 or 2 inference threads, one stream, the LATENCY hint, CPU pinning on or
off, TBB's partitioner. Each setting is timed alone
(``quiet``) and beside one competing busy process (``busy``: a pure-Python loop, one core's worth of work,
started just before and stopped just after), in PAIRS: quiet and busy alternate round by round so that the
load of other processes on a shared machine hits both sides alike, and the slowdown of a round is
busy median / quiet median of that round. Reported: median per setting and condition, the median of the
per-round slowdowns, the load average seen, and why it slows: the cores the encoder's process used (its CPU
time over the wall time), the busy process's cores, and the CPU time per encode (unchanged: the encoder got
fewer cores; higher: its threads spun or waited on each other).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vlmedge.errors import check_choice

log = logging.getLogger("contention")

# What `vlmedge bench` asks the text side for (queries, the query switch, the command probe's phrases,
# the background prompts): a bundle whose vocabulary holds them never needs its text encoder in the bench.
BENCH_VOCAB = ("the red cup", "a blue ball", "a green bottle", "the cup", "the bottle", "the book", "the can",
               "the plate", "all the cup", "all the bottle", "all the book", "all the can", "all the plate",
               "background", "a table", "a wall", "the floor")


# ---------------------------------------------------------------------------------------------- bundles
def build_model(patch: int, text_layers: int, seed: int = 0):
    """A CLIP with ViT-B image-tower shapes (random weights); the text tower is CLIP's when ``text_layers`` is
    12 (width 512, 8 heads, vocab 49408, context 77), else a tiny one (width 64, ``text_layers`` layers)."""
    import torch

    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

    torch.manual_seed(seed)
    text = TextSpec(512, 12, 8) if text_layers >= 12 else TextSpec(64, text_layers, 1)
    model = CLIP(ClipSpec(VisionSpec((224, 224), patch, 768, 12, 12), text, 512)).eval()
    with torch.no_grad():
        model.visual.pos_embed.normal_(0, 0.02)
        model.visual.class_embedding.normal_(0, 0.02)
    return model


def make_bundles(out: Path, full_text: bool, calib_count: int = 32) -> dict[str, Path]:
    import torch

    from vlmedge.export.bundle import export_bundle

    torch.set_num_threads(os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    jobs = {"vitb16-int8": (16, 1, None), "vitb32-int8": (32, 1, None)}
    if full_text:
        jobs["vitb16-int8-fulltext"] = (16, 12, list(BENCH_VOCAB))
    paths = {}
    for name, (patch, text_layers, vocab) in jobs.items():
        target = out / name
        if (target / "manifest.json").is_file():
            log.info("%s exists, kept", target)
        else:
            t = time.perf_counter()
            export_bundle(build_model(patch, text_layers), target, precision="int8", calib="synthetic",
                          calib_count=calib_count, vocab=vocab, force=True)
            log.info("%s written in %.0f s", target, time.perf_counter() - t)
        paths[name] = target
    return paths


# ------------------------------------------------------------------------------------------- measurement
# name -> (backend, options); every backend gets the same input and one frame at a time
SETTINGS = {
    "ort-2t-spin": ("onnxruntime", {"threads": 2, "spinning": True}),
    "ort-2t-nospin": ("onnxruntime", {"threads": 2, "spinning": False}),
    "ort-1t": ("onnxruntime", {"threads": 1, "spinning": False}),
    "ov-2t": ("openvino", {"threads": 2, "pinning": False}),
    "ov-2t-pinned": ("openvino", {"threads": 2, "pinning": True}),
    "ov-1t": ("openvino", {"threads": 1, "pinning": False}),
    "ov-2t-tbb-auto": ("openvino", {"threads": 2, "pinning": False, "partitioner": "AUTO"}),
    "ov-2t-tbb-static": ("openvino", {"threads": 2, "pinning": False, "partitioner": "STATIC"}),
    # more threads than cores, to take a larger share beside a busy process: OpenVINO clamps INFERENCE_NUM_THREADS
    # to the cores (4 compiled as 2 here), so only ONNX Runtime can be asked
    "ort-4t-nospin": ("onnxruntime", {"threads": 4, "spinning": False}),
}
BUSY = "while True:\n    pass\n"  # one core's worth of work, what a competing process does at its worst


def _open(backend: str, opts: dict, path: Path):
    from vlmedge.runtime.grounding.backends import OpenVinoSession, OrtSession

    if backend == "openvino":
        named = {"partitioner": opts["partitioner"]} if "partitioner" in opts else {}  # else the runtime's default
        return OpenVinoSession(path, threads=opts["threads"], pinning=opts["pinning"], **named)
    return OrtSession(path, threads=opts["threads"], spinning=opts["spinning"])


def _ticks(pid: int) -> int | None:
    """CPU time (user + system, clock ticks) process ``pid`` has used, from /proc; None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)


def child(spec: dict) -> dict:
    """In a fresh process: one setting, quiet and busy rounds alternating (pairs), per-round medians. Per
    condition also the cores used: this process's CPU time (all its threads) over the wall time of the timed
    encodes, and, beside the busy process, that process's (how the scheduler shared the two cores)."""
    from vlmedge.manifest import open_bundle

    bundle = Path(spec["bundle"])
    m = open_bundle(bundle, verify=False)
    backend, opts = SETTINGS[spec["setting"]]
    session = _open(backend, opts, bundle / m.image_file(backend))  # the file the runtime runs on it
    h, w = m.image_size
    x = np.random.default_rng(0).normal(0, 1, (1, 3, h, w)).astype(np.float32)
    for _ in range(3):
        session.run(x)
    hz = os.sysconf("SC_CLK_TCK")
    rounds = []
    for r in range(spec["rounds"]):
        pair = {}
        for cond in (("quiet", "busy") if r % 2 == 0 else ("busy", "quiet")):
            busy = None
            if cond == "busy":
                busy = subprocess.Popen([sys.executable, "-c", BUSY])
                time.sleep(0.3)  # running, and the scheduler has seen it
            try:
                times = []
                busy_ticks = _ticks(busy.pid) if busy is not None else None
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(spec["per_round"]):
                    t = time.perf_counter()
                    session.run(x)
                    times.append((time.perf_counter() - t) * 1e3)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                # clock ticks are 10 ms here: a share needs a window of a few tenths of a second to mean anything
                if busy is not None and busy_ticks is not None and (end := _ticks(busy.pid)) is not None \
                        and wall >= 0.2:
                    pair["busy_process_cores"] = (end - busy_ticks) / hz / wall
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            pair[cond] = float(np.median(times))
            pair[f"{cond}_cores"] = cpu / wall
            pair[f"{cond}_cpu_ms"] = cpu * 1e3 / spec["per_round"]  # CPU time per encode, all threads
        rounds.append(pair)
    return {"rounds": rounds, "loadavg": list(os.getloadavg())}


def measure(bundles: dict[str, Path], rounds: int, per_round: int, passes: int, settings=None) -> dict:
    """Every (bundle, setting) ``passes`` times, settings in a rotating order, each pass in a fresh child."""
    results: dict = {}
    names = list(settings or SETTINGS)
    for p in range(passes):
        for b_name, b_path in bundles.items():
            order = names[p % len(names):] + names[:p % len(names)]
            for setting in order:
                spec = {"bundle": str(b_path), "setting": setting, "rounds": rounds, "per_round": per_round}
                proc = subprocess.run([sys.executable, __file__, "child", json.dumps(spec)], capture_output=True,
                                      text=True, timeout=1800)
                if proc.returncode != 0:
                    raise SystemExit(f"{b_name} {setting}: {proc.stderr.strip()[-2000:]}")
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                entry = results.setdefault(b_name, {}).setdefault(setting, {"rounds": [], "loadavg": []})
                entry["rounds"] += out["rounds"]
                entry["loadavg"].append(out["loadavg"][0])
                q = [r["quiet"] for r in out["rounds"]]
                bz = [r["busy"] for r in out["rounds"]]
                log.info("pass %d %s %-14s quiet %.1f ms busy %.1f ms (load %.1f)", p + 1, b_name, setting,
                         float(np.median(q)), float(np.median(bz)), out["loadavg"][0])
    for b in results.values():
        for e in b.values():
            summarize(e)
    return results


def summarize(e: dict) -> dict:
    """One setting's rounds (and the load averages seen) -> its medians, in place: times, slowdown (the median of
    the per-round busy/quiet ratios), and the CPU accounting where the rounds have it."""
    q = [r["quiet"] for r in e["rounds"]]
    bz = [r["busy"] for r in e["rounds"]]
    e["quiet_median_ms"] = round(float(np.median(q)), 2)
    e["busy_median_ms"] = round(float(np.median(bz)), 2)
    e["slowdown_median"] = round(float(np.median([r["busy"] / r["quiet"] for r in e["rounds"]])), 3)
    for key in ("quiet_cores", "busy_cores", "quiet_cpu_ms", "busy_cpu_ms", "busy_process_cores"):
        values = [r[key] for r in e["rounds"] if key in r]
        if values:
            e[f"{key}_median"] = round(float(np.median(values)), 3)
    e["load_avg_1min"] = [round(v, 2) for v in e.pop("loadavg")]
    return e


def compare(bundles: dict[str, Path], rounds: int, per_round: int) -> dict:
    """The default settings of both backends side by side (the README table): every round opens a fresh session
    of each backend in turn (the order alternates; one session alive at a time), 2 warm-up encodes, then
    ``per_round`` timed ones; median and p10 per backend over all rounds. Parity on rendered scenes: image
    cosine, patch cosine and patch agreement over the bundle's own text embeddings of BENCH_VOCAB."""
    from vlmedge.manifest import open_bundle
    from vlmedge.preprocess import preprocess
    from vlmedge.runtime.bench import backend_parity
    from vlmedge.runtime.grounding.backends import open_session
    from vlmedge.runtime.grounding.encoders import BundleEncoders
    from vlmedge.scenes.render import render_scene

    out = {}
    for name, path in bundles.items():
        m = open_bundle(path, verify=False)
        x = np.stack([preprocess(render_scene(seed).frame, m.preprocess)[0] for seed in range(4)])
        texts = BundleEncoders(path, backend="onnxruntime", verify=False).encode_text(list(BENCH_VOCAB))
        outs = {}
        variants = {"onnxruntime": ("onnxruntime", True), "onnxruntime-nospin": ("onnxruntime", False),
                    "openvino": ("openvino", True)}
        times: dict[str, list[float]] = {k: [] for k in variants}
        order = list(variants)
        for r in range(rounds):
            for key in order[r % len(order):] + order[:r % len(order)]:  # rotate: none always first
                backend, spinning = variants[key]
                s = open_session(backend, path / m.image_file(backend), threads=2, spinning=spinning)
                if backend not in outs:
                    outs[backend] = [s.run(x[i:i + 1]) for i in range(len(x))]
                for _ in range(2):
                    s.run(x[:1])
                for _ in range(per_round):
                    t = time.perf_counter()
                    s.run(x[:1])
                    times[key].append((time.perf_counter() - t) * 1e3)
                del s
        a, b = ([np.concatenate([o[k] for o in outs[side]]) for k in (0, 1)] for side in ("onnxruntime", "openvino"))
        out[name] = {k: {"median_ms": round(float(np.median(v)), 2), "p10_ms": round(float(np.percentile(v, 10)), 2),
                         "n": len(v)} for k, v in times.items()}
        out[name]["openvino_speedup_median"] = round(out[name]["onnxruntime"]["median_ms"]
                                                     / out[name]["openvino"]["median_ms"], 3)
        out[name]["parity"] = backend_parity(*a, *b, texts)
        out[name]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
        log.info("%s: %s", name, out[name])
    return out


def print_table(results: dict) -> None:
    """Times and slowdown, and why: the cores each side used (``cores``: CPU time over wall time; ``other``:
    the busy process's), and the CPU time per encode (more beside the busy process: threads spinning or
    waiting on each other)."""
    print(f"\n{'bundle':<14}{'setting':<16}{'quiet ms':>10}{'busy ms':>10}{'slowdown':>10}{'cores q/b':>12}"
          f"{'other':>7}{'cpu ms q/b':>14}   load avg (1 min)")
    for b_name, b in results.items():
        for setting, e in b.items():
            cores = (f"{e['quiet_cores_median']:.2f}/{e['busy_cores_median']:.2f}"
                     if "busy_cores_median" in e else "-")
            cpu = f"{e['quiet_cpu_ms_median']:.0f}/{e['busy_cpu_ms_median']:.0f}" if "busy_cpu_ms_median" in e else "-"
            other = f"{e['busy_process_cores_median']:.2f}" if "busy_process_cores_median" in e else "-"
            print(f"{b_name:<14}{setting:<16}{e['quiet_median_ms']:>10.1f}{e['busy_median_ms']:>10.1f}"
                  f"{e['slowdown_median']:>9.2f}x{cores:>12}{other:>7}{cpu:>14}   {e['load_avg_1min']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-bundles", help="export the real-shaped random int8 bundles")
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--full-text", action=argparse.BooleanOptionalAction, default=True,
                    help="also the ViT-B/16 bundle with the full 12-layer text tower (default: on)")
    ms = sub.add_parser("measure", help="time every setting quiet and beside a busy process")
    ms.add_argument("--bundles", type=Path, required=True, help="the folder make-bundles wrote")
    ms.add_argument("--rounds", type=int, default=4, help="quiet/busy pairs per pass (default 4)")
    ms.add_argument("--per-round", type=int, default=6, help="encodes per condition and round (default 6)")
    ms.add_argument("--passes", type=int, default=2, help="passes over all settings (default 2)")
    ms.add_argument("--json", type=Path, default=None, help="write the results here")
    ms.add_argument("--settings", default=None, help=f"comma list of settings (default all: {', '.join(SETTINGS)})")
    cp = sub.add_parser("compare", help="ONNX Runtime vs OpenVINO, default settings, interleaved (README table)")
    cp.add_argument("--bundles", type=Path, required=True, help="the folder make-bundles wrote")
    cp.add_argument("--rounds", type=int, default=10)
    cp.add_argument("--per-round", type=int, default=5)
    cp.add_argument("--json", type=Path, default=None)
    ch = sub.add_parser("child")
    ch.add_argument("spec")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "child":
        print(json.dumps(child(json.loads(args.spec))))
    elif args.cmd == "compare":
        import onnxruntime

        from vlmedge.runtime.grounding.backends import cpu_model, openvino_version

        t0 = time.time()
        res = compare({n: args.bundles / n for n in ("vitb16-int8", "vitb32-int8")}, args.rounds, args.per_round)
        report = {"what": "image encoder, batch 1, 2 threads: ONNX Runtime spinning on (onnxruntime) and off "
                          "(onnxruntime-nospin), OpenVINO one stream LATENCY hint unpinned; a fresh session per "
                          "variant and round, variants interleaved (rotating order)",
                  "machine": {"cpu": cpu_model(), "platform": platform.platform(), "cpus": os.cpu_count(),
                              "shared": "other processes ran on this machine; see the load averages"},
                  "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino_version()},
                  "rounds": args.rounds, "per_round": args.per_round, "seconds": round(time.time() - t0, 1),
                  "results": res}
        for name, r in res.items():
            print(f"{name}: ONNX Runtime {r['onnxruntime']['median_ms']} ms (p10 {r['onnxruntime']['p10_ms']}), "
                  f"spinning off {r['onnxruntime-nospin']['median_ms']} ms (p10 {r['onnxruntime-nospin']['p10_ms']}), "
                  f"OpenVINO {r['openvino']['median_ms']} ms (p10 {r['openvino']['p10_ms']}), "
                  f"x{r['openvino_speedup_median']}; parity {r['parity']}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
    elif args.cmd == "make-bundles":
        for name, path in make_bundles(args.out, args.full_text).items():
            print(f"{name}: {path}")
    else:
        import onnxruntime

        from vlmedge.runtime.grounding.backends import cpu_model, openvino_version

        bundles = {n: args.bundles / n for n in ("vitb16-int8", "vitb32-int8")}
        t0 = time.time()
        settings = args.settings.split(",") if args.settings else None
        for name in settings or ():
            check_choice("setting", name, SETTINGS)
        results = measure(bundles, args.rounds, args.per_round, args.passes, settings)
        report = {"what": "image encoder, batch 1, median ms per condition; busy = one competing busy process "
                          "(a Python busy loop) on the same cores; slowdown = median over rounds of busy/quiet, "
                          "quiet and busy alternating round by round (pairs)",
                  "bundles": "ViT-B/16 and ViT-B/32 image towers (width 768, 12 layers, 224x224), random weights, "
                             "int8 for the CPU (export_bundle, synthetic calibration)",
                  "machine": {"cpu": cpu_model(), "platform": platform.platform(), "cpus": os.cpu_count(),
                              "shared": "other processes ran on this machine during the measurement; see the "
                                        "load averages (a 'quiet' round is quiet only of OUR busy process)"},
                  "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino_version()},
                  "rounds_per_pass": args.rounds, "per_round": args.per_round, "passes": args.passes,
                  "seconds": round(time.time() - t0, 1), "results": results}
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
