"""Independent per-query scoring (the default) against the joint softmax of contrastive_maps."""

import numpy as np
import pytest

from vlmedge.similarity import contrastive_maps, l2_normalize, patch_similarity, query_maps, softmax, temperature_probs


def _data(seed=0, q=3, n_bg=4, d=16, hw=(5, 7)):
    rng = np.random.default_rng(seed)
    return (l2_normalize(rng.standard_normal((*hw, d))), l2_normalize(rng.standard_normal((q, d))),
            l2_normalize(rng.standard_normal((n_bg, d))))


def test_each_query_is_a_softmax_against_the_backgrounds_only():
    patches, queries, bg = _data()
    maps = query_maps(patches, queries, bg, logit_scale=30.0)
    for i in range(len(queries)):
        logits = 30.0 * patch_similarity(patches, np.concatenate([queries[i:i + 1], bg]))
        np.testing.assert_allclose(maps[i], softmax(logits, axis=0)[0], rtol=1e-5, atol=1e-6)


def test_a_query_map_does_not_depend_on_the_other_active_queries():
    patches, queries, bg = _data(1)
    alone = query_maps(patches, queries[:1], bg, 50.0)[0]
    together = query_maps(patches, queries, bg, 50.0)[0]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)  # BLAS blocking differs with Q
    # the joint softmax is what made them depend on each other
    joint = contrastive_maps(patches, queries, bg, 50.0)[0]
    assert not np.allclose(joint, contrastive_maps(patches, queries[:1], bg, 50.0)[0])


def test_the_same_text_twice_gets_the_same_map_and_a_background_equal_query_reaches_one_half():
    patches, queries, bg = _data(2)
    maps = query_maps(patches, np.stack([queries[0], queries[0]]), bg, 40.0)
    np.testing.assert_array_equal(maps[0], maps[1])
    # a query equal to a background prompt: its share on a patch that IS that prompt is >= 1/2 once the
    # other prompts are far; under the joint softmax two copies could never pass 1/2 together
    same = query_maps(bg[:1, None, :].repeat(2, axis=1), bg[:1], bg[:1], 40.0)
    np.testing.assert_allclose(same, 0.5, atol=1e-6)


def test_competition_option_is_the_joint_softmax():
    patches, queries, bg = _data(3)
    np.testing.assert_array_equal(query_maps(patches, queries, bg, 20.0, competition=True),
                                  contrastive_maps(patches, queries, bg, 20.0))


def test_without_backgrounds_every_patch_belongs_to_the_query():
    patches, queries, _ = _data(4)
    assert np.all(query_maps(patches, queries, None, 20.0) == 1.0)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.2])
def test_temperature_probs_is_a_scaled_softmax_and_keeps_the_order(temperature):
    rng = np.random.default_rng(5)
    sq, sb = rng.uniform(-0.3, 0.4, 50), rng.uniform(-0.3, 0.3, (4, 50))
    p = temperature_probs(sq, sb, 40.0, temperature)
    ref = softmax(temperature * 40.0 * np.concatenate([sq[None], sb]), axis=0)[0]
    np.testing.assert_allclose(p, ref, rtol=1e-5)
    # a lower temperature pulls scores away from 0/1 without reordering identical backgrounds
    sb_same = np.repeat(sb[:, :1], 50, axis=1)
    order = np.argsort(sq)
    assert np.all(np.diff(temperature_probs(sq, sb_same, 40.0, temperature)[order]) >= 0)
    if temperature < 1.0:
        full = temperature_probs(sq, sb, 40.0, 1.0)
        assert np.abs(p - 0.5).mean() < np.abs(full - 0.5).mean()
