"""Instances inside one grounded region (runtime.grounding.instances).

Real renders (the tabletop renderer, drawn as render_scene draws: random table, light, shadows, sensor
noise) and the shipped int8 demo bundle: two or three objects of one description side by side, touching
or overlapping a little, must come out as that many instances with masks on different objects; a single
object of every kind must stay one. A few seeds, fixed before the first run and not swapped for
passing ones; the exact-count rates over a grid of kinds, colours and gaps are measured outside the
test suite.
"""

import cv2
import numpy as np
import pytest

from vlmedge.errors import ConfigError, InputError
from vlmedge.runtime.grounding.instances import InstanceMask, SplitConfig, split_instances
from vlmedge.scenes.layouts import row_scene

FRAME = (480, 640)
CROP = (0, 0, 640, 480)  # the demo bundle preprocesses full-frame
THRESHOLD = 0.4  # the demo manifest's grounding threshold
WORK_SCALE = 8  # find_regions' working map: 8 pixels per patch


@pytest.fixture(scope="module")
def ground(embedded_int8):
    """frame, "the red cup" -> (probability map [h, w], connected regions as find_regions cuts them)."""
    from vlmedge.preprocess import preprocess
    from vlmedge.runtime.grounding.encoders import BundleEncoders
    from vlmedge.similarity import l2_normalize, query_maps

    enc = BundleEncoders(embedded_int8)
    m = enc.manifest
    bg = l2_normalize(enc.encode_text(list(m.grounding.background_prompts)))

    def run(frame, query):
        _, patches = enc.encode_image(preprocess(frame, m.preprocess))
        prob = query_maps(l2_normalize(patches[0]), l2_normalize(enc.encode_text([query])), bg, m.logit_scale)[0]
        h, w = prob.shape
        work = cv2.resize(prob, (w * WORK_SCALE, h * WORK_SCALE), interpolation=cv2.INTER_LINEAR)
        n, labels = cv2.connectedComponents((work > THRESHOLD).astype(np.uint8), connectivity=8)
        return prob, [labels == k for k in range(1, n)]

    return run


def instances_of(ground, frame, query):
    prob, regions = ground(frame, query)
    out = []
    for region in regions:
        inst = split_instances(frame, prob, region, crop_box=CROP, threshold=THRESHOLD)
        full = cv2.resize(region.view(np.uint8), (FRAME[1], FRAME[0]), interpolation=cv2.INTER_LINEAR) > 0
        union = np.zeros(FRAME, bool)
        for t in inst:
            assert isinstance(t, InstanceMask) and t.mask.shape == FRAME and t.mask.dtype == bool
            assert not (union & t.mask).any(), "instance masks overlap"
            union |= t.mask
            x0, y0, x1, y1 = t.bbox
            ys, xs = np.nonzero(t.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) and t.area == len(xs)
        # The instances share the region out: nothing far from it, (nearly) all of it.
        assert not (union & ~cv2.dilate(full.view(np.uint8), np.ones((15, 15), np.uint8)).view(bool)).any()
        assert (union & full).sum() >= 0.97 * full.sum()
        out += inst
    return out


def check_one_per_object(inst, objects):
    """Each instance lies on one object (>= 90% of the object pixels it covers), covers most of it,
    points at it, and no two instances take the same object."""
    labels = np.zeros(FRAME, np.int32)
    for k, o in enumerate(objects):
        labels[o.mask] = k + 1
    taken = set()
    for t in inst:
        counts = np.bincount(labels[t.mask], minlength=len(objects) + 1)[1:]
        k = int(np.argmax(counts))
        assert counts[k] >= 0.9 * counts.sum(), f"instance {t.bbox} straddles objects: {counts.tolist()}"
        truth = objects[k].mask
        iou = (truth & t.mask).sum() / (truth | t.mask).sum()
        assert iou >= 0.5, f"instance {t.bbox} IoU {iou:.2f} with {objects[k].bbox}"
        px, py = (int(round(v)) for v in t.peak)
        assert truth[py, px], f"peak {t.peak} is not on {objects[k].bbox}"
        assert k not in taken
        taken.add(k)


PAIRS = [("cup", "red", 0, 11), ("cup", "white", -10, 12), ("bottle", "green", 0, 13), ("bottle", "red", -10, 14),
         ("ball", "blue", 0, 15), ("ball", "yellow", -15, 16), ("box", "red", 0, 17), ("book", "purple", -5, 18),
         ("can", "orange", 0, 19), ("can", "blue", -10, 20), ("plate", "pink", -10, 21)]


@pytest.mark.parametrize("kind,color,gap,seed", PAIRS)
def test_touching_pair_splits_into_two(ground, kind, color, gap, seed):
    frame, objects = row_scene(seed, kind, color, 2, gap)
    assert len(objects) == 2
    inst = instances_of(ground, frame, f"the {color} {kind}")
    assert len(inst) == 2, f"{len(inst)} instances: {[t.bbox for t in inst]}"
    check_one_per_object(inst, objects)


@pytest.mark.parametrize("kind,color,gap,seed", [("cup", "green", -5, 31), ("bottle", "blue", 0, 32)])
def test_touching_triple_splits_into_three(ground, kind, color, gap, seed):
    frame, objects = row_scene(seed, kind, color, 3, gap)
    inst = instances_of(ground, frame, f"the {color} {kind}")
    assert len(inst) == 3, f"{len(inst)} instances: {[t.bbox for t in inst]}"
    check_one_per_object(inst, objects)


