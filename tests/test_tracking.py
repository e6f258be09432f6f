"""Track ids and smoothing on synthetic maps over several frames."""

import numpy as np

from vlmedge.runtime.grounding.regions import find_regions
from vlmedge.runtime.grounding.results import Target
from vlmedge.runtime.grounding.tracking import Tracker, iou

FRAME, CROP = (224, 224), (0, 0, 224, 224)


def frame_targets(blobs, query="cup"):
    m = np.full((14, 14), 0.05, dtype=np.float32)
    for i, j in blobs:
        m[i - 1:i + 2, j - 1:j + 2] = 0.9
    return find_regions(m, query, threshold=0.5, min_area_patches=1, frame_size=FRAME, crop_box=CROP)


def id_at(targets, upper):
    (t,) = [t for t in targets if (t.center[1] < 112) == upper]
    return t.track_id


def ids(targets):
    return [t.track_id for t in targets]


def test_ids_stable_under_small_motion_and_distinct_per_instance():
    tr = Tracker()
    first = tr.update(frame_targets([(3, 3), (10, 10)]))
    a, b = sorted(ids(first))
    assert a != b and None not in (a, b)
    for step in range(1, 6):  # both objects move by one patch every other frame
        out = tr.update(frame_targets([(3 + step // 2, 3), (10, 10 - step // 2)]))
        assert sorted(ids(out)) == [a, b]
        assert id_at(out, upper=True) == id_at(first, upper=True)
        assert id_at(out, upper=False) == id_at(first, upper=False)


def test_short_miss_keeps_id_long_absence_gets_new_id():
    tr = Tracker(max_misses=3)
    (t0,) = tr.update(frame_targets([(6, 6)]))
    for _ in range(2):  # object briefly not found
        (gone,) = tr.update(frame_targets([]))
        assert not gone.found and gone.track_id is None
    (back,) = tr.update(frame_targets([(6, 7)]))
    assert back.track_id == t0.track_id
    for _ in range(5):
        tr.update(frame_targets([]))
    (later,) = tr.update(frame_targets([(6, 7)]))
    assert later.track_id != t0.track_id


def test_new_instance_gets_new_id_and_queries_are_separate():
    tr = Tracker()
    (t0,) = tr.update(frame_targets([(3, 3)]))
    out = tr.update(frame_targets([(3, 3), (11, 11)]))
    assert t0.track_id in ids(out) and len(set(ids(out))) == 2
    other = tr.update(frame_targets([(3, 3)], query="bowl"))
    assert other[0].track_id not in ids(out)  # same place, other query: other track
    assert "cup" not in tr.live_ids  # tracks of queries no longer asked for are dropped


def test_smoothing_moves_box_part_way():
    tr = Tracker(alpha=0.5)
    a = Target("q", True, 0.9, bbox=(0, 0, 100, 100), center=(50, 50))
    b = Target("q", True, 0.9, bbox=(20, 0, 120, 100), center=(70, 50))
    tr.update([a])
    (s,) = tr.update([b])
    assert s.bbox == (10, 0, 110, 100) and s.center == (60.0, 50.0)
    raw = Tracker(alpha=1.0)
    raw.update([a])
    assert raw.update([b])[0].bbox == b.bbox
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == 1 / 3


def test_tracked_targets_hold_python_values():
    tr = Tracker(alpha=0.5)
    tr.update(frame_targets([(3, 3)]))
    (t,) = tr.update(frame_targets([(4, 3)]))  # smoothed: the box comes from the EMA, not from find_regions
    assert type(t.track_id) is int and [type(v) for v in t.bbox] == [int] * 4
    assert [type(v) for v in t.center] == [float] * 2
