"""A compact CLIP (image + text towers) built from a :class:`vlmedge.spec.ClipSpec`.

Readable top to bottom: activation, attention, MLP, block, vision tower, text tower, CLIP.
Attention is written with plain MatMul/Softmax (no fused SDPA) so that ONNX export at
opset 17 gives MatMul nodes that ONNX Runtime quantization can see.

State-dict names are our own (``visual.blocks.0.attn.q_proj.weight``, ...); the loaders map
Hugging Face and OpenAI/OpenCLIP names onto them explicitly (``checkpoint_layouts.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlmedge.errors import ConfigError, InputError
from vlmedge.export import dense
from vlmedge.spec import ClipSpec, TextSpec, VisionSpec, hw_pair


def _checking() -> bool:
    """True in eager mode; False while tracing/exporting (shapes are static there anyway)."""
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (biases on, as in CLIP)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, W] -> [B, heads, N, head_dim]."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, head_dim] -> [B, N, W] followed by the output projection."""
        b, _, n, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.split(self.q_proj(x)) * self.scale
        k = self.split(self.k_proj(x))
        v = self.split(self.v_proj(x))
        logits = q @ k.transpose(-1, -2)
        if mask is not None:
            logits = logits + mask
        return self.merge(logits.softmax(dim=-1) @ v)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(round(width * mlp_ratio)), act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


def interpolate_pos_embed(pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Resize a [1 + h*w, W] position table (class position first) to a new grid, bicubic.

    Same algorithm as Hugging Face ``interpolate_pos_encoding`` (bicubic, align_corners=False,
    explicit output size); the class position is kept as is.
    """
    if tuple(src_grid) == tuple(dst_grid):
        return pos.clone()
    cls_pos, grid_pos = pos[:1], pos[1:]
    width = pos.shape[-1]
    grid_pos = grid_pos.reshape(1, src_grid[0], src_grid[1], width).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=tuple(dst_grid), mode="bicubic", align_corners=False)
    grid_pos = grid_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(-1, width)
    return torch.cat([cls_pos, grid_pos], dim=0)


def _refresh_after_load(module: "VisionTower", _incompatible_keys) -> None:
    module._refresh()  # new pos_embed: the cached resized table must follow


class VisionTower(nn.Module):
    """ViT: conv patch embedding (no bias), class token, position embeddings, ln_pre, blocks,
    ln_post + projection (no bias). ``dense_head`` changes only how patch tokens leave the
    last block (see ``dense.py``); the class token always takes the standard path."""

    def __init__(self, spec: VisionSpec, embed_dim: int, act: str, eps: float):
        super().__init__()
        self.spec = spec
        w = spec.width
        self.patch_embed = nn.Conv2d(3, w, kernel_size=spec.patch_size, stride=spec.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.pos_embed = nn.Parameter(torch.zeros(1 + spec.grid[0] * spec.grid[1], w))
        self.ln_pre = nn.LayerNorm(w, eps=eps)
        self.blocks = nn.ModuleList(Block(w, spec.heads, spec.mlp_ratio, act, eps) for _ in range(spec.layers))
        self.ln_post = nn.LayerNorm(w, eps=eps)
        self.proj = nn.Linear(w, embed_dim, bias=False)
        self.image_size: tuple[int, int] = spec.image_size
        # Position table for a non-native image size; None means "use pos_embed as is".
        self.register_buffer("pos_embed_resized", None, persistent=False)
        self.register_buffer("naclip_bias", None, persistent=False)
        self._dense_head = "naive"
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.spec.patch_size, self.image_size[1] // self.spec.patch_size

    @property
    def dense_head(self) -> str:
        return self._dense_head

    @dense_head.setter
    def dense_head(self, name: str) -> None:
        dense.check_head(name)
        self._dense_head = name
        self._refresh()

    def set_image_size(self, size) -> None:
        h, w = hw_pair("image_size", size)
        p = self.spec.patch_size
        if h % p or w % p:
            raise ConfigError(f"image_size {(h, w)} must be a multiple of the patch size {p} in both H and W")
        self.image_size = (h, w)
        self._refresh()

    @torch.no_grad()
    def _refresh(self) -> None:
        """Recompute the derived buffers for the current image size and dense head."""
        if self.image_size == self.spec.image_size:
            self.pos_embed_resized = None
        else:
            self.pos_embed_resized = interpolate_pos_embed(self.pos_embed.detach(), self.spec.grid, self.grid)
        naclip = self._dense_head == "naclip"
        self.naclip_bias = dense.naclip_bias(self.grid).to(self.pos_embed.device) if naclip else None

    def train(self, mode: bool = True) -> "VisionTower":
        super().train(mode)
        if not mode:  # weights may have changed while training: refresh the cached table
            self._refresh()
        return self

    def positions(self) -> torch.Tensor:
        """Position table for the current size. Eval: the cached table. Training at a non-native
        size: interpolated on the fly so gradients reach ``pos_embed``."""
        if self.pos_embed_resized is None:
            return self.pos_embed
        if self.training:
            return interpolate_pos_embed(self.pos_embed, self.spec.grid, self.grid)
        return self.pos_embed_resized

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B,3,H,W] -> (class features [B,D], patch features [B,h,w,D]), not normalized."""
        x = self.patch_embed(pixels)  # [B, W, h, w]
        b, width, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, W]
        cls = self.class_embedding.reshape(1, 1, width).expand(b, 1, width)
        x = torch.cat([cls.to(x.dtype), x], dim=1) + self.positions()
        x = self.ln_pre(x)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        out = last(x)
        if self._dense_head == "naive":
            patches = out[:, 1:]
        else:
            patches = dense.last_block_patches(self._dense_head, last, x, self.naclip_bias)
        image = self.proj(self.ln_post(out[:, 0]))
        patches = self.proj(self.ln_post(patches)).reshape(b, gh, gw, -1)
        return image, patches


