"""A bundle that lies is refused, by `vlmedge verify` and by `vlmedge run`, with an error naming the file and
the field: manifest fields of the wrong type or out of range, a manifest that contradicts its ONNX graphs, ONNX
external data, symbolic links out of the bundle, stored text embeddings that are not unit vectors.

Every case tampers with a real copy of the tiny bundle and goes through the command line entry point
(``vlmedge.cli.main``), the path a user's ``vlmedge verify DIR`` / ``vlmedge run --bundle DIR`` takes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmedge.cli import main
from vlmedge.manifest import file_entry

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ("the red cup", "a blue ball")
RAW = "__raw_json__"  # a value written verbatim into the manifest text (numbers JSON can hold, Python cannot)


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(src, out)
    return out


@pytest.fixture
def bundle(tiny_bundle_dir, tmp_path) -> Path:
    return _copy(tiny_bundle_dir, tmp_path)


@pytest.fixture
def vocab_bundle(tiny_bundles, tmp_path) -> Path:
    return _copy(tiny_bundles(vocab=VOCAB), tmp_path)


def _read(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle: Path, data: dict, raw: str | None = None) -> None:
    text = json.dumps(data, indent=1)
    if raw is not None:
        text = text.replace(json.dumps(RAW), raw)
    (bundle / "manifest.json").write_text(text)


def _rehash(bundle: Path, *names: str) -> None:
    data = _read(bundle)
    for name in names:
        data["files"][name] = file_entry(bundle / name)
    _write(bundle, data)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def _verify(bundle: Path, capsys) -> tuple[int, str]:
    return _cli(["verify", str(bundle), "--runs", "1"], capsys)


def _run(bundle: Path, capsys) -> tuple[int, str]:
    return _cli(["run", "--bundle", str(bundle), "--source", "synthetic://tabletop", "--headless",
                 "--max-frames", "1", "--publish", "none", "--control", "none"], capsys)


def _refused(bundle: Path, capsys, *needles: str) -> None:
    """Both commands exit 1 with one error line that contains every needle; no traceback."""
    for name, command in (("verify", _verify), ("run", _run)):
        rc, err = command(bundle, capsys)
        assert rc == 1, f"vlmedge {name} accepted the bundle (rc {rc}): {err}"
        assert f"vlmedge {name}: error:" in err and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, f"vlmedge {name}: {needle!r} not in {err!r}"


def _keys(path: str | tuple) -> list:
    """'a.b.0' or ('files', 'tokenizer.json', 'bytes') -> keys (digits are list indexes)."""
    return list(path) if isinstance(path, tuple) else [int(k) if k.isdigit() else k for k in path.split(".")]


def _set(path: str | tuple, value):
    """A mutation that sets manifest[key][key]... to ``value``."""
    keys = _keys(path)

    def mutate(data: dict) -> None:
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return mutate


def _drop(path: str | tuple):
    keys = _keys(path)

    def mutate(data: dict) -> None:
        node = data
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return mutate


def test_the_pristine_copy_passes_both_commands(bundle, capsys):
    """The control for every case below: the untouched copy is accepted."""
    rc, err = _verify(bundle, capsys)
    assert rc == 0, err
    rc, err = _run(bundle, capsys)
    assert rc == 0, err


# (id, mutation, raw JSON for the RAW marker or None, what the error must name besides the manifest's path)
FIELD_CASES = [
    ("logit_scale-nan", _set("logit_scale", math.nan), None, "logit_scale"),
    ("logit_scale-1e308", _set("logit_scale", 1e308), None, "logit_scale"),
    ("logit_scale-inf", _set("logit_scale", RAW), "1e400", "logit_scale"),
    ("logit_scale-zero", _set("logit_scale", 0), None, "logit_scale"),
    ("logit_scale-text", _set("logit_scale", "50"), None, "logit_scale"),
    ("logit_scale-bool", _set("logit_scale", True), None, "logit_scale"),
    ("threshold-5", _set("grounding.threshold", 5), None, "grounding.threshold"),
    ("threshold-nan", _set("grounding.threshold", math.nan), None, "grounding.threshold"),
    ("threshold-text", _set("grounding.threshold", "0.5"), None, "grounding.threshold"),
    ("min_area-0", _set("grounding.min_area_patches", 0), None, "grounding.min_area_patches"),
    ("min_area-float", _set("grounding.min_area_patches", 1.5), None, "grounding.min_area_patches"),
    ("min_area-bool", _set("grounding.min_area_patches", True), None, "grounding.min_area_patches"),
    ("min_area-over-grid", _set("grounding.min_area_patches", 65), None, "grounding.min_area_patches"),
    ("background-string", _set("grounding.background_prompts", "abc"), None, "grounding.background_prompts"),
    ("background-number", _set("grounding.background_prompts", ["a wall", 5]), None, "grounding.background_prompts"),
    ("background-empty-text", _set("grounding.background_prompts", [" "]), None, "grounding.background_prompts"),
    ("expand-string", _set("grounding.expand_colours", "red"), None, "grounding.expand_colours"),
    ("temperature-nan", _set("grounding.score_temperature", math.nan), None, "grounding.score_temperature"),
    ("count-min-2", _set("grounding.count_min_score", 2), None, "grounding.count_min_score"),
    ("count-margin-neg", _set("grounding.instance_score_margin", -1), None, "grounding.instance_score_margin"),
    ("grounding-unknown", _set("grounding.thresold", 0.5), None, "thresold"),
    ("grounding-list", _set("grounding", [1]), None, "grounding"),
    ("embed_dim-alone", _set("embed_dim", 64), None, "embed_dim"),
    ("embed_dim-text", _set("embed_dim", "32"), None, "embed_dim"),
    ("embed_dim-float", _set("embed_dim", 32.5), None, "embed_dim"),
    ("patch_grid-alone", _set("patch_grid", [4, 4]), None, "patch_grid"),
    ("patch_grid-text", _set("patch_grid", ["8", "8"]), None, "patch_grid"),
    ("patch_grid-three", _set("patch_grid", [8, 8, 8]), None, "patch_grid"),
    ("image_size-alone", _set("image_size", [32, 32]), None, "image_size"),
    ("image_size-negative", _set("image_size", [-64, 64]), None, "image_size"),
    ("files-bytes-text", _set(("files", "tokenizer.json", "bytes"), "abc"), None, "bytes"),
    ("files-bytes-null", _set(("files", "tokenizer.json", "bytes"), None), None, "bytes"),
    ("files-bytes-infinity", _set(("files", "tokenizer.json", "bytes"), RAW), "Infinity", "bytes"),
    ("files-bytes-1e400", _set(("files", "tokenizer.json", "bytes"), RAW), "1e400", "bytes"),
    ("files-bytes-negative", _set(("files", "tokenizer.json", "bytes"), -1), None, "bytes"),
    ("files-bytes-float", _set(("files", "tokenizer.json", "bytes"), 8761.5), None, "bytes"),
    ("files-bytes-missing", _drop(("files", "tokenizer.json", "bytes")), None, "bytes"),
    ("files-sha-number", _set(("files", "tokenizer.json", "sha256"), 5), None, "sha256"),
    ("files-sha-short", _set(("files", "tokenizer.json", "sha256"), "abc"), None, "sha256"),
    ("files-entry-null", _set(("files", "tokenizer.json"), None), None, "tokenizer.json"),
    ("files-list", _set("files", ["tokenizer.json"]), None, "files"),
    ("files-outside", _set(("files", "../outside.bin"), {"sha256": "0" * 64, "bytes": 1}), None, "../outside.bin"),
    ("files-absolute", _set(("files", "/etc/hostname"), {"sha256": "0" * 64, "bytes": 1}), None, "/etc/hostname"),
    ("files-nul", _set(("files", "a\u0000b"), {"sha256": "0" * 64, "bytes": 1}), None, "files"),
    ("format_version-bool", _set("format_version", True), None, "format_version"),
    ("model_id-number", _set("model_id", 5), None, "model_id"),
    ("model_id-empty", _set("model_id", ""), None, "model_id"),
    ("source-string", _set("source", "abc"), None, "source"),
    ("opset-text", _set("opset", "17"), None, "opset"),
    ("opset-zero", _set("opset", 0), None, "opset"),
    ("precision-list", _set("precision", ["fp32"]), None, "precision"),
    ("dense_head-number", _set("dense_head", 5), None, "dense_head"),
    ("target-null", _set("target", None), None, "target"),
    ("spec-patch-text", _set("spec.vision.patch_size", "8"), None, "patch_size"),
    ("spec-patch-bool", _set("spec.vision.patch_size", True), None, "patch_size"),
    ("spec-eps-nan", _set("spec.eps", math.nan), None, "eps"),
    ("spec-mlp-text", _set("spec.text.mlp_ratio", "4"), None, "mlp_ratio"),
    ("spec-eos-text", _set("spec.text.eos_token_id", "7"), None, "eos_token_id"),
    ("spec-act-list", _set("spec.act", ["gelu"]), None, "act"),
    ("preprocess-mean-nan", _set("preprocess.mean", [math.nan, 0.5, 0.5]), None, "mean"),
    ("preprocess-mean-text", _set("preprocess.mean", ["0.5", 0.5, 0.5]), None, "mean"),
    ("preprocess-std-zero", _set("preprocess.std", [0, 0.5, 0.5]), None, "std"),
    ("preprocess-size", _set("preprocess.size", [32, 32]), None, "preprocess"),
    ("encoder-file-number", _set("encoders.image.file", 5), None, "encoders.image.file"),
    ("encoder-file-unlisted", _set("encoders.image.file", "other.onnx"), None, "other.onnx"),
    ("encoder-dtype", _set("encoders.image.inputs.0.dtype", "float99"), None, "encoders.image.inputs[0].dtype"),
    ("encoder-shape-text", _set("encoders.image.inputs.0.shape", "batch"), None, "encoders.image.inputs[0].shape"),
    ("encoder-shape-zero", _set("encoders.image.inputs.0.shape", ["batch", 3, 0, 64]), None, "encoders.image"),
    ("encoder-no-outputs", _set("encoders.image.outputs", []), None, "encoders.image.outputs"),
    ("encoder-text-missing", _drop("encoders.text"), None, "encoders"),
    ("encoder-name-number", _set("encoders.text.inputs.0.name", 5), None, "encoders.text.inputs[0].name"),
    ("tokenizer-string", _set("tokenizer", "tokenizer.json"), None, "tokenizer"),
    ("tokenizer-context-text", _set("tokenizer.context_length", "16"), None, "context_length"),
    ("tokenizer-context-other", _set("tokenizer.context_length", 20), None, "context_length"),
    ("text_embeddings-number", _set("text_embeddings", 5), None, "text_embeddings"),
    ("extra-string", _set("extra", "abc"), None, "extra"),
    ("vlmedge_version-number", _set("vlmedge_version", 1), None, "vlmedge_version"),
]


@pytest.mark.parametrize("mutate, raw, field", [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
def test_a_bad_manifest_field_is_refused_naming_field_and_file(bundle, capsys, mutate, raw, field):
    data = _read(bundle)
    mutate(data)
    _write(bundle, data, raw)
    _refused(bundle, capsys, str(bundle / "manifest.json"), field)


def test_a_duplicate_manifest_key_is_refused(bundle, capsys):
    """Two parsers may keep different copies of a repeated key: a manifest must say one thing."""
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"logit_scale":', '"logit_scale": 1e308, "logit_scale":', 1))
    _refused(bundle, capsys, str(bundle / "manifest.json"), "logit_scale", "more than once")


@pytest.mark.parametrize("opening, closing", [("[", "]"), ('{"a":', "}")], ids=["lists", "objects"])
def test_a_100000_deep_manifest_is_refused_without_a_traceback(bundle, capsys, opening, closing):
    (bundle / "manifest.json").write_text(opening * 100_000 + "1" + closing * 100_000)
    _refused(bundle, capsys, str(bundle / "manifest.json"), "nested")


def test_a_deep_manifest_in_a_fresh_process_is_one_error_line(bundle):
    """The same through a real `vlmedge verify` process (the recursion limit of a fresh interpreter)."""
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    proc = subprocess.run([sys.executable, "-c", "import sys; from vlmedge.cli import main; sys.exit(main())",
                           "verify", str(bundle)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "nested" in proc.stderr and str(bundle / "manifest.json") in proc.stderr


# -- the manifest against the ONNX graphs: consistent edits that only the graphs can contradict --------------------

def _claim_embed_dim(data: dict, d: int = 64) -> None:
    data["embed_dim"] = data["spec"]["embed_dim"] = d
    for role in ("image", "text"):
        for out in data["encoders"][role]["outputs"]:
            out["shape"][-1] = d


def _claim_patch_grid(data: dict) -> None:
    data["patch_grid"] = [4, 4]
    data["spec"]["vision"]["patch_size"] = 16
    data["encoders"]["image"]["outputs"][1]["shape"][1:3] = [4, 4]


def _claim_image_size(data: dict) -> None:
    data["image_size"] = data["preprocess"]["size"] = data["spec"]["vision"]["image_size"] = [32, 32]
    data["patch_grid"] = [4, 4]
    data["encoders"]["image"]["inputs"][0]["shape"][2:] = [32, 32]
    data["encoders"]["image"]["outputs"][1]["shape"][1:3] = [4, 4]


def _claim_context_length(data: dict) -> None:
    data["tokenizer"]["context_length"] = data["spec"]["text"]["context_length"] = 20
    data["encoders"]["text"]["inputs"][0]["shape"][1] = 20


def _claim_output_name(data: dict) -> None:
    data["encoders"]["image"]["outputs"][0]["name"] = "image_embeddings"


def _swap_encoders(data: dict) -> None:
    data["encoders"]["image"]["file"], data["encoders"]["text"]["file"] = "text_encoder.onnx", "image_encoder.onnx"


GRAPH_CASES = [
    ("embed_dim", _claim_embed_dim, "embed_dim", "image_encoder.onnx"),
    ("patch_grid", _claim_patch_grid, "patch_grid", "image_encoder.onnx"),
    ("image_size", _claim_image_size, "image_size", "image_encoder.onnx"),
    ("context_length", _claim_context_length, "input_ids", "text_encoder.onnx"),
    ("output-name", _claim_output_name, "image_embeddings", "image_encoder.onnx"),
    ("swapped-files", _swap_encoders, "encoders.image", "text_encoder.onnx"),
]


@pytest.mark.parametrize("claim, field, onnx_file", [c[1:] for c in GRAPH_CASES], ids=[c[0] for c in GRAPH_CASES])
def test_a_manifest_that_contradicts_its_onnx_graphs_is_refused_by_run_too(bundle, capsys, claim, field, onnx_file):
    data = _read(bundle)
    claim(data)
    _write(bundle, data)
    _refused(bundle, capsys, field, str(bundle / onnx_file))


# -- stored text embeddings ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["nan", "zero", "scaled"])
def test_stored_text_embeddings_that_are_not_unit_vectors_are_refused(vocab_bundle, capsys, damage):
    """verify printed 'ok ... cos min nan' for NaN rows (a NaN never compares below the 0.99 floor)."""
    npz = vocab_bundle / "text_embeddings.npz"
    with np.load(npz) as z:
        queries, embeds = z["queries"], z["embeds"].copy()
    embeds[1] = {"nan": np.nan, "zero": 0.0, "scaled": embeds[1] * 3}[damage]
    np.savez(npz, queries=queries, embeds=embeds)
    _rehash(vocab_bundle, "text_embeddings.npz")
    _refused(vocab_bundle, capsys, str(npz), "embeds")


# -- symbolic links --------------------------------------------------------------------------------------------------

def test_a_symlink_out_of_the_bundle_is_refused_even_when_the_hash_matches(bundle, tmp_path, capsys):
    outside = tmp_path / "elsewhere" / "text_encoder.onnx"
    outside.parent.mkdir()
    shutil.move(bundle / "text_encoder.onnx", outside)
    os.symlink(outside, bundle / "text_encoder.onnx")
    assert file_entry(bundle / "text_encoder.onnx") == _read(bundle)["files"]["text_encoder.onnx"]
    _refused(bundle, capsys, str(bundle / "text_encoder.onnx"), "outside the bundle")


def test_a_symlinked_directory_out_of_the_bundle_is_refused(bundle, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(bundle / "tokenizer.json", outside / "tokenizer.json")
    os.symlink(outside, bundle / "sub")
    data = _read(bundle)
    data["files"]["sub/tokenizer.json"] = data["files"].pop("tokenizer.json")
    data["tokenizer"]["file"] = "sub/tokenizer.json"
    _write(bundle, data)
    _refused(bundle, capsys, str(bundle / "sub/tokenizer.json"), "outside the bundle")


def test_a_symlinked_manifest_out_of_the_bundle_is_refused(bundle, tmp_path, capsys):
    outside = tmp_path / "manifest.json"
    shutil.move(bundle / "manifest.json", outside)
    os.symlink(outside, bundle / "manifest.json")
    _refused(bundle, capsys, str(bundle / "manifest.json"), "outside the bundle")


def test_a_symlink_within_the_bundle_and_a_symlinked_bundle_are_accepted(bundle, tmp_path, capsys):
    (bundle / "files").mkdir()
    shutil.move(bundle / "tokenizer.json", bundle / "files" / "tokenizer.json")
    os.symlink(Path("files") / "tokenizer.json", bundle / "tokenizer.json")
    link = tmp_path / "current"
    os.symlink(bundle, link)
    rc, err = _verify(link, capsys)
    assert rc == 0, err
    rc, err = _run(link, capsys)
    assert rc == 0, err


# -- ONNX external data (#14 item 18, #15 item 8) ---------------------------------------------------------------------

def _externalize(bundle: Path, name: str = "text_encoder.onnx", location: str = "w.bin") -> Path:
    """Rewrite ``name`` as a real ONNX with its tensors in ``location`` (the onnx package's own writer)."""
    import onnx

    model = onnx.load(str(bundle / name))
    onnx.save_model(model, str(bundle / name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    assert (bundle / location).stat().st_size > 0
    _rehash(bundle, name)
    return bundle / location


def _shift_rows(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[64:] + data[:64])  # same size, every tensor's bytes moved by 16 floats


@pytest.mark.parametrize("listed", [False, True], ids=["unlisted", "listed"])
@pytest.mark.parametrize("shifted", [False, True], ids=["as-written", "rows-shifted"])
def test_onnx_external_data_is_refused(bundle, capsys, listed, shifted):
    """docs/BUNDLE.md: ONNX files are single files. An unlisted w.bin beside text_encoder.onnx passed verify and
    run, and shifting rows inside it went unnoticed; listed or not, tampered or not, it is refused now (a listed
    file that was tampered with fails its own sha256 first)."""
    weights = _externalize(bundle)
    if listed:
        _rehash(bundle, "w.bin")
    if shifted:
        _shift_rows(weights)
    if listed and shifted:
        _refused(bundle, capsys, str(weights), "sha256 mismatch")
    else:
        _refused(bundle, capsys, str(bundle / "text_encoder.onnx"), "external data", "w.bin")


def test_external_data_in_the_image_encoder_is_refused(bundle, capsys):
    _externalize(bundle, "image_encoder.onnx", "image.weights")
    _refused(bundle, capsys, str(bundle / "image_encoder.onnx"), "external data", "image.weights")


def _tensor_at(model, where: str):
    g = model.graph
    return {"initializer": lambda: g.initializer[0], "sparse": lambda: g.sparse_initializer[0].values,
            "constant": lambda: g.node[0].attribute[0].t,
            "branch": lambda: g.node[1].attribute[0].g.node[0].attribute[0].t}[where]()


def test_the_external_data_scan_reads_every_tensor_place(tmp_path):
    """Initializers, sparse initializers, Constant-node attributes and subgraphs (If branches)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vlmedge.onnx_proto import read_onnx

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), "s"),
                                       numpy_helper.from_array(np.array([0, 3], np.int64), "s_indices"), [4])
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32), "cv"))
    branch = helper.make_graph([helper.make_node("Constant", [], ["b"],
                                                 value=numpy_helper.from_array(np.ones(4, np.float32), "bv"))],
                               "branch", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    cond = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([const, cond], "g",
                              [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n"])], [w],
                              sparse_initializer=[sparse])
    plain = tmp_path / "plain.onnx"
    onnx.save_model(helper.make_model(graph), str(plain))
    info = read_onnx(plain)
    assert info.external_data == () and info.external_tensors == 0
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("cond", "bool", ())]  # initializer "w" left out
    assert [(t.name, t.dtype, t.shape) for t in info.outputs] == [("y", "float32", (4,)), ("c", "float32", ("n",))]
    for where in ("initializer", "sparse", "constant", "branch"):
        model = onnx.load(str(plain))
        tensor = _tensor_at(model, where)
        onnx.external_data_helper.set_external_data(tensor, f"{where}.bin")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        path = tmp_path / f"{where}.onnx"
        path.write_bytes(model.SerializeToString())
        assert read_onnx(path).external_data == (f"{where}.bin",), where


@pytest.mark.parametrize("data", [b"", b"\x0a\xff\xff\xff\x0f", b"\x3a\x05abc", b"not onnx at all"],
                         ids=["empty", "overlong-field", "truncated-graph", "text"])
def test_a_file_that_is_not_onnx_is_named(tmp_path, data):
    from vlmedge.errors import ArtifactError
    from vlmedge.onnx_proto import read_onnx

    path = tmp_path / "image_encoder.onnx"
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="image_encoder.onnx"):
        read_onnx(path)


def test_the_external_data_scan_passes_the_shipped_bundles(embedded_int8):
    from vlmedge.onnx_proto import read_onnx

    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        assert read_onnx(embedded_int8 / name).external_data == ()


# -- OpenVINO's own image encoder (encoders.image_openvino) ----------------------------------------------------------

@pytest.fixture
def int8_bundle(tiny_bundles, tmp_path) -> Path:
    out = _copy(tiny_bundles(precision="int8"), tmp_path)
    assert "image_openvino" in _read(out)["encoders"]  # a cpu int8 bundle has one
    return out


def _ov_other_outputs(data: dict) -> None:
    data["encoders"]["image_openvino"]["outputs"][0]["name"] = "image_embeddings"


def _ov_is_the_text_encoder(data: dict) -> None:
    data["encoders"]["image_openvino"]["file"] = "text_encoder.onnx"


OPENVINO_CASES = [
    ("other-outputs", _ov_other_outputs, "encoders.image_openvino must have the inputs and outputs of encoders.image"),
    ("text-file", _ov_is_the_text_encoder, "encoders.image_openvino.file 'text_encoder.onnx' is also another"),
    ("not-hashed", _drop(("files", "image_encoder_openvino.onnx")), "image_encoder_openvino.onnx"),
    ("no-file-name", _drop("encoders.image_openvino.file"), "encoders.image_openvino"),
]


@pytest.mark.parametrize("mutate, needle", [c[1:] for c in OPENVINO_CASES], ids=[c[0] for c in OPENVINO_CASES])
def test_a_bad_openvino_image_encoder_entry_is_refused(int8_bundle, capsys, mutate, needle):
    data = _read(int8_bundle)
    mutate(data)
    _write(int8_bundle, data)
    _refused(int8_bundle, capsys, needle)


def test_an_openvino_image_encoder_that_is_another_graph_is_refused(int8_bundle, capsys):
    """The file's own metadata says which encoder it is: the text encoder under the OpenVINO image encoder's name
    (re-hashed, so only the graph check can tell) is refused naming the field and the file."""
    shutil.copyfile(int8_bundle / "text_encoder.onnx", int8_bundle / "image_encoder_openvino.onnx")
    _rehash(int8_bundle, "image_encoder_openvino.onnx")
    _refused(int8_bundle, capsys, "this is the text encoder", "encoders.image_openvino.file",
             str(int8_bundle / "image_encoder_openvino.onnx"))


def test_a_missing_openvino_image_encoder_is_refused(int8_bundle, capsys):
    (int8_bundle / "image_encoder_openvino.onnx").unlink()
    _refused(int8_bundle, capsys, str(int8_bundle / "image_encoder_openvino.onnx"), "missing from the bundle")
