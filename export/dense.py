"""Dense heads: how patch tokens leave the last vision block, chosen by name.

Each head replaces only the *patch-token* path of the last residual block; the class token
(and hence ``image_embeds``) always takes the unmodified block. The result goes through
``ln_post`` + projection like the class token. Notation for the last block with input ``x``
(tokens, class first), ``y = ln_1(x)``, per-head ``q, k, v`` projections of ``y`` and
``s = head_dim ** -0.5``::

    naive      x + out(softmax(q k^T s) v), then + mlp(ln_2(.))       (standard block)
    maskclip   x + out(v), then + mlp(ln_2(.))                          (no q/k: attention = identity)
    sclip      x + out((softmax(q q^T s) + softmax(k k^T s)) v), then + mlp(ln_2(.))
    clearclip  out(softmax(q q^T s) v)                                  (no residual, no FFN)
    naclip     out(softmax(k k^T s + G) v)                              (no residual, no FFN)

Sources (definitions checked against the authors' code):

- MaskCLIP: Zhou, Loy, Dai, "Extract Free Dense Labels from CLIP", ECCV 2022. The ViT
  variant takes the value embedding of the last attention (q/k dropped), applies the
  output projection, keeps the residual connection and the FFN (``return_qkv`` path of
  the official mmseg ``TransformerEncoderLayer``: ``v += x; v = ffn(norm2(v), identity=v)``).
- SCLIP: Wang, Mei, Yuille, "SCLIP: Rethinking Self-Attention for Dense Vision-Language
  Inference", arXiv 2312.01597 (2023). Correlative self-attention: the sum of the two
  softmax maps q-q and k-k (not averaged), rest of the block unchanged.
- ClearCLIP: Lan, Zhou, Wang, Li, Wu, Loy, "ClearCLIP: Decomposing CLIP Representations
  for Dense Vision-Language Inference", ECCV 2024. Last block keeps only the attention
  output with q-q attention; residual connection and FFN removed.
- NACLIP: Hajimiri, Ben Ayed, Dolz, "Pay Attention to Your Neighbours: Training-Free
  Open-Vocabulary Semantic Segmentation", WACV 2025 (arXiv 2404.08181). k-k attention plus
  an additive Gaussian neighbourhood window ``G[i, j] = exp(-|p_i - p_j|^2 / (2 std^2))``
  over patch grid positions (zero on the class row/column), std 5 as in the paper; the
  "reduced architecture" drops the residual connection and the FFN.

NACLIP's window depends on the grid, so the model precomputes it as a buffer
(:func:`naclip_bias`) whenever the image size or head changes; everything here is plain
MatMul/Softmax and exports to ONNX.
"""

from __future__ import annotations

import torch

from vlmedge.errors import check_choice
from vlmedge.manifest import DENSE_HEADS

NACLIP_STD = 5.0


def check_head(name: str) -> str:
    """Validate a dense head name (ConfigError with a suggestion otherwise)."""
    return check_choice("dense head", name, DENSE_HEADS)


def naclip_bias(grid: tuple[int, int], std: float = NACLIP_STD) -> torch.Tensor:
    """Additive attention bias [1+h*w, 1+h*w]: Gaussian of the patch-grid distance, 0 for the class token."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=1)  # [N, 2]
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    bias = torch.zeros(1 + h * w, 1 + h * w, dtype=torch.float64)
    bias[1:, 1:] = torch.exp(-d2 / (2 * std * std))
    return bias.float()


def last_block_patches(name: str, block, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Patch tokens [B, N, W] (before ln_post) of the last ``block`` under dense head ``name``.

    ``x`` is the block input [B, 1+N, W]; ``bias`` is :func:`naclip_bias` for the current grid.
    """
    attn = block.attn
    y = block.ln_1(x)
    v = attn.split(attn.v_proj(y))
    s = attn.scale
    if name == "naive":
        out = block(x)
    elif name == "maskclip":
        out = x + attn.merge(v)
        out = out + block.mlp(block.ln_2(out))
    elif name == "sclip":
        q, k = attn.split(attn.q_proj(y)), attn.split(attn.k_proj(y))
        weights = ((q @ q.transpose(-1, -2)) * s).softmax(-1) + ((k @ k.transpose(-1, -2)) * s).softmax(-1)
        out = x + attn.merge(weights @ v)
        out = out + block.mlp(block.ln_2(out))
    elif name == "clearclip":
        q = attn.split(attn.q_proj(y))
        out = attn.merge(((q @ q.transpose(-1, -2)) * s).softmax(-1) @ v)
    elif name == "naclip":
        k = attn.split(attn.k_proj(y))
        logits = (k @ k.transpose(-1, -2)) * s
        if bias is None:
            raise RuntimeError("naclip needs the Gaussian bias buffer; set dense_head through CLIP.dense_head")
        out = attn.merge((logits + bias.to(logits.dtype)).softmax(-1) @ v)
    else:
        check_head(name)
        raise NotImplementedError(name)
    return out[:, 1:]
