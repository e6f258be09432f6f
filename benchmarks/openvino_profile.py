"""Where OpenVINO spends an image encoder's time, per executed op, for several model files side by side.

    python benchmarks/openvino_profile.py /tmp/alt-bench/vitb16/int8/image_encoder.onnx \
        /tmp/alt-bench/vitb16/nncf/image_encoder.xml --out benchmarks/results/openvino-profile-vitb16-DATE.json

Each file is compiled with the runtime's own OpenVINO settings (``OpenVinoSession``: 1 stream, LATENCY, f32
float parts, its partitioner; a bundle's ONNX through the IR cache, an ``.xml`` as it is) plus ``PERF_COUNT``.
The models take turns, one call each, for ``--rounds`` calls after ``--warmup``: the load of the machine falls
on both alike. OpenVINO's profiling info gives each executed node's running mean since compile (not the last
call's time), so the profile is read before and after the timed calls and each node's mean over those calls
is worked out from the two (``window_means``); the table sums them by (layer type, kernel), and gives the wall
time per call (mean and median) beside the sum of the nodes (the gap is OpenVINO's own overhead between
nodes). The fastest way to see why one int8 model is faster than another: the rows that differ.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alternatives import cpu_info, versions  # noqa: E402  (a sibling script, not a package)


def compile_profiled(path: Path, threads: int, ir_cache: bool | None = None):
    """``path`` compiled as the runtime compiles it, with per-node profiling on; (compiled model, its config, the
    file compiled). ``ir_cache``: as ``OpenVinoSession``'s ``ir`` (None: the runtime's default; False for
    throw-away models, which then leave nothing in the runtime's cache)."""
    import openvino as ov

    from vlmedge.runtime.grounding.backends import OpenVinoSession

    session = OpenVinoSession(path, threads=threads, ir=ir_cache)  # finds or writes the IR the runtime would compile
    source = session.compiled_from or path
    config = dict(session.config, PERF_COUNT=True)
    del session
    return ov.Core().compile_model(str(source), "CPU", config), {k: str(v) for k, v in config.items()}, source


def counters(request) -> dict[str, tuple[str, str, float]]:
    """Each executed node's (layer type, kernel, ms): OpenVINO's PERF_COUNT ``real_time`` is the node's running
    MEAN over every call since the model was compiled (its total over its count, in whole microseconds), not
    the last call's time: a per-call figure needs two snapshots (``window_means``)."""
    return {i.node_name: (i.node_type, i.exec_type, i.real_time.total_seconds() * 1e3)
            for i in request.get_profiling_info() if str(i.status).endswith("EXECUTED")}


def window_means(before: dict, after: dict, calls_before: int, calls_after: int) -> dict[tuple[str, str], float]:
    """Ms per call of each (layer type, kernel) group over the calls between two ``counters`` snapshots, taken
    after ``calls_before`` and ``calls_after`` calls of the compiled model: the running means turned back into
    totals, their difference over the calls between (a node's figure is exact to (calls_before + calls_after) /
    (calls_after - calls_before) us: the means are whole microseconds)."""
    if calls_after <= calls_before:
        raise ValueError(f"no calls between the snapshots ({calls_before} -> {calls_after})")
    groups: dict[tuple[str, str], float] = defaultdict(float)
    for name, (kind, kernel, mean_after) in after.items():
        mean_before = before[name][2] if name in before else 0.0
        total = mean_after * calls_after - mean_before * calls_before
        groups[(kind, kernel)] += max(total, 0.0) / (calls_after - calls_before)
    return dict(groups)


def profile(paths: list[Path], threads: int, warmup: int, rounds: int, shape: tuple[int, ...]) -> dict:
    x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    models = {}
    for p in paths:
        compiled, config, source = compile_profiled(p, threads)
        request = compiled.create_infer_request()
        for _ in range(warmup):
            request.infer({0: x})
        models[str(p)] = {"request": request, "config": config, "compiled_from": str(source), "walls": [],
                          "before": counters(request)}
    for _ in range(rounds):  # interleaved: one call of each model per round
        for m in models.values():
            t = time.perf_counter()
            m["request"].infer({0: x})
            m["walls"].append((time.perf_counter() - t) * 1e3)
    out = {}
    for name, m in models.items():
        groups = window_means(m["before"], counters(m["request"]), warmup, warmup + rounds)
        rows = {f"{t} / {k}": round(v, 3) for (t, k), v in groups.items()}
        out[name] = {"compiled_from": m["compiled_from"], "config": m["config"],
                     "wall_ms_median": round(statistics.median(m["walls"]), 3),
                     "wall_ms_mean": round(statistics.fmean(m["walls"]), 3),
                     "nodes_ms_mean": round(sum(groups.values()), 3),
                     "groups_ms_mean": dict(sorted(rows.items(), key=lambda kv: -kv[1]))}
    return out


def table(result: dict) -> str:
    names = list(result["models"])
    keys = sorted({k for m in result["models"].values() for k in m["groups_ms_mean"]},
                  key=lambda k: -max(m["groups_ms_mean"].get(k, 0.0) for m in result["models"].values()))
    head = "| layer type / kernel | " + " | ".join(f"#{i + 1} ms" for i in range(len(names))) + " |"
    lines = [f"#{i + 1}: {n}" for i, n in enumerate(names)] + ["", head, "|---|" + "---:|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{result['models'][n]['groups_ms_mean'].get(k, 0.0):.2f}"
                                               for n in names) + " |")
    for label, field in (("sum of nodes (mean per call)", "nodes_ms_mean"), ("wall (mean)", "wall_ms_mean"),
                         ("wall (median)", "wall_ms_median")):
        lines.append(f"| **{label}** | " + " | ".join(f"{result['models'][n][field]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="ONNX files (bundle encoders) or OpenVINO .xml IRs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    ap.add_argument("--out", type=Path, help="JSON result file (a Markdown table is printed either way)")
    args = ap.parse_args(argv)
    for p in args.models:
        if not p.is_file():
            ap.error(f"{p}: no such model file")
    if args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--rounds and --threads must be >= 1, --warmup >= 0")
    result = {"cpu": cpu_info(), "versions": versions(), "threads": args.threads, "rounds": args.rounds,
              "input_shape": [1, 3, args.size, args.size],
              "models": profile(args.models, args.threads, args.warmup, args.rounds, (1, 3, args.size, args.size))}
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
