"""The compiled preprocessing kernels: bit-identical to the numpy paths (themselves Pillow's and HF's
arithmetic: test_preprocess.py runs every test with both), guarded against bad input, built in CI."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmedge.preprocess import native as _native
from vlmedge.preprocess import preprocess
from vlmedge.preprocess import resample as _resample
from vlmedge.spec import PreprocessSpec

needs_kernels = pytest.mark.skipif(_native.resample_rows is None,
                                   reason=f"compiled kernels not in use: {_native.backend()}")


@pytest.mark.skipif(not os.environ.get("CI") or bool(os.environ.get("VLMEDGE_KERNELS")),
                    reason="only CI guarantees a C compiler at install time")
def test_ci_built_the_compiled_kernels():
    assert _native.resample_rows is not None, f"CI installed vlmedge without its kernels: {_native.backend()}"
    assert _native.backend().startswith("compiled (_kernels")


def _random_case(rng, i):
    h, w = (int(v) for v in rng.integers(1, 400, 2))
    oh, ow = (int(v) for v in rng.integers(1, 300, 2))
    top, left = int(rng.integers(0, oh)), int(rng.integers(0, ow))
    box = (top, left, int(rng.integers(1, oh - top + 1)), int(rng.integers(1, ow - left + 1)))
    c = int(rng.choice([1, 3, 4]))
    image = rng.integers(0, 256, (h + 3, w + 5, c), dtype=np.uint8)
    image[rng.random((h + 3, w + 5)) < 0.2] = 255  # saturated pixels: bicubic overshoot gets clipped
    view = image[1:h + 1, 2:w + 2]  # not contiguous
    return view, (oh, ow), box if i % 3 else None, str(rng.choice(sorted(_resample.FILTERS)))


@needs_kernels
def test_compiled_and_numpy_resampling_agree_bit_for_bit():
    """Random sizes (shrinking, growing, crops, both pass orders), all filters, 1/3/4 channels, strided views."""
    rng = np.random.default_rng(7)
    for i in range(150):
        args = _random_case(rng, i)
        compiled = _resample.resize_image(*args)
        with _native.numpy_only():
            reference = _resample.resize_image(*args)
        assert compiled.dtype == np.uint8 and compiled.shape == reference.shape
        assert np.array_equal(compiled, reference), f"case {i}: {args[0].shape} -> {args[1:]}"


@needs_kernels
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_compiled_and_numpy_preprocessing_agree_bit_for_bit(channels):
    rng = np.random.default_rng(channels)
    spec = PreprocessSpec(size=(48, 64), mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4), mode="full-frame")
    for hw in ((48, 64), (120, 90), (7, 300)):  # no resize at all, shrink, mixed
        frame = rng.integers(0, 256, (*hw, channels), dtype=np.uint8)
        compiled = preprocess(frame, spec)
        with _native.numpy_only():
            reference = preprocess(frame, spec)
        assert compiled.shape == (1, 3, 48, 64) and compiled.dtype == np.float32
        assert np.array_equal(compiled, reference), (hw, channels)


@needs_kernels
def test_compiled_pass_refuses_inputs_that_do_not_cover_it():
    p = _resample.plan_pass(100, 40, 0, 40, "bicubic")
    with pytest.raises(ValueError, match=r"reads inputs 0\.\.100 for 40 outputs; got inputs 0\.\.60 for 40"):
        _resample._rows_compiled(np.zeros((60, 8, 3), np.uint8), p, 0, 40)


@needs_kernels
def test_normalize_kernel_rejects_a_plane_reading_a_missing_channel():
    src = np.zeros((4, 5, 1), np.uint8)
    out = np.empty((3, 4, 5), np.float32)
    lut = np.zeros((3, 256), np.float32)
    planes = np.array([0, 0, 2], np.int32)  # channel 2 of a 1-channel image
    rc = _native.normalize_planar(src.ctypes.data, src.strides[0], 4, 5, 1, planes.ctypes.data, lut.ctypes.data,
                                  out.ctypes.data)
    assert rc == -2


def test_every_pillow_filter_fits_the_kernels_int32_sums():
    for interp in _resample.FILTERS:
        for n_in, n_out in ((640, 298), (480, 224), (7, 300), (3000, 5), (1, 1)):
            p = _resample.plan_pass(n_in, n_out, 0, n_out, interp)
            assert p.exact_int32, (interp, n_in, n_out)
            assert p.weights.dtype == np.int32 and p.weights.shape[0] == n_out == len(p.starts) == len(p.counts)
            # the fixed-point weights of each output sum to 2**22 (Pillow normalizes them), up to rounding
            assert np.all(np.abs(p.weights.sum(axis=1) - (1 << 22)) <= p.counts)


def test_numpy_only_switches_both_kernels_off_and_back():
    before = (_native.resample_rows, _native.normalize_planar, _native.backend())
    with _native.numpy_only():
        assert _native.resample_rows is None and _native.normalize_planar is None
        assert _native.backend().startswith("numpy (")
    assert (_native.resample_rows, _native.normalize_planar, _native.backend()) == before


def test_forcing_numpy_with_the_environment_variable():
    code = "from vlmedge.preprocess import native as n; print(n.backend()); assert n.resample_rows is None"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VLMEDGE_KERNELS": "numpy"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy (VLMEDGE_KERNELS=numpy)"



SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_a_missing_or_broken_library_falls_back_to_numpy_and_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("VLMEDGE_KERNELS", raising=False)
    lib, why = _native._load(tmp_path)
    assert lib is None and why.startswith("numpy (the compiled kernels were not built")
    (tmp_path / f"_kernels{SUFFIX}").write_bytes(b"not a shared library")
    lib, why = _native._load(tmp_path)
    assert lib is None and why.startswith(f"numpy (cannot load _kernels{SUFFIX}")


@needs_kernels
def test_a_library_older_than_its_source_is_not_used(tmp_path, monkeypatch):
    """An editable install whose rebuild failed (setup.py builds the kernels as optional) keeps the old
    library next to a newer _kernels.c: numpy is used until vlmedge is reinstalled."""
    monkeypatch.delenv("VLMEDGE_KERNELS", raising=False)
    name = f"_kernels{SUFFIX}"
    shutil.copyfile(Path(_native._lib._name), tmp_path / name)
    source = tmp_path / "_kernels.c"
    source.write_text("/* the source */")
    os.utime(tmp_path / name, (1_000_000, 1_000_000))
    lib, why = _native._load(tmp_path)
    assert lib is None and why == f"numpy ({name} is older than _kernels.c: reinstall vlmedge to rebuild it)"
    os.utime(source, (500_000, 500_000))
    lib, why = _native._load(tmp_path)
    assert lib is not None and lib.vlm_kernels_abi() == _native.ABI and why == f"compiled ({name})"
