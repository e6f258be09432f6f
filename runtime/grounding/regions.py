"""Probability map -> thresholded connected regions -> targets in frame pixels.

The [h, w] patch map covers ``crop_box`` of the frame. It is bilinearly upsampled to a working
resolution of at most ``work_scale`` pixels per patch (never more than the crop itself), thresholded,
and split into 8-connected components with OpenCV. Coordinates are then scaled to frame pixels.

Per region: ``score`` = highest probability in the region (its best grid patch), ``peak`` = where
that is, ``center`` = centroid, ``bbox`` = bounding box (x1/y1 exclusive), ``area`` = size in frame
pixels. A region counts when at least ``min_area_patches`` grid patches above the threshold fall inside it.

The peak is refined below the patch size: a patch spans many camera pixels, and its centre often lies
just off a small or thin object that only covers part of it. The peak is the centroid of the best
patch's 3x3 neighbourhood weighted by each patch's probability above the threshold, so an object
that straddles two patches gets a peak between them, on the object (the pointing score of the
held-out scene benchmark, ``vlmedge evaluate``, measures how often the peak lands on the object).

Targets are built here with plain Python ints, floats and tuples: ``Target`` does not convert.
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmedge.errors import InputError
from vlmedge.runtime.grounding.instances import split_instances
from vlmedge.runtime.grounding.results import Target
from vlmedge.validation import check_threshold


def _check(prob_map: np.ndarray, threshold: float, min_area_patches: int) -> tuple[np.ndarray, float]:
    pm = np.asarray(prob_map, dtype=np.float32)
    if pm.ndim != 2 or pm.size == 0:
        raise InputError(f"find_regions: prob_map must be a non-empty [h, w] array, got shape {pm.shape}")
    threshold = check_threshold(threshold, "find_regions: threshold", error=InputError)
    if int(min_area_patches) < 1:
        raise InputError(f"find_regions: min_area_patches must be >= 1, got {min_area_patches!r}")
    return pm, threshold


def find_regions(prob_map: np.ndarray, query: str, *, threshold: float, min_area_patches: int,
                 frame_size: tuple[int, int], crop_box: tuple[int, int, int, int],
                 work_scale: int = 8, score_map: np.ndarray | None = None,
                 frame_bgr: np.ndarray | None = None) -> list[Target]:
    """Targets of one query, best score first; ``[Target(found=False)]`` when no region qualifies.

    ``score_map`` [h, w]: where a target's ``score`` is read (at the region's best patch; the maximum for a
    not-found target) instead of ``prob_map``, e.g. the probability at a calibration temperature. Regions
    are always found on ``prob_map`` with ``threshold``.

    ``frame_bgr``: the frame the map belongs to; each region is then split into object instances
    (``instances.split_instances``: touching objects of one description become one target each). Without it a
    region is one target, as on the plain noun-phrase path.
    """
    pm, threshold = _check(prob_map, threshold, min_area_patches)
    sm = pm if score_map is None else np.asarray(score_map, dtype=np.float32)
    if sm.shape != pm.shape:
        raise InputError(f"find_regions: score_map shape {sm.shape} differs from prob_map {pm.shape}")
    h, w = pm.shape
    fh, fw = frame_size
    x0, y0, x1, y1 = crop_box
    cw, ch = max(x1 - x0, 1), max(y1 - y0, 1)
    ww, wh = max(min(cw, w * work_scale), w), max(min(ch, h * work_scale), h)
    sx, sy = cw / ww, ch / wh
    work = cv2.resize(np.ascontiguousarray(pm), (ww, wh), interpolation=cv2.INTER_LINEAR)
    mask = (work > threshold).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return [Target(query=query, found=False, score=float(sm.max()))]

    # Patches above threshold, located by their centre pixel in the working map.
    ii, jj = np.nonzero(pm > threshold)
    py = np.minimum(((ii + 0.5) * wh / h).astype(int), wh - 1)
    px = np.minimum(((jj + 0.5) * ww / w).astype(int), ww - 1)
    patch_labels = labels[py, px]
    patch_counts = np.bincount(patch_labels, minlength=n)
    # Each region's best grid patch: the first of its patches in descending-probability order.
    order = np.argsort(-pm[ii, jj], kind="stable")
    regions, first = np.unique(patch_labels[order], return_index=True)
    best_patch = {int(k): (int(ii[order[f]]), int(jj[order[f]])) for k, f in zip(regions, first)}

    targets: list[Target] = []
    for k in range(1, n):
        if max(int(patch_counts[k]), 1) < min_area_patches:
            continue
        left, top, width, height, area = (int(v) for v in stats[k])
        region = labels[top:top + height, left:left + width] == k
        sub = np.where(region, work[top:top + height, left:left + width], -1.0)
        r, c = np.unravel_index(int(np.argmax(sub)), sub.shape)
        # Score: the best grid patch of the region (exact model output, not an interpolated value).
        if k in best_patch:
            score = float(sm[best_patch[k]])
        elif score_map is None:
            score = float(sub[r, c])
        else:  # the patch under the working map's maximum
            score = float(sm[min(int((top + r) * h / wh), h - 1), min(int((left + c) * w / ww), w - 1)])
        bx0 = min(max(int(np.floor(x0 + left * sx)), 0), fw)
        by0 = min(max(int(np.floor(y0 + top * sy)), 0), fh)
        bx1 = min(max(int(np.ceil(x0 + (left + width) * sx)), bx0), fw)
        by1 = min(max(int(np.ceil(y0 + (top + height) * sy)), by0), fh)
        cx, cy = (float(v) for v in centroids[k])
        if k in best_patch:
            gx, gy = refined_peak(pm, *best_patch[k], threshold)  # grid units
            peak = (x0 + gx * cw / w - 0.5, y0 + gy * ch / h - 0.5)
        else:  # no patch centre inside the region: the working map's maximum
            peak = (x0 + (left + int(c) + 0.5) * sx - 0.5, y0 + (top + int(r) + 0.5) * sy - 0.5)
        if frame_bgr is not None:
            parts = split_instances(frame_bgr, pm, labels == k, crop_box=crop_box, threshold=threshold)
            if len(parts) > 1:
                targets.extend(_instance_target(query, part, sm, crop_box) for part in parts)
                continue
        targets.append(Target(
            query=query, found=True, score=score, bbox=(bx0, by0, bx1, by1),
            center=(x0 + (cx + 0.5) * sx - 0.5, y0 + (cy + 0.5) * sy - 0.5),
            peak=peak, area=int(round(area * sx * sy))))
    if not targets:
        return [Target(query=query, found=False, score=float(sm.max()))]
    targets.sort(key=lambda t: -t.score)
    return targets


def _instance_target(query: str, part, score_map: np.ndarray, crop_box: tuple[int, int, int, int]) -> Target:
    """A target for one instance of a split region; its score is read where its peak lies."""
    h, w = score_map.shape
    x0, y0, x1, y1 = crop_box
    col = min(max(int((part.peak[0] - x0) * w / max(x1 - x0, 1)), 0), w - 1)
    row = min(max(int((part.peak[1] - y0) * h / max(y1 - y0, 1)), 0), h - 1)
    return Target(query=query, found=True, score=float(score_map[row, col]), bbox=tuple(int(v) for v in part.bbox),
                  center=(float(part.center[0]), float(part.center[1])),
                  peak=(float(part.peak[0]), float(part.peak[1])), area=int(part.area))


def refined_peak(pm: np.ndarray, row: int, col: int, threshold: float) -> tuple[float, float]:
    """(x, y) in grid units (patch (r, c) spans [c, c+1) x [r, r+1)): the centroid of the 3x3
    neighbourhood of patch (row, col), weighted by probability above ``threshold``."""
    h, w = pm.shape
    r0, r1, c0, c1 = max(row - 1, 0), min(row + 2, h), max(col - 1, 0), min(col + 2, w)
    weight = np.clip(pm[r0:r1, c0:c1] - threshold, 0.0, None).astype(np.float64)
    total = float(weight.sum())
    if total <= 0.0:  # (row, col) itself is not above the threshold
        return col + 0.5, row + 0.5
    yy, xx = np.mgrid[r0:r1, c0:c1]
    return float(((xx + 0.5) * weight).sum() / total), float(((yy + 0.5) * weight).sum() / total)
