"""runtime.encoders.BundleEncoders: torch-free import, input validation, providers, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    import torch

    from vlmedge.export.bundle import export_bundle

    from _bundles import tiny_clip

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("e") / "bundle"
    export_bundle(tiny_clip(seed=5), out, vocab=["the red cup", "a blue ball", "background"])
    return out


def test_runtime_encoders_and_export_commands_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import vlmedge, vlmedge.runtime, vlmedge.runtime.grounding.encoders, vlmedge.cli.export\n"
            "import vlmedge.export.verify\n"
            "from vlmedge.cli import build_parser; build_parser()\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_encodes_images_and_texts(bundle):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    enc = BundleEncoders(bundle)
    assert enc.image_size == (64, 64) and enc.embed_dim == 32 and enc.providers == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    img, patches = enc.encode_image(x)
    assert img.dtype == np.float32 and img.shape == (2, 32) and patches.shape == (2, 8, 8, 32)
    assert np.allclose(np.linalg.norm(img, axis=-1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(patches, axis=-1), 1, atol=1e-5)
    one, _ = enc.encode_image(x[:1])
    assert np.abs(one - img[:1]).max() < 1e-5  # batch entries are independent
    texts = enc.encode_text(["the red cup", "a blue ball"])
    assert texts.shape == (2, 32) and texts.dtype == np.float32
    assert np.array_equal(texts, enc.encode_ids(enc.tokenizer.encode(["the red cup", "a blue ball"])))
    assert not np.allclose(texts[0], texts[1])
    queries, embeds = enc.text_embeddings()
    assert queries == ["the red cup", "a blue ball", "background"]
    assert np.abs(embeds[:2] - texts).max() < 1e-5


@pytest.mark.parametrize("bad", [
    np.zeros((1, 3, 32, 32), np.float32), np.zeros((3, 64, 64), np.float32), np.zeros((1, 3, 64, 64), np.float64),
    np.zeros((0, 3, 64, 64), np.float32), [[0.0]],
])
def test_bad_pixels_are_input_errors(bundle, bad):
    from vlmedge.errors import InputError
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    with pytest.raises(InputError, match="pixel_values"):
        BundleEncoders(bundle).encode_image(bad)


def test_bad_texts_and_ids_are_input_errors(bundle):
    from vlmedge.errors import InputError
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    enc = BundleEncoders(bundle)
    for bad in ("the red cup", [], [1, 2], None):
        with pytest.raises(InputError, match="texts"):
            enc.encode_text(bad)
    with pytest.raises(InputError, match=r"int64 \[N,16\]"):
        enc.encode_ids(np.zeros((1, 77), np.int64))
    with pytest.raises(InputError, match="int64"):
        enc.encode_ids(np.zeros((1, 16), np.int32))


def test_missing_provider_is_backend_unavailable(bundle):
    import onnxruntime as ort

    from vlmedge.errors import BackendUnavailable
    from vlmedge.runtime.grounding.encoders import BundleEncoders, choose_providers

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        BundleEncoders(bundle, providers=["CUDAExecutionProvider"])
    assert choose_providers("cuda", None) == ["CPUExecutionProvider"]  # best available, with a warning
    assert choose_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_threads_default_to_physical_cores(bundle):
    from vlmedge.runtime.grounding.encoders import BundleEncoders, physical_cores

    n = physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    assert BundleEncoders(bundle).threads == n
    assert BundleEncoders(bundle, threads=1, verify=False).threads == 1


def test_spinning_is_an_explicit_choice_with_the_same_results(bundle):
    from vlmedge.errors import ConfigError
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    x = np.random.default_rng(1).normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    spinning, still = BundleEncoders(bundle, spinning=True), BundleEncoders(bundle, verify=False)
    assert still.spinning is False and spinning.spinning is True  # off by default: degrades least under load
    a, b = still.encode_image(x), spinning.encode_image(x)
    assert np.abs(a[0] - b[0]).max() < 1e-5 and np.abs(a[1] - b[1]).max() < 1e-5
    with pytest.raises(ConfigError, match="spinning"):
        BundleEncoders(bundle, spinning="yes", verify=False)


def test_onnx_runtime_block_base_splits_work_differently_with_the_same_results_and_is_checked(bundle):
    from vlmedge.errors import ConfigError
    from vlmedge.manifest import read_manifest
    from vlmedge.runtime.grounding.backends import OrtSession

    path = bundle / read_manifest(bundle).image_file("onnxruntime")
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    own, blocks = OrtSession(path, threads=2), OrtSession(path, threads=2, block_base=4)
    for a, b in zip(own.run(x), blocks.run(x), strict=True):
        np.testing.assert_array_equal(a, b)  # how the loops are handed out, not what they compute
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="block base"):
            OrtSession(path, threads=2, block_base=bad)


def test_text_encoder_loads_only_for_a_text_outside_the_vocabulary_and_is_released_when_idle(tiny_bundles):
    from vlmedge.runtime.grounding.encoders import BundleEncoders
    from vlmedge.runtime.grounding.grounder import Grounder

    vocab = ("the red cup", "background", "a table", "a wall", "the floor")
    enc = BundleEncoders(tiny_bundles(vocab=vocab), text_idle_s=0.3)
    g = Grounder(enc)
    g.text_embeddings(["the red cup"])
    assert not enc.text_loaded and enc.text_loads == 0  # the vocabulary (and the background prompts) sufficed
    first = g.text_embeddings(["a blue ball"])  # not in the vocabulary: loaded now
    assert enc.text_loads == 1 and g.text_encoder_calls == 1
    px = np.zeros((1, 3, 64, 64), np.float32)
    enc.encode_image(px)
    assert enc.text_loaded  # used just now: kept
    deadline = time.monotonic() + 60
    while enc.text_loaded and time.monotonic() < deadline:  # the loop's next encode after 0.3 s idle releases it
        time.sleep(0.05)
        enc.encode_image(px)
    assert not enc.text_loaded
    assert not [t.name for t in threading.enumerate() if t.name.startswith("vlmedge")]  # no timer thread left
    again = enc.encode_text(["a blue ball"])  # loaded again on demand, same result
    assert enc.text_loads == 2 and np.abs(again[0] / np.linalg.norm(again[0]) - first[0]).max() < 1e-5
    enc.release_text_encoder()
    assert not enc.text_loaded


def test_text_encoder_release_policy_is_validated_and_none_keeps_it(tiny_bundle_dir):
    from vlmedge.errors import ConfigError
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    keep = BundleEncoders(tiny_bundle_dir, text_idle_s=None)
    keep.encode_text(["the red cup"])
    assert not keep.release_idle_text_encoder() and keep.text_loaded
    now = BundleEncoders(tiny_bundle_dir, text_idle_s=0, verify=False)
    now.encode_text(["the red cup"])
    assert not now.text_loaded and now.text_loads == 1  # 0: released right after each use
    for bad in (-1, "60", True):
        with pytest.raises(ConfigError, match="text_idle_s"):
            BundleEncoders(tiny_bundle_dir, text_idle_s=bad, verify=False)
