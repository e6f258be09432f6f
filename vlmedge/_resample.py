"""Pillow-compatible separable resampling of uint8 images in numpy.

Reproduces ``PIL.Image.resize`` (Pillow >= 9, 8-bit images) for the BICUBIC (a=-0.5),
BILINEAR and BOX filters bit for bit: the filter support is scaled by the downscale factor
(antialiasing, unlike ``cv2.INTER_CUBIC``), the same per-pixel windows, the same 22-bit
fixed-point weights, rounding and clipping to uint8 after each
pass (horizontal first, or vertical first where Pillow >= 13 does so: see ``vertical_first``).
Products of integers and fixed-point weights are exact in float64, so the results equal Pillow's.

Speed: the weights of a pass form a banded matrix, precomputed and cached per (sizes,
output range, filter) as small dense blocks. Products are split so that each stays below
OpenBLAS's multithreading threshold: threaded small GEMMs on a busy 2-4 core robot computer
were 10-40x slower than single-threaded ones here, and they fight the inference runtime for cores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
_MAX_GEMM_WORK = 120_000  # M*N*K per product; OpenBLAS goes multithreaded above 65536*4
_TARGET_BLOCK_INPUTS = 128


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


# name -> (filter, support) as in Pillow; "area" is Pillow's BOX (exact area average when shrinking)
FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0), "area": (_box, 0.5)}


@dataclass(frozen=True)
class Pass:
    """One separable pass: outputs ``[start, start + n)`` read inputs ``[lo, hi)`` via dense weight blocks."""

    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]  # (o0, o1, i0, i1, weights [o1-o0, i1-i0] float64)
    lo: int
    hi: int


@functools.lru_cache(maxsize=128)
def _coefficients(in_size: int, out_size: int, start: int, stop: int, interpolation: str
                  ) -> tuple[tuple[int, np.ndarray], ...]:
    """Per output pixel: (first input index, fixed-point weights as float64), following Pillow's precompute_coeffs."""
    filt, base_support = FILTERS[interpolation]
    scale = in_size / out_size  # double precision, as in Pillow >= 9
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ss = 1.0 / filterscale
    rows = []
    for xx in range(start, stop):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size)
        w = filt((np.arange(xmin, xmax, dtype=np.float64) - center + 0.5) * ss)
        total = 0.0
        for v in w.tolist():  # sequential sum, as in C
            total += v
        if total != 0.0:
            w = w / total
        # 22-bit fixed point, rounded half away from zero (normalize_coeffs_8bpc)
        k = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION_BITS)), np.trunc(0.5 + w * (1 << _PRECISION_BITS)))
        rows.append((xmin, k / (1 << _PRECISION_BITS)))
    return tuple(rows)


@functools.lru_cache(maxsize=128)
def plan_pass(in_size: int, out_size: int, start: int, stop: int, interpolation: str) -> Pass:
    """Weights producing outputs ``start..stop-1`` of an ``in_size -> out_size`` resize (Pillow's math).

    Outputs are grouped in blocks reading at most ~128 inputs: wider blocks multiply too many
    zeros, narrower ones make too many tiny products.
    """
    rows = _coefficients(in_size, out_size, start, stop, interpolation)
    scale = in_size / out_size
    taps = max(len(k) for _, k in rows)
    block = 64
    while block > 4 and block * scale + taps > _TARGET_BLOCK_INPUTS:
        block //= 2
    blocks = []
    for b0 in range(0, len(rows), block):
        chunk = rows[b0:b0 + block]
        i0 = min(r[0] for r in chunk)
        i1 = max(r[0] + len(r[1]) for r in chunk)
        wb = np.zeros((len(chunk), i1 - i0), dtype=np.float64)
        for j, (xmin, k) in enumerate(chunk):
            wb[j, xmin - i0:xmin - i0 + len(k)] = k
        wb.flags.writeable = False
        blocks.append((start + b0, start + b0 + len(chunk), i0, i1, wb))
    return Pass(tuple(blocks), min(b[2] for b in blocks), max(b[3] for b in blocks))


