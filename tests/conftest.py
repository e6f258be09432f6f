"""Session fixtures shared by the test files: bundles built (or found) once per test run.

Built on the helpers in ``_bundles`` (tiny seeded bundles exported with the real export code) and
``vlmedge.embedded`` (the shipped demo bundles). ``_bundles`` keeps its own per-process cache, so a test that
still calls ``tiny_bundle()`` directly gets the very directory these fixtures hand out: nothing is built twice
while the test files move over to the fixtures.

Torch-free at import: collecting the tests must not need torch. The tiny bundles need it to be BUILT, and
import it then.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from _bundles import tiny_bundle

# The encoder backend's auto choice caches its measurement in a user cache folder: tests (and the commands
# they start) keep theirs in a folder of this run. They run on ONNX Runtime unless a test asks for another
# backend (tests/test_backends.py tests "auto" and OpenVINO by name).
if "VLMEDGE_CACHE_DIR" not in os.environ:
    os.environ["VLMEDGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="vlmedge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["VLMEDGE_CACHE_DIR"], True)
os.environ.setdefault("VLMEDGE_BACKEND", "onnxruntime")


@pytest.fixture(scope="session")
def tiny_bundles():
    """``tiny_bundles(vocab=..., precision=..., seed=..., grounding=..., preprocess_mode=...)`` -> directory.

    For tests that need a variant of the tiny bundle; each variant is built once per run."""
    return tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle_dir() -> Path:
    """The default tiny bundle: fp32, cpu, 64x64 input, 8x8 patch grid, D=32, seeded random weights."""
    return tiny_bundle()


def _embedded(precision: str) -> Path:
    from vlmedge.embedded import embedded_bundle
    from vlmedge.errors import ArtifactError

    try:
        return embedded_bundle(precision)
    except ArtifactError as e:  # a checkout where `vlmedge train-demo` has not been run: say so, do not fail
        pytest.skip(f"embedded {precision} bundle not built: {e}")


@pytest.fixture(scope="session")
def embedded_int8() -> Path:
    """The shipped int8 demo bundle (what `vlmedge run` uses by default); skips when it is not built."""
    return _embedded("int8")


@pytest.fixture(scope="session")
def embedded_fp32() -> Path:
    """The shipped fp32 demo bundle; skips when it is not built."""
    return _embedded("fp32")
