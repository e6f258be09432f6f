"""Taught objects: nouns the model never read, learned from one look ("teach my mug" with a box around it).

An exemplar is the mean of the L2-normalized patch embeddings of the object; grounding then scores every
patch against it exactly as against a text embedding (the patch embeddings are text-aligned, so an
exemplar sits in the same space as "the red cup"). The store persists to a JSON file (never a pickle) that
names the model it belongs to: an exemplar from another model's embedding space would match nonsense, so a
file from another model is refused, not half-used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlmedge.errors import ArtifactError, InputError, did_you_mean
from vlmedge.similarity import l2_normalize

log = logging.getLogger(__name__)

FORMAT = "vlmedge-taught-objects"
FORMAT_VERSION = 1
MAX_TAUGHT = 64  # names a command may use; each adds one phrase to every frame that names it
NEGATIVES = 4  # prototypes of the teaching frame's surroundings a taught name competes with


def box_patches(box: Sequence[float], crop_box: tuple[int, int, int, int], grid: tuple[int, int]) -> np.ndarray:
    """Bool [h, w]: the patches whose centre lies inside ``box`` (frame pixels); at least the patch under the
    box centre, so a box smaller than a patch still selects one."""
    h, w = grid
    x0, y0, x1, y1 = crop_box
    bx0, by0, bx1, by1 = (float(v) for v in box)
    cx = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    cy = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    inside = ((cy >= by0) & (cy < by1))[:, None] & ((cx >= bx0) & (cx < bx1))[None, :]
    if not inside.any():
        col = int(np.clip(((bx0 + bx1) / 2 - x0) * w / max(x1 - x0, 1), 0, w - 1))
        row = int(np.clip(((by0 + by1) / 2 - y0) * h / max(y1 - y0, 1), 0, h - 1))
        inside[row, col] = True
    return inside


def check_box(box, frame_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in frame pixels that overlaps the frame, with x1 > x0 and y1 > y0."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"teach: box must be (x0, y0, x1, y1) in frame pixels, got {box!r}") from None
    height, width = frame_size
    if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
        raise InputError(f"teach: box must have x0 < x1 and y0 < y1 (finite), got {box!r}")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputError(f"teach: box {box!r} lies outside the {width}x{height} frame")
    return x0, y0, x1, y1


def exemplar_from_box(patches: np.ndarray, box, crop_box: tuple[int, int, int, int],
                      frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(exemplar [D], negatives [k, D])`` from the patches of one frame and a box around the object.

    The exemplar is the mean embedding of the box's object patches: a box drawn around an object also covers
    table and wall, so of the patches inside it only those least like the frame outside the box are kept (at
    least half of them, at least one). The negatives are up to ``NEGATIVES`` prototypes of the patches outside
    the box (the table, the wall, the other objects of the teaching frame): a taught name competes with them as
    a text query competes with the background prompts, so that what merely resembles the teaching frame's
    surroundings is not taken for the object.
    """
    unit = l2_normalize(patches)
    inside = box_patches(check_box(box, frame_size), crop_box, patches.shape[:2])
    inner, outer = unit[inside], unit[~inside]
    if len(outer) == 0:  # the box covers the whole frame: every patch is the object
        return inner.mean(axis=0), np.zeros((0, unit.shape[-1]), np.float32)
    likeness = inner @ l2_normalize(outer.mean(axis=0))
    keep = likeness <= np.quantile(likeness, 0.5) if len(inner) > 1 else np.ones(1, bool)
    return inner[keep].mean(axis=0), prototypes(outer, NEGATIVES)


