"""One grounded region -> the object instances in it, each with its own mask.

``find_regions`` thresholds the patch probability map and takes connected components. A patch covers
30-40 camera pixels, so two objects of the same description that touch or overlap a little (two red
cups side by side) share patches and come out as ONE component; inside objects the probability
saturates near 1, so the map has no valley between them either. The frame's pixels have what the
map lacks, and :func:`split_instances` reads them inside the region's box, downsampled by an integer
factor to about ``work_patch_px`` pixels per patch:

1. Object mask. Colour histograms (16 levels per channel, smoothed over neighbouring bins) of the
   pixels under the surest patches (object) and of the ring around the region where the map is low
   (surround) classify every pixel of the box, also outside the region, so an object the region
   only partly covers keeps its shape; one-pixel gaps (a label's dark edge) are closed. Where the
   histograms do not separate (a white box on a white table) the region itself stands in.
2. Cores. Touching objects meet in a dark valley: shading falls off towards each outline, an
   occluding edge leaves a dark seam. A pixel is cut out where it is darker than ``valley_ratio``
   times the grey closing of the object-masked brightness, i.e. in a dark band narrower than
   ``valley_width`` with brighter object on BOTH sides. Off the object the brightness is zero, so an
   object's own dark rim against the table is no valley. One-pixel lines (a bottle's label edge, a
   box's face edges) are closed first and filled holes (a book's title panel, a cup's inside) put back.
3. Peaks. Maxima of the cores' distance transform. A lower peak is an object of its own when it is
   high enough (``min_peak`` patches and ``min_peak_rel`` of the highest) and its level set at
   ``neck_ratio`` of its height does not reach a higher peak: a neck (two balls, two plates) or a
   valley cut (two bottles side by side) lies between them; ``min_dip`` keeps the ragged ridge of a
   thin object (a banana) whole. A bottle's neck and cap, a cup's handle and a banana's tip are too
   thin to pass.
4. Partition. Each peak's level set seeds an instance; every region pixel joins the nearest seed, so
   the instances are disjoint and their union is the region. An instance smaller than
   ``min_area_rel`` of the largest, or without a patch centre above the threshold (the model does not
   back it), is merged back and the partition redone.

Deterministic, no learned weights, numpy + OpenCV. The map's own margin (query minus best background
cosine) was tried as the cue and left out: its valley between touching objects is a few hundredths
deep, and counting its peaks split touching pairs about half the time. Measured rates (exact counts on
rendered touching pairs and triples, singles) and the cost per region belong in ``benchmarks/results/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import cv2
import numpy as np

from vlmedge.errors import ConfigError, InputError

_K3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class SplitConfig:
    """Tunables of :func:`split_instances`. Lengths are in patches, so they follow the model's grid."""

    work_patch_px: float = 20.0  # pixels per patch in the working image (the frame is downsampled by an integer factor)
    pad: float = 0.3  # patches of surround added around the region's box (the colour model's background ring)
    sample_prob: float = 0.9  # patches at least this sure give the object's colour samples
    surround_prob: float = 0.1  # ... and pixels off the region where the map is below this the surround's
    min_separation: float = 0.5  # object minus surround mean colour posterior below this: use the region as mask
    valley_ratio: float = 0.8  # darker than this x the brightness on both sides is a valley between objects
    valley_width: float = 0.85  # widest dark band (patches) taken for a valley
    neck_ratio: float = 0.7  # a peak whose level set at this x its height reaches a higher peak is the same object
    min_dip: float = 0.25  # ... or than this (patches) below its height; thin objects have ragged ridges
    min_peak: float = 0.2  # a peak lower than this (patches of distance to the core's edge) is no object
    min_peak_rel: float = 0.35  # ... or lower than this x the region's highest peak
    min_area_rel: float = 0.25  # an instance smaller than this x the largest is merged back

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"SplitConfig.{f.name} must be a finite number, got {v!r}")
        if self.work_patch_px < 4:
            raise ConfigError(f"SplitConfig.work_patch_px must be >= 4 pixels, got {self.work_patch_px!r}")
        for name in ("pad", "valley_width", "min_dip", "min_peak"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SplitConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("sample_prob", "surround_prob", "min_separation", "valley_ratio", "neck_ratio", "min_peak_rel",
                     "min_area_rel"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"SplitConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")


@dataclass(frozen=True)
class InstanceMask:
    """One object instance inside a region, in frame pixels.

    ``mask`` is this instance's share of the region (instances of one region are disjoint and cover it),
    ``bbox`` its tight box (x1/y1 exclusive), ``center`` its centroid, ``peak`` the point deepest inside the
    object's colour core (where to point at; the region's centroid when the region has no core),
    ``score`` the highest patch probability whose patch centre lies in the mask.
    """

    mask: np.ndarray = field(repr=False)  # bool [H, W], frame resolution
    bbox: tuple[int, int, int, int]
    center: tuple[float, float]
    peak: tuple[float, float]
    area: int
    score: float

    def __post_init__(self):
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != bool or self.mask.ndim != 2:
            raise InputError(f"InstanceMask.mask must be a bool [H, W] array, got {type(self.mask).__name__}")
        if len(self.bbox) != 4 or self.bbox[2] < self.bbox[0] or self.bbox[3] < self.bbox[1]:
            raise InputError(f"InstanceMask.bbox must be (x0, y0, x1, y1) with x0 <= x1, y0 <= y1, got {self.bbox!r}")


def _odd(v: float) -> int:
    return max(int(round(v)) | 1, 1)


def _check(frame_bgr, prob_map, region_mask, crop_box, threshold
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or not (
            frame_bgr.ndim == 2 or (frame_bgr.ndim == 3 and frame_bgr.shape[2] in (1, 3, 4))) or 0 in frame_bgr.shape:
        got = f"{frame_bgr.dtype} {frame_bgr.shape}" if isinstance(frame_bgr, np.ndarray) else type(frame_bgr).__name__
        raise InputError(f"split_instances: frame_bgr must be a BGR uint8 [H, W, 3] array, got {got}")
    pm = np.asarray(prob_map, dtype=np.float32)
    if pm.ndim != 2 or pm.size == 0:
        raise InputError(f"split_instances: prob_map must be a non-empty [h, w] array, got shape {pm.shape}")
    rm = np.asarray(region_mask)
    if rm.ndim != 2 or rm.size == 0:
        raise InputError(f"split_instances: region_mask must be a [rh, rw] array over crop_box, got shape {rm.shape}")
    rm = np.ascontiguousarray(rm, dtype=bool)
    if not rm.any():
        raise InputError("split_instances: region_mask is empty; pass one connected region")
    try:
        crop = tuple(int(round(float(v))) for v in crop_box)
        x0, y0, x1, y1 = crop
    except (TypeError, ValueError):
        raise InputError(f"split_instances: crop_box must be (x0, y0, x1, y1), got {crop_box!r}") from None
    fh, fw = frame_bgr.shape[:2]
    if not (0 <= x0 < x1 <= fw and 0 <= y0 < y1 <= fh):
        raise InputError(f"split_instances: crop_box must lie inside the {fw}x{fh} frame with x0 < x1 and y0 < y1, "
                         f"got {crop_box!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"split_instances: threshold must be in [0, 1], got {threshold!r}")
    return frame_bgr, pm, rm, crop


def _span(lo: int, hi: int, k: int, limit: int) -> tuple[int, int]:
    """[lo, hi) grown (or, at the frame's edge, shrunk) to a multiple of k inside [0, limit)."""
    extra = (-(hi - lo)) % k
    hi2 = min(hi + extra, limit)
    lo2 = max(lo - (extra - (hi2 - hi)), 0)
    return lo2, hi2 - (hi2 - lo2) % k


def _object_mask(img: np.ndarray, region: np.ndarray, near: np.ndarray, prob: np.ndarray, cfg: SplitConfig,
                 k_sample: np.ndarray) -> np.ndarray:
    """Colour posterior (object vs surround histograms, 16 levels per channel) > 0.5 over the whole ROI (an
    object reaching out of the region keeps its shape), or the region when the colours do not separate."""
    q = img >> 4
    idx = (q[..., 0].astype(np.int32) << 8) | (q[..., 1].astype(np.int32) << 4) | q[..., 2]
    obj = (prob > int(cfg.sample_prob * 255)) & cv2.erode(region.view(np.uint8), k_sample).view(bool)
    ring = ~near
    # Surround samples: off the region AND where the model sees little of the query (a part of the object
    # outside the region is not background); all of the ring when that leaves too few. The histograms
    # count every other pixel (a quarter of the work, the same shape).
    sur = ring & (prob < int(cfg.surround_prob * 255))
    o, r = obj[::2, ::2].ravel(), sur[::2, ::2].ravel()
    n_obj, n_sur = int(np.count_nonzero(o)), int(np.count_nonzero(r))
    if n_sur < 0.25 * np.count_nonzero(ring[::2, ::2]):
        sur = ring
        r = sur[::2, ::2].ravel()
        n_sur = int(np.count_nonzero(r))
    if n_obj == 0 or n_sur == 0:
        return region
    sub = idx[::2, ::2].ravel()
    h_obj = _smooth(np.bincount(sub, weights=o, minlength=4096) / n_obj)
    h_sur = _smooth(np.bincount(sub, weights=r, minlength=4096) / n_sur)
    posterior = np.take((h_obj / (h_obj + h_sur + 1e-6)).astype(np.float32), idx)
    if cv2.mean(posterior, obj.view(np.uint8))[0] - cv2.mean(posterior, sur.view(np.uint8))[0] < cfg.min_separation:
        return region
    # One-pixel gaps (a dark label edge, a seam) do not part objects: close them.
    return cv2.morphologyEx((cv2.blur(posterior, (3, 3)) > 0.5).view(np.uint8), cv2.MORPH_CLOSE, _K3).view(bool)


def _smooth(hist: np.ndarray) -> np.ndarray:
    """A [16^3] colour histogram blurred by (1, 2, 1) / 4 along each axis: two objects of one colour name
    differ by a few levels, which may fall into neighbouring bins."""
    h = hist.reshape(16, 16, 16)
    for axis in range(3):
        out = 2.0 * h
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(hi)] += h[tuple(lo)]
        out[tuple(lo)] += h[tuple(hi)]
        h = out
    return h.ravel() * (1.0 / 64)


def _cores(img: np.ndarray, obj: np.ndarray, valley_px: int, ratio: float) -> np.ndarray:
    """The object mask with dark valleys between brighter object cut out and holes filled (uint8 0/1)."""
    b, g, r = cv2.split(img)
    v = cv2.morphologyEx(cv2.max(cv2.max(b, g), r), cv2.MORPH_CLOSE, _K3)  # closes one-pixel dark lines
    obj8 = obj.view(np.uint8)
    v = cv2.bitwise_and(v, v, mask=obj8)
    closed = cv2.morphologyEx(v, cv2.MORPH_CLOSE, np.ones((valley_px, valley_px), np.uint8))
    valley = cv2.compare(v, cv2.convertScaleAbs(closed, alpha=ratio), cv2.CMP_LT) & obj8  # 0/1
    valley = cv2.morphologyEx(valley, cv2.MORPH_OPEN, _K3)
    core = cv2.morphologyEx(cv2.subtract(obj8, valley), cv2.MORPH_OPEN, _K3)
    # Fill holes: flood the background from a one-pixel frame around the ROI; what it does not reach is hole.
    framed = cv2.copyMakeBorder(core, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(framed, None, (0, 0), 2)
    return (framed[1:-1, 1:-1] != 2).view(np.uint8)


def _peaks(dt: np.ndarray, near: np.ndarray, cfg: SplitConfig, patch: float, nms_px: int
           ) -> tuple[list[tuple[float, int, int]], list[np.ndarray]]:
    """Object peaks (height, row, col) inside ``near``, highest first, and each one's seed (its level set
    at neck_ratio)."""
    top = cv2.minMaxLoc(dt, near.view(np.uint8))[1]
    low = max(cfg.min_peak * patch, cfg.min_peak_rel * top)
    if top <= 0.0 or top < low:
        return [], []
    cand = (dt >= cv2.dilate(dt, np.ones((nms_px, nms_px), np.uint8))) & (dt >= low) & near
    ys, xs = np.nonzero(cand)
    order = np.argsort(-dt[ys, xs], kind="stable")
    ys, xs = ys[order], xs[order]
    alive = np.ones(len(ys), bool)
    peaks: list[tuple[float, int, int]] = []
    seeds: list[np.ndarray] = []
    for j in range(len(ys)):
        if not alive[j]:
            continue
        y, x = int(ys[j]), int(xs[j])
        h = float(dt[y, x])
        level = min(cfg.neck_ratio * h, h - cfg.min_dip * patch)
        _, comp = cv2.connectedComponents((dt >= level).view(np.uint8), connectivity=8)
        c = comp[y, x]
        # Every lower candidate in this component reaches this peak (or the higher one this one reaches).
        alive &= comp[ys, xs] != c
        if any(comp[py, px] == c for _, py, px in peaks):
            continue
        peaks.append((h, y, x))
        seeds.append(comp == c)
    return peaks, seeds


def _partition(seeds: list[np.ndarray]) -> np.ndarray:
    """Label image (uint8): 1 + index of the nearest seed for every pixel, computed at half resolution."""
    seed_id = np.zeros(seeds[0].shape, np.uint8)
    for i, s in enumerate(seeds):
        seed_id[s] = i + 1
    half = seed_id[::2, ::2]
    if np.count_nonzero(np.bincount(half.ravel(), minlength=len(seeds) + 1)) != len(seeds) + 1:
        # a thin seed fell between the samples
        half = seed_id
    _, nearest = cv2.distanceTransformWithLabels((half == 0).view(np.uint8), cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(nearest.max()) + 1, np.uint8)
    lut[1:] = half[half > 0]  # DIST_LABEL_PIXEL numbers the zero pixels in raster order
    return cv2.resize(lut[nearest], (seed_id.shape[1], seed_id.shape[0]), interpolation=cv2.INTER_NEAREST)


def split_instances(frame_bgr: np.ndarray, prob_map: np.ndarray, region_mask: np.ndarray, *,
                    crop_box: tuple[int, int, int, int], threshold: float,
                    config: SplitConfig | None = None) -> list[InstanceMask]:
    """Split one connected region of a query's probability map into object instances.

    ``prob_map`` [h, w] and ``region_mask`` (bool [rh, rw], any resolution; find_regions' working-map
    component) both cover ``crop_box`` (inside the frame) of ``frame_bgr``; ``threshold`` is the one the
    region was cut at. Returns at least one instance (the whole region when nothing splits): disjoint masks
    whose union is the region, best score first, ties left to right.
    """
    frame, pm, rm, crop = _check(frame_bgr, prob_map, region_mask, crop_box, threshold)
    cfg = config if config is not None else SplitConfig()
    fh, fw = frame.shape[:2]
    cx0, cy0, cx1, cy1 = crop
    gh, gw = pm.shape
    patch_px = math.sqrt((cx1 - cx0) / gw * (cy1 - cy0) / gh)
    k = max(1, int(round(patch_px / cfg.work_patch_px)))
    patch = patch_px / k  # one patch in working pixels

    # The region's cells, padded, as a frame-pixel box whose sides are multiples of k.
    rh, rw = rm.shape
    ax, ay = (cx1 - cx0) / rw, (cy1 - cy0) / rh  # frame pixels per region-map cell
    rows, cols = np.flatnonzero(rm.any(axis=1)), np.flatnonzero(rm.any(axis=0))
    pj, pi = math.ceil(cfg.pad * patch_px / ax), math.ceil(cfg.pad * patch_px / ay)
    j0, j1 = max(int(cols[0]) - pj, 0), min(int(cols[-1]) + 1 + pj, rw)
    i0, i1 = max(int(rows[0]) - pi, 0), min(int(rows[-1]) + 1 + pi, rh)
    x0, x1 = _span(int(round(cx0 + j0 * ax)), int(round(cx0 + j1 * ax)), k, fw)
    y0, y1 = _span(int(round(cy0 + i0 * ay)), int(round(cy0 + i1 * ay)), k, fh)
    W, H = (x1 - x0) // k, (y1 - y0) // k
    roi_box = (x0, y0, x1, y1)
    cells = rm[i0:i1, j0:j1].view(np.uint8)
    if W < 3 or H < 3:  # a sliver: nothing to split
        whole = cv2.resize(cells, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST).view(bool) \
            if x1 > x0 and y1 > y0 else np.zeros((0, 0), bool)
        return [_instance((fh, fw), roi_box, 1, whole, crop, pm, None)]
    # Region (0/255) and probability (x255) over the same cells at the working resolution (the map resized
    # to the region map's grid is the working map find_regions cut). The cells are stretched onto the box
    # by less than k pixels where the box was rounded.
    prob_cells = cv2.resize(pm, (rw, rh), interpolation=cv2.INTER_LINEAR)[i0:i1, j0:j1]
    maps = cv2.resize(np.dstack([cells * np.uint8(255), (np.clip(prob_cells, 0, 1) * 255).astype(np.uint8)]),
                      (W, H), interpolation=cv2.INTER_LINEAR)
    region = np.ascontiguousarray(maps[..., 0] > 127)
    prob = maps[..., 1]
    roi = frame[y0:y1, x0:x1]
    if roi.ndim == 2 or roi.shape[2] == 1:
        roi = cv2.cvtColor(roi, cv2.COLOR_GRAY2BGR)
    elif roi.shape[2] == 4:
        roi = cv2.cvtColor(roi, cv2.COLOR_BGRA2BGR)
    img = cv2.resize(roi, (W, H), interpolation=cv2.INTER_AREA) if k > 1 else np.ascontiguousarray(roi)

    k_sample = np.ones((_odd(0.25 * patch),) * 2, np.uint8)
    near = cv2.dilate(region.view(np.uint8), k_sample).view(bool)
    obj = _object_mask(img, region, near, prob, cfg, k_sample)
    core = _cores(img, obj, _odd(cfg.valley_width * patch), cfg.valley_ratio)
    dt = cv2.distanceTransform(core, cv2.DIST_L2, 3)
    peaks, seeds = _peaks(dt, near, cfg, patch, _odd(0.25 * patch))

    labels = None
    if len(peaks) > 1:
        # Patch centres above the threshold, in working pixels: every instance must hold one.
        gy, gx = np.nonzero(pm > threshold)
        pu = np.floor((cx0 + (gx + 0.5) * (cx1 - cx0) / gw - x0) / k).astype(int)
        pv = np.floor((cy0 + (gy + 0.5) * (cy1 - cy0) / gh - y0) / k).astype(int)
        inside = (pu >= 0) & (pu < W) & (pv >= 0) & (pv < H)
        pu, pv = pu[inside], pv[inside]
        inside = region[pv, pu]
        pu, pv = pu[inside], pv[inside]
    while len(peaks) > 1:
        labels = _partition(seeds)
        labels[~region] = 0
        areas = np.bincount(labels.ravel(), minlength=len(peaks) + 1)[1:]
        backed = np.bincount(labels[pv, pu], minlength=len(peaks) + 1)[1:] > 0
        weak = np.flatnonzero(~backed | (areas < cfg.min_area_rel * areas.max()))
        if not len(weak):
            break
        drop = int(weak[np.argmin(areas[weak])])
        peaks.pop(drop)
        seeds.pop(drop)
        labels = None
    if labels is None:
        whole = cv2.resize(region.view(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST).view(bool)
        return [_instance((fh, fw), roi_box, k, whole, crop, pm, peaks[0] if peaks else None)]
    full = cv2.resize(labels, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    out = [_instance((fh, fw), roi_box, k, full == i + 1, crop, pm, p) for i, p in enumerate(peaks)]
    out.sort(key=lambda t: (-t.score, t.center[0]))
    return out


def _instance(frame_size, roi, k, part, crop, pm, peak) -> InstanceMask:
    """An instance from its share ``part`` (bool) of the ROI in frame pixels: box, centroid, peak and score."""
    fh, fw = frame_size
    x0, y0, x1, y1 = roi
    mask = np.zeros((fh, fw), bool)
    mask[y0:y1, x0:x1] = part
    part8 = np.ascontiguousarray(part).view(np.uint8)
    cols = cv2.reduce(part8, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() if part8.size else np.zeros(0, np.int32)
    rows = cv2.reduce(part8, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() if part8.size else np.zeros(0, np.int32)
    area = int(cols.sum())
    if area == 0:  # a region thinner than the rounding: its box centre stands in
        c = ((x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5)
        return InstanceMask(mask, (x0, y0, x0, y0), c, c, 0, float(pm.max()))
    xs, ys = np.flatnonzero(cols), np.flatnonzero(rows)
    bbox = (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)
    center = (x0 + float(cols @ np.arange(len(cols))) / area, y0 + float(rows @ np.arange(len(rows))) / area)
    point = center if peak is None else (x0 + (peak[2] + 0.5) * k - 0.5, y0 + (peak[1] + 0.5) * k - 0.5)
    # Score: the best patch whose centre lies in the mask (an exact model output, as find_regions scores),
    # else the best patch under the mask's box.
    cx0, cy0, cx1, cy1 = crop
    gh, gw = pm.shape
    px = np.minimum(((np.arange(gw) + 0.5) * (cx1 - cx0) / gw + cx0).astype(int), fw - 1)
    py = np.minimum(((np.arange(gh) + 0.5) * (cy1 - cy0) / gh + cy0).astype(int), fh - 1)
    hit = mask[np.ix_(py, px)]
    if hit.any():
        score = float(pm[hit].max())
    else:
        j0 = min(max(int((bbox[0] - cx0) * gw / (cx1 - cx0)), 0), gw - 1)
        j1 = max(int(math.ceil((bbox[2] - cx0) * gw / (cx1 - cx0))), j0 + 1)
        i0 = min(max(int((bbox[1] - cy0) * gh / (cy1 - cy0)), 0), gh - 1)
        i1 = max(int(math.ceil((bbox[3] - cy0) * gh / (cy1 - cy0))), i0 + 1)
        score = float(pm[i0:i1, j0:j1].max())
    return InstanceMask(mask, bbox, center, point, area, score)