@pytest.mark.parametrize("kind,color,seed", [("cup", "red", 41), ("bottle", "white", 42), ("ball", "green", 43),
                                             ("box", "yellow", 44), ("book", "blue", 45), ("can", "black", 46),
                                             ("banana", "yellow", 47), ("plate", "orange", 48)])
def test_single_object_stays_one(ground, kind, color, seed):
    frame, objects = row_scene(seed, kind, color, 1, 0)
    inst = instances_of(ground, frame, f"the {color} {kind}")
    assert len(inst) == 1, f"{kind}: {len(inst)} instances: {[t.bbox for t in inst]}"
    check_one_per_object(inst, objects)


def test_deterministic_and_sorted(ground):
    frame, _ = row_scene(11, "cup", "red", 2, 0)
    prob, regions = ground(frame, "the red cup")
    a = split_instances(frame, prob, regions[0], crop_box=CROP, threshold=THRESHOLD)
    b = split_instances(frame.copy(), prob.copy(), regions[0].copy(), crop_box=CROP, threshold=THRESHOLD)
    assert [t.bbox for t in a] == [t.bbox for t in b] and all((s.mask == t.mask).all() for s, t in zip(a, b))
    assert [t.score for t in a] == sorted((t.score for t in a), reverse=True)


# ----------------------------------------------------------------------------- no model: drawn discs
def disc_scene(centers, radius=60, color=(40, 40, 200), crop=CROP, grid=(12, 16)):
    """Shaded red discs on a grey table; a probability map over ``crop`` that is high on the patches they
    cover; the region find_regions would cut from it."""
    yy, xx = np.mgrid[0:FRAME[0], 0:FRAME[1]].astype(np.float32)
    frame = np.full((*FRAME, 3), 150, np.float32)
    for cx, cy in centers:
        d = np.hypot(xx - cx, yy - cy) / radius
        shade = np.clip(1.1 - 0.6 * d ** 2, 0, None)[..., None]
        frame = np.where((d <= 1)[..., None], np.float32(color) * shade, frame)
    frame = np.clip(frame + np.random.default_rng(0).normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
    on = np.zeros(FRAME, bool)
    for cx, cy in centers:
        on |= np.hypot(xx - cx, yy - cy) <= radius
    x0, y0, x1, y1 = crop
    gh, gw = grid
    prob = cv2.resize(on[y0:y1, x0:x1].astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    prob = np.where(prob > 0.05, 0.99, 0.01).astype(np.float32)
    work = cv2.resize(prob, (gw * WORK_SCALE, gh * WORK_SCALE), interpolation=cv2.INTER_LINEAR) > THRESHOLD
    n, labels = cv2.connectedComponents(work.astype(np.uint8))
    assert n == 2
    return frame, prob, labels == 1


def test_two_touching_discs_split_and_one_does_not():
    frame, prob, region = disc_scene([(250, 240), (370, 240)])
    inst = split_instances(frame, prob, region, crop_box=CROP, threshold=THRESHOLD)
    assert len(inst) == 2
    assert sorted(round(t.peak[0] / 10) for t in inst) == [25, 37]
    frame, prob, region = disc_scene([(300, 240)])
    (one,) = split_instances(frame, prob, region, crop_box=CROP, threshold=THRESHOLD)
    assert abs(one.peak[0] - 300) < 8 and abs(one.peak[1] - 240) < 8


def test_centre_crop_grid_and_bgra_frame():
    # shortest-crop preprocessing: a 14x14 grid over the centre 480x480 square of the frame
    crop = (80, 0, 560, 480)
    frame, prob, region = disc_scene([(270, 250), (390, 250)], crop=crop, grid=(14, 14))
    inst = split_instances(frame, prob, region, crop_box=crop, threshold=THRESHOLD)
    assert len(inst) == 2 and sorted(round(t.peak[0] / 10) for t in inst) == [27, 39]
    for t in inst:
        assert not t.mask[:, :80].any() and not t.mask[:, 560:].any()
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    again = split_instances(bgra, prob, region, crop_box=crop, threshold=THRESHOLD)
    assert [t.bbox for t in again] == [t.bbox for t in inst]


def test_bad_inputs_and_config_name_the_field():
    frame, prob, region = disc_scene([(300, 240)])
    with pytest.raises(InputError, match="region_mask is empty"):
        split_instances(frame, prob, np.zeros_like(region), crop_box=CROP, threshold=THRESHOLD)
    with pytest.raises(InputError, match="crop_box"):
        split_instances(frame, prob, region, crop_box=(0, 0, 700, 480), threshold=THRESHOLD)
    with pytest.raises(InputError, match="threshold"):
        split_instances(frame, prob, region, crop_box=CROP, threshold=1.5)
    with pytest.raises(InputError, match="frame_bgr"):
        split_instances(frame.astype(np.float32), prob, region, crop_box=CROP, threshold=THRESHOLD)
    with pytest.raises(ConfigError, match="SplitConfig.neck_ratio"):
        SplitConfig(neck_ratio=1.5)
    with pytest.raises(ConfigError, match="SplitConfig.work_patch_px"):
        SplitConfig(work_patch_px="20")
