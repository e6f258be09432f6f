"""OpenVINO compiling its cached IR of a bundle file (runtime/grounding/openvino_ir.py): the same numbers as
compiling the ONNX file, the weights' pages handed back after the inference that repacks them, the cache (one
conversion per file and version, pruned, unwritable -> the ONNX file), and the switch $VLMEDGE_OPENVINO_IR.

Real OpenVINO sessions on the tiny and demo bundles; memory is read from /proc/self/smaps (Linux)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmedge.errors import ArtifactError, ConfigError
from vlmedge.runtime.grounding import backends as B
from vlmedge.runtime.grounding import openvino_ir as IR

needs_openvino = pytest.mark.skipif(B.openvino_version() is None,
                                    reason='OpenVINO is not installed (pip install "vlmedge[openvino]")')
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def _image_encoder(bundle: Path) -> Path:
    """The image encoder file OpenVINO runs (a cpu int8 bundle's own QDQ graph, else image_encoder.onnx)."""
    from vlmedge.manifest import read_manifest

    return bundle / read_manifest(bundle).image_file("openvino")


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (0 when mapped but handed back, or not mapped)."""
    total, inside = 0, False
    target = str(path.resolve())
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) == 6 and head[5] == target
            elif inside and head[:1] == ["Rss:"]:
                total += int(head[1])
    return total


def _inputs(session, n=2):
    """``n`` random inputs of the session's first input shape (a dynamic dimension: 1)."""
    rng = np.random.default_rng(0)
    shape = [d.get_length() if d.is_static else 1 for d in session._compiled.inputs[0].partial_shape]
    return [rng.normal(0, 1, shape).astype(np.float32) for _ in range(n)]


@needs_openvino
@pytest.mark.parametrize("which", ["tiny-int8", "embedded-int8"])
def test_ir_gives_the_numbers_of_the_onnx_file_and_hands_weight_pages_back(which, tiny_bundles, request, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bundle = request.getfixturevalue("embedded_int8") if which == "embedded-int8" else tiny_bundles(precision="int8")
    onnx_file = _image_encoder(bundle)
    plain = B.OpenVinoSession(onnx_file, threads=1, ir=False)
    mapped = B.OpenVinoSession(onnx_file, threads=1, ir=True)
    assert plain.compiled_from is None and mapped.compiled_from is not None
    assert mapped.compiled_from.is_relative_to(tmp_path / "cache" / "openvino")
    for x in _inputs(mapped, 3):
        for a, b in zip(plain.run(x), mapped.run(x), strict=True):
            np.testing.assert_array_equal(a, b)  # bit-identical, also after the pages were handed back
    if sys.platform.startswith("linux"):
        weights = mapped.compiled_from.with_suffix(".bin")
        assert mapped._weights, "the IR's weights file is not mapped: nothing to hand back"
        size_kb = weights.stat().st_size // 1024
        # left resident: the float constants every inference reads (LayerNorms, biases, positions: 19-21% of
        # these small models' files, ~0.6 MB of a ViT-B/16's 83 MB), not the int8 weights
        assert _mapped_kb(weights) <= size_kb // 4, (_mapped_kb(weights), size_kb)
        # the same without handing them back: the pages read to repack stay resident (what the release is for)
        monkeypatch.setattr(IR.MappedWeights, "release", lambda self: None)
        kept = B.OpenVinoSession(onnx_file, threads=1, ir=True)
        kept.run(_inputs(kept, 1)[0])
        assert _mapped_kb(weights) >= size_kb // 2, (_mapped_kb(weights), size_kb)
    del plain, mapped


def _int8_stack(path: Path, layers: int = 8, width: int = 1024) -> Path:
    """An encoder in the bundles' int8 CPU form (QuantizeLinear -> com.microsoft MatMulIntegerToFloat), big
    enough for its weights (8 MB) to stand out of OpenVINO's own heap."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    nodes, x = [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (width, width), dtype=np.int8), f"w{i}"),
                  numpy_helper.from_array(np.array(0.001, np.float32), f"ws{i}")]
        nodes += [helper.make_node("QuantizeLinear", [x, "s", "zp"], [f"q{i}"]),
                  helper.make_node("MatMulIntegerToFloat", [f"q{i}", f"w{i}", "s", f"ws{i}", "zp"], [f"y{i}"],
                                   domain="com.microsoft")]
        x = f"y{i}"
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 16, width]) for name in ("x", x)]
    graph = helper.make_graph(nodes, "int8_stack", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


@needs_openvino
@linux_only
def test_an_int8_encoder_holds_its_weights_once(tmp_path, monkeypatch):
    """The point of the IR (#17's memory budget): compiled from the ONNX file OpenVINO keeps the constants it read
    on the heap beside the repacked copy; from the IR they are a file mapping, handed back after the run."""
    import subprocess

    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx_file = _int8_stack(tmp_path / "image_encoder.onnx")
    code = ("import json, sys\nimport numpy as np\nfrom vlmedge.runtime.grounding import backends as B\n"
            "s = B.OpenVinoSession(sys.argv[1], threads=1, ir=sys.argv[2] == '1')\n"
            "x = np.ones((1, 16, 1024), np.float32)\nfor _ in range(3):\n    s.run(x)\n"
            "B.release_free_heap()\n"
            "kb = {k: sum(int(l.split()[1]) for l in open('/proc/self/smaps') if l.startswith(k + ':'))"
            " for k in ('Anonymous', 'Rss')}\n"
            "print(json.dumps(kb))")
    used = {}
    for ir in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, str(onnx_file), ir], capture_output=True, text=True,
                             check=True)
        used[ir] = json.loads(out.stdout.strip().splitlines()[-1])
    weights_kb = 8 * 1024
    # measured here: both the heap and the whole resident set ~8 MB smaller (the constants, once)
    assert used["0"]["Anonymous"] - used["1"]["Anonymous"] >= weights_kb * 3 // 4, used
    assert used["0"]["Rss"] - used["1"]["Rss"] >= weights_kb * 3 // 4, used


@needs_openvino
def test_the_ir_is_converted_once_per_file_and_version_and_pruned(tiny_bundles, tmp_path, caplog):
    cache = tmp_path / "cache"
    onnx_file = _image_encoder(tiny_bundles(precision="int8"))
    with caplog.at_level(logging.INFO, logger=IR.__name__):
        first = IR.ir_for(onnx_file, "9.9", cache)
        mtime = first.stat().st_mtime_ns
        again = IR.ir_for(onnx_file, "9.9", cache)
    assert again == first and first.stat().st_mtime_ns == mtime  # not written again
    assert sum("written to" in r.getMessage() for r in caplog.records) == 1
    other = IR.ir_for(onnx_file, "10.0", cache)  # another OpenVINO version: its own entry
    assert other.parent != first.parent and other.parent.name.endswith("-ov10.0")
    for k in range(IR.KEEP + 2):
        stale = cache / "openvino" / f"{k:024d}-ov0"
        stale.mkdir()
        os.utime(stale, (1_000_000 + k, 1_000_000 + k))  # older than the two real entries
    IR._prune(cache / "openvino")
    left = sorted(p.name for p in (cache / "openvino").iterdir())
    assert len(left) == IR.KEEP and first.parent.name in left and other.parent.name in left
    assert not [p for p in (cache / "openvino").iterdir() if p.name.startswith(".tmp-")]


@needs_openvino
def test_a_verified_bundle_file_is_not_hashed_again_to_find_its_ir(tiny_bundles, tmp_path, monkeypatch):
    """The text encoder is reopened after each idle release: hashing it every time cost ~0.3 s for a 254 MB fp32
    tower. A verified bundle's manifest already holds the hash; an unverified one is hashed (its file may differ)."""
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bundle = tiny_bundles(precision="int8")
    hashed = []
    real = IR.sha256_file
    monkeypatch.setattr(IR, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    enc = BundleEncoders(bundle, backend="openvino", threads=1)
    enc.encode_ids(np.asarray(enc.tokenizer.encode(["a red cup"]), dtype=np.int64))  # opens the text encoder
    assert hashed == [] and enc._image.compiled_from is not None
    sha = enc.manifest.files[enc.image_file]["sha256"]
    assert enc.image_file == "image_encoder_openvino.onnx"  # OpenVINO's own file, its IR named by its sha256
    assert enc._image.compiled_from.parent.name.startswith(sha[:24])
    BundleEncoders(bundle, backend="openvino", threads=1, verify=False)
    assert hashed == ["image_encoder_openvino.onnx"]


@needs_openvino
def test_without_a_writable_cache_openvino_compiles_the_onnx_file_and_says_so(tiny_bundles, tmp_path, caplog,
                                                                           monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(blocked))
    onnx_file = _image_encoder(tiny_bundles(precision="int8"))
    with caplog.at_level(logging.WARNING, logger=IR.__name__):
        s = B.OpenVinoSession(onnx_file, threads=1)
    assert s.compiled_from is None and s._weights is None
    assert any("not writable" in r.getMessage() and str(onnx_file) in r.getMessage() for r in caplog.records)
    assert s.run(_inputs(s, 1)[0])[0].shape[0] == 1


@needs_openvino
def test_a_file_openvino_cannot_read_is_still_an_artifact_error_naming_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "image_encoder.onnx"
    bad.write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING, logger=IR.__name__), pytest.raises(ArtifactError, match="image_encoder.onnx"):
        B.OpenVinoSession(bad, threads=1)
    assert any("could not convert" in r.getMessage() for r in caplog.records)
    assert not [p for p in (tmp_path / "cache" / "openvino").iterdir()]  # no half-written entry left


@needs_openvino
def test_a_damaged_cached_ir_falls_back_to_the_onnx_file_and_says_so(tiny_bundles, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx_file = _image_encoder(tiny_bundles(precision="int8"))
    good = B.OpenVinoSession(onnx_file, threads=1)
    x = _inputs(good, 1)[0]
    expected = good.run(x)
    good.compiled_from.write_text("<net>truncated")  # e.g. a disk that filled up, a hand edit
    with caplog.at_level(logging.WARNING, logger=B.__name__):
        s = B.OpenVinoSession(onnx_file, threads=1)
    assert s.compiled_from is None and s._weights is None
    assert any("cached IR" in r.getMessage() and str(onnx_file) in r.getMessage() for r in caplog.records)
    for a, b in zip(expected, s.run(x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_unknown_openvino_partitioner_is_refused_by_name():
    if B.openvino_version() is None:
        pytest.skip('OpenVINO is not installed (pip install "vlmedge[openvino]")')
    with pytest.raises(ConfigError, match="partitioner.*'DYNAMIC'"):
        B.OpenVinoSession("unused.onnx", threads=1, partitioner="DYNAMIC", ir=False)


def test_an_unknown_openvino_precision_is_refused_by_name():
    if B.openvino_version() is None:
        pytest.skip('OpenVINO is not installed (pip install "vlmedge[openvino]")')
    with pytest.raises(ConfigError, match="precision.*'f16'"):
        B.OpenVinoSession("unused.onnx", threads=1, precision="f16", ir=False)


@needs_openvino
def test_float_parts_run_in_f32_unless_bf16_is_asked_for(tiny_bundles, tmp_path, monkeypatch):
    # on CPUs with AMX OpenVINO's own default is bf16, which moved ViT-B/16's patch agreement below 99%
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx_file = _image_encoder(tiny_bundles(precision="int8"))
    s = B.OpenVinoSession(onnx_file, threads=1)
    assert str(s._compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16: OpenVINO runs f32 whatever is asked")
    s = B.OpenVinoSession(onnx_file, threads=1, precision="bf16")
    assert str(s._compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"


def test_the_ir_switch_is_checked_naming_the_variable(monkeypatch):
    monkeypatch.setenv("VLMEDGE_OPENVINO_IR", "yes")
    with pytest.raises(ConfigError, match="VLMEDGE_OPENVINO_IR"):
        B.openvino_ir_enabled()
    monkeypatch.setenv("VLMEDGE_OPENVINO_IR", "0")
    assert B.openvino_ir_enabled() is False
    monkeypatch.delenv("VLMEDGE_OPENVINO_IR")
    assert B.openvino_ir_enabled() is True
