"""PyTorch eager timing of a checkpoint's image encoder: the baseline `vlmedge bench --torch-baseline`
compares a bundle with. Runs as a child process (``python -m vlmedge.export.torch_baseline JSON``) so
that the benchmarking process itself stays torch-free."""

from __future__ import annotations

import json
import sys
import time

from vlmedge.timing import stats_ms


def time_encoder(spec: dict) -> dict:
    import torch

    from vlmedge.export.loaders import load_clip

    torch.set_num_threads(int(spec["threads"]))
    model = load_clip(spec["source"], image_size=tuple(spec["image_size"])).model
    x = torch.randn(1, 3, *spec["image_size"])
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model.encode_image(x)
        for _ in range(int(spec["frames"])):
            t = time.perf_counter()
            model.encode_image(x)
            times.append((time.perf_counter() - t) * 1e3)
    return {**stats_ms(times), "torch": torch.__version__, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vlmedge.export.torch_baseline JSON (internal; use `vlmedge bench --torch-baseline`)")
    print(json.dumps(time_encoder(json.loads(sys.argv[1]))))
