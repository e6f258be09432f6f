"""Camera frame (uint8 BGR) -> CLIP ``pixel_values`` float32 [1, 3, H, W]; numpy only, no torch.

Modes (``PreprocessSpec.mode``):

* ``shortest-crop``: the CLIP recipe. Scale the frame so it just covers (H, W) (for square
  inputs: shortest side -> H, the long side floored as Hugging Face does), then take the
  center (H, W) crop. For square sizes this is exactly Hugging Face's ``CLIPImageProcessor``
  with ``size={"shortest_edge": S}``, ``crop_size=S x S``; results are bit-identical to its
  Pillow path (transformers 5 without torchvision; Pillow 13 pass order). Non-square sizes
  use the same "cover then center-crop" rule (HF's ``shortest_edge`` = the binding side).
* ``full-frame``: resize the whole frame to (H, W), no crop; the robot keeps its whole field
  of view, and the aspect ratio changes when the frame's differs from H:W.

Resampling (``PreprocessSpec.interpolation``) is Pillow's antialiased filter, reproduced bit
for bit in :mod:`vlmedge.preprocess.resample`: ``bicubic`` (a=-0.5), ``bilinear``, or ``area`` (Pillow
BOX, i.e. area averaging when shrinking), by a compiled kernel when vlmedge was installed with a
C compiler, else by numpy, with the same output (``kernels_backend()`` says which). Values are
rounded to uint8 after each pass like Pillow, then ``(x / 255 - mean) / std`` in float32 (a 256-entry lookup
table per channel, written straight into the planar float32 array by the compiled kernel, or with ``cv2.LUT``).
`vlmedge bench` times both paths side by side.

Accepted frames: uint8 HxWx3 BGR (OpenCV's layout), HxWx4 BGRA (alpha dropped), HxW or HxWx1
grayscale (replicated to three channels, as Pillow's RGB conversion does).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from vlmedge.errors import ConfigError, InputError
from vlmedge.preprocess import native as _native
from vlmedge.preprocess.native import backend as kernels_backend
from vlmedge.preprocess.resample import resize_image
from vlmedge.spec import PreprocessSpec

_EXPECTED = "a uint8 numpy array HxWx3 (BGR), HxWx4 (BGRA, alpha dropped) or HxW / HxWx1 (grayscale)"


@dataclass(frozen=True)
class ResizePlan:
    """Where the model input comes from for one frame size and spec."""

    resized: tuple[int, int]  # (H', W') the frame is resized to
    crop: tuple[int, int, int, int]  # (top, left, H, W) taken from the resized image
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) the same region in frame pixels


@functools.lru_cache(maxsize=64)
def plan(frame_hw: tuple[int, int], spec: PreprocessSpec) -> ResizePlan:
    """Resize/crop geometry for a frame of size ``frame_hw`` = (h, w); cached."""
    h, w = frame_hw
    th, tw = spec.size
    if spec.mode == "full-frame":
        return ResizePlan((th, tw), (0, 0, th, tw), (0.0, 0.0, float(w), float(h)))
    # Cover (th, tw), flooring the free side exactly as HF's get_resize_output_image_size does.
    if th * w >= tw * h:  # height binds
        rh, rw = th, (th * w) // h
    else:
        rh, rw = (tw * h) // w, tw
    rh, rw = max(rh, th), max(rw, tw)
    top, left = (rh - th) // 2, (rw - tw) // 2
    sx, sy = w / rw, h / rh
    box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
    return ResizePlan((rh, rw), (top, left, th, tw), box)


def crop_box(frame_shape: tuple[int, ...], spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """The frame region ``(x0, y0, x1, y1)`` (pixels, floats, x1/y1 exclusive) the model input covers.

    Model pixel (i, j) of an (H, W) input sits at frame point
    ``(x0 + (j + 0.5) * (x1 - x0) / W, y0 + (i + 0.5) * (y1 - y0) / H)``; a patch grid maps onto
    the box linearly. The whole frame for ``full-frame``.
    """
    _check_spec(spec)
    shape = tuple(frame_shape)
    if len(shape) not in (2, 3) or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape[:2]):
        raise InputError(f"frame_shape must be (H, W) or (H, W, C) with positive H and W, got {shape}")
    return plan((int(shape[0]), int(shape[1])), spec).box


@functools.lru_cache(maxsize=16)
def normalize_table(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """[3, 256] float32: (v * (1/255) - mean) / std, computed the way HF's numpy path does (f64 rescale, f32 rest):
    every value ``preprocess`` writes for an 8-bit pixel ``v`` (the int8 export maps them back to ``v``)."""
    x = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    lut = ((x[None, :] - m) / s).astype(np.float32)
    lut.flags.writeable = False
    return lut


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    """Validate a frame; return it as HxWxC (C = 1 gray, 3 BGR, 4 BGRA)."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be {_EXPECTED}; got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"frame must be {_EXPECTED}; got dtype {frame.dtype} with shape {frame.shape} "
                         f"(convert with np.clip(x, 0, 255).astype(np.uint8) if it holds 0..255 values)")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise InputError(f"frame must be {_EXPECTED}; got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"frame is empty: shape {frame.shape}; expected {_EXPECTED} with H, W > 0")
    return frame


def _check_spec(spec) -> None:
    if not isinstance(spec, PreprocessSpec):
        raise ConfigError(f"spec must be a vlmedge.spec.PreprocessSpec, got {type(spec).__name__}")


_BGR_PLANES = np.array([2, 1, 0], dtype=np.int32)  # model planes R, G, B read these channels of a BGR image
_GRAY_PLANES = np.zeros(3, dtype=np.int32)


def preprocess(frame_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One uint8 BGR frame -> ``pixel_values`` float32 [1, 3, H, W] (RGB, normalized)."""
    _check_spec(spec)
    bgr = _as_bgr(frame_bgr)
    if bgr.shape[2] == 4:
        bgr = bgr[:, :, :3]  # BGRA: alpha dropped
    p = plan(bgr.shape[:2], spec)
    values = resize_image(bgr, p.resized, p.crop, spec.interpolation)  # uint8 [H, W, C], C = 1 or 3
    out = np.empty((1, 3, *spec.size), dtype=np.float32)
    if _native.normalize_planar is not None:
        if values.strides[1:] != (values.shape[2], 1):
            values = np.ascontiguousarray(values)
        lut = normalize_table(spec.mean, spec.std)
        planes = _GRAY_PLANES if values.shape[2] == 1 else _BGR_PLANES
        rc = _native.normalize_planar(values.ctypes.data, values.strides[0], values.shape[0], values.shape[1],
                                      values.shape[2], planes.ctypes.data, lut.ctypes.data, out.ctypes.data)
        if rc != 0:
            raise RuntimeError(f"normalization kernel failed (code {rc}) on {values.shape}")
    elif values.shape[2] == 1:  # grayscale: the same plane for R, G and B
        lut = normalize_table(spec.mean, spec.std)
        for c in range(3):
            out[0, c] = cv2.LUT(values[:, :, 0], lut[c])
    else:
        normalized = cv2.LUT(values, _bgr_lut(spec.mean, spec.std))  # [H, W, 3] in B, G, R order
        for c in range(3):
            out[0, c] = normalized[:, :, 2 - c]
    return out


@functools.lru_cache(maxsize=16)
def _bgr_lut(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """[1, 256, 3] float32 for cv2.LUT on BGR pixels: channel 0 (blue) gets the blue row of normalize_table."""
    lut = np.ascontiguousarray(normalize_table(mean, std)[::-1].T).reshape(1, 256, 3)
    lut.flags.writeable = False
    return lut


__all__ = ["preprocess", "crop_box", "plan", "ResizePlan", "kernels_backend", "normalize_table"]
