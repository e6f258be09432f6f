"""Ground language queries in camera frames with a bundle's patch embeddings. Torch-free.

    g = Grounder("bundles/tabletop-int8")
    res = g.ground(frame_bgr, ["the red cup"])
    res.best().bbox, res.maps.shape   # (x0, y0, x1, y1), [Q, H, W]

Per patch, each query competes with the other queries and the bundle's background prompts:
``softmax(logit_scale * cos(patch, [queries..., backgrounds...]))``; a query's probability map is
its share. Maps are thresholded into connected regions (``regions.py``), tracked and smoothed
across calls (``tracking.py``). Everything (preprocessing, logit scale, background prompts,
threshold, min area) comes from the bundle manifest unless overridden here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmedge.errors import ConfigError, InputError
from vlmedge.similarity import contrastive_maps, l2_normalize

from vlmedge.runtime.grounding.classify import zero_shot
from vlmedge.runtime.grounding.regions import find_regions
from vlmedge.runtime.grounding.results import Classification, GroundingResult
from vlmedge.runtime.grounding.tracking import Tracker

log = logging.getLogger(__name__)


def check_frame(frame_bgr) -> np.ndarray:
    """Validate a frame: uint8 [H, W, 3] BGR (BGRA and grayscale are accepted too, as preprocess does)."""
    ok = isinstance(frame_bgr, np.ndarray) and frame_bgr.dtype == np.uint8 and (
        (frame_bgr.ndim == 3 and frame_bgr.shape[2] in (1, 3, 4)) or frame_bgr.ndim == 2) and 0 not in frame_bgr.shape
    if not ok:
        got = f"{frame_bgr.dtype} {frame_bgr.shape}" if isinstance(frame_bgr, np.ndarray) else type(frame_bgr).__name__
        raise InputError(f"frame must be a BGR uint8 [H, W, 3] numpy array, got {got}")
    return frame_bgr


def check_queries(queries, what: str = "queries") -> tuple[str, ...]:
    """Validate a list of distinct, non-empty strings."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise InputError(f"{what} must be a list of strings, got {type(queries).__name__} {queries!r}")
    out = tuple(queries)
    for q in out:
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"{what} must be non-empty strings, got {q!r}")
    dupes = sorted({q for q in out if out.count(q) > 1})
    if dupes:
        raise InputError(f"{what} contain duplicates {dupes}; each query must be distinct")
    return out


def check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold!r}")
    return t


def _checked(queries, thresholds) -> tuple[tuple[str, ...], dict[str, float]]:
    """Validated queries and per-query threshold overrides."""
    return check_queries(queries), {q: check_threshold(v) for q, v in (thresholds or {}).items()}


