"""Does ``--backend auto`` predict the memory of the process it chooses for? (issue #17, the 350 MB budget)

For each bundle, in fresh child processes:

* ``shared``: both image encoders opened and run one after the other in ONE process, each backend's share
  taken as the growth while it loaded (how auto measured before 2026-11-30: the second backend reuses heap the
  first one freed);
* ``alone``: each backend in a process of its own (``backends.measure_resident``, how auto measures now);
* ``real``: a process that opens ``BundleEncoders(bundle, backend=X)`` and grounds a frame three times through a
  ``Grounder``, as ``vlmedge run`` does: its resident memory before the encoders and at the end.

OpenVINO appears twice: ``openvino`` compiles its cached IR of the file (the default since 2026-11-30: the weights
a file mapping, handed back once repacked; ``runtime/grounding/openvino_ir.py``) and ``openvino-onnx`` the ONNX
file itself (``VLMEDGE_OPENVINO_IR=0``: the weights twice on the heap).

Memory is not timing: these figures do not need a quiet machine (but they take CPU from a timing run beside them).

    python benchmarks/auto_memory.py BUNDLE [BUNDLE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from vlmedge.runtime.grounding import backends as B

_SHARED = """
import json, sys
from vlmedge.runtime.grounding import backends as B
paths, shape = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
x = B._input(shape)
rss = [B._rss_mb()]
for b in ("onnxruntime", "openvino"):
    s = B.open_session(b, paths[b], threads=2)
    for _ in range(3):
        s.run(x)
    rss.append(B._rss_mb())
    globals()["keep_" + b] = s
print(json.dumps({"onnxruntime": round(rss[1] - rss[0], 1), "openvino": round(rss[2] - rss[1], 1)}))
"""

_REAL = """
import json, sys
from vlmedge.runtime.grounding import backends as B
from vlmedge.runtime.grounding.encoders import BundleEncoders
from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.scenes.render import render_scene
frame = render_scene(1).frame
before = B._rss_mb()
g = Grounder(BundleEncoders(sys.argv[1], backend=sys.argv[2], threads=2), smoothing=False)
for _ in range(3):
    g.ground(frame, ["the red cup"])
B.release_free_heap()
m = B.memory_mb()
print(json.dumps({"before_encoders": before, "end": m.get("VmRSS"), "peak": m.get("VmHWM"),
                  "text_encoder_loads": g.encoders.text_loads}))
"""


# OpenVINO measured twice: compiling its cached IR (the default, weights mapped and handed back once repacked) and
# compiling the ONNX file ($VLMEDGE_OPENVINO_IR=0: the weights twice on the heap, how it ran before 2026-11-30)
FORMS = {"onnxruntime": ("onnxruntime", "1"), "openvino": ("openvino", "1"), "openvino-onnx": ("openvino", "0")}


def _run(code: str, *args: str, ir: str = "1") -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "VLMEDGE_OPENVINO_IR": ir})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(bundle: str) -> dict:
    from vlmedge.manifest import Manifest

    with open(f"{bundle}/manifest.json", encoding="utf-8") as f:
        m = Manifest.from_dict(json.load(f))
    # each backend on the file it runs (a cpu int8 bundle has OpenVINO's own: Manifest.image_file)
    paths = {b: f"{bundle}/{m.image_file(b)}" for b in ("onnxruntime", "openvino")}
    shape = [d if isinstance(d, int) else 1 for d in m.image_encoder.inputs[0].shape]
    alone = {f: _run(f"import json, sys\nfrom vlmedge.runtime.grounding import backends as B\n"
                     f"print(json.dumps(B.measure_resident(sys.argv[1], {tuple(shape)}, '{b}', threads=2, "
                     f"spinning=False)))", paths[b], ir=ir) for f, (b, ir) in FORMS.items()}
    real = {f: _run(_REAL, bundle, b, ir=ir) for f, (b, ir) in FORMS.items()}
    predicted = {f: round(real[f]["before_encoders"] + B.PIPELINE_RESERVE_MB + alone[f], 1) for f in alone}
    shared = {**_run(_SHARED, json.dumps(paths), json.dumps(shape)),
              "openvino-onnx": _run(_SHARED, json.dumps(paths), json.dumps(shape), ir="0")["openvino"]}
    return {"bundle": bundle, "shared": shared, "alone": alone, "real": real,
            "predicted_total_mb": predicted, "budget_mb": B.MEMORY_BUDGET_MB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = []
    for bundle in args.bundles:
        r = measure(bundle)
        results.append(r)
        print(bundle)
        for b in FORMS:
            print(f"  {b:<13} shared +{r['shared'][b]:6.1f} MB  alone +{r['alone'][b]:6.1f} MB  predicted "
                  f"{r['predicted_total_mb'][b]:6.1f} MB  real {r['real'][b]['end']:6.1f} MB (peak "
                  f"{r['real'][b]['peak']:.1f}, text encoder loads {r['real'][b]['text_encoder_loads']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "cpu": B.cpu_model(), "machine": platform.node(),
                       "versions": {"onnxruntime": B.onnxruntime_version(), "openvino": B.openvino_version()},
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
