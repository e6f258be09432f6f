"""Where OpenVINO spends an image encoder's time, per executed op, for several model files side by side.

    python benchmarks/openvino_profile.py /tmp/alt-bench/vitb16/int8/image_encoder.onnx \
        /tmp/alt-bench/vitb16/nncf/image_encoder.xml --out benchmarks/results/openvino-profile-vitb16-DATE.json

Each file is compiled with the runtime's own OpenVINO settings (``OpenVinoSession``: 1 stream, LATENCY, f32
float parts, its partitioner; a bundle's ONNX through the IR cache, an ``.xml`` as it is) plus ``PERF_COUNT``.
The models take turns, one call each, for ``--rounds`` calls after ``--warmup``: the load of the machine falls
on both alike. Per call, OpenVINO's profiling info gives each executed node's time; the table sums them by
(layer type, kernel) and reports the median per-call total of each group, and the per-call wall time beside
the sum of the nodes (the gap is OpenVINO's own overhead between nodes). The fastest way to see why one int8
model is faster than another: the rows that differ.
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


def one_call(request, x: np.ndarray) -> tuple[float, dict[tuple[str, str], float]]:
    """Wall ms of one inference and the ms of each (node type, kernel) group in it."""
    t = time.perf_counter()
    request.infer({0: x})
    wall = (time.perf_counter() - t) * 1e3
    groups: dict[tuple[str, str], float] = defaultdict(float)
    for info in request.get_profiling_info():
        if info.real_time.total_seconds() > 0:
            groups[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1e3
    return wall, groups


def add_call(store: dict, groups: dict, r: int) -> None:
    """Append call ``r``'s ms per group to ``store`` (group -> one value per call so far). A group missing from this
    call gets 0; one first seen now (its nodes took 0 ms before) gets zeros for the earlier calls."""
    for key in set(groups) | set(store):
        values = store.setdefault(key, [])
        values.extend([0.0] * (r - len(values)))
        values.append(groups.get(key, 0.0))


def profile(paths: list[Path], threads: int, warmup: int, rounds: int, shape: tuple[int, ...]) -> dict:
    x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    models = {}
    for p in paths:
        compiled, config, source = compile_profiled(p, threads)
        request = compiled.create_infer_request()
        for _ in range(warmup):
            request.infer({0: x})
        models[str(p)] = {"request": request, "config": config, "compiled_from": str(source),
                          "walls": [], "groups": {}}
    for r in range(rounds):  # interleaved: one call of each model per round
        for m in models.values():
            wall, groups = one_call(m["request"], x)
            m["walls"].append(wall)
            add_call(m["groups"], groups, r)
    out = {}
    for name, m in models.items():
        rows = {f"{t} / {k}": round(statistics.median(v), 3) for (t, k), v in m["groups"].items()}
        node_sum = [sum(v[i] for v in m["groups"].values()) for i in range(rounds)]
        out[name] = {"compiled_from": m["compiled_from"], "config": m["config"],
                     "wall_ms_median": round(statistics.median(m["walls"]), 3),
                     "nodes_ms_median": round(statistics.median(node_sum), 3),
                     "groups_ms_median": dict(sorted(rows.items(), key=lambda kv: -kv[1]))}
    return out


def table(result: dict) -> str:
    names = list(result["models"])
    keys = sorted({k for m in result["models"].values() for k in m["groups_ms_median"]},
                  key=lambda k: -max(m["groups_ms_median"].get(k, 0.0) for m in result["models"].values()))
    head = "| layer type / kernel | " + " | ".join(f"#{i + 1} ms" for i in range(len(names))) + " |"
    lines = [f"#{i + 1}: {n}" for i, n in enumerate(names)] + ["", head, "|---|" + "---:|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{result['models'][n]['groups_ms_median'].get(k, 0.0):.2f}"
                                               for n in names) + " |")
    for label, field in (("sum of nodes (median per call)", "nodes_ms_median"), ("wall (median)", "wall_ms_median")):
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
