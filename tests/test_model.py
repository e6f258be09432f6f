"""vlmedge.export.model.CLIP: shapes, normalization, image-size changes, input checks, ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmedge.errors import ConfigError, InputError
from vlmedge.manifest import DENSE_HEADS

from _models import tiny_clip, tiny_spec, token_ids

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=0)


def test_shapes_and_normalization(model):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image, patches = model.encode_image(x)
        text = model.encode_text(token_ids(4, 16, 100))
        fwd = model(x)
    assert image.shape == (3, 32) and patches.shape == (3, 4, 4, 32) and text.shape == (4, 32)
    for t in (image, patches, text):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]), atol=1e-5, rtol=0)
    assert isinstance(fwd, tuple) and torch.equal(fwd[0], image) and torch.equal(fwd[1], patches)
    assert not torch.allclose(image[0], image[1])  # random weights: different inputs, different outputs
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))  # log space, as OpenAI


def test_state_dict_holds_only_weights(model):
    keys = set(model.state_dict())
    assert "visual.pos_embed" in keys and "text.blocks.1.attn.q_proj.weight" in keys and "logit_scale" in keys
    assert not any(k.endswith(("causal_mask", "pos_embed_resized", "naclip_bias")) for k in keys)
    assert model.visual.patch_embed.bias is None and model.visual.proj.bias is None and model.text.proj.bias is None


def test_non_square_image_size_interpolates_once():
    m = tiny_clip(seed=1)
    native = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = m.encode_image(native)
    m.set_image_size((32, 64))
    assert m.image_size == (32, 64) and m.grid == (4, 8) and m.spec.vision.image_size == (32, 32)
    table = m.visual.pos_embed_resized
    assert table is not None and table.shape == (1 + 4 * 8, 64)
    torch.testing.assert_close(table[0], m.visual.pos_embed[0].detach())  # class position kept
    with torch.no_grad():
        image, patches = m.encode_image(torch.randn(2, 3, 32, 64))
        m.encode_image(torch.randn(1, 3, 32, 64))
    assert patches.shape == (2, 4, 8, 32) and image.shape == (2, 32)
    assert m.visual.pos_embed_resized is table  # computed once, not per forward
    m.set_image_size((32, 32))  # back to native: the checkpoint table is used again, bit-identical outputs
    assert m.visual.pos_embed_resized is None
    with torch.no_grad():
        after = m.encode_image(native)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_resized_table_follows_loaded_weights():
    m, other = tiny_clip(seed=1), tiny_clip(seed=2)
    m.set_image_size((48, 32))
    old = m.visual.pos_embed_resized.clone()
    m.load_state_dict(other.state_dict())
    other.set_image_size((48, 32))
    assert not torch.equal(old, m.visual.pos_embed_resized)
    torch.testing.assert_close(m.visual.pos_embed_resized, other.visual.pos_embed_resized)


def test_bad_image_size_is_config_error(model):
    with pytest.raises(ConfigError, match=r"\(30, 64\).*multiple of the patch size 8"):
        model.set_image_size((30, 64))
    with pytest.raises(ConfigError, match="image_size must be positive"):
        model.set_image_size((0, 32))
    assert model.image_size == (32, 32)


@pytest.mark.parametrize("pixels, expected", [
    (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), r"pixels must be float32 \[B,3,32,32\], got uint8 \[1,32,32,3\]"),
    (torch.zeros(1, 1, 32, 32), r"pixels must be float32 \[B,3,32,32\], got float32 \[1,1,32,32\]"),
    (torch.zeros(2, 3, 32, 48), r"got float32 \[2,3,32,48\] \(call set_image_size"),
    (torch.zeros(3, 32, 32), r"got float32 \[3,32,32\]"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.float64), r"got float64 \[1,3,32,32\]"),
    (np.zeros((1, 3, 32, 32), np.float32), r"must be a torch.Tensor float32 \[B,3,32,32\], got ndarray"),
])
def test_wrong_pixels_are_input_errors(model, pixels, expected):
    with pytest.raises(InputError, match=expected):
        model.encode_image(pixels)


@pytest.mark.parametrize("ids, expected", [
    (torch.zeros(2, 16, dtype=torch.int32), r"input_ids must be int64 \[B,L\] with L <= 16, got int32 \[2,16\]"),
    (torch.zeros(2, 17, dtype=torch.int64), r"got int64 \[2,17\]"),
    (torch.zeros(16, dtype=torch.int64), r"got int64 \[16\]"),
])
def test_wrong_ids_are_input_errors(model, ids, expected):
    with pytest.raises(InputError, match=expected):
        model.encode_text(ids)


def test_unknown_dense_head_suggests_closest(model):
    with pytest.raises(ConfigError, match=r"unknown dense head 'clear_clip'.*did you mean 'clearclip'"):
        model.dense_head = "clear_clip"
    assert model.dense_head == "naive"
    from vlmedge.export.model import CLIP
    with pytest.raises(ConfigError, match="did you mean 'maskclip'"):
        CLIP(tiny_spec(), dense_head="mask_clip")


def test_text_pools_at_end_token():
    # OpenAI convention (eos_token_id None): pool at argmax; tokens after it do not matter (causal mask).
    m = tiny_clip(seed=3)
    ids = token_ids(2, 16, 100)
    changed = ids.clone()
    end = int(ids[0].argmax())
    changed[0, end + 1:] = 7
    with torch.no_grad():
        a, b = m.encode_text(ids), m.encode_text(changed)
        prefix = m.encode_text(ids[:, : end + 1])  # shorter context works too
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0], prefix[0], atol=1e-6, rtol=0)
    # HF convention: first position of eos_token_id, even when larger ids appear elsewhere.
    m2 = tiny_clip(seed=3, eos_token_id=50)
    ids2 = token_ids(2, 16, 100, eos=50)
    ids2[:, 0] = 97  # a larger id before the end token: argmax and first-eos differ
    assert int(ids2[0].argmax()) != int((ids2[0] == 50).nonzero()[0])
    assert torch.equal(m2.text.pool_index(ids2), (ids2 == 50).int().argmax(-1))
    with torch.no_grad():
        emb_first_eos = m2.encode_text(ids2)
        emb_argmax = m.encode_text(ids2)  # same weights (seed 3), argmax pooling
    assert not torch.allclose(emb_first_eos[0], emb_argmax[0])


def test_wrong_spec_type():
    from vlmedge.export.model import CLIP
    with pytest.raises(ConfigError, match="needs a vlmedge.spec.ClipSpec, got dict"):
        CLIP(tiny_spec().to_dict())


class _TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.encode_text(input_ids)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter (dynamo=False)
@pytest.mark.parametrize("dense_head, size", [("naive", (32, 32)), ("naclip", (32, 48))])
def test_onnx_export_opset17_matches_torch(tmp_path, dense_head, size):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m = tiny_clip(seed=4)
    m.dense_head = dense_head
    m.set_image_size(size)
    pixels = torch.randn(2, 3, *size)
    ids = token_ids(3, 16, 100)
    img_path, txt_path = tmp_path / "image.onnx", tmp_path / "text.onnx"
    torch.onnx.export(m, (pixels,), str(img_path), opset_version=17, dynamo=False,
                      input_names=["pixel_values"], output_names=["image_embeds", "patch_embeds"],
                      dynamic_axes={"pixel_values": {0: "batch"}})
    torch.onnx.export(_TextTower(m), (ids,), str(txt_path), opset_version=17, dynamo=False,
                      input_names=["input_ids"], output_names=["text_embeds"], dynamic_axes={"input_ids": {0: "batch"}})
    graph = onnx.load(str(img_path))
    assert graph.opset_import[0].version == 17
    assert "MatMul" in {n.op_type for n in graph.graph.node}  # plain attention, visible to quantization
    with torch.no_grad():
        ref_image, ref_patches = m.encode_image(pixels[:1])
        ref_text = m.encode_text(ids)
    sess = ort.InferenceSession(str(img_path), providers=["CPUExecutionProvider"])
    image, patches = sess.run(None, {"pixel_values": pixels[:1].numpy()})  # batch 1 != traced batch 2
    text_sess = ort.InferenceSession(str(txt_path), providers=["CPUExecutionProvider"])
    text, = text_sess.run(None, {"input_ids": ids.numpy()})
    text2, = text_sess.run(None, {"input_ids": ids[:2].numpy()})
    np.testing.assert_allclose(text2, text[:2], atol=1e-5, rtol=0)  # dynamic batch
    assert patches.shape == (1, size[0] // 8, size[1] // 8, 32)
    np.testing.assert_allclose(image, ref_image.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(patches, ref_patches.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(text, ref_text.numpy(), atol=1e-4, rtol=0)


def test_dense_heads_constant_matches_manifest():
    from vlmedge.export import dense
    for name in DENSE_HEADS:
        assert dense.check_head(name) == name


def test_training_at_non_native_size_updates_pos_embed():
    m = tiny_clip(seed=5)
    m.set_image_size((32, 48))
    m.train()
    image, patches = m.encode_image(torch.randn(2, 3, 32, 48))
    (image.sum() + patches.sum()).backward()
    assert m.visual.pos_embed.grad is not None and m.visual.pos_embed.grad.abs().sum() > 0
    stale = m.visual.pos_embed_resized.clone()
    with torch.no_grad():
        m.visual.pos_embed.add_(0.5)
    m.eval()  # leaving training refreshes the cached table
    assert not torch.equal(stale, m.visual.pos_embed_resized)
    from vlmedge.export.model import interpolate_pos_embed
    expected = interpolate_pos_embed(m.visual.pos_embed.detach(), (4, 4), (4, 6))
    torch.testing.assert_close(m.visual.pos_embed_resized, expected)
