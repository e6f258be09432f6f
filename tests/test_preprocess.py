"""preprocess / crop_box: parity with HF's CLIPImageProcessor (Pillow path) and Pillow, geometry, validation.

Every test here runs twice: with the compiled kernels and with the numpy fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vlmedge.errors import ConfigError, InputError
from vlmedge.preprocess import crop_box, plan, preprocess
from vlmedge.preprocess import native as _native
from vlmedge.preprocess import resample as _resample
from vlmedge.spec import OPENAI_MEAN, OPENAI_STD, PreprocessSpec

Image = pytest.importorskip("PIL.Image")  # test-only reference (Pillow)
transformers = pytest.importorskip("transformers")

STD = np.asarray(OPENAI_STD, dtype=np.float32)[:, None, None]
TOL = 1 / 255 + 1e-6  # |ours - HF| * std, i.e. one uint8 level in [0, 1] units


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def kernels(request):
    """Run the test with the compiled kernels and with the numpy paths (both must match Pillow/HF exactly)."""
    if request.param == "numpy":
        with _native.numpy_only():
            yield request.param
        return
    if _native.resample_rows is None:
        pytest.skip(f"compiled kernels not in use: {_native.backend()}")
    yield request.param


def _frame(h, w, seed=0):
    """Random texture plus hard edges and saturated areas (where bicubic overshoot gets clipped)."""
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    f[h // 3:h // 2] = 255
    f[:, w // 4:w // 3] = 0
    f[h // 2:, w // 2:, 1] = 200
    return f


@pytest.fixture(scope="module")
def hf_processor_cls():
    # transformers 5: CLIPImageProcessor is the torchvision backend; without torchvision it falls back
    # to CLIPImageProcessorPil (Pillow resize + numpy crop/rescale/normalize). Use that class directly.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    proc = transformers.CLIPImageProcessor()
    assert type(proc).__name__ == "CLIPImageProcessorPil", "torchvision present: compare against the Pil backend"
    return transformers.CLIPImageProcessorPil


def _hf(cls, bgr, **kw):
    return cls(**kw)(images=np.ascontiguousarray(bgr[:, :, ::-1]), return_tensors="np")["pixel_values"]


PILLOW_13 = int(Image.__version__.split(".")[0]) >= 13
# (1000, 300) -> 746x224: the height shrinks by > 2x the pixels the width does, so Pillow >= 13 resizes
# vertically first (python-pillow/Pillow#9549); older Pillow goes horizontal first and rounds differently.
TALL = pytest.param((1000, 300), marks=pytest.mark.skipif(not PILLOW_13, reason="Pillow < 13 uses the old pass order"))


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (720, 1280), (50, 70), (224, 224), (300, 224), (37, 500), TALL])
def test_shortest_crop_matches_hf_clip_image_processor(hf_processor_cls, hw):
    bgr = _frame(*hw)
    ours = preprocess(bgr, PreprocessSpec(size=224))
    ref = _hf(hf_processor_cls, bgr)
    assert ours.shape == ref.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert float((np.abs(ours - ref) * STD).max()) <= TOL
    # In fact the Pillow arithmetic is reproduced exactly: same uint8 values, same float32 math.
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (720, 1280), (50, 70)])
def test_non_default_sizes_match_hf(hf_processor_cls, hw):
    bgr = _frame(*hw, seed=1)
    ours = preprocess(bgr, PreprocessSpec(size=160))
    ref = _hf(hf_processor_cls, bgr, size={"shortest_edge": 160}, crop_size={"height": 160, "width": 160})
    np.testing.assert_array_equal(ours, ref)
    # Non-square input: we scale so the frame just covers 96x128, i.e. HF's shortest_edge is whichever
    # side binds for this frame (an HF recipe with shortest_edge larger than the crop zooms in further
    # and cannot be expressed by PreprocessSpec).
    spec = PreprocessSpec(size=(96, 128))
    shortest = min(plan(hw, spec).resized)
    ours = preprocess(bgr, spec)
    ref = _hf(hf_processor_cls, bgr, size={"shortest_edge": shortest}, crop_size={"height": 96, "width": 128})
    assert ours.shape == (1, 3, 96, 128)
    np.testing.assert_array_equal(ours, ref)


def test_custom_mean_std_match_hf(hf_processor_cls):
    bgr = _frame(120, 90, seed=2)
    spec = PreprocessSpec(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 2.0))
    ref = _hf(hf_processor_cls, bgr, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.25, 2.0])
    np.testing.assert_array_equal(preprocess(bgr, spec), ref)


@pytest.mark.parametrize("interp,pil_filter", [("bicubic", "BICUBIC"), ("bilinear", "BILINEAR"), ("area", "BOX")])
@pytest.mark.parametrize("size", [(224, 224), (96, 160), (600, 700), (20, 600)])
def test_full_frame_equals_pillow_resize(interp, pil_filter, size):
    if size == (20, 600) and not PILLOW_13:
        pytest.skip("vertical-first pass order needs Pillow >= 13")
    bgr = _frame(480, 640, seed=3)
    spec = PreprocessSpec(size=size, mode="full-frame", interpolation=interp)
    ours = preprocess(bgr, spec)
    rgb = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    ref = np.asarray(rgb.resize((size[1], size[0]), resample=getattr(Image.Resampling, pil_filter)))
    expected = (ref.astype(np.float32) / 255 - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(OPENAI_STD, np.float32)
    assert ours.shape == (1, 3) + size
    assert float((np.abs(ours[0] - expected.transpose(2, 0, 1)) * STD).max()) <= 1e-6


def test_full_frame_keeps_whole_field_of_view():
    # Left third blue, right third red (BGR); full-frame keeps both, shortest-crop of a wide frame loses the sides.
    bgr = np.zeros((100, 400, 3), dtype=np.uint8)
    bgr[:, :130, 0] = 255
    bgr[:, 270:, 2] = 255
    full = preprocess(bgr, PreprocessSpec(size=32, mode="full-frame"))[0]
    assert full.shape == (3, 32, 32)
    assert full[2, :, :8].mean() > 1.5 and full[0, :, :8].mean() < -1.4  # blue at the left edge
    assert full[0, :, -8:].mean() > 1.5 and full[2, :, -8:].mean() < -1.4  # red at the right edge
    crop = preprocess(bgr, PreprocessSpec(size=32))[0]
    assert crop[2].max() < -1.4 and crop[0].max() < -1.4  # the centre 100x100 has neither
    assert crop_box(bgr.shape, PreprocessSpec(size=32, mode="full-frame")) == (0.0, 0.0, 400.0, 100.0)


def test_crop_box_values():
    spec = PreprocessSpec(size=224)
    # 480x640 -> resized 224x298 (298 = floor(224 * 640 / 480)), crop columns 37..261
    x0, y0, x1, y1 = crop_box((480, 640, 3), spec)
    assert (y0, y1) == (0.0, 480.0)
    assert x0 == pytest.approx(37 * 640 / 298) and x1 == pytest.approx(261 * 640 / 298)
    assert crop_box((640, 480), spec) == pytest.approx((0.0, 37 * 640 / 298, 480.0, 261 * 640 / 298))
    assert crop_box((224, 224, 3), spec) == (0.0, 0.0, 224.0, 224.0)


@pytest.mark.parametrize("hw,spec", [((480, 640), PreprocessSpec(size=224)),
                                     ((720, 1280), PreprocessSpec(size=(96, 128))),
                                     ((640, 480), PreprocessSpec(size=(64, 96), mode="full-frame"))])
def test_crop_box_maps_model_pixels_back_to_the_frame(hw, spec):
    # A bright square at a known frame position must appear where crop_box says it does.
    h, w = hw
    bgr = np.full((h, w, 3), 40, dtype=np.uint8)
    cy, cx, r = int(h * 0.45), int(w * 0.58), max(h, w) // 20
    bgr[cy - r:cy + r, cx - r:cx + r] = 255
    x = preprocess(bgr, spec)[0, 0]
    ys, xs = np.nonzero(x > (x.max() + x.min()) / 2)
    H, W = spec.size
    x0, y0, x1, y1 = crop_box(bgr.shape, spec)
    fx = x0 + (xs.mean() + 0.5) * (x1 - x0) / W
    fy = y0 + (ys.mean() + 0.5) * (y1 - y0) / H
    assert abs(fx - cx) < 1.5 * (x1 - x0) / W and abs(fy - cy) < 1.5 * (y1 - y0) / H


def test_channel_variants():
    bgr = _frame(60, 80, seed=4)
    spec = PreprocessSpec(size=32)
    base = preprocess(bgr, spec)
    bgra = np.concatenate([bgr, np.full((60, 80, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(preprocess(bgra, spec), base)  # alpha dropped
    np.testing.assert_array_equal(preprocess(np.ascontiguousarray(bgr[::-1, ::-1]), spec),
                                  preprocess(bgr[::-1, ::-1], spec))  # non-contiguous views work
    gray = bgr[:, :, 1]
    g = preprocess(gray, spec)
    np.testing.assert_array_equal(g, preprocess(np.repeat(gray[:, :, None], 3, axis=2), spec))
    np.testing.assert_array_equal(g, preprocess(gray[:, :, None], spec))
    rgb_swapped = preprocess(np.ascontiguousarray(bgr[:, :, ::-1]), spec)
    assert not np.array_equal(rgb_swapped, base)  # channel order matters: input is BGR


def test_pass_order_rule():
    assert not _resample.vertical_first((480, 640), (224, 298))  # CLIP on landscape/portrait camera frames
    assert not _resample.vertical_first((640, 480), (298, 224))
    assert _resample.vertical_first((1000, 300), (746, 224))
    assert _resample.vertical_first((480, 640), (20, 600))
    assert not _resample.vertical_first((100, 100), (300, 10))  # height grows: horizontal first


def test_resampling_plans_are_cached():
    spec = PreprocessSpec(size=48)
    bgr = _frame(90, 130, seed=5)
    preprocess(bgr, spec)
    before = _resample.plan_pass.cache_info().hits
    preprocess(bgr, spec)
    assert _resample.plan_pass.cache_info().hits >= before + 2


@pytest.mark.parametrize("frame,pattern", [
    (np.zeros((48, 64, 3), np.float32), r"uint8.*got dtype float32 with shape \(48, 64, 3\)"),
    (np.zeros((48, 64, 2), np.uint8), r"HxWx3 \(BGR\).*got shape \(48, 64, 2\)"),
    (np.zeros((2, 48, 64, 3), np.uint8), r"got shape \(2, 48, 64, 3\)"),
    (np.zeros((0, 64, 3), np.uint8), r"frame is empty: shape \(0, 64, 3\)"),
    (np.zeros((48, 0), np.uint8), r"frame is empty: shape \(48, 0, 1\)"),
    ([[1, 2], [3, 4]], r"got list"),
])
def test_frame_validation(frame, pattern):
    with pytest.raises(InputError, match=pattern):
        preprocess(frame, PreprocessSpec(size=32))


def test_spec_and_shape_validation():
    with pytest.raises(ConfigError, match=r"spec must be a vlmedge.spec.PreprocessSpec, got dict"):
        preprocess(np.zeros((8, 8, 3), np.uint8), {"size": 8})
    with pytest.raises(InputError, match=r"frame_shape must be.*got \(0, 5\)"):
        crop_box((0, 5), PreprocessSpec(size=8))


def test_rounding_is_pillows_clip8_at_ties_and_limits():
    k = np.arange(-3, 260, dtype=np.float64)
    step = 2.0 ** -22  # the fixed-point resolution of a pass's sums
    x = np.concatenate([k + 0.5, k + 0.5 - step, k + 0.5 + step, k, k - step, k + step])
    expected = np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(_resample._to_uint8(x.reshape(1, -1)).ravel(), expected)
