"""How fast the synthetic tabletop stream renders (the default `vlmedge run` source must keep up with
its 30 fps camera rate). A benchmark, not a test: wall-clock figures depend on the machine.

    python benchmarks/bench_scenes.py [--frames 90]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from vlmedge.scenes.render import TabletopStream


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90)
    args = ap.parse_args()
    stream = TabletopStream(seed=0)
    stream.read()  # first frame builds the sprites
    t = time.perf_counter()
    for _ in range(args.frames):
        stream.read()
    fps = args.frames / (time.perf_counter() - t)
    print(f"TabletopStream 480x640: {fps:.1f} fps over {args.frames} frames ({cpu_model()})"
          f"; the default source needs >= 30: {'ok' if fps >= 30 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