def exemplar_from(encode, frame_bgr=None, box=None, crops=None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(exemplar, negatives, source)`` for ``Grounder.teach``: from a frame and a box around the object, or
    from 1-5 crops of it (every patch of a crop is the object: no negatives). ``encode(image) -> Encoded``."""
    if (crops is None) == (frame_bgr is None):
        raise InputError("teach needs either a frame and a box, or crops=[image, ...] (1 to 5 crops)")
    if crops is not None:
        if box is not None:
            raise InputError("teach: give a box with a frame, not with crops")
        if isinstance(crops, np.ndarray) or not 1 <= len(crops) <= 5:
            raise InputError(f"teach: crops must be a list of 1 to 5 images, got {type(crops).__name__}"
                             + (f" of {len(crops)}" if not isinstance(crops, np.ndarray) else ""))
        patches = [encode(c).patches for c in crops]
        parts = [l2_normalize(p).reshape(-1, p.shape[-1]).mean(axis=0) for p in patches]
        return np.mean(parts, axis=0), None, {"crops": len(crops)}
    if box is None:
        raise InputError("teach: a frame needs a box (x0, y0, x1, y1) in frame pixels around the object")
    encoded = encode(frame_bgr)
    exemplar, negatives = exemplar_from_box(encoded.patches, box, encoded.crop_box, encoded.frame_size)
    return exemplar, negatives, {"box": [int(round(float(v))) for v in box]}


def prototypes(vectors: np.ndarray, k: int, iterations: int = 8) -> np.ndarray:
    """``k`` cluster means of unit vectors (spherical k-means from a farthest-point start: deterministic)."""
    k = min(k, len(vectors))
    centres = [vectors[int(np.argmin(vectors @ vectors.mean(axis=0)))]]
    for _ in range(k - 1):
        centres.append(vectors[int(np.argmin((vectors @ np.stack(centres).T).max(axis=1)))])
    c = np.stack(centres)
    for _ in range(iterations):
        label = np.argmax(vectors @ c.T, axis=1)
        c = np.stack([l2_normalize(vectors[label == j].mean(axis=0)) if np.any(label == j) else c[j]
                      for j in range(k)])
    return c.astype(np.float32)


class TaughtObjects:
    """Name -> exemplar embedding, optionally persisted to ``path`` (loaded at start, rewritten atomically)."""

    def __init__(self, model_id: str, embed_dim: int, path: str | Path | None = None):
        self.model_id, self.embed_dim = str(model_id), int(embed_dim)
        self.path = Path(path) if path is not None else None
        self._items: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def embedding(self, name: str) -> np.ndarray:
        return self._items[name]["embedding"]

    def negatives(self, name: str) -> np.ndarray:
        """[k, D] prototypes of the teaching frame's surroundings (k may be 0)."""
        return self._items[name]["negatives"]

    def add(self, name: str, exemplar: np.ndarray, source: dict | None = None,
            negatives: np.ndarray | None = None) -> None:
        e = np.asarray(exemplar, dtype=np.float32).reshape(-1)
        neg = np.zeros((0, self.embed_dim), np.float32) if negatives is None else \
            np.asarray(negatives, dtype=np.float32).reshape(-1, self.embed_dim)
        if e.shape != (self.embed_dim,) or not np.all(np.isfinite(e)) or not np.any(e):
            raise InputError(f"teach {name!r}: exemplar must be a finite non-zero [{self.embed_dim}] vector, "
                             f"got shape {np.shape(exemplar)}")
        if name not in self._items and len(self._items) >= MAX_TAUGHT:
            raise InputError(f"teach {name!r}: {MAX_TAUGHT} objects are taught already; forget one first")
        previous = self._items.get(name)
        self._items[name] = {"embedding": l2_normalize(e), "negatives": l2_normalize(neg),
                             "source": dict(source or {})}
        try:
            self._save()
        except OSError as err:  # not taught unless it is kept: the store and the file stay the same
            if previous is None:
                del self._items[name]
            else:
                self._items[name] = previous
            raise ArtifactError(f"teach {name!r}: cannot write {str(self.path)!r}: {err}") from None
        log.info("taught %r (%s)", name, source or {})

    def remove(self, name: str) -> None:
        if name not in self._items:
            known = list(self._items)
            raise InputError(f"forget: {name!r} was never taught; taught objects: {known}"
                             + did_you_mean(name, known))
        removed = self._items.pop(name)
        try:
            self._save()
        except OSError as err:
            self._items[name] = removed
            raise ArtifactError(f"forget {name!r}: cannot write {str(self.path)!r}: {err}") from None

    # -------------------------------------------------------------- file
    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model_id": self.model_id, "embed_dim": self.embed_dim,
                "objects": {n: {"embedding": [round(float(v), 7) for v in item["embedding"]],
                                "negatives": [[round(float(v), 7) for v in row] for row in item["negatives"]],
                                "source": item["source"]} for n, item in self._items.items()}}

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".taught-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=1)
            os.replace(tmp, self.path)  # a crash mid-write leaves the previous file, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self) -> None:
        where = str(self.path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"taught objects file {where!r} cannot be read: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"taught objects file {where!r}: field 'format' must be {FORMAT!r}, "
                                f"got {data.get('format') if isinstance(data, dict) else type(data).__name__!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ArtifactError(f"taught objects file {where!r}: field 'version' must be {FORMAT_VERSION}, "
                                f"got {data.get('version')!r}")
        if data.get("model_id") != self.model_id or data.get("embed_dim") != self.embed_dim:
            raise ArtifactError(
                f"taught objects file {where!r} belongs to model {data.get('model_id')!r} "
                f"(embed_dim {data.get('embed_dim')!r}), not to this bundle's {self.model_id!r} (embed_dim "
                f"{self.embed_dim}): exemplars do not carry over between models; teach them again or use another file")
        objects = data.get("objects")
        if not isinstance(objects, dict):
            raise ArtifactError(f"taught objects file {where!r}: field 'objects' must be an object, "
                                f"got {type(objects).__name__}")
        for name, item in objects.items():
            emb = item.get("embedding") if isinstance(item, dict) else None
            try:
                vec = np.asarray(emb, dtype=np.float32)
            except (TypeError, ValueError):
                vec = np.zeros(0, np.float32)
            if vec.shape != (self.embed_dim,) or not np.all(np.isfinite(vec)) or not np.any(vec):
                raise ArtifactError(f"taught objects file {where!r}: objects[{name!r}].embedding must be "
                                    f"{self.embed_dim} finite numbers, not all zero")
            try:
                neg = np.asarray(item.get("negatives") or np.zeros((0, self.embed_dim)), dtype=np.float32)
            except (TypeError, ValueError):
                neg = np.zeros((1, 0), np.float32)
            if neg.ndim != 2 or neg.shape[1] != self.embed_dim or not np.all(np.isfinite(neg)):
                raise ArtifactError(f"taught objects file {where!r}: objects[{name!r}].negatives must be a list of "
                                    f"{self.embed_dim}-number rows")
            self._items[str(name)] = {"embedding": l2_normalize(vec), "negatives": l2_normalize(neg),
                                      "source": dict(item.get("source") or {})}
        log.info("loaded %d taught objects from %s", len(self._items), where)
