"""Damaged bundles are refused at load with an error naming the file and the problem;
verify_bundle checks encoders and reports parity against the torch source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmedge.errors import ArtifactError  # noqa: E402
from vlmedge.export.bundle import export_bundle  # noqa: E402
from vlmedge.export.verify import verify_bundle  # noqa: E402
from vlmedge.manifest import open_bundle  # noqa: E402
from vlmedge.runtime.grounding.encoders import BundleEncoders  # noqa: E402

from _bundles import tiny_clip  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=4)


@pytest.fixture(scope="module")
def pristine(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "bundle"
    export_bundle(model, out, vocab=["the red cup", "a blue ball"])
    return out


@pytest.fixture
def bundle(pristine, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def _refused(bundle: Path, *patterns: str) -> None:
    for load in (open_bundle, BundleEncoders, verify_bundle):
        with pytest.raises(ArtifactError) as err:
            load(bundle)
        for p in patterns:
            assert p in str(err.value), f"{load.__name__}: {err.value}"


def test_pristine_bundle_verifies(pristine, model):
    report = verify_bundle(pristine, against=model, runs=2)
    text = report.summary()
    assert "sha256 match" in text and "unit norm" in text and "text_embeddings: 2 queries" in text
    assert report.parity["image_max_abs"] <= 1e-4 and report.parity["patch_max_abs"] <= 1e-4
    assert report.parity["text_max_abs"] <= 1e-4 and report.parity["image_cosine_min"] > 0.9999
    assert report.latency_ms["onnxruntime"] > 0 and report.latency_ms["torch_eager"] > 0


def test_truncated_file_is_refused(bundle):
    f = bundle / "image_encoder.onnx"
    f.write_bytes(f.read_bytes()[:-100])
    _refused(bundle, str(f), "truncated")


def test_tampered_file_is_refused(bundle):
    f = bundle / "text_encoder.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    _refused(bundle, str(f), "sha256 mismatch")


def test_missing_file_is_refused(bundle):
    (bundle / "tokenizer.json").unlink()
    _refused(bundle, str(bundle / "tokenizer.json"), "missing")


def test_unknown_format_version_is_refused(bundle):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    _refused(bundle, str(path), "unknown format_version 99")


def test_manifest_that_is_not_json_is_refused(bundle):
    (bundle / "manifest.json").write_text("{not json")
    _refused(bundle, "manifest.json", "not valid JSON")


def test_stored_text_embeddings_that_disagree_are_refused(bundle):
    """A bundle re-hashed after editing text_embeddings.npz passes the hash check, not verify."""
    from vlmedge.manifest import file_entry

    npz = bundle / "text_embeddings.npz"
    with np.load(npz) as z:
        queries, embeds = z["queries"], z["embeds"]
    np.savez(npz, queries=queries, embeds=embeds[::-1].copy())
    data = json.loads((bundle / "manifest.json").read_text())
    data["files"]["text_embeddings.npz"] = file_entry(npz)
    (bundle / "manifest.json").write_text(json.dumps(data))
    open_bundle(bundle)  # hashes are consistent again
    with pytest.raises(ArtifactError, match="disagree with the text encoder"):
        verify_bundle(bundle)


def test_an_openvino_image_encoder_that_is_another_model_is_refused_by_verify(tiny_bundles, tmp_path):
    """A cpu int8 bundle's two image encoder files are one encoder in two forms: verify runs both (ONNX Runtime)
    and says so. Another model's OpenVINO file put in its place, re-hashed (same shapes, the image role: the
    load-time checks pass), is refused by verify naming the file."""
    from vlmedge.manifest import file_entry

    src = tiny_bundles(precision="int8")
    report = verify_bundle(src)
    assert any("image_encoder_openvino.onnx (OpenVINO's image encoder): the outputs of image_encoder.onnx" in c
               for c in report.checks), report.checks
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    shutil.copyfile(tiny_bundles(precision="int8", seed=1) / "image_encoder_openvino.onnx",
                    bundle / "image_encoder_openvino.onnx")
    data = json.loads((bundle / "manifest.json").read_text())
    data["files"]["image_encoder_openvino.onnx"] = file_entry(bundle / "image_encoder_openvino.onnx")
    (bundle / "manifest.json").write_text(json.dumps(data))
    open_bundle(bundle)  # hashes and graphs are consistent
    with pytest.raises(ArtifactError, match="OpenVINO's image encoder disagrees with image_encoder.onnx") as err:
        verify_bundle(bundle)
    assert str(bundle / "image_encoder_openvino.onnx") in str(err.value)
