"""Pillow-compatible separable resampling of uint8 images.

Reproduces ``PIL.Image.resize`` (Pillow >= 9, 8-bit images) for the BICUBIC (a=-0.5),
BILINEAR and BOX filters bit for bit: the filter support is scaled by the downscale factor
(antialiasing, unlike ``cv2.INTER_CUBIC``), the same per-pixel windows, the same 22-bit
fixed-point weights, rounding and clipping to uint8 after each
pass (horizontal first, or vertical first where Pillow >= 13 does so: see ``vertical_first``).

Two interchangeable implementations of a pass, bit-identical to each other and to Pillow:

* compiled (``vlm_resample_rows`` in ``_kernels.c``, see ``_native``): Pillow's own int32
  fixed-point loop, vectorized over a row. 640x480 -> 224x224 CLIP crop: ~0.5 ms here.
* numpy (always there; the fallback, or forced with ``VLMEDGE_KERNELS=numpy``): described below.

numpy: products of integers and fixed-point weights are exact in float64, so the results equal
Pillow's. The weights of a pass form a banded matrix, precomputed and cached per (sizes,
output range, filter) as small dense blocks. Images stay interleaved (H, W, C): a vertical pass is
``weights @ image.reshape(H, W * C)``, one wide product per block of output rows; a horizontal pass
transposes the image (``cv2.transpose``, cheap on uint8) and does the same. Each block's input rows
are converted to float64 just before its product, so they are still in cache. Products are split
so that each stays below OpenBLAS's multithreading threshold: threaded small GEMMs on a busy 2-4
core robot computer were 10-40x slower than single-threaded ones here, and they fight the
inference runtime for cores. 640x480 -> 224x224 CLIP crop: ~1.5 ms on one core here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from vlmedge.preprocess import native as _native

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
_MAX_GEMM_WORK = 250_000  # M*N*K per product; OpenBLAS goes multithreaded above 65536*4 (interface/gemm.c)
_TARGET_BLOCK_INPUTS = 32


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
    widest: int  # most inputs a block reads
    work: int  # largest block's outputs x inputs (per column of a product)
    # for the compiled kernel: per output, its first input (from lo), number of taps, int32 weights
    starts: np.ndarray  # [n] int32
    counts: np.ndarray  # [n] int32
    weights: np.ndarray  # [n, taps] int32, Pillow's fixed-point coefficients, zero-padded
    exact_int32: bool  # no int32 sum can overflow (always, for Pillow's filters; checked anyway)


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

    Outputs are grouped in blocks reading at most ~32 inputs (8 outputs when shrinking 640 -> 298):
    wider blocks multiply too many zeros (blocks of 32 outputs cost ~0.3 ms more per 640x480 frame
    here), narrower ones make too many tiny products.
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
    lo = min(b[2] for b in blocks)
    fixed = np.zeros((len(rows), taps), dtype=np.int64)
    for j, (_, k) in enumerate(rows):
        fixed[j, :len(k)] = np.rint(k * (1 << _PRECISION_BITS))  # exact: k holds integers / 2**22
    worst = 255 * int(np.abs(fixed).sum(axis=1).max()) + (1 << (_PRECISION_BITS - 1))
    tables = [np.array([x - lo for x, _ in rows], dtype=np.int32),
              np.array([len(k) for _, k in rows], dtype=np.int32), fixed.astype(np.int32)]
    for t in tables:
        t.flags.writeable = False
    return Pass(tuple(blocks), lo, max(b[3] for b in blocks),
                widest=max(i1 - i0 for _, _, i0, i1, _ in blocks),
                work=max((o1 - o0) * (i1 - i0) for o0, o1, i0, i1, _ in blocks),
                starts=tables[0], counts=tables[1], weights=tables[2], exact_int32=worst < 2**31)


_NUDGE = 2.0 ** -24  # < one fixed-point step (2**-22): turns round-half-even into Pillow's floor(x + 0.5)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Pillow's clip8 of a fixed-point sum, floor(x + 0.5) clipped to [0, 255], as uint8 in one pass.

    x is a multiple of 2**-22; OpenCV's saturating conversion rounds half to even, and rounding
    x + 2**-24 to nearest equals floor(x + 0.5) for every such x (ties can no longer occur)."""
    return cv2.add(x, _NUDGE, dtype=cv2.CV_8U)


