"""Foreign checkpoint layouts -> our ClipSpec and state-dict names, written out explicitly.

Two layouts besides our own:

- Hugging Face ``CLIPModel`` (``config.json`` + ``vision_model.* / text_model.*`` tensors):
  :func:`hf_spec`, :func:`hf_to_ours`.
- OpenAI / OpenCLIP (``visual.conv1.weight``, fused ``in_proj_weight`` ...): the spec is
  inferred from tensor shapes (:func:`openai_spec`), names mapped by :func:`openai_to_ours`.

Our names are those of :class:`vlmedge.export.model.CLIP` (``visual.blocks.0.attn.q_proj.weight``).
Mapping functions only rename/split/transpose; checking against the model happens in the loader.
"""

from __future__ import annotations

import re

import torch

from vlmedge.errors import ArtifactError, ConfigError
from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

# ----------------------------------------------------------------------------- Hugging Face
_HF_BLOCK = {  # per-layer suffix map (HF -> ours)
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_FIXED = {
    "logit_scale": "logit_scale",
    "vision_model.embeddings.patch_embedding.weight": "visual.patch_embed.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.pos_embed",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "visual_projection.weight": "visual.proj.weight",
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.pos_embed",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "text_projection.weight": "text.proj.weight",
}
_HF_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
_HF_LAYER = re.compile(r"^(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


# transformers' CLIPConfig defaults: config.json files saved as diffs omit fields equal to these.
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, eos_token_id=49407)


def hf_spec(config: dict, where: str = "config.json") -> ClipSpec:
    """ClipSpec from a Hugging Face CLIPConfig dict (``config.json``), with transformers' defaults."""
    if not any(k in config for k in ("vision_config", "vision_config_dict", "text_config", "text_config_dict")):
        raise ArtifactError(f"{where}: not a Hugging Face CLIPConfig (no vision_config/text_config; "
                            f"model_type {config.get('model_type')!r})")
    v = _hf_tower(config, "vision", _HF_VISION_DEFAULTS)
    t = _hf_tower(config, "text", _HF_TEXT_DEFAULTS)
    acts, eps = {v["hidden_act"], t["hidden_act"]}, {float(v["layer_norm_eps"]), float(t["layer_norm_eps"])}
    if len(acts) != 1 or len(eps) != 1:
        raise ConfigError(f"{where}: vision and text towers differ in hidden_act {sorted(acts)} or "
                          f"layer_norm_eps {sorted(eps)}; vlmedge needs one value for both")
    eos = t["eos_token_id"]
    try:
        vision = VisionSpec(image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
                            width=int(v["hidden_size"]),
                            layers=int(v["num_hidden_layers"]), heads=int(v["num_attention_heads"]),
                            mlp_ratio=int(v["intermediate_size"]) / int(v["hidden_size"]))
        text = TextSpec(width=int(t["hidden_size"]), layers=int(t["num_hidden_layers"]),
                        heads=int(t["num_attention_heads"]),
                        vocab_size=int(t["vocab_size"]), context_length=int(t["max_position_embeddings"]),
                        mlp_ratio=int(t["intermediate_size"]) / int(t["hidden_size"]),
                        # HF legacy rule: eos_token_id == 2 (old configs) means "pool at argmax of ids".
                        eos_token_id=None if eos is None or int(eos) == 2 else int(eos))
        return ClipSpec(vision=vision, text=text, embed_dim=int(config.get("projection_dim", 512)),
                        act=acts.pop(), eps=eps.pop())
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: bad value ({e})") from None


def _hf_tower(config: dict, tower: str, defaults: dict) -> dict:
    """One tower's config as transformers' ``CLIPConfig`` reads it: a legacy ``<tower>_config_dict``, when
    present, is completed with the tower's defaults and then overrides ``<tower>_config`` key by key (so every
    field we read comes from the legacy dict or the default); otherwise ``<tower>_config`` over the defaults."""
    legacy = config.get(f"{tower}_config_dict")
    if legacy is not None:
        return {**(config.get(f"{tower}_config") or {}), **defaults, **legacy}
    return {**defaults, **(config.get(f"{tower}_config") or {})}


def hf_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Hugging Face CLIPModel tensors; unknown names are kept (the loader reports them)."""
    out = {}
    for name, t in sd.items():
        if name in _HF_IGNORED:
            continue
        if name in _HF_FIXED:
            out[_HF_FIXED[name]] = t
            continue
        m = _HF_LAYER.match(name)
        if m and m.group(3) in _HF_BLOCK:
            tower = "visual" if m.group(1) == "vision" else "text"
            out[f"{tower}.blocks.{m.group(2)}.{_HF_BLOCK[m.group(3)]}.{m.group(4)}"] = t
        else:
            out[name] = t
    return out


# ----------------------------------------------------------------------------- OpenAI / OpenCLIP
_OA_BLOCK = {"attn.out_proj": "attn.out_proj", "ln_1": "ln_1", "ln_2": "ln_2", "mlp.c_fc": "mlp.fc1",
             "mlp.c_proj": "mlp.fc2"}
_OA_FIXED = {
    "logit_scale": "logit_scale",
    "visual.conv1.weight": "visual.patch_embed.weight",
    "visual.class_embedding": "visual.class_embedding",
    "visual.positional_embedding": "visual.pos_embed",
    "visual.ln_pre.weight": "visual.ln_pre.weight", "visual.ln_pre.bias": "visual.ln_pre.bias",
    "visual.ln_post.weight": "visual.ln_post.weight", "visual.ln_post.bias": "visual.ln_post.bias",
    "token_embedding.weight": "text.token_embedding.weight",
    "positional_embedding": "text.pos_embed",
    "ln_final.weight": "text.ln_final.weight", "ln_final.bias": "text.ln_final.bias",
}
_OA_TRANSPOSED = {"visual.proj": "visual.proj.weight", "text_projection": "text.proj.weight"}  # stored [W, D]
_OA_IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_OA_LAYER = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def is_openai_layout(sd: dict) -> bool:
    return "visual.conv1.weight" in sd


def is_hf_layout(sd: dict) -> bool:
    return "vision_model.embeddings.patch_embedding.weight" in sd


def _count_blocks(sd: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _need(sd: dict, key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise ArtifactError(f"{where}: OpenAI/OpenCLIP state dict lacks {key!r}; cannot infer the architecture")
    return sd[key]


def openai_spec(sd: dict[str, torch.Tensor], where: str, act: str = "quick_gelu",
                vision_heads: int | None = None, text_heads: int | None = None, eps: float = 1e-5) -> ClipSpec:
    """Infer a ClipSpec from OpenAI/OpenCLIP tensor shapes (heads default to width // 64, as OpenAI)."""
    conv = _need(sd, "visual.conv1.weight", where)
    vw, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(_need(sd, "visual.positional_embedding", where).shape[0]) - 1
    grid = round(n_pos ** 0.5)
    if grid * grid != n_pos:
        raise ArtifactError(f"{where}: visual.positional_embedding has {n_pos} patch positions, not a square grid")
    tw = int(_need(sd, "ln_final.weight", where).shape[0])
    v_fc = _need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", where)
    t_fc = _need(sd, "transformer.resblocks.0.mlp.c_fc.weight", where)
    vision = VisionSpec(image_size=grid * patch, patch_size=patch, width=vw,
                        layers=_count_blocks(sd, "visual.transformer.resblocks."),
                        heads=vision_heads or max(vw // 64, 1), mlp_ratio=int(v_fc.shape[0]) / vw)
    text = TextSpec(width=tw, layers=_count_blocks(sd, "transformer.resblocks."), heads=text_heads or max(tw // 64, 1),
                    vocab_size=int(_need(sd, "token_embedding.weight", where).shape[0]),
                    context_length=int(_need(sd, "positional_embedding", where).shape[0]),
                    mlp_ratio=int(t_fc.shape[0]) / tw, eos_token_id=None)
    embed_dim = int(_need(sd, "text_projection", where).shape[1])
    return ClipSpec(vision=vision, text=text, embed_dim=embed_dim, act=act, eps=eps)


def openai_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename OpenAI/OpenCLIP tensors: split fused in_proj into q/k/v, transpose the projections."""
    out = {}
    for name, t in sd.items():
        if name in _OA_IGNORED:
            continue
        if name in _OA_FIXED:
            out[_OA_FIXED[name]] = t
        elif name in _OA_TRANSPOSED:
            out[_OA_TRANSPOSED[name]] = t.t().contiguous()
        elif m := _OA_LAYER.match(name):
            tower, i, rest = ("visual" if m.group(1) else "text"), m.group(2), m.group(3)
            prefix = f"{tower}.blocks.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias") and t.shape[0] % 3 == 0:
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                    out[f"{prefix}attn.{part}.{kind}"] = chunk.contiguous()
                continue
            base, _, kind = rest.rpartition(".")
            out[prefix + f"{_OA_BLOCK[base]}.{kind}" if base in _OA_BLOCK else name] = t
        else:
            out[name] = t
    return out


def open_clip_act(cfg: dict) -> str:
    """Activation from an OpenCLIP config: the hub ``open_clip_config.json`` (``{"model_cfg": ...}``)
    or a bare model config. OpenCLIP uses GELU unless ``quick_gelu`` is true."""
    return "quick_gelu" if cfg.get("model_cfg", cfg).get("quick_gelu", False) else "gelu"


def open_clip_heads(cfg: dict) -> tuple[int | None, int | None]:
    """(vision_heads, text_heads) from an OpenCLIP model config, None where not derivable."""
    model_cfg = cfg.get("model_cfg", cfg)
    v, t = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    vh = int(v["width"]) // int(v.get("head_width", 64)) if "width" in v else None
    th = int(t.get("heads", 8)) if t else None
    return vh, th
