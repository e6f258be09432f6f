"""Similarity math shared by grounding and classification. Pure numpy, torch-free.

All functions take float arrays whose last axis is the embedding dimension D.
"""

from __future__ import annotations

import numpy as np

from vlmedge.errors import InputError


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Return ``x`` scaled to unit L2 norm along ``axis`` (float32; zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def _check_dims(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise InputError(f"{what}: embedding dimensions differ ({a.shape[-1]} vs {b.shape[-1]}); "
                         "were the text and image embeddings made by the same bundle?")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` [..., D] with every row of ``b`` [N, D] -> [..., N]."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    _check_dims(a, b, "cosine")
    return l2_normalize(a) @ l2_normalize(b).T


def patch_similarity(patch_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Cosine of each patch with each text: patches [h, w, D], texts [N, D] -> [N, h, w]."""
    patch_embeds = np.asarray(patch_embeds, dtype=np.float32)
    if patch_embeds.ndim != 3:
        raise InputError(f"patch_similarity: patch_embeds must be [h, w, D], got shape {patch_embeds.shape}")
    sims = cosine(patch_embeds, text_embeds)  # [h, w, N]
    return np.ascontiguousarray(np.moveaxis(sims, -1, 0))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    logits = np.asarray(logits, dtype=np.float32)
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def contrastive_maps(patch_embeds: np.ndarray, query_embeds: np.ndarray, background_embeds: np.ndarray | None,
                     logit_scale: float) -> np.ndarray:
    """Per-patch probability of each query against all queries and background prompts.

    For every patch, ``softmax(logit_scale * cos(patch, [queries..., backgrounds...]))`` is taken over
    the candidate texts and the first Q entries (the queries) are returned: [Q, h, w] in [0, 1].
    A query only "wins" a patch when it beats both the background prompts and the other queries.
    """
    query_embeds = np.asarray(query_embeds, dtype=np.float32).reshape(-1, np.shape(patch_embeds)[-1])
    q = query_embeds.shape[0]
    texts = query_embeds
    if background_embeds is not None and len(background_embeds):
        texts = np.concatenate([query_embeds, np.asarray(background_embeds, dtype=np.float32)], axis=0)
    sims = patch_similarity(patch_embeds, texts)  # [N, h, w]
    return softmax(float(logit_scale) * sims, axis=0)[:q]


def probs_against(query_sims: np.ndarray, background_sims: np.ndarray | None, scale: float) -> np.ndarray:
    """Each query's share of ``softmax(scale * [cos_query, cos_background...])``, queries scored one by one.

    ``query_sims`` [Q, ...] and ``background_sims`` [B, ...] are cosines over the same positions (patches);
    returns [Q, ...]. Computed as ``e_q / (e_q + sum_b e_b)`` around the largest logit, without building
    the [Q, 1 + B, ...] softmax input.
    """
    z_q = float(scale) * np.asarray(query_sims, dtype=np.float32)
    if background_sims is None or not len(background_sims):
        return np.ones_like(z_q)  # nothing to compete with: every position is the query's
    z_b = float(scale) * np.asarray(background_sims, dtype=np.float32)
    top = np.maximum(z_q, z_b.max(axis=0)[None])
    b_sum = np.exp(z_b[None] - top[:, None]).sum(axis=1)
    e_q = np.exp(z_q - top)
    return (e_q / (e_q + b_sum)).astype(np.float32)


def query_maps(patch_embeds: np.ndarray, query_embeds: np.ndarray, background_embeds: np.ndarray | None,
               logit_scale: float, *, competition: bool = False) -> np.ndarray:
    """Per-patch probability of each query [Q, h, w]: each query scored on its own by default.

    Independent (default): for every query, ``softmax(logit_scale * cos(patch, [query, backgrounds...]))``
    and its share. A query's map then does not depend on which other queries are active: "the cup" and
    "the red cup" can both claim the same patches, and a command's noun phrases are grounded the same way
    whether the command arrives alone or beside others. ``competition=True`` is the joint softmax of
    :func:`contrastive_maps` (queries compete for patches: use it when the queries name mutually
    exclusive classes, as in a segmentation label set).
    """
    if competition:
        return contrastive_maps(patch_embeds, query_embeds, background_embeds, logit_scale)
    query_embeds = np.asarray(query_embeds, dtype=np.float32).reshape(-1, np.shape(patch_embeds)[-1])
    bg = None
    if background_embeds is not None and len(background_embeds):
        bg = patch_similarity(patch_embeds, np.asarray(background_embeds, dtype=np.float32))
    return probs_against(patch_similarity(patch_embeds, query_embeds), bg, logit_scale)


def temperature_probs(sims_q: np.ndarray, sims_bg: np.ndarray, logit_scale: float, temperature: float) -> np.ndarray:
    """``softmax(temperature * logit_scale * [cos_q, cos_bg...])[0]`` for cosines ``sims_q`` [...] and
    ``sims_bg`` [n, ...]: the query's probability with the logits scaled by a calibration temperature.

    CLIP's logit scale makes the per-patch probability of a visible object nearly 1.0, so as a score it
    tells a sure detection from a doubtful one poorly; temperature scaling (fitted on held-out scenes
    by minimum log-loss) keeps the ranking and spreads the scores.
    """
    return probs_against(np.asarray(sims_q)[None], sims_bg, float(temperature) * float(logit_scale))[0]


def zero_shot_probs(image_embed: np.ndarray, text_embeds: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP zero-shot classification: softmax(logit_scale * cos(image, texts)) -> [N]."""
    image_embed = np.asarray(image_embed, dtype=np.float32).reshape(-1)
    return softmax(float(logit_scale) * cosine(image_embed[None], text_embeds)[0])
