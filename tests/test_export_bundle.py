"""export_bundle end to end on tiny random CLIPs: parity per dense head, targets, options,
atomic writing, the CLI (export / verify / build-engine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bundles import tiny_clip  # noqa: E402

from vlmedge.errors import ArtifactError, ConfigError  # noqa: E402
from vlmedge.export.bundle import export_bundle, parse_image_size  # noqa: E402
from vlmedge.manifest import DENSE_HEADS, open_bundle, sha256_file  # noqa: E402
from vlmedge.runtime.grounding.encoders import BundleEncoders  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=1)


def _torch_embeds(model, pixels: np.ndarray, ids: np.ndarray):
    with torch.no_grad():
        img, patches = model.encode_image(torch.from_numpy(pixels))
        text = model.encode_text(torch.from_numpy(ids))
    return img.numpy(), patches.numpy(), text.numpy()


@pytest.mark.parametrize("dense", DENSE_HEADS)
def test_fp32_bundle_matches_torch_for_every_dense_head(model, dense, tmp_path):
    out = tmp_path / f"b-{dense}"
    manifest = export_bundle(model, out, dense=dense)
    enc = BundleEncoders(out)
    assert enc.manifest == manifest and manifest.dense_head == dense
    rng = np.random.default_rng(3)
    pixels = rng.normal(0, 1, (3, 3, 64, 64)).astype(np.float32)
    ids = enc.tokenizer.encode(["the red cup", "a blue ball on the table", "background"])
    model.dense_head = dense
    try:
        ref_img, ref_patch, ref_text = _torch_embeds(model, pixels, ids)
    finally:
        model.dense_head = "naive"
    img, patches = enc.encode_image(pixels)
    text = enc.encode_text(["the red cup", "a blue ball on the table", "background"])
    assert img.shape == (3, 32) and patches.shape == (3, 8, 8, 32) and text.shape == (3, 32)
    assert np.abs(img - ref_img).max() <= 1e-4
    assert np.abs(patches - ref_patch).max() <= 1e-4
    assert np.abs(text - ref_text).max() <= 1e-4
    # the caller's model is left as it was
    assert model.dense_head == "naive" and model.image_size == (64, 64)


def test_manifest_fields_and_onnx_metadata(model, tmp_path):
    out = tmp_path / "b"
    m = export_bundle(model, out, image_size="96x64", vocab=["the red cup", "a blue ball"],
                      grounding={"threshold": 0.4})
    assert m.image_size == (96, 64) and m.patch_grid == (12, 8) and m.embed_dim == 32
    assert m.logit_scale == pytest.approx(50.0, rel=1e-5)  # exp() applied
    assert m.source["id"] == "tests/tiny-random-1" and m.grounding.threshold == 0.4
    assert m.opset == 17 and m.precision == "fp32" and m.target == "cpu" and m.vlmedge_version
    assert m.preprocess.size == (96, 64)
    assert m.image_encoder.inputs[0].shape == ("batch", 3, 96, 64)
    assert m.image_encoder.outputs[1].shape == ("batch", 12, 8, 32)
    assert m.text_encoder.inputs[0].shape == ("batch", 16)
    assert set(m.files) == {"image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "text_embeddings.npz"}
    for name, entry in m.files.items():
        assert entry == {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
    extra = m.extra
    assert {"load", "trace", "optimize", "vocab", "total"} <= set(extra["timings_s"])
    assert max(extra["fp32_parity_vs_torch"].values()) < 1e-4
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["format"] == "vlmedge-bundle" and on_disk["files"] == m.files
    props = {p.key: p.value for p in onnx.load(str(out / "image_encoder.onnx")).metadata_props}
    summary = json.loads(props["vlmedge.manifest"])  # JSON, not str()
    assert summary["image_size"] == [96, 64] and summary["precision"] == "fp32" and props["vlmedge.role"] == "image"
    # external data is never used: the weights live inside the single file
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.load(str(out / "image_encoder.onnx")).graph.initializer)
    enc = BundleEncoders(out)
    queries, embeds = enc.text_embeddings()
    assert queries == ["the red cup", "a blue ball"] and embeds.shape == (2, 32)
    assert np.abs(embeds - enc.encode_text(queries)).max() < 1e-5


@pytest.mark.parametrize("target,opset", [("jetson-xavier-jp5", 16), ("jetson-orin-jp6", 17)])
def test_jetson_targets_use_static_batch_and_tensorrt_friendly_ops(model, tmp_path, target, opset):
    out = tmp_path / target
    m = export_bundle(model, out, target=target)
    graph = onnx.load(str(out / "image_encoder.onnx"))
    assert m.opset == opset and graph.opset_import[0].version == opset
    assert [o.domain for o in graph.opset_import] == [""]  # no onnxruntime-only domains
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64] and m.image_encoder.inputs[0].shape == (1, 3, 64, 64)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"FusedMatMul", "Attention", "SkipLayerNormalization", "QuickGelu", "BiasGelu"}
    if target == "jetson-xavier-jp5":  # TensorRT 8.5 has no LayerNormalization importer
        assert "LayerNormalization" not in ops
    enc = BundleEncoders(out)
    pixels = np.random.default_rng(0).normal(0, 1, (3, 3, 64, 64)).astype(np.float32)
    img, patches = enc.encode_image(pixels)  # batch 3 through a batch-1 graph
    ref_img, ref_patch, _ = _torch_embeds(model, pixels, enc.tokenizer.encode(["x"]))
    assert np.abs(img - ref_img).max() <= 1e-4 and np.abs(patches - ref_patch).max() <= 1e-4


@pytest.mark.parametrize("kwargs,match", [
    ({"precision": "int9"}, "did you mean 'int8'"),
    ({"target": "jetson-orin"}, "did you mean 'jetson-orin-jp6'"),
    ({"dense": "maskclp"}, "did you mean 'maskclip'"),
    ({"precision": "fp16", "target": "cpu"}, "fp16.*GPU targets"),
    ({"image_size": "64xabc"}, "H or HxW"),
    ({"preprocess_mode": "crop"}, "preprocess mode"),
    ({"precision": "int8", "calib": "/nonexistent/frames"}, "does not exist"),
    ({"calib_count": 0}, "calib_count"),
])
def test_bad_options_fail_before_any_work(model, tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        export_bundle(model, tmp_path / "b", **kwargs)
    assert not any(tmp_path.iterdir())


def test_image_size_must_be_a_multiple_of_the_patch(model, tmp_path):
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        export_bundle(model, tmp_path / "b", image_size=60)
    assert model.image_size == (64, 64)
    assert not any(tmp_path.iterdir())
    assert parse_image_size("224") == (224, 224) and parse_image_size("224x320") == (224, 320)


def test_existing_directory_needs_force_and_must_be_a_bundle(model, tmp_path):
    other = tmp_path / "not-a-bundle"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty.*force"):
        export_bundle(model, other)
    with pytest.raises(ConfigError, match="not a vlmedge bundle"):
        export_bundle(model, other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"

    out = tmp_path / "b"
    export_bundle(model, out)
    with pytest.raises(ConfigError, match="force"):
        export_bundle(model, out, dense="sclip")
    m = export_bundle(model, out, dense="sclip", force=True)
    assert open_bundle(out).dense_head == "sclip" == m.dense_head
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "not-a-bundle"]  # no temporary leftovers


@pytest.mark.parametrize("exc", [RuntimeError("camera unplugged"), KeyboardInterrupt()])
def test_failed_export_leaves_no_partial_bundle_and_keeps_the_old_one(model, tmp_path, monkeypatch, exc):
    out = tmp_path / "b"
    export_bundle(model, out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr("vlmedge.export.calibration.calibration_frames", broken)
    with pytest.raises(type(exc)):
        export_bundle(model, out, precision="int8", force=True)
    with pytest.raises(type(exc)):
        export_bundle(model, tmp_path / "fresh", precision="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    open_bundle(out)


def test_oversized_onnx_is_refused(model, tmp_path, monkeypatch):
    monkeypatch.setattr("vlmedge.export.onnx_export.MAX_ONNX_BYTES", 10_000)
    with pytest.raises((ArtifactError, ConfigError), match="2 GB"):
        export_bundle(model, tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_cli_export_verify_and_build_engine(model, tmp_path, capsys):
    from vlmedge.cli import main
    from vlmedge.export.loaders import save_clip

    src = save_clip(model, tmp_path / "native")
    vocab = tmp_path / "commands.txt"
    vocab.write_text("# table commands\nthe red cup\n\na blue ball\nthe red cup\n")
    out = tmp_path / "bundle"
    assert main(["export", str(src), "--out", str(out), "--vocab", str(vocab), "--image-size", "48"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "48x48" in printed
    m = open_bundle(out)
    assert m.source["layout"] == "native" and m.image_size == (48, 48) and m.text_embeddings == "text_embeddings.npz"
    assert list(np.load(out / "text_embeddings.npz")["queries"]) == ["the red cup", "a blue ball"]

    assert main(["verify", str(out), "--against", str(src), "--runs", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"]["image_max_abs"] <= 1e-4 and report["parity"]["patch_max_abs"] <= 1e-4
    assert report["parity"]["text_max_abs"] <= 1e-4 and report["latency_ms"]["onnxruntime"] > 0

    assert main(["export", str(src), "--out", str(tmp_path / "x"), "--precision", "int9"]) == 1
    assert "did you mean 'int8'" in capsys.readouterr().err
    assert main(["export", str(src), "--out", str(out)]) == 1  # exists, no --force
    assert "--force" in capsys.readouterr().err

    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    if not has_trt:
        assert main(["build-engine", str(out), "--fp16"]) == 1
        err = capsys.readouterr().err
        assert "TensorRT" in err and "not available" in err


@pytest.mark.gpu
def test_build_engine_on_a_gpu(model, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT Python bindings")
    from vlmedge.errors import BackendUnavailable
    from vlmedge.export.tensorrt import build_engine, gpu_info

    try:
        gpu_info()
    except BackendUnavailable as e:
        pytest.skip(f"needs a CUDA GPU: {e}")
    out = tmp_path / "b"
    export_bundle(model, out, target="jetson-orin-jp6")
    engine = build_engine(out, precision="fp16")
    side = json.loads(Path(str(engine) + ".json").read_text())
    assert engine.is_file() and side["precision"] == "fp16"
    assert side["onnx_sha256"] == open_bundle(out).files["image_encoder.onnx"]["sha256"]
