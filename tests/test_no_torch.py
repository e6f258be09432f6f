"""The runtime must work where torch cannot be imported: every runtime and core module, plus grounding,
classification, the run loop and the CLI parser, in a subprocess with ``sys.modules['torch'] = None``."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib, json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from pathlib import Path
root, bundle = Path(sys.argv[1]), sys.argv[2]
import vlmedge, vlmedge.runtime
names = []
for folder, package in (("vlmedge", "vlmedge"), ("runtime", "vlmedge.runtime")):
    for f in sorted((root / folder).rglob("*.py")):
        parts = f.relative_to(root / folder).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # running it is the CLI itself
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        names.append(".".join((package, *parts)))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{type(e).__name__}: {e}"

from vlmedge.runtime.grounding.grounder import Grounder
from vlmedge.scenes.render import render_scene
from vlmedge.runtime.app import RunConfig, run
from vlmedge.cli import build_parser
g = Grounder(bundle)
res = g.ground(render_scene(3).frame, ["the red cup", "a blue ball"])
cls = g.classify(render_scene(3).frame, ["cup", "ball"])
summary = run(RunConfig(source="synthetic://tabletop", bundle=bundle, max_frames=2, display=False,
                        publish=None, control=None, print_interval_s=None), grounder=g)
build_parser()
torch_loaded = [m for m, v in sys.modules.items() if (m == "torch" or m.startswith("torch.")) and v is not None]
print(json.dumps({"modules": names, "failed": failed, "maps": list(res.maps.shape), "targets": len(res.targets),
                  "labels": list(cls.labels), "frames": summary.frames, "torch_loaded": torch_loaded}))
"""


def test_runtime_never_imports_torch(tiny_bundle_dir):
    # the bundle is built beforehand (with torch) by the fixture, in the test process
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tiny_bundle_dir)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]
    assert out["torch_loaded"] == []
    mods = set(out["modules"])
    for required in ("vlmedge.runtime.grounding.grounder", "vlmedge.runtime.app", "vlmedge.runtime.bench",
                     "vlmedge.cli.run", "vlmedge.cli.bench", "vlmedge.cli.args", "vlmedge.similarity",
                     "vlmedge.preprocess"):
        assert required in mods
    assert out["maps"] == [2, 480, 640] and out["targets"] >= 2
    assert sorted(out["labels"]) == ["ball", "cup"] and out["frames"] == 2
