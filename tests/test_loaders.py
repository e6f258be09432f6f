"""load_clip / save_clip: Hugging Face, OpenAI/OpenCLIP and native layouts, and their errors."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmedge.errors import ArtifactError, ConfigError
from vlmedge.export.loaders import LoadedClip, load_clip, save_clip

from _models import hf_model, tiny_hf_clip_dir, tiny_hf_config, token_ids

torch.set_num_threads(1)


def hf_to_openai(sd: dict, vision_layers: int, text_layers: int) -> dict:
    """Independent Hugging Face -> OpenAI CLIP key conversion (q/k/v fused into in_proj, projections transposed)."""
    out = {
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),
        "logit_scale": sd["logit_scale"],
    }
    for hf_prefix, oa_prefix, n in (("vision_model.encoder.layers", "visual.transformer.resblocks", vision_layers),
                                    ("text_model.encoder.layers", "transformer.resblocks", text_layers)):
        for i in range(n):
            h, o = f"{hf_prefix}.{i}.", f"{oa_prefix}.{i}."
            for kind in ("weight", "bias"):
                out[o + f"attn.in_proj_{kind}"] = torch.cat([sd[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
                out[o + f"attn.out_proj.{kind}"] = sd[h + f"self_attn.out_proj.{kind}"]
                out[o + f"ln_1.{kind}"] = sd[h + f"layer_norm1.{kind}"]
                out[o + f"ln_2.{kind}"] = sd[h + f"layer_norm2.{kind}"]
                out[o + f"mlp.c_fc.{kind}"] = sd[h + f"mlp.fc1.{kind}"]
                out[o + f"mlp.c_proj.{kind}"] = sd[h + f"mlp.fc2.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        image, patches = model.encode_image(pixels)
        text = model.encode_text(token_ids(3, 16, 100, seed=seed))
    return image, patches, text


def assert_same(a, b, atol=1e-5):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf_clip_dir(tmp_path_factory.mktemp("loaders"), act="quick_gelu", seed=11)


@pytest.fixture(scope="module")
def hf_gelu_dir(tmp_path_factory):
    return tiny_hf_clip_dir(tmp_path_factory.mktemp("loaders_gelu"), act="gelu", seed=12)


# ----------------------------------------------------------------------------- Hugging Face
def test_hf_directory_returns_a_record_with_source_and_preprocess(hf_dir):
    directory, _ = hf_dir
    clip = load_clip(directory)
    assert isinstance(clip, LoadedClip) and not clip.model.training
    info = clip.source
    assert info["layout"] == "hf" and info["id"] == str(directory) and info["revision"] is None
    assert info["weights_sha256"] == hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    pp = clip.preprocess
    assert pp.size == (32, 32) and pp.mean == (0.5, 0.5, 0.5) and pp.std == (0.25, 0.25, 0.25)
    assert pp.interpolation == "bicubic" and pp.mode == "shortest-crop"
    model = clip.model
    assert model.spec.act == "quick_gelu" and model.spec.text.eos_token_id is None  # legacy eos 2 -> argmax
    # the record carries what came with the checkpoint; nothing is hung on the module for others to find
    assert not any(hasattr(model, a) for a in ("tokenizer", "preprocess_spec", "source_info"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        clip.tokenizer = None
    with pytest.raises(ConfigError, match="LoadedClip.model must be a torch module"):
        LoadedClip("not a model")


def test_hf_pytorch_model_bin_and_tokenizer_files(tmp_path, hf_dir):
    from vlmedge.tokenizer import ClipTokenizer

    directory, _ = hf_dir
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((directory / "config.json").read_text())
    torch.save(load_file(directory / "model.safetensors"), d / "pytorch_model.bin")
    ClipTokenizer.default(context_length=16).save(d)
    clip = load_clip(d)
    assert_same(outputs(clip.model), outputs(load_clip(directory).model), atol=0)
    assert clip.tokenizer is not None and clip.tokenizer.context_length == 16
    assert clip.preprocess.size == (32, 32) and clip.preprocess.mean[0] == pytest.approx(0.48145466)


def test_image_size_argument(hf_dir):
    clip = load_clip(hf_dir[0], image_size=(32, 64))
    assert clip.model.grid == (4, 8) and clip.preprocess.size == (32, 64)
    with torch.no_grad():
        _, patches = clip.model.encode_image(torch.randn(1, 3, 32, 64))
    assert patches.shape == (1, 4, 8, 32)
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        load_clip(hf_dir[0], image_size=(36, 64))


# ----------------------------------------------------------------------------- OpenAI / OpenCLIP
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_openai_layout_matches_hf_layout(tmp_path, hf_dir, suffix):
    directory, hf = hf_dir
    sd = hf_to_openai({k: v.detach() for k, v in hf.state_dict().items()}, 2, 2)
    path = tmp_path / f"clip{suffix}"
    if suffix == ".pt":
        sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(100))
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    clip = load_clip(path, heads=4)
    model = clip.model
    assert clip.source["layout"] == "openai"
    assert clip.source["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.spec.vision.image_size == (32, 32) and model.spec.text.context_length == 16
    assert model.spec.act == "quick_gelu" and clip.preprocess.size == (32, 32)
    assert_same(outputs(model), outputs(load_clip(directory).model))
    default_heads = load_clip(path).model  # OpenAI's rule: heads = width // 64
    assert default_heads.spec.vision.heads == 1 and default_heads.spec.text.heads == 1


def test_openclip_config_sets_act_and_heads(tmp_path, hf_gelu_dir):
    directory, hf = hf_gelu_dir
    d = tmp_path / "openclip"
    d.mkdir()
    save_file(hf_to_openai({k: v.detach() for k, v in hf.state_dict().items()}, 2, 2),
              str(d / "open_clip_model.safetensors"))
    (d / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16,
                                                      "patch_size": 8},
                      "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 48, "heads": 4, "layers": 2}},
        "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}}))
    clip = load_clip(d)  # the directory form
    model = clip.model
    assert model.spec.act == "gelu" and model.spec.vision.heads == 4 and model.spec.text.heads == 4
    assert clip.preprocess.mean == (0.5, 0.4, 0.3)
    assert_same(outputs(model), outputs(load_clip(directory).model))
    (d / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_clip_224"}))  # timm's, not HF's
    assert load_clip(d).source["layout"] == "openai"
    quick = load_clip(d / "open_clip_model.safetensors", act="quick_gelu").model  # explicit act wins
    assert quick.spec.act == "quick_gelu"
    assert not torch.allclose(outputs(quick)[0], outputs(model)[0], atol=1e-4)


def test_openclip_training_checkpoint_and_fp16(tmp_path, hf_dir):
    directory, hf = hf_dir
    sd = hf_to_openai({k: v.detach() for k, v in hf.state_dict().items()}, 2, 2)
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v.half() for k, v in sd.items()}}, path)
    model = load_clip(path, heads=(4, 4)).model
    assert model.visual.pos_embed.dtype == torch.float32
    assert_same(outputs(model), outputs(load_clip(directory).model), atol=5e-2)  # fp16 rounding of the weights


def test_openai_vocab_gets_default_tokenizer(tmp_path):
    hf = hf_model(tiny_hf_config(vocab_size=49408, context_length=77), seed=3)
    path = tmp_path / "clip.safetensors"
    save_file(hf_to_openai({k: v.detach() for k, v in hf.state_dict().items()}, 2, 2), str(path))
    clip = load_clip(path, heads=(4, 4))
    assert clip.tokenizer is not None and clip.tokenizer.vocab_size == 49408
    ids = torch.from_numpy(clip.tokenizer.encode(["a red cup"]))
    with torch.no_grad():
        ours = clip.model.encode_text(ids)
        ref = torch.nn.functional.normalize(hf.text_projection(hf.text_model(input_ids=ids).pooler_output), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- native layout
def test_native_roundtrip(tmp_path, hf_dir):
    from vlmedge.tokenizer import ClipTokenizer

    clip = load_clip(hf_dir[0], dense="sclip")
    tok = ClipTokenizer.default(context_length=16)
    out = save_clip(dataclasses.replace(clip, tokenizer=tok), tmp_path / "native")
    assert sorted(p.name for p in out.iterdir()) == ["clip_spec.json", "model.safetensors", "tokenizer.json"]
    meta = json.loads((out / "clip_spec.json").read_text())
    assert meta["format"] == "vlmedge-clip" and meta["spec"] == clip.model.spec.to_dict()
    assert meta["source"]["layout"] == "hf" and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert set(load_file(out / "model.safetensors")) == set(clip.model.state_dict())
    again = load_clip(out, dense="sclip")
    assert again.source["layout"] == "native" and again.source["id"] == str(hf_dir[0])
    assert again.preprocess == clip.preprocess
    assert again.tokenizer.encode(["a cup"]).tolist() == tok.encode(["a cup"]).tolist()
    assert_same(outputs(again.model), outputs(clip.model), atol=0)
    with pytest.raises(ConfigError, match="save_clip needs a LoadedClip"):
        save_clip(clip.model, tmp_path / "bare")


# ----------------------------------------------------------------------------- errors
def test_missing_path_and_unknown_hub_id(tmp_path, monkeypatch):
    with pytest.raises(ArtifactError, match=r"'/nonexistent/dir/clip.pt' does not exist"):
        load_clip("/nonexistent/dir/clip.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    start = time.monotonic()
    with pytest.raises(ArtifactError, match=r"'no-such-org/no-such-clip' is not a local path and could not be "
                                            r"found or downloaded.*offline"):
        load_clip("no-such-org/no-such-clip")
    assert time.monotonic() - start < 20


def test_directory_without_checkpoint_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError) as e:
        load_clip(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "clip_spec.json" in msg and "config.json" in msg and "model.safetensors" in msg
    assert "notes.txt" in msg


def test_hf_directory_without_weights(tmp_path, hf_dir):
    (tmp_path / "config.json").write_text((hf_dir[0] / "config.json").read_text())
    with pytest.raises(ArtifactError, match=r"without weights; looked for model.safetensors, "
                                            r"model.safetensors.index.json, pytorch_model.bin"):
        load_clip(tmp_path)


def test_mismatched_keys_are_listed(tmp_path, hf_dir):
    directory, _ = hf_dir
    d = tmp_path / "broken"
    d.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (d / name).write_text((directory / name).read_text())
    sd = load_file(directory / "model.safetensors")
    del sd["text_model.final_layer_norm.bias"]
    sd["vision_model.extra_head.weight"] = torch.zeros(3)
    sd["visual_projection.weight"] = torch.zeros(16, 64)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ArtifactError) as e:
        load_clip(d)
    msg = str(e.value)
    assert "1 missing key(s), first: ['text.ln_final.bias']" in msg
    assert "1 unexpected key(s), first: ['vision_model.extra_head.weight']" in msg
    assert "visual.proj.weight: checkpoint (16, 64) vs model (32, 64)" in msg


def test_wrong_file_kinds(tmp_path, hf_dir):
    with pytest.raises(ArtifactError, match="Hugging Face names: pass the directory holding config.json"):
        load_clip(hf_dir[0] / "model.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"unknown checkpoint file type '.onnx'"):
        load_clip(tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match=r"unknown act 'gelu_new'"):
        load_clip(hf_dir[0], act="gelu_new")
    with pytest.raises(ConfigError, match=r"act='gelu' conflicts with hf checkpoint"):
        load_clip(hf_dir[0], act="gelu")
    with pytest.raises(ConfigError, match=r"heads must be a positive int or a \(vision_heads, text_heads\) pair"):
        load_clip(hf_dir[0], heads=(4, 0))


class _Payload:  # a class the weights-only unpickler must refuse
    pass


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save, used to build the archive
def test_torchscript_and_pickled_code_are_refused(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    jit_path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(scripted, str(jit_path))
    with pytest.raises(ArtifactError, match=r"TorchScript \(JIT\) archive.*convert it.*safetensors"):
        load_clip(jit_path)
    pickle_path = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "payload": _Payload()}, pickle_path)
    with pytest.raises(ArtifactError, match=r"pickled code, which vlmedge refuses to unpickle"):
        load_clip(pickle_path)


def test_hf_config_defaults_and_legacy_keys():
    from vlmedge.export.checkpoint_layouts import hf_spec

    spec = hf_spec({"projection_dim": 32,
                    "vision_config_dict": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                           "num_attention_heads": 4, "patch_size": 16},
                    "text_config": {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 2,
                                    "num_attention_heads": 4}})
    assert spec.vision.image_size == (224, 224) and spec.vision.patch_size == 16  # transformers defaults
    assert spec.act == "quick_gelu" and spec.text.vocab_size == 49408 and spec.text.context_length == 77
    assert spec.text.eos_token_id == 49407  # HF default; only eos_token_id == 2 means argmax pooling
    with pytest.raises(ArtifactError, match="not a Hugging Face CLIPConfig"):
        hf_spec({"model_type": "siglip"})
    with pytest.raises(ConfigError, match=r"differ in hidden_act \['gelu', 'quick_gelu'\]"):
        hf_spec({"vision_config": {"hidden_act": "gelu"}, "text_config": {}})
    with pytest.raises(ConfigError, match=r"unknown ClipSpec.act 'gelu_new'"):
        hf_spec({"vision_config": {"hidden_act": "gelu_new"}, "text_config": {"hidden_act": "gelu_new"}})


def test_hf_sharded_safetensors(tmp_path, hf_dir):
    directory, _ = hf_dir
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text((directory / "config.json").read_text())
    sd = load_file(directory / "model.safetensors")
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(d / shard))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    clip = load_clip(d)
    assert_same(outputs(clip.model), outputs(load_clip(directory).model), atol=0)
    both = b"".join((d / s).read_bytes() for s in sorted(shards))
    assert clip.source["weights_sha256"] == hashlib.sha256(both).hexdigest()


def test_hub_id_downloads_configs_then_only_needed_weights(tmp_path, hf_dir, monkeypatch):
    """snapshot_download replaced by a local fake hub (no network): checks which files the loader asks for."""
    import fnmatch
    import shutil

    import huggingface_hub

    repo = tmp_path / "repo"
    shutil.copytree(hf_dir[0], repo)
    (repo / "open_clip_model.safetensors").write_bytes(b"must not be fetched")
    commit = "a" * 40
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, list(allow_patterns)))
        snap = tmp_path / "cache" / commit
        snap.mkdir(parents=True, exist_ok=True)
        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, snap / f.name)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    clip = load_clip("someorg/tiny-clip@main")
    assert clip.source["id"] == "someorg/tiny-clip" and clip.source["revision"] == commit
    assert clip.source["layout"] == "hf"
    assert all(c[:2] == ("someorg/tiny-clip", "main") for c in calls)
    assert not (tmp_path / "cache" / commit / "open_clip_model.safetensors").exists()
    assert_same(outputs(clip.model), outputs(load_clip(hf_dir[0]).model), atol=0)


def test_bare_state_dict_warns_about_its_activation(tmp_path, hf_dir, caplog):
    """No open_clip_config.json beside it: QuickGELU is a guess, and the log names --act."""
    _, hf = hf_dir
    path = tmp_path / "bare.safetensors"
    save_file(hf_to_openai({k: v.detach() for k, v in hf.state_dict().items()}, 2, 2), str(path))
    with caplog.at_level(logging.WARNING, logger="vlmedge.export.loaders"):
        assert load_clip(path, heads=4).model.spec.act == "quick_gelu"
    warned = [r.getMessage() for r in caplog.records if "--act" in r.getMessage()]
    assert len(warned) == 1 and "--act gelu" in warned[0] and "QuickGELU" in warned[0] and str(path) in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlmedge.export.loaders"):
        assert load_clip(path, heads=4, act="gelu").model.spec.act == "gelu"  # told: no warning
        load_clip(path, heads=4, act="quick_gelu")
    assert not [r for r in caplog.records if "--act" in r.getMessage()]


def test_export_cli_passes_act_to_a_bare_state_dict(tmp_path, capsys, caplog):
    from vlmedge.cli import main
    from vlmedge.manifest import open_bundle

    # OpenAI's vocabulary and context, so that the default CLIP tokenizer fits; GELU as LAION's models
    hf = hf_model(tiny_hf_config(act="gelu", eos_token_id=49407, vocab_size=49408, context_length=77), seed=3)
    path = tmp_path / "laion.safetensors"
    save_file(hf_to_openai({k: v.detach() for k, v in hf.state_dict().items()}, 2, 2), str(path))
    with caplog.at_level(logging.WARNING, logger="vlmedge.export.loaders"):
        assert main(["export", str(path), "--out", str(tmp_path / "told"), "--act", "gelu"]) == 0
    assert "--act" not in caplog.text
    assert open_bundle(tmp_path / "told").spec.act == "gelu"
    with caplog.at_level(logging.WARNING, logger="vlmedge.export.loaders"):
        assert main(["export", str(path), "--out", str(tmp_path / "guessed")]) == 0
    assert "--act gelu" in caplog.text
    assert open_bundle(tmp_path / "guessed").spec.act == "quick_gelu"
    assert main(["export", str(path), "--out", str(tmp_path / "x"), "--act", "gelo"]) == 1
    assert "did you mean 'gelu'" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("legacy_only", [True, False])
def test_legacy_config_dict_precedence_matches_transformers(legacy_only):
    """transformers' CLIPConfig: a ``*_config_dict`` (completed with defaults) overrides ``*_config``."""
    from transformers import CLIPConfig

    from vlmedge.export.checkpoint_layouts import hf_spec

    config = {"projection_dim": 32,
              "vision_config_dict": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "patch_size": 16},
              "text_config_dict": {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 3,
                                   "num_attention_heads": 4}}
    if not legacy_only:  # newer keys beside them, disagreeing (and setting fields the legacy dicts leave out)
        config["vision_config"] = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 5,
                                   "num_attention_heads": 8, "patch_size": 8, "image_size": 64}
        config["text_config"] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "max_position_embeddings": 16}
    spec = hf_spec(config)
    ref = CLIPConfig(**copy.deepcopy(config))  # transformers updates the sub-config dicts it is given in place
    v, t = ref.vision_config, ref.text_config
    assert spec.vision.width == v.hidden_size and spec.vision.layers == v.num_hidden_layers
    assert spec.vision.heads == v.num_attention_heads and spec.vision.patch_size == v.patch_size
    assert spec.vision.image_size == (v.image_size, v.image_size)
    assert spec.text.width == t.hidden_size and spec.text.layers == t.num_hidden_layers
    assert spec.text.heads == t.num_attention_heads and spec.text.context_length == t.max_position_embeddings
    assert (spec.vision.width, spec.text.layers, spec.vision.image_size) == (64, 3, (224, 224))  # the legacy dicts
