"""Tiny seeded CLIP fixtures shared by test files (import from tests; needs torch).

- ``tiny_spec()``: a ClipSpec small enough for millisecond forwards.
- ``tiny_clip(seed)``: our CLIP built from it with seeded random weights, eval mode.
- ``tiny_hf_config(...)`` / ``tiny_hf_clip_dir(tmp_path, ...)``: a transformers CLIPModel with
  seeded random weights saved as a Hugging Face directory (config.json, model.safetensors,
  preprocessor_config.json), ready for ``load_clip``.
- ``token_ids(batch, length, vocab, eos)``: random ids with an end-of-text token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

TINY = dict(image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
            text_width=48, text_layers=2, text_heads=4, vocab_size=100, context_length=16, embed_dim=32)


def tiny_spec(act: str = "quick_gelu", eos_token_id: int | None = None, **overrides) -> ClipSpec:
    c = {**TINY, **overrides}
    return ClipSpec(
        vision=VisionSpec(c["image_size"], c["patch_size"], c["vision_width"], c["vision_layers"], c["vision_heads"]),
        text=TextSpec(c["text_width"], c["text_layers"], c["text_heads"], vocab_size=c["vocab_size"],
                      context_length=c["context_length"], eos_token_id=eos_token_id),
        embed_dim=c["embed_dim"], act=act,
    )


def tiny_clip(seed: int = 0, **kwargs):
    from vlmedge.export.model import CLIP

    torch.manual_seed(seed)
    return CLIP(tiny_spec(**kwargs)).eval()


def tiny_hf_config(act: str = "quick_gelu", eos_token_id: int = 2, **overrides):
    """CLIPConfig for the tiny shapes. eos_token_id=2 selects HF's legacy argmax pooling."""
    from transformers import CLIPConfig

    c = {**TINY, **overrides}
    text = dict(hidden_size=c["text_width"], intermediate_size=4 * c["text_width"], num_hidden_layers=c["text_layers"],
                num_attention_heads=c["text_heads"], vocab_size=c["vocab_size"],
                max_position_embeddings=c["context_length"], hidden_act=act, eos_token_id=eos_token_id,
                bos_token_id=0, pad_token_id=1)
    vision = dict(hidden_size=c["vision_width"], intermediate_size=4 * c["vision_width"],
                  num_hidden_layers=c["vision_layers"], num_attention_heads=c["vision_heads"],
                  image_size=c["image_size"], patch_size=c["patch_size"], hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=c["embed_dim"])


def hf_model(config, seed: int = 0):
    """A transformers CLIPModel with seeded random weights (std large enough to make outputs differ)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # HF init is tiny (std 0.02 * factor); spread the weights so layers matter
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name != "logit_scale":
                p.normal_(0.0, (p.shape[-1] if p.ndim > 1 else 64) ** -0.5)
    return model


def save_hf_dir(model, directory: Path, image_size: int | None = None) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    size = image_size or model.config.vision_config.image_size
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
        "image_processor_type": "CLIPImageProcessor"}))
    return directory


def tiny_hf_clip_dir(tmp_path: Path, act: str = "quick_gelu", seed: int = 0, eos_token_id: int = 2,
                     name: str = "hf_tiny", **overrides):
    """Save a seeded tiny transformers CLIPModel under tmp_path/name; returns (directory, hf_model)."""
    model = hf_model(tiny_hf_config(act=act, eos_token_id=eos_token_id, **overrides), seed=seed)
    return save_hf_dir(model, Path(tmp_path) / name), model


def token_ids(batch: int, length: int, vocab: int, eos: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random ids [batch, length] in [3, vocab-1) with an end token at a varying position.

    eos=None puts vocab-1 (the largest id, OpenAI's argmax convention) as the end token.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab - 2, (batch, length), generator=g)
    end = vocab - 1 if eos is None else eos
    for i in range(batch):
        pos = 2 + (i * 3) % (length - 2)
        ids[i, pos] = end
        ids[i, pos + 1:] = 0
    return ids