class TextTower(nn.Module):
    """Causal transformer: token + position embeddings, blocks with a causal mask, ln_final,
    projection (no bias) of the end-of-text token."""

    def __init__(self, spec: TextSpec, embed_dim: int, act: str, eps: float):
        super().__init__()
        self.spec = spec
        w = spec.width
        self.token_embedding = nn.Embedding(spec.vocab_size, w)
        self.pos_embed = nn.Parameter(torch.zeros(spec.context_length, w))
        self.blocks = nn.ModuleList(Block(w, spec.heads, spec.mlp_ratio, act, eps) for _ in range(spec.layers))
        self.ln_final = nn.LayerNorm(w, eps=eps)
        self.proj = nn.Linear(w, embed_dim, bias=False)
        n = spec.context_length
        mask = torch.full((n, n), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token: argmax of ids (OpenAI) or first ``eos_token_id``.
        On int32: ONNX Runtime before 1.20 has no int64 ArgMax (a bundle's text encoder would not load on a
        Jetson's ORT 1.17-1.19); token ids are far below 2**31."""
        if self.spec.eos_token_id is None:
            return ids.to(torch.int32).argmax(dim=-1)
        return (ids == self.spec.eos_token_id).to(torch.int32).argmax(dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B,L] int64 (L <= context_length) -> text features [B,D], not normalized."""
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.pos_embed[:n]
        mask = self.causal_mask[:n, :n].to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_final(x)
        idx = self.pool_index(ids).reshape(-1, 1, 1).expand(-1, 1, x.shape[-1])
        return self.proj(x.gather(1, idx).squeeze(1))


class CLIP(nn.Module):
    """CLIP from a ClipSpec. ``encode_image`` / ``encode_text`` return L2-normalized embeddings."""

    def __init__(self, spec: ClipSpec, dense_head: str = "naive"):
        super().__init__()
        if not isinstance(spec, ClipSpec):
            raise ConfigError(f"CLIP(spec) needs a vlmedge.spec.ClipSpec, got {type(spec).__name__}")
        self.spec = spec
        self.visual = VisionTower(spec.vision, spec.embed_dim, spec.act, spec.eps)
        self.text = TextTower(spec.text, spec.embed_dim, spec.act, spec.eps)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # log space, as OpenAI
        self.init_weights()
        self.dense_head = dense_head

    @torch.no_grad()
    def init_weights(self) -> None:
        """OpenAI-style random init (checkpoints overwrite it; useful for training from scratch)."""
        vis, txt = self.visual, self.text
        nn.init.normal_(vis.class_embedding, std=vis.spec.width ** -0.5)
        nn.init.normal_(vis.pos_embed, std=vis.spec.width ** -0.5)
        nn.init.normal_(txt.token_embedding.weight, std=0.02)
        nn.init.normal_(txt.pos_embed, std=0.01)
        for tower in (vis, txt):
            width, layers = tower.spec.width, tower.spec.layers
            for block in tower.blocks:
                for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                    nn.init.normal_(lin.weight, std=width ** -0.5)
                    nn.init.zeros_(lin.bias)
                nn.init.normal_(block.attn.out_proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
                nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.fc2.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(tower.proj.weight, std=width ** -0.5)
        self.visual._refresh()

    # -- configuration ---------------------------------------------------------------
    @property
    def dense_head(self) -> str:
        return self.visual.dense_head

    @dense_head.setter
    def dense_head(self, name: str) -> None:
        self.visual.dense_head = name

    @property
    def image_size(self) -> tuple[int, int]:
        """Current (H, W) input size; ``spec.vision.image_size`` is the native one."""
        return self.visual.image_size

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of ``patch_embeds`` at the current image size."""
        return self.visual.grid

    def set_image_size(self, size) -> "CLIP":
        """Accept inputs of ``size`` (H, W): interpolates position embeddings once (bicubic)."""
        self.visual.set_image_size(size)
        return self

    # -- encoders --------------------------------------------------------------------
    def _check_pixels(self, pixels) -> None:
        h, w = self.image_size
        want = f"float32 [B,3,{h},{w}]"
        if not isinstance(pixels, torch.Tensor):
            raise InputError(f"pixels must be a torch.Tensor {want}, got {type(pixels).__name__}")
        shape = list(pixels.shape)
        if pixels.dtype not in (torch.float32, self.visual.patch_embed.weight.dtype) or pixels.ndim != 4 \
                or shape[1] != 3 or tuple(shape[2:]) != (h, w):
            hint = " (call set_image_size for another size)" if pixels.ndim == 4 and shape[1] == 3 else ""
            raise InputError(f"pixels must be {want}, got {str(pixels.dtype).removeprefix('torch.')} "
                             f"[{','.join(map(str, shape))}]{hint}")

    def _check_ids(self, ids) -> None:
        n = self.spec.text.context_length
        want = f"int64 [B,L] with L <= {n}"
        if not isinstance(ids, torch.Tensor):
            raise InputError(f"input_ids must be a torch.Tensor {want}, got {type(ids).__name__}")
        if ids.dtype != torch.int64 or ids.ndim != 2 or not 0 < ids.shape[1] <= n:
            raise InputError(f"input_ids must be {want}, got {str(ids.dtype).removeprefix('torch.')} "
                             f"[{','.join(map(str, ids.shape))}]")

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels float32 [B,3,H,W] -> (image_embeds [B,D], patch_embeds [B,h,w,D]), L2-normalized."""
        if _checking():
            self._check_pixels(pixels)
        image, patches = self.visual(pixels.to(self.visual.patch_embed.weight.dtype))
        return F.normalize(image, dim=-1), F.normalize(patches, dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int64 [B,L] -> text_embeds [B,D], L2-normalized."""
        if _checking():
            self._check_ids(input_ids)
        return F.normalize(self.text(input_ids), dim=-1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`encode_image` (so the image tower exports directly)."""
        return self.encode_image(pixels)
