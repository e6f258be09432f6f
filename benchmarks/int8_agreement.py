"""How close the int8 image encoders' patch agreement with fp32 comes to issue #17's ">= 99%" on random ViT-B/16
weights, and which int8 recipes move it. Not a unit test: heavy (one ViT-B/16 export per recipe, ~2.5 min each
with GPTQ), run it by hand after ``python benchmarks/alternatives.py make --out ALT`` (its fp32 bundle, evaluation
frames and fp32 reference outputs are the yardstick, so the figures line up with the alternatives table).

    python benchmarks/int8_agreement.py --alt /tmp/alt-bench --work /tmp/int8-recipes \\
        [--recipes minmax32,gptq-int8out32,nearest-int8out32,calibrated-pixels32] [--scenes 48] [--ablate] \\
        [--time-rounds 12] [--json OUT]

Per recipe: the int8 bundle exported from the same seeded random model (``contention.build_model``), then on
``--scenes`` evaluation scenes (default the alternatives' 8) and 16 texts: patch agreement (the patch's best text
is the fp32 model's) on ONNX Runtime and on OpenVINO when installed, and the near-tie analysis: each patch's fp32
top-2 text-score margin against the largest change int8 makes to any of its scores. A patch whose margin is below
twice that change can flip either way; if every disagreeing patch is one of those, the disagreement is near-ties
of random weights, not a quantizer that is off. ``--ablate``: the agreement with groups of int8 MatMuls reading
float activations (each block, each projection kind, the patch embedding, the output projections, all): where the
disagreement comes from. ``--time-rounds``: the recipes' encoders timed side by side (ONNX Runtime, OpenVINO).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# export_bundle options per recipe; "recipe": fields of the cpu platform's Int8Recipe changed for that export only.
# minmax32 is the cpu platform's default. entropy32 is minmax32 in disguise as ONNX Runtime runs it
# (export/quantize.py ENTROPY_WARNING): kept to show it. The earlier defaults, newest first:
# gptq-int8out32: GPTQ rounding, the output projections int8 too; nearest-int8out32: the recipe of 2026-11-30
# (nearest rounding, exact pixels); calibrated-pixels32: before exact_pixels (the patch embedding's input on a
# calibrated uint8 grid). Experiments of 2026-12-01 (before int8_attention_scores, in one file): int8-attention32,
# q@k^T and attn@v int8; int8-qk32: q@k^T only (as NNCF quantizes a transformer); int8-qk-s8-32: that with signed
# symmetric activations (exact pixels need uint8). float-qk-one-file32: the default until int8_attention_scores and
# openvino_qdq (q@k^T float, one file for both backends). _ONE_FILE: the fields that came after these recipes, as
# they were
_ONE_FILE = {"int8_attention_scores": False, "openvino_qdq": False}
_INT8_OUT = {**_ONE_FILE, "float_output_projections": False}
RECIPES = {"minmax32": {}, "percentile32": {"calib_method": "percentile"}, "entropy32": {"calib_method": "entropy"},
           "minmax128": {"calib_count": 128},
           "float-qk-one-file32": {"recipe": _ONE_FILE},
           "int8-attention32": {"recipe": {**_ONE_FILE, "const_weight_matmuls_only": False}},
           "int8-qk32": {"qk_only": True, "recipe": _ONE_FILE},
           "int8-qk-s8-32": {"qk_only": True, "recipe": {**_ONE_FILE, "activation": "int8",
                                                          "symmetric_activations": True, "exact_pixels": False}},
           "gptq-int8out32": {"recipe": _INT8_OUT},
           "nearest-int8out32": {"recipe": {**_INT8_OUT, "weight_rounding": "nearest"}},
           "calibrated-pixels32": {"recipe": {**_INT8_OUT, "weight_rounding": "nearest", "exact_pixels": False}}}


@contextlib.contextmanager
def qk_only(on: bool):
    """While an export runs: of the activation x activation MatMuls, only q@k^T quantized (attn@v left float), on
    the graph's own activation grid (the recipe's int8_attention_scores puts q and k on signed symmetric ones; this
    reproduces the one-file experiments that came before it)."""
    from vlmedge.export import quantize

    saved = quantize.activation_matmuls

    def all_but_scores(graph):
        activation = saved(graph)
        scores = {n.name for n in quantize.attention_score_matmuls(graph, activation)}
        return [n for n in activation if n not in scores]

    if on:
        quantize.activation_matmuls = all_but_scores
    try:
        yield
    finally:
        quantize.activation_matmuls = saved


@contextlib.contextmanager
def cpu_recipe(**changes):
    """The cpu platform's int8 recipe with ``changes`` while an export runs (a benchmark's variant, not an option)."""
    from vlmedge import platforms

    saved = platforms.PLATFORMS["cpu"]
    recipe = dataclasses.replace(saved.int8, **changes)
    platforms.PLATFORMS["cpu"] = dataclasses.replace(saved, int8=recipe)
    try:
        yield recipe
    finally:
        platforms.PLATFORMS["cpu"] = saved


def eval_set(fp32_bundle: Path, scenes: int) -> tuple[np.ndarray, np.ndarray]:
    """``scenes`` rendered evaluation scenes (the alternatives' 8 first, the export report's seeds) through the
    bundle's preprocessing, and the fp32 bundle's patch embeddings on them (ONNX Runtime)."""
    import onnxruntime as ort
    from alternatives import _split

    from vlmedge.export.calibration import EVAL_SEED_OFFSET, frames_synthetic, preprocess_frames
    from vlmedge.manifest import open_bundle

    m = open_bundle(fp32_bundle, verify=False)
    frames = np.concatenate(preprocess_frames(frames_synthetic(scenes, seed=EVAL_SEED_OFFSET), m.preprocess))
    s = ort.InferenceSession(str(fp32_bundle / m.image_encoder.file), providers=["CPUExecutionProvider"])
    ref = np.concatenate([_split(s.run(None, {"pixel_values": frames[i:i + 1]}))[1] for i in range(len(frames))])
    return frames, ref


def _unit_scores(patches: np.ndarray, texts: np.ndarray) -> np.ndarray:
    p = patches.reshape(-1, patches.shape[-1]).astype(np.float64)
    t = texts.astype(np.float64)
    return (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T


def near_ties(ref_scores: np.ndarray, scores: np.ndarray) -> dict:
    """Agreement and how much of the disagreement is patches within int8's own error of a tie."""
    top2 = np.sort(ref_scores, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    change = np.abs(scores - ref_scores).max(axis=1)
    agree = scores.argmax(1) == ref_scores.argmax(1)
    tie = margin < 2 * change
    return {"patches": int(len(agree)), "patch_agreement": round(float(agree.mean()), 5),
            "fp32_top2_margin_median": round(float(np.median(margin)), 5),
            "int8_score_change_median": round(float(np.median(change)), 5),
            "int8_score_change_p90": round(float(np.percentile(change, 90)), 5),
            "share_within_tie": round(float(tie.mean()), 4),
            "disagreeing": int((~agree).sum()), "disagreeing_within_tie": int((~agree & tie).sum())}


def float_activations(model, names: set[str]):
    """``model`` (an int8 cpu bundle's graph, ``MatMulIntegerToFloat`` form) with the named int8 MatMuls reading
    their float input instead (weights stay the int8 ones, dequantized): what those activations' quantization
    costs. The uint8 layout ops between a QuantizeLinear and its MatMul are replayed on the float input."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    nodes = []
    for n in g.node:
        if n.op_type != "MatMulIntegerToFloat" or n.name not in names:
            nodes.append(n)
            continue
        chain, t = [], n.input[0]
        while producer[t].op_type != "QuantizeLinear":
            chain.append(producer[t])
            t = producer[t].input[0]
        x = producer[t].input[0]
        for c in reversed(chain):
            nodes.append(helper.make_node(c.op_type, [x, *c.input[1:]], [f"{c.output[0]}/float"],
                                          name=f"{c.name}/float",
                                          **{a.name: helper.get_attribute_value(a) for a in c.attribute}))
            x = f"{c.output[0]}/float"
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[n.input[5]]).astype(np.float32) if len(n.input) > 5 and n.input[5] else 0
        g.initializer.append(numpy_helper.from_array((w - zero) * numpy_helper.to_array(inits[n.input[3]]),
                                                     f"{n.name}/weight_dequantized"))
        bias = n.input[6] if len(n.input) > 6 and n.input[6] else None
        out = f"{n.output[0]}/nobias" if bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [x, f"{n.name}/weight_dequantized"], [out], name=f"{n.name}/float"))
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [n.output[0]], name=f"{n.name}/float_bias"))
    del g.node[:]
    g.node.extend(nodes)
    return model


def ablation_groups(model) -> dict[str, list[str]]:
    """Groups of int8 MatMuls to put back on float activations: each block, each projection kind over all
    blocks, the patch embedding, the two output projections, all."""
    mm = [n.name for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    groups = {"none": []}
    groups.update({f"block {b}": [n for n in mm if f"/blocks.{b}/" in n] for b in range(12)})
    groups.update({f"every {k}": [n for n in mm if f"/{k}/" in n]
                   for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")})
    groups.update({"patch embedding": [n for n in mm if "patch_embed" in n],
                   "patch output projection (proj_1)": [n for n in mm if "/visual/proj_1/" in n],
                   "image output projection (proj)": [n for n in mm if "/visual/proj/" in n], "all": mm})
    return {k: v for k, v in groups.items() if v or k == "none"}


def ablate(bundle: Path, evals: np.ndarray, ref_scores: np.ndarray, texts: np.ndarray) -> dict:
    import onnx
    import onnxruntime as ort
    from alternatives import _split

    base = onnx.load(str(bundle / "image_encoder.onnx"))
    out = {}
    for label, names in ablation_groups(base).items():
        model = onnx.ModelProto()
        model.CopyFrom(base)
        so = ort.SessionOptions()
        so.log_severity_level = 3  # the int8 initializers left unused are reported one by one
        s = ort.InferenceSession(float_activations(model, set(names)).SerializeToString(), so,
                                 providers=["CPUExecutionProvider"])
        patches = np.concatenate([_split(s.run(None, {"pixel_values": evals[i:i + 1]}))[1] for i in range(len(evals))])
        out[label] = {"matmuls": len(names), **near_ties(ref_scores, _unit_scores(patches, texts))}
        print(f"  float activations: {label:<34} agreement {out[label]['patch_agreement']:.4f} "
              f"({out[label]['disagreeing']} disagree), score change median {out[label]['int8_score_change_median']}",
              flush=True)
    return out


def time_bundles(bundles: dict[str, Path], rounds: int, per_round: int = 10) -> dict:
    """Batch-1 encode time of each bundle's image encoder on ONNX Runtime (2 threads, spinning on) and OpenVINO
    (2 threads), in rounds whose order alternates (``interleaved_times``, auto's measurement); per bundle the
    median and the per-round ratio of medians over the first bundle."""
    from vlmedge.manifest import read_manifest
    from vlmedge.runtime.grounding.backends import interleaved_times, open_session, openvino_version

    x = np.random.default_rng(0).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
    out = {}
    for backend in ("onnxruntime", "openvino") if openvino_version() else ("onnxruntime",):
        sessions = {n: open_session(backend, b / read_manifest(b).image_file(backend), threads=2, spinning=True)
                    for n, b in bundles.items()}
        for s in sessions.values():
            for _ in range(3):
                s.run(x)
        times = interleaved_times(sessions, x, rounds, per_round)
        del sessions
        rounds_ms = {n: np.median(np.asarray(v).reshape(rounds, per_round), axis=1) for n, v in times.items()}
        first = next(iter(rounds_ms.values()))
        out[backend] = {n: {"median_ms": round(float(np.median(v)), 2),
                            "paired_over_first": round(float(np.median(v / first)), 3),
                            "rounds_faster_than_first": int((v < first).sum()), "rounds": rounds}
                        for n, v in rounds_ms.items()}
        print(backend, out[backend], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alt", type=Path, required=True, help="the folder `alternatives.py make` wrote")
    ap.add_argument("--work", type=Path, required=True, help="where the int8 bundles go (kept, reused)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    ap.add_argument("--scenes", type=int, default=8, help="evaluation scenes (default 8, the alternatives' own)")
    ap.add_argument("--ablate", action="store_true",
                    help="per recipe: agreement with groups of int8 MatMuls reading float activations (what limits it)")
    ap.add_argument("--time-rounds", type=int, default=0,
                    help="also time the recipes' image encoders, ONNX Runtime and OpenVINO, this many paired rounds")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import onnxruntime as ort
    from alternatives import _split, text_embeddings
    from contention import build_model

    from vlmedge.errors import check_choice
    from vlmedge.export.bundle import export_bundle
    from vlmedge.manifest import read_manifest
    from vlmedge.runtime.grounding.backends import open_session, openvino_version

    names = args.recipes.split(",")
    for name in names:
        check_choice("recipe", name, RECIPES)
    vit = args.alt / "vitb16"
    evals, ref_patches = eval_set(vit / "fp32", args.scenes)
    texts = text_embeddings(vit / "fp32")
    ref_scores = _unit_scores(ref_patches, texts)
    results = {}
    for name in names:
        dst = args.work / name
        t = time.time()
        if not (dst / "manifest.json").is_file():
            options = {k: v for k, v in RECIPES[name].items() if k not in ("recipe", "qk_only")}
            with cpu_recipe(**RECIPES[name].get("recipe", {})), qk_only(RECIPES[name].get("qk_only", False)):
                export_bundle(build_model(16, 1, 0), dst, precision="int8", calib="synthetic", force=True, **options)
        s = ort.InferenceSession(str(dst / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
        patches = np.concatenate([_split(s.run(None, {"pixel_values": evals[i:i + 1]}))[1] for i in range(len(evals))])
        results[name] = {"recipe": RECIPES[name], **near_ties(ref_scores, _unit_scores(patches, texts)),
                         "seconds": round(time.time() - t, 1)}
        if openvino_version():  # the same file as OpenVINO runs it (auto's choice for ViT-B here)
            ov = open_session("openvino", dst / read_manifest(dst).image_file("openvino"), threads=2)
            patches = np.concatenate([_split(ov.run(evals[i:i + 1]))[1] for i in range(len(evals))])
            results[name]["openvino"] = near_ties(ref_scores, _unit_scores(patches, texts))
            del ov
        print(name, results[name], flush=True)
        if args.ablate:
            results[name]["float_activations"] = ablate(dst, evals, ref_scores, texts)
    timing = time_bundles({n: args.work / n for n in names}, args.time_rounds) if args.time_rounds > 0 else None
    if args.json:
        from vlmedge.floor import cpu_model

        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "model": "ViT-B/16 image tower, random "
                                         "weights (contention.build_model(16, 1, 0)), int8 cpu bundles",
                                         "cpu": cpu_model(), "cores": os.cpu_count(),
                                         "eval": f"{len(evals)} scenes x {len(texts)} texts", "results": results,
                                         "timing_batch1_2threads": timing}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
