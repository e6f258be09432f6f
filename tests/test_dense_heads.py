"""Dense heads: each matches an independent reference computation of its paper's definition,
written here on the Hugging Face reference model's own last-layer modules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlmedge.errors import ConfigError
from vlmedge.manifest import DENSE_HEADS

from _models import tiny_hf_clip_dir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    directory, model = tiny_hf_clip_dir(tmp_path_factory.mktemp("dense"), act="quick_gelu", seed=7)
    return directory, model


def _split(t, heads):  # [B, N, W] -> [B, heads, N, d]
    b, n, w = t.shape
    return t.view(b, n, heads, w // heads).permute(0, 2, 1, 3)


def _merge(t):  # [B, heads, N, d] -> [B, N, W]
    b, h, n, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, h * d)


def _gaussian(grid, std=5.0):
    """NACLIP window, by explicit loops over patch pairs (row-major token order), zero for the class token."""
    h, w = grid
    out = torch.zeros(1 + h * w, 1 + h * w)
    for i in range(h * w):
        for j in range(h * w):
            (ri, ci), (rj, cj) = divmod(i, w), divmod(j, w)
            out[1 + i, 1 + j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * std ** 2))
    return out


def reference_patches(hf_model, pixels, head, interpolate=False):
    """Patch embeddings [B,h,w,D] for ``head`` computed from HF modules and the paper definitions."""
    vm = hf_model.vision_model
    out = vm(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=interpolate)
    x = out.hidden_states[-2]  # input of the last encoder layer
    layer = vm.encoder.layers[-1]
    sa = layer.self_attn
    heads = hf_model.config.vision_config.num_attention_heads
    scale = (x.shape[-1] // heads) ** -0.5
    y = layer.layer_norm1(x)
    q, k, v = (_split(p(y), heads) for p in (sa.q_proj, sa.k_proj, sa.v_proj))
    if head == "naive":
        z = out.last_hidden_state
    elif head == "maskclip":  # value path only, residual and FFN kept
        z = x + sa.out_proj(sa.v_proj(y))
        z = z + layer.mlp(layer.layer_norm2(z))
    elif head == "sclip":  # softmax(qq) + softmax(kk), residual and FFN kept
        attn = torch.softmax(q @ q.transpose(-1, -2) * scale, -1) + torch.softmax(k @ k.transpose(-1, -2) * scale, -1)
        z = x + sa.out_proj(_merge(attn @ v))
        z = z + layer.mlp(layer.layer_norm2(z))
    elif head == "clearclip":  # q-q attention output alone: no residual, no FFN
        z = sa.out_proj(_merge(torch.softmax(q @ q.transpose(-1, -2) * scale, -1) @ v))
    elif head == "naclip":  # k-k attention + Gaussian neighbourhood, no residual, no FFN
        gh, gw = pixels.shape[2] // 8, pixels.shape[3] // 8
        z = sa.out_proj(_merge(torch.softmax(k @ k.transpose(-1, -2) * scale + _gaussian((gh, gw)), -1) @ v))
    else:
        raise ValueError(head)
    b, gh, gw = pixels.shape[0], pixels.shape[2] // 8, pixels.shape[3] // 8
    proj = hf_model.visual_projection(vm.post_layernorm(z[:, 1:]))
    image = F.normalize(hf_model.visual_projection(out.pooler_output), dim=-1)
    return F.normalize(proj, dim=-1).reshape(b, gh, gw, -1), image


@pytest.mark.parametrize("head", DENSE_HEADS)
def test_head_matches_reference_definition(hf, head):
    from vlmedge.export.loaders import load_clip

    directory, hf_model = hf
    model = load_clip(directory, dense=head).model
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image, patches = model.encode_image(pixels)
        ref_patches, ref_image = reference_patches(hf_model, pixels, head)
    assert patches.shape == (2, 4, 4, 32)
    torch.testing.assert_close(patches.norm(dim=-1), torch.ones(2, 4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(patches, ref_patches, atol=1e-5, rtol=0)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)  # global embedding: unmodified CLS path


def test_heads_differ_from_naive_but_share_image_embeds(hf):
    from vlmedge.export.loaders import load_clip

    directory, _ = hf
    model = load_clip(directory).model
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    results = {}
    with torch.no_grad():
        for head in DENSE_HEADS:
            model.dense_head = head
            results[head] = model.encode_image(pixels)
    naive_image, naive_patches = results["naive"]
    for head in DENSE_HEADS[1:]:
        image, patches = results[head]
        assert torch.equal(image, naive_image), head
        assert (patches - naive_patches).abs().max() > 1e-2, head
    assert (results["clearclip"][1] - results["naclip"][1]).abs().max() > 1e-2


def test_naclip_window_follows_non_square_grid(hf):
    from vlmedge.export.loaders import load_clip

    directory, hf_model = hf
    model = load_clip(directory, dense="naclip", image_size=(32, 48)).model
    assert model.visual.naclip_bias.shape == (1 + 4 * 6, 1 + 4 * 6)
    torch.testing.assert_close(model.visual.naclip_bias, _gaussian((4, 6)))
    pixels = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, patches = model.encode_image(pixels)
        ref, _ = reference_patches(hf_model, pixels, "naclip", interpolate=True)
    assert patches.shape == (1, 4, 6, 32)
    torch.testing.assert_close(patches, ref, atol=1e-5, rtol=0)
    model.dense_head = "naive"
    assert model.visual.naclip_bias is None  # only kept while the head needs it


def test_unknown_head_is_config_error_with_suggestion(hf):
    from vlmedge.export.loaders import load_clip

    with pytest.raises(ConfigError, match=r"unknown dense head 'nacclip'.*did you mean 'naclip'"):
        load_clip(hf[0], dense="nacclip")
