"""Regions and tracking on synthetic probability maps (no model involved)."""

import numpy as np
import pytest

from vlmedge import protocol
from vlmedge.errors import InputError, ProtocolError
from vlmedge.runtime.grounding.regions import find_regions, refined_peak
from vlmedge.runtime.grounding.results import GroundingResult, Target, upsample_map

FRAME = (480, 640)          # (H, W)
CROP = (80, 0, 560, 480)    # centre 480x480 square, as a shortest-crop preprocess gives


def blob_map(centers, grid=(14, 14), value=0.9, radius=1):
    m = np.full(grid, 0.05, dtype=np.float32)
    for (i, j) in centers:
        m[max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1] = value
    return m


def test_absent_object_gives_found_false_and_no_box():
    m = np.full((14, 14), 0.2, dtype=np.float32)
    (t,) = find_regions(m, "the red cup", threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    assert not t.found and t.bbox is None and t.center is None and t.track_id is None
    assert t.score == pytest.approx(0.2)


def test_two_blobs_give_two_targets_in_frame_pixels():
    m = blob_map([(3, 3), (10, 10)])
    m[10, 10] = 0.97  # the second blob has the higher peak
    ts = find_regions(m, "cup", threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    assert len(ts) == 2 and all(t.found for t in ts)
    assert ts[0].score == pytest.approx(0.97, abs=1e-3) and ts[0].score >= ts[1].score
    # one patch = 480/14 px; blob at patches 9..11 -> x from 80 + 9*34.3 ~ 389 to 80 + 12*34.3 ~ 491
    x0, y0, x1, y1 = ts[0].bbox
    patch = 480 / 14
    assert abs(x0 - (80 + 9 * patch)) < patch and abs(x1 - (80 + 12 * patch)) < patch
    assert abs(y0 - 9 * patch) < patch and abs(y1 - 12 * patch) < patch
    cx, cy = ts[0].center
    assert abs(cx - (80 + 10.5 * patch)) < 3 and abs(cy - 10.5 * patch) < 3
    px, py = ts[0].peak
    assert abs(px - (80 + 10.5 * patch)) < 6 and abs(py - 10.5 * patch) < 6
    assert 0.5 * (3 * patch) ** 2 < ts[0].area < 1.5 * (3 * patch) ** 2
    # the other blob is in the upper left
    assert ts[1].bbox[2] < 80 + 6 * patch and ts[1].bbox[3] < 6 * patch


def test_peak_is_refined_between_patches_an_object_straddles():
    # an object covering the right part of patch (5, 5) and the left part of patch (5, 6): both light up
    m = np.full((14, 14), 0.05, dtype=np.float32)
    m[5, 5], m[5, 6] = 0.9, 0.7
    (t,) = find_regions(m, "cup", threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    patch = 480 / 14
    # weights 0.4 and 0.2 -> x = 5.5 + 1/3 patches; y stays at the row centre
    assert t.peak[0] == pytest.approx(80 + (5.5 + 1 / 3) * patch - 0.5, abs=1e-3)
    assert t.peak[1] == pytest.approx(5.5 * patch - 0.5, abs=1e-3)
    assert t.score == pytest.approx(0.9)
    # a lone patch keeps its centre; patches under the threshold do not pull
    m[5, 6] = 0.45
    assert refined_peak(m, 5, 5, 0.5) == (5.5, 5.5)
    # symmetric neighbours cancel out
    m[5, 4] = m[5, 6] = 0.8
    assert refined_peak(m, 5, 5, 0.5) == pytest.approx((5.5, 5.5))
    # at the map border the window is clipped, not wrapped
    m2 = np.zeros((3, 3), np.float32)
    m2[0, 0], m2[0, 1] = 0.9, 0.9
    assert refined_peak(m2, 0, 0, 0.5) == pytest.approx((1.0, 0.5))


def test_min_area_filters_small_regions():
    m = blob_map([(3, 3)], radius=0)  # a single patch
    m = np.maximum(m, blob_map([(10, 10)], radius=1))  # and a 3x3 blob
    ts = find_regions(m, "cup", threshold=0.5, min_area_patches=4, frame_size=FRAME, crop_box=CROP)
    assert len(ts) == 1 and ts[0].bbox[0] > 80 + 8 * 480 / 14
    ts = find_regions(m, "cup", threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    assert len(ts) == 2
    ts = find_regions(m, "cup", threshold=0.5, min_area_patches=10, frame_size=FRAME, crop_box=CROP)
    assert len(ts) == 1 and not ts[0].found


def test_upsample_respects_crop_and_result_maps_lazily():
    m = blob_map([(7, 7)])
    up = upsample_map(m, FRAME, CROP)
    assert up.shape == FRAME
    assert np.all(up[:, :80] == 0) and np.all(up[:, 560:] == 0)
    assert up[240, 320] == pytest.approx(0.9, abs=1e-3)
    res = GroundingResult(queries=("a",), targets=(Target("a", False, 0.1),), patch_maps=m[None],
                          frame_size=FRAME, crop_box=CROP)
    assert "maps" not in vars(res)  # not computed until asked for
    assert res.maps.shape == (1, 480, 640) and res.maps is res.maps
    assert vars(res)["maps"] is res.maps  # computed once, kept with the result
    np.testing.assert_allclose(res.map_for("a"), up)
    with pytest.raises(InputError, match="did you mean 'a'"):
        res.map_for("a ")


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(InputError, match="threshold"):
        find_regions(np.zeros((2, 2)), "q", threshold=1.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    with pytest.raises(InputError, match="prob_map"):
        find_regions(np.zeros(4), "q", threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    with pytest.raises(InputError, match=r"find_regions: threshold must be a number in \[0, 1\], got 1.5"):
        find_regions(np.zeros((2, 2)), "q", threshold=1.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)


def test_targets_are_checked_where_they_leave_the_process():
    """Target is a plain value (no per-frame validation); a hand-made one is checked when published."""
    def publish(*targets):
        return protocol.build_targets(seq=0, frame_id=0, t_capture_ns=0, width=640, height=480, model="m",
                                      queries=["q"], targets=targets)

    with pytest.raises(ProtocolError, match="found=true needs a bbox"):
        publish(Target("q", True, 0.9))
    with pytest.raises(ProtocolError, match="x0 <= x1"):
        publish(Target("q", True, 0.9, bbox=(5, 0, 1, 1), center=(3.0, 0.5)))
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        publish(Target("q", False, float("nan")))
    with pytest.raises(ProtocolError, match="'query' must be a string"):
        publish(Target(3, False, 0.1))
    with pytest.raises(ProtocolError, match="found=false must have no bbox"):
        publish(Target("q", False, 0.1, bbox=(0, 0, 1, 1)))


def test_regions_build_targets_from_python_values():
    """What find_regions builds is already what the wire writes: Target converts nothing."""
    m = blob_map([(3, 3), (10, 10)])
    m[3, 4] = 0.95  # an off-centre peak: refined between patches
    targets = find_regions(m, "cup", threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)
    targets.append(find_regions(m, "none", threshold=0.99, min_area_patches=1, frame_size=FRAME, crop_box=CROP)[0])
    assert [t.found for t in targets] == [True, True, False]
    for t in targets:
        assert type(t.query) is str and type(t.found) is bool and type(t.score) is float and type(t.area) is int
        if t.found:
            assert type(t.bbox) is tuple and [type(v) for v in t.bbox] == [int] * 4
            assert [type(v) for v in t.center + t.peak] == [float] * 4
        assert t.to_dict() == protocol.target_to_dict(t)  # to_dict is wire-ready as it is