def _rows(src: np.ndarray, p: Pass, first_in: int, first_out: int, n_out: int) -> np.ndarray:
    """Resize along axis 0: src [inputs first_in.., W, C] uint8 -> [n_out, W, C] uint8 (outputs first_out..)."""
    if _native.resample_rows is not None and p.exact_int32:
        return _rows_compiled(src, p, first_in, n_out)
    flat = src.reshape(src.shape[0], -1)
    m = flat.shape[1]
    out = np.empty((n_out, m), dtype=np.float64)
    chunks = -(-m * p.work // _MAX_GEMM_WORK)  # columns split evenly into products under the limit
    step = -(-m // chunks)
    buf = np.empty((p.widest, min(step, m)), dtype=np.float64)
    for x in range(0, m, step):
        x1 = min(x + step, m)
        for o0, o1, i0, i1, wb in p.blocks:
            b = buf[:i1 - i0, :x1 - x]
            np.copyto(b, flat[i0 - first_in:i1 - first_in, x:x1])
            np.matmul(wb, b, out=out[o0 - first_out:o1 - first_out, x:x1])
    return _to_uint8(out).reshape(n_out, *src.shape[1:])


def _rows_compiled(src: np.ndarray, p: Pass, first_in: int, n_out: int) -> np.ndarray:
    """``_rows`` by the C kernel: all of the pass's outputs, in one call."""
    flat = src.reshape(src.shape[0], -1)
    if flat.strides[1] != 1:
        flat = np.ascontiguousarray(flat)
    if n_out != len(p.counts) or p.lo < first_in or p.hi - first_in > flat.shape[0]:
        raise ValueError(f"resampling pass reads inputs {p.lo}..{p.hi} for {len(p.counts)} outputs; got inputs "
                         f"{first_in}..{first_in + flat.shape[0]} for {n_out}")  # the kernel would read out of bounds
    out = np.empty((n_out, flat.shape[1]), dtype=np.uint8)
    first = flat.ctypes.data + (p.lo - first_in) * flat.strides[0]  # the row of input p.lo
    rc = _native.resample_rows(first, flat.strides[0], out.ctypes.data, out.strides[0], flat.shape[1], n_out,
                               p.starts.ctypes.data, p.counts.ctypes.data, p.weights.ctypes.data, p.weights.shape[1])
    if rc != 0:
        raise RuntimeError(f"resampling kernel failed (code {rc}) on {flat.shape} -> {n_out} rows")
    return out.reshape(n_out, *src.shape[1:])


def _transpose(img: np.ndarray) -> np.ndarray:
    """[H, W, C] uint8 -> [W, H, C]."""
    c = img.shape[2]
    t = cv2.transpose(img) if c in (1, 2, 3, 4) else np.ascontiguousarray(img.transpose(1, 0, 2))
    return t.reshape(img.shape[1], img.shape[0], c)


def _cols(src: np.ndarray, p: Pass, first_in: int, first_out: int, n_out: int) -> np.ndarray:
    """Resize along axis 1 (via a transpose): [H, inputs first_in.., C] -> [H, n_out, C] uint8."""
    return _transpose(_rows(_transpose(src), p, first_in, first_out, n_out))


def vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Pillow >= 13 resizes vertically first when the height shrinks by more than twice as many
    pixels as the width (python-pillow/Pillow#9549); older Pillow always goes horizontal first.
    The order changes rounding, so we follow Pillow >= 13 (the rule was checked on 400 random
    size pairs against Pillow 13.0)."""
    (h, w), (oh, ow) = in_hw, out_hw
    return oh < h and (h - oh) > 2 * (w - ow)


def resize_image(image: np.ndarray, out_size: tuple[int, int], box: tuple[int, int, int, int] | None = None,
                 interpolation: str = "bicubic") -> np.ndarray:
    """Resize a uint8 [H, W, C] image like Pillow; returns uint8 [height, width, C].

    ``out_size`` is the full resized (H', W'); ``box`` = (top, left, height, width) selects the
    part of the resized image to compute (a crop); default all of it.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, C], got {image.dtype} {image.shape}")
    if interpolation not in FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(FILTERS)}")
    h, w = image.shape[:2]
    oh, ow = out_size
    top, left, bh, bw = box if box is not None else (0, 0, oh, ow)
    # Pillow skips a pass whose size does not change (the kernel is the identity then).
    vert = plan_pass(h, oh, top, top + bh, interpolation) if oh != h else None
    horiz = plan_pass(w, ow, left, left + bw, interpolation) if ow != w else None
    r0, r1 = (vert.lo, vert.hi) if vert else (top, top + bh)
    c0, c1 = (horiz.lo, horiz.hi) if horiz else (left, left + bw)
    src = image[r0:r1, c0:c1]  # only the pixels the output depends on
    if vert is not None and horiz is not None and vertical_first((h, w), (oh, ow)):
        return _cols(_rows(src, vert, r0, top, bh), horiz, c0, left, bw)
    if horiz is not None:
        src = _cols(src, horiz, c0, left, bw)
    if vert is not None:
        src = _rows(src, vert, r0, top, bh)
    return np.ascontiguousarray(src)