def _chunk(p: Pass) -> int:
    """Length along the other axis per product, keeping M*N*K under the single-thread limit."""
    work = max((o1 - o0) * (i1 - i0) for o0, o1, i0, i1, _ in p.blocks)
    return max(1, _MAX_GEMM_WORK // work)


def _round_clip(x: np.ndarray) -> np.ndarray:
    """Pillow's clip8 on the fixed-point sum: floor(x + 0.5) clipped to [0, 255], in place."""
    np.add(x, 0.5, out=x)
    np.floor(x, out=x)
    return np.clip(x, 0.0, 255.0, out=x)


def _horizontal(src: np.ndarray, p: Pass, c0: int, left: int, bw: int) -> np.ndarray:
    """src [C, rows, inputs c0..] (float64 or uint8) -> [C, rows, bw] outputs left..left+bw, rounded."""
    c, rows = src.shape[:2]
    out = np.empty((c, rows, bw), dtype=np.float64)
    step = _chunk(p)
    buf = src if src.dtype == np.float64 else np.empty((c, min(step, rows), src.shape[2]), dtype=np.float64)
    for y in range(0, rows, step):  # row chunks: a float64 copy of the input stays in cache
        n = min(step, rows - y)
        if buf is src:
            chunk = src[:, y:y + n]
        else:
            buf[:, :n] = src[:, y:y + n]
            chunk = buf[:, :n]
        for o0, o1, i0, i1, wb in p.blocks:
            np.matmul(chunk[:, :, i0 - c0:i1 - c0], wb.T, out=out[:, y:y + n, o0 - left:o1 - left])
    return _round_clip(out)


def _vertical(src: np.ndarray, p: Pass, r0: int, top: int, bh: int) -> np.ndarray:
    """src [C, input rows r0.., cols] -> [C, bh, cols] output rows top..top+bh, rounded."""
    c, _, cols = src.shape
    if src.dtype != np.float64:
        src = src.astype(np.float64)
    out = np.empty((c, bh, cols), dtype=np.float64)
    step = _chunk(p)
    for x in range(0, cols, step):
        for o0, o1, i0, i1, wb in p.blocks:
            np.matmul(wb, src[:, i0 - r0:i1 - r0, x:x + step], out=out[:, o0 - top:o1 - top, x:x + step])
    return _round_clip(out)


def vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Pillow >= 13 resizes vertically first when the height shrinks by more than twice as many
    pixels as the width (python-pillow/Pillow#9549); older Pillow always goes horizontal first.
    The order changes rounding, so we follow Pillow >= 13 (the rule was checked on 400 random
    size pairs against Pillow 13.0)."""
    (h, w), (oh, ow) = in_hw, out_hw
    return oh < h and (h - oh) > 2 * (w - ow)


def resize_planar(planes: list[np.ndarray] | np.ndarray, out_size: tuple[int, int],
                  box: tuple[int, int, int, int] | None = None, interpolation: str = "bicubic") -> np.ndarray:
    """Resize same-size 2-D uint8 planes like Pillow; returns float64 [C, height, width] of integers 0..255.

    ``out_size`` is the full resized (H', W'); ``box`` = (top, left, height, width) selects the
    part of the resized image to compute (a crop); default all of it.
    """
    h, w = planes[0].shape
    oh, ow = out_size
    top, left, bh, bw = box if box is not None else (0, 0, oh, ow)
    if interpolation not in FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(FILTERS)}")
    # Pillow skips a pass whose size does not change (the kernel is the identity then).
    vert = plan_pass(h, oh, top, top + bh, interpolation) if oh != h else None
    horiz = plan_pass(w, ow, left, left + bw, interpolation) if ow != w else None
    r0, r1 = (vert.lo, vert.hi) if vert else (top, top + bh)
    c0, c1 = (horiz.lo, horiz.hi) if horiz else (left, left + bw)
    src = np.stack([p[r0:r1, c0:c1] for p in planes])  # only the pixels the output depends on (uint8)
    if vert is not None and horiz is not None and vertical_first((h, w), (oh, ow)):
        return _horizontal(_vertical(src, vert, r0, top, bh), horiz, c0, left, bw)
    if horiz is not None:
        src = _horizontal(src, horiz, c0, left, bw)
    if vert is not None:
        return _vertical(src, vert, r0, top, bh)
    return src.astype(np.float64)
