"""Parity with transformers.CLIPModel on identical seeded random weights (saved with
save_pretrained, loaded with load_clip): global, text and naive patch embeddings."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from vlmedge.export.loaders import load_clip

from _models import hf_model, save_hf_dir, tiny_hf_clip_dir, tiny_hf_config, token_ids

torch.set_num_threads(1)
TOL = 1e-4


def hf_reference(hf, pixels, ids, interpolate=False):
    """(image_embeds, naive patch_embeds [B,h,w,D], text_embeds) from the HF model, normalized."""
    out = hf.vision_model(pixel_values=pixels, interpolate_pos_encoding=interpolate)
    image = F.normalize(hf.visual_projection(out.pooler_output), dim=-1)
    # naive patches: ln_post + visual projection on the last layer's patch tokens
    patches = F.normalize(hf.visual_projection(hf.vision_model.post_layernorm(out.last_hidden_state[:, 1:])), dim=-1)
    p = hf.config.vision_config.patch_size
    patches = patches.reshape(pixels.shape[0], pixels.shape[2] // p, pixels.shape[3] // p, -1)
    text = F.normalize(hf.text_projection(hf.text_model(input_ids=ids).pooler_output), dim=-1)
    return image, patches, text


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("act, eos", [("quick_gelu", 2), ("gelu", 2), ("quick_gelu", 50), ("gelu", 99)])
def test_tiny_parity(tmp_path, act, eos):
    directory, hf = tiny_hf_clip_dir(tmp_path, act=act, eos_token_id=eos, seed=21)
    model = load_clip(directory).model
    assert model.spec.act == act and model.spec.text.eos_token_id == (None if eos == 2 else eos)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = token_ids(4, 16, 100, eos=None if eos == 2 else eos)
    ids[:, 0] = 97  # a large id before the end token: pooling rules (argmax vs first eos) really differ
    with torch.no_grad():
        image, patches, text = (*model.encode_image(pixels), model.encode_text(ids))
        ref = hf_reference(hf, pixels, ids)
    assert patches.shape == ref[1].shape == (3, 4, 4, 32)
    for ours, theirs in zip((image, patches, text), ref):
        assert max_diff(ours, theirs) < TOL
    assert max_diff(image[0], image[1]) > 1e-2 and max_diff(text[0], text[1]) > 1e-2  # outputs are not degenerate


def test_tiny_gelu_and_quick_gelu_differ(tmp_path):
    q = load_clip(tiny_hf_clip_dir(tmp_path, act="quick_gelu", seed=5, name="q")[0]).model
    g = load_clip(tiny_hf_clip_dir(tmp_path, act="gelu", seed=5, name="g")[0]).model
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(q.encode_image(pixels)[0], g.encode_image(pixels)[0]) > 1e-3


@pytest.mark.parametrize("size", [(32, 64), (48, 32), (64, 64)])
def test_interpolated_positions_match_hf(tmp_path, size):
    """HF's interpolate_pos_encoding (bicubic, align_corners=False, explicit size) is the same
    algorithm as set_image_size, so non-native and non-square inputs match too."""
    directory, hf = tiny_hf_clip_dir(tmp_path, seed=22)
    model = load_clip(directory, image_size=size).model
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    ids = token_ids(2, 16, 100)
    with torch.no_grad():
        image, patches = model.encode_image(pixels)
        ref = hf_reference(hf, pixels, ids, interpolate=True)
    assert patches.shape == (2, size[0] // 8, size[1] // 8, 32)
    assert max_diff(image, ref[0]) < TOL and max_diff(patches, ref[1]) < TOL


@pytest.mark.slow
def test_vit_b16_shaped_parity(tmp_path):
    """ViT-B/16 towers (vision 768x12x12 heads, patch 16, 224; text 512x12x8 heads; projection 512), random weights."""
    config = tiny_hf_config(act="quick_gelu", image_size=224, patch_size=16, vision_width=768, vision_layers=12,
                            vision_heads=12, text_width=512, text_layers=12, text_heads=8, vocab_size=49408,
                            context_length=77, embed_dim=512)
    hf = hf_model(config, seed=23)
    directory = save_hf_dir(hf, tmp_path / "vit_b16")
    start = time.monotonic()
    model = load_clip(directory).model
    load_s = time.monotonic() - start
    assert model.spec.vision.heads == 12 and model.spec.text.heads == 8 and model.spec.embed_dim == 512
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    ids = token_ids(2, 77, 49408)
    with torch.no_grad():
        image, patches, text = (*model.encode_image(pixels), model.encode_text(ids))
        ref = hf_reference(hf, pixels, ids)
    assert patches.shape == (1, 14, 14, 512)
    for ours, theirs in zip((image, patches, text), ref):
        assert max_diff(ours, theirs) < TOL
    assert load_s < 60
