"""Summary statistics of timed samples, one form for every benchmark report (`vlmedge bench`, the PyTorch
baseline it runs in a child process)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stats_ms(samples: Sequence[float]) -> dict:
    """``{"mean_ms", "p50_ms", "p99_ms", "n"}`` of millisecond samples, rounded to microseconds."""
    a = np.asarray(samples, dtype=np.float64)
    return {"mean_ms": round(float(a.mean()), 3), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "n": int(a.size)}
