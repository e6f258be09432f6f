"""Similarity math against straightforward reference computations."""

import numpy as np
import pytest

from vlmedge.errors import InputError
from vlmedge.similarity import contrastive_maps, cosine, l2_normalize, patch_similarity, softmax, zero_shot_probs


def test_l2_normalize_unit_norm_and_zero_safe():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    y = l2_normalize(x)
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(y[1] == 0)


def test_patch_similarity_matches_loop():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(3, 4, 8)).astype(np.float32)
    texts = rng.normal(size=(5, 8)).astype(np.float32)
    sims = patch_similarity(patches, texts)
    assert sims.shape == (5, 3, 4)
    i, j, n = 2, 1, 3
    p, t = patches[i, j], texts[n]
    assert sims[n, i, j] == pytest.approx(p @ t / np.linalg.norm(p) / np.linalg.norm(t), rel=1e-5)


def test_contrastive_maps_is_softmax_over_queries_and_backgrounds():
    rng = np.random.default_rng(1)
    patches = rng.normal(size=(2, 2, 6)).astype(np.float32)
    q = rng.normal(size=(2, 6)).astype(np.float32)
    bg = rng.normal(size=(3, 6)).astype(np.float32)
    maps = contrastive_maps(patches, q, bg, logit_scale=50.0)
    assert maps.shape == (2, 2, 2)
    logits = 50.0 * cosine(patches[0, 1], np.concatenate([q, bg]))
    ref = np.exp(logits - logits.max())
    ref /= ref.sum()
    np.testing.assert_allclose(maps[:, 0, 1], ref[:2], rtol=1e-4, atol=1e-7)
    assert np.all(maps.sum(axis=0) <= 1.0 + 1e-5)


def test_query_identical_to_patch_wins():
    d = 16
    rng = np.random.default_rng(2)
    target, bg = l2_normalize(rng.normal(size=(2, d)))
    patches = (bg + 0.05 * rng.normal(size=(3, 3, d))).astype(np.float32)  # background everywhere ...
    patches[1, 2] = target  # ... except one patch
    maps = contrastive_maps(patches, target[None], bg[None], logit_scale=100.0)
    assert np.unravel_index(np.argmax(maps[0]), maps[0].shape) == (1, 2)
    assert maps[0, 1, 2] > 0.99 and np.delete(maps[0].ravel(), 5).max() < 0.01


def test_zero_shot_probs_and_errors():
    img = np.array([1.0, 0.0, 0.0])
    texts = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p = zero_shot_probs(img, texts, 100.0)
    assert p.sum() == pytest.approx(1.0) and p[0] > 0.99
    np.testing.assert_allclose(softmax(np.array([0.0, 0.0])), [0.5, 0.5])
    with pytest.raises(InputError, match="dimensions differ"):
        cosine(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(InputError, match=r"\[h, w, D\]"):
        patch_similarity(np.ones((3, 4)), np.ones((2, 4)))