def _open_encoders(bundle, providers, spinning: bool = True):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    if isinstance(bundle, BundleEncoders):
        return bundle
    if not isinstance(bundle, (str, Path)):
        raise ConfigError(f"bundle must be a bundle directory path or a BundleEncoders, got {type(bundle).__name__}")
    return BundleEncoders(bundle, providers=providers, spinning=spinning)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A frame preprocessed for the image encoder (see ``Grounder.prepare``)."""

    pixels: np.ndarray  # float32 [1, 3, H, W]
    crop_box: tuple[int, int, int, int]  # frame region the pixels cover
    frame_size: tuple[int, int]  # (height, width) of the frame
    preprocess_ms: float


@dataclass(frozen=True, eq=False)
class Encoded:
    """A frame through the image encoder (see ``Grounder.encode``), not yet matched to queries."""

    image_embed: np.ndarray  # [D], L2-normalized
    patches: np.ndarray  # [h, w, D]
    crop_box: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    timings: dict  # preprocess and encode milliseconds


class Grounder:
    """Language grounding on frames: ``ground(frame_bgr, queries) -> GroundingResult``.

    Args:
        bundle: bundle directory or an open ``BundleEncoders``.
        providers: ONNX Runtime execution providers (default: the encoders' choice).
        threshold: probability a patch must exceed (default: manifest ``grounding.threshold``).
        background_prompts: texts every query competes with (default: manifest ``grounding``).
        min_area_patches: smallest region in patches (default: manifest ``grounding``).
        smoothing: track targets across calls (stable ids, EMA on boxes; a ``Tracker`` to tune it);
            False = each call independent.
        spinning: ONNX Runtime workers spin-wait during a run (``BundleEncoders``); False: they sleep.
    """

    def __init__(self, bundle, *, providers: Sequence[str] | None = None, threshold: float | None = None,
                 background_prompts: Sequence[str] | None = None, min_area_patches: int | None = None,
                 smoothing: bool | Tracker = True, spinning: bool = True):
        self.encoders = _open_encoders(bundle, providers, spinning)
        self.manifest = self.encoders.manifest
        g = self.manifest.grounding
        self.threshold = check_threshold(g.threshold if threshold is None else threshold)
        self.min_area_patches = int(g.min_area_patches if min_area_patches is None else min_area_patches)
        if self.min_area_patches < 1:
            raise ConfigError(f"min_area_patches must be >= 1, got {min_area_patches!r}")
        bg = g.background_prompts if background_prompts is None else background_prompts
        self.background_prompts = check_queries(list(bg), "background_prompts") if len(bg) else ()
        self.logit_scale = float(self.manifest.logit_scale)
        if isinstance(smoothing, Tracker):
            self.tracker = smoothing
        elif smoothing in (True, False):
            self.tracker = Tracker() if smoothing else None
        else:
            raise ConfigError(f"smoothing must be True, False or a Tracker, got {smoothing!r}")
        self.text_encoder_calls = 0  # number of text-encoder runs (each handles a batch of new texts)
        self._text_cache: dict[str, np.ndarray] = {}
        self._load_vocabulary()
        self._bg_embeds = self.text_embeddings(self.background_prompts) if self.background_prompts else None

    # ------------------------------------------------------------------ text
    def _load_vocabulary(self) -> None:
        """Seed the text cache with the bundle's precomputed vocabulary (text_embeddings.npz), if any."""
        vocab = self.encoders.text_embeddings()
        if vocab is None:
            return
        queries, embeds = vocab
        for q, e in zip(queries, l2_normalize(embeds)):
            self._text_cache[str(q)] = e
        log.info("using %d precomputed text embeddings from %s", len(queries), self.manifest.text_embeddings)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized embeddings [N, D]; texts not cached yet are encoded in one call."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            emb = l2_normalize(np.asarray(self.encoders.encode_text(list(missing)), dtype=np.float32))
            self.text_encoder_calls += 1
            for t, e in zip(missing, emb):
                self._text_cache[t] = e
        if not texts:
            return np.zeros((0, self.manifest.embed_dim), dtype=np.float32)
        return np.stack([self._text_cache[t] for t in texts])

    def register_embedding(self, text: str, embed: np.ndarray) -> None:
        """Use ``embed`` [D] for ``text`` from now on (e.g. an embedding of an exemplar image crop)."""
        e = np.asarray(embed, dtype=np.float32).reshape(-1)
        if e.shape != (self.manifest.embed_dim,) or not np.all(np.isfinite(e)) or not np.any(e):
            raise InputError(f"embedding for {text!r} must be a finite non-zero [{self.manifest.embed_dim}] vector, "
                             f"got shape {np.shape(embed)}")
        check_queries([text], "text")
        self._text_cache[text] = l2_normalize(e)

    @property
    def cached_queries(self) -> tuple[str, ...]:
        return tuple(self._text_cache)

    def set_threshold(self, threshold: float) -> None:
        self.threshold = check_threshold(threshold)

    # ------------------------------------------------------------------ image
    def prepare(self, frame_bgr: np.ndarray) -> Prepared:
        """Preprocess a frame for the image encoder (may run in another thread than ``ground``)."""
        from vlmedge.preprocess import crop_box, preprocess

        frame_bgr = check_frame(frame_bgr)
        spec = self.manifest.preprocess
        t0 = time.perf_counter()
        pixels = preprocess(frame_bgr, spec)
        box = tuple(int(round(v)) for v in crop_box(frame_bgr.shape, spec))
        return Prepared(pixels, box, tuple(frame_bgr.shape[:2]), (time.perf_counter() - t0) * 1e3)

    def encode_frame(self, frame_bgr: np.ndarray | None = None, *, prepared: Prepared | None = None
                     ) -> tuple[np.ndarray, np.ndarray, tuple, dict]:
        """Preprocess (unless ``prepared``) and encode: (image_embed [D], patch_embeds [h, w, D], crop_box, timings)."""
        if prepared is None:
            prepared = self.prepare(frame_bgr)
        elif not isinstance(prepared, Prepared):
            raise InputError(f"prepared must come from Grounder.prepare(), got {type(prepared).__name__}")
        t1 = time.perf_counter()
        image_embeds, patch_embeds = self.encoders.encode_image(prepared.pixels)
        t2 = time.perf_counter()
        timings = {"preprocess": prepared.preprocess_ms, "encode": (t2 - t1) * 1e3}
        return (l2_normalize(np.asarray(image_embeds, dtype=np.float32)[0]),
                np.asarray(patch_embeds, dtype=np.float32)[0], prepared.crop_box, timings)

    def encode(self, prepared: Prepared) -> Encoded:
        """Run the image encoder on a prepared frame; ``ground_encoded`` finishes the job. Splitting
        ``ground`` in two lets a pipeline prepare the next frame while it matches this one."""
        image_embed, patches, box, timings = self.encode_frame(prepared=prepared)
        return Encoded(image_embed, patches, box, prepared.frame_size, timings)

    def ground(self, frame_bgr: np.ndarray | None, queries: Sequence[str], *,
               thresholds: Mapping[str, float] | None = None, prepared: Prepared | None = None) -> GroundingResult:
        """Find every query in the frame. See the module docstring for the method.

        ``thresholds`` optionally overrides the threshold for some queries (e.g. from the control socket).
        ``prepared``: the frame already preprocessed by :meth:`prepare` (then ``frame_bgr`` may be None).
        """
        queries, per_query = _checked(queries, thresholds)
        t_start = time.perf_counter()
        given = prepared is not None
        if not given:
            prepared = self.prepare(frame_bgr)
        elif frame_bgr is not None and tuple(np.shape(frame_bgr)[:2]) != prepared.frame_size:
            raise InputError(f"prepared is for a {prepared.frame_size} frame, got a frame of shape {np.shape(frame_bgr)}")
        result = self._match(self.encode(prepared), queries, per_query)
        result.timings["total"] = (time.perf_counter() - t_start) * 1e3 + (prepared.preprocess_ms if given else 0.0)
        return result

    def ground_encoded(self, encoded: Encoded, queries: Sequence[str], *,
                       thresholds: Mapping[str, float] | None = None) -> GroundingResult:
        """``ground`` for a frame that went through :meth:`encode` already."""
        if not isinstance(encoded, Encoded):
            raise InputError(f"encoded must come from Grounder.encode(), got {type(encoded).__name__}")
        queries, per_query = _checked(queries, thresholds)
        result = self._match(encoded, queries, per_query)
        result.timings["total"] = sum(result.timings[k] for k in ("preprocess", "encode", "ground"))
        return result

    def _match(self, encoded: Encoded, queries: tuple[str, ...], per_query: dict) -> GroundingResult:
        t2 = time.perf_counter()
        patches, box, frame_size = encoded.patches, encoded.crop_box, encoded.frame_size
        q_emb = self.text_embeddings(queries)
        maps = contrastive_maps(patches, q_emb, self._bg_embeds, self.logit_scale) if queries else \
            np.zeros((0, *patches.shape[:2]), dtype=np.float32)
        targets = []
        for q, m in zip(queries, maps):
            targets.extend(find_regions(m, q, threshold=per_query.get(q, self.threshold),
                                        min_area_patches=self.min_area_patches, frame_size=frame_size, crop_box=box))
        if self.tracker is not None:
            targets = self.tracker.update(targets)
        timings = dict(encoded.timings)
        timings["ground"] = (time.perf_counter() - t2) * 1e3
        return GroundingResult(queries=queries, targets=tuple(targets), patch_maps=maps, frame_size=frame_size,
                               crop_box=box, timings=timings, image_embed=encoded.image_embed)

    def classify(self, frame_bgr: np.ndarray, labels: Sequence[str], prompt: str = "a photo of {}") -> Classification:
        """Whole-frame zero-shot classification: labels sorted by softmax(logit_scale * cos)."""
        labels = check_queries(labels, "labels")
        if not labels:
            raise InputError("classify needs at least one label")
        image_embed, _, _, _ = self.encode_frame(frame_bgr)
        return zero_shot(image_embed, labels, self.text_embeddings, self.logit_scale, prompt)

    def reset_tracks(self) -> None:
        if self.tracker is not None:
            self.tracker.reset()
