"""Synthetic tabletop scenes: coloured household objects on a table, drawn with OpenCV.

Used as the default frame source (``synthetic://tabletop``), to train the embedded demo
model, to calibrate int8 quantization and to benchmark grounding. Torch-free.

* :func:`render_scene` -> :class:`Scene`: one still, deterministic for a seed.
* :func:`draw_stage` + :func:`sized_sprite` + :func:`render_placed`: a scene whose objects the caller
  places (command layouts), drawn like render_scene.
* :class:`TabletopStream`: a moving scene (objects slide, come and go); ``read()`` gives the
  next ``(frame_bgr, scene)``. ``featured`` objects never leave (the default source features
  every object the docs name, so that "the red cup", "the blue ball" or "the bottle left of the
  purple bottle" always have something to find).

Conventions: frames are BGR uint8 [H, W, 3]; ``SceneObject.bbox`` is ``(x0, y0, x1, y1)`` in
frame pixels with x1/y1 EXCLUSIVE, the tight box of the object's VISIBLE pixels (``mask``).
The vocabulary (kinds, colours, caption templates, background prompts) is data, below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from vlmedge.errors import ConfigError, InputError, check_choice

# ----------------------------------------------------------------------------- vocabulary
KINDS: tuple[str, ...] = ("cup", "bottle", "ball", "box", "book", "can", "banana", "plate")

# Colour name -> (OpenCV hue 0..180, hue jitter, (s_min, s_max), (v_min, v_max)).
COLORS: dict[str, tuple[float, float, tuple[int, int], tuple[int, int]]] = {
    "red": (0.0, 3.0, (200, 245), (170, 225)),
    "orange": (12.0, 2.0, (215, 255), (225, 255)),
    "yellow": (27.0, 2.5, (190, 240), (220, 255)),
    "green": (62.0, 7.0, (150, 230), (120, 190)),
    "blue": (110.0, 5.0, (190, 250), (150, 215)),
    "purple": (140.0, 5.0, (130, 200), (110, 170)),
    "pink": (166.0, 4.0, (80, 130), (225, 255)),
    "white": (20.0, 20.0, (0, 18), (225, 248)),
    "black": (0.0, 90.0, (0, 30), (28, 48)),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

CAPTION_TEMPLATES: tuple[str, ...] = ("the {color} {kind}", "a {color} {kind}", "{color} {kind}")
BACKGROUND_PROMPTS: tuple[str, ...] = ("background", "a table", "a wall", "the floor")

# Typical object size in frame pixels at 480x640 (the long side of the sprite), min..max.
_SIZES: dict[str, tuple[int, int]] = {
    "cup": (110, 155), "bottle": (180, 250), "ball": (95, 140), "box": (115, 165),
    "book": (145, 205), "can": (120, 160), "banana": (160, 220), "plate": (145, 205),
}
_REF_SHORT_SIDE = 480  # sizes above are for this frame height; other sizes scale


def caption(kind: str, color: str, template: int = 0) -> str:
    """The text for an object, e.g. ``caption("cup", "red") == "the red cup"``."""
    check_choice("kind", kind, KINDS)
    check_choice("color", color, COLOR_NAMES)
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(color=color, kind=kind)


def all_captions() -> list[str]:
    """Every caption the vocabulary can produce plus the background prompts (tokenizer training)."""
    out = [caption(k, c, t) for k in KINDS for c in COLOR_NAMES for t in range(len(CAPTION_TEMPLATES))]
    return out + list(BACKGROUND_PROMPTS)


def check_featured(featured) -> tuple[tuple[str, str], ...]:
    """Validate ``(colour, kind)`` pairs (or ``"red cup"`` strings); return distinct pairs."""
    if isinstance(featured, str):
        raise ConfigError(f"featured must be a sequence of (colour, kind) pairs, got the string {featured!r}; "
                          "use parse_featured() for text")
    out: list[tuple[str, str]] = []
    for item in featured or ():
        if isinstance(item, str):
            item = tuple(item.split())
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(f"featured object must be a (colour, kind) pair such as ('red', 'cup'), got {item!r}")
        colour, kind = str(item[0]).lower(), str(item[1]).lower()
        check_choice("featured colour", colour, COLOR_NAMES)
        check_choice("featured kind", kind, KINDS)
        if (colour, kind) not in out:
            out.append((colour, kind))
    if len(out) > 4:
        raise ConfigError(f"featured holds at most 4 objects, got {len(out)}: {out}")
    return tuple(out)


def parse_featured(text: str) -> tuple[tuple[str, str], ...]:
    """``"red cup"`` / ``"red cup,blue ball"`` / ``"none"`` (or empty) -> ``(colour, kind)`` pairs."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    return check_featured([tuple(part.replace("+", " ").split()) for part in text.split(",")])


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SceneObject:
    """One object as drawn: kind and colour name, visible-pixel mask and its box."""

    kind: str
    color: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 frame pixels, x1/y1 exclusive; tight box of `mask`
    mask: np.ndarray = field(repr=False)  # bool [H, W], pixels of this object visible in the frame

    def __post_init__(self):
        check_choice("SceneObject.kind", self.kind, KINDS)
        check_choice("SceneObject.color", self.color, COLOR_NAMES)
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != bool or self.mask.ndim != 2:
            raise InputError(f"SceneObject.mask must be a bool [H, W] array, got {type(self.mask).__name__}")
        if len(self.bbox) != 4:
            raise InputError(f"SceneObject.bbox must be (x0, y0, x1, y1), got {self.bbox!r}")

    def caption(self, template: int = 0) -> str:
        return caption(self.kind, self.color, template)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class Scene:
    """A rendered frame and the objects in it (back to front)."""

    frame: np.ndarray = field(repr=False)  # BGR uint8 [H, W, 3]
    objects: tuple[SceneObject, ...]

    def find(self, kind: str, color: str) -> SceneObject | None:
        for o in self.objects:
            if o.kind == kind and o.color == color:
                return o
        return None

    def absent(self, rng: np.random.Generator) -> tuple[str, str]:
        """A (kind, colour) combination not in the scene, preferring near misses
        (same kind other colour, or same colour other kind) when there are objects."""
        present = {(o.kind, o.color) for o in self.objects}
        if self.objects and rng.random() < 0.8:
            o = self.objects[int(rng.integers(len(self.objects)))]
            if rng.random() < 0.5:
                cands = [(o.kind, c) for c in COLOR_NAMES if (o.kind, c) not in present]
            else:
                cands = [(k, o.color) for k in KINDS if (k, o.color) not in present]
            if cands:
                return cands[int(rng.integers(len(cands)))]
        while True:
            pair = (KINDS[int(rng.integers(len(KINDS)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))])
            if pair not in present:
                return pair


# ----------------------------------------------------------------------------- colours
def sample_color(rng: np.random.Generator, name: str) -> np.ndarray:
    """A BGR float32 colour inside the named hue (jittered hue, saturation, value)."""
    hue, jit, (s0, s1), (v0, v1) = COLORS[name]
    h = (hue + rng.uniform(-jit, jit)) % 180.0
    hsv = np.array([[[h, rng.uniform(s0, s1), rng.uniform(v0, v1)]]], np.float32)
    hsv_u8 = np.clip(np.round(hsv), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv_u8, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _shade(color: np.ndarray, f: np.ndarray) -> np.ndarray:
    """color [3] x shading field [h, w] -> [h, w, 3] float32."""
    return f[..., None].astype(np.float32) * color[None, None, :]


def _specular(img: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend towards white by weight [h, w] in 0..1."""
    w = np.clip(weight, 0, 1)[..., None].astype(np.float32)
    return img * (1 - w) + 250.0 * w


def _cyl(width: int, height: int, light: float = 0.35, gloss: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Cylinder shading along x: (factor [h, w], specular weight [h, w])."""
    u = (np.arange(width, dtype=np.float32) + 0.5) / max(width, 1)
    f = 0.5 + 0.58 * np.sin(np.pi * np.clip(u, 0, 1)) ** 0.6 - 0.18 * np.clip(u - light, 0, None)
    spec = gloss * np.exp(-((u - light * 0.7) / 0.045) ** 2)
    return np.tile(f, (height, 1)), np.tile(spec, (height, 1))


# ----------------------------------------------------------------------------- sprites
# Each drawer returns (bgr float32 [h, w, 3], alpha float32 [h, w] in 0..1), origin top-left.

def _alpha_from(draw) -> np.ndarray:
    return draw.astype(np.float32) / 255.0


def _draw_cup(rng, color, size):
    h = int(size)
    wt = int(h * rng.uniform(0.72, 0.9))
    wb = int(wt * rng.uniform(0.72, 0.86))
    rim = max(6, int(wt * 0.2))
    handle = int(wt * 0.42)
    W, H = wt + handle + 4, h + rim // 2 + 2
    a = np.zeros((H, W), np.uint8)
    x0 = 2
    cy_top = rim // 2 + 1
    body = np.array([[x0, cy_top], [x0 + wt, cy_top], [x0 + (wt + wb) // 2, h], [x0 + (wt - wb) // 2, h]], np.int32)
    cv2.fillConvexPoly(a, body, 255, cv2.LINE_AA)
    cv2.ellipse(a, (x0 + wt // 2, h), (wb // 2, max(3, rim // 3)), 0, 0, 180, 255, -1, cv2.LINE_AA)
    cv2.ellipse(a, (x0 + wt // 2, cy_top), (wt // 2, rim // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    hand = np.zeros_like(a)
    hc = (x0 + int(wt * 0.93), int(cy_top + h * 0.42))
    cv2.ellipse(hand, hc, (handle, int(h * 0.26)), 0, -80, 80, 255, max(4, int(wt * 0.11)), cv2.LINE_AA)
    hand[:, : x0 + int(wt * 0.9)] = 0
    f, spec = _cyl(W, H)
    img = _shade(color, f)
    img = _specular(img, spec)
    hand_img = _shade(color, np.full((H, W), 0.72, np.float32))
    ha = _alpha_from(hand)[..., None]
    img = img * (1 - ha) + hand_img * ha
    # interior seen through the rim: darker
    inner = np.zeros_like(a)
    cv2.ellipse(inner, (x0 + wt // 2, cy_top + 1), (wt // 2 - max(2, wt // 18), rim // 2 - 2), 0, 0, 360,
                255, -1, cv2.LINE_AA)
    ia = _alpha_from(inner)[..., None]
    img = img * (1 - ia) + (color * 0.42)[None, None] * ia
    alpha = np.maximum(_alpha_from(a), _alpha_from(hand))
    return img, alpha


def _draw_bottle(rng, color, size):
    h = int(size)
    w = int(h * rng.uniform(0.34, 0.42))
    neck = max(6, int(w * 0.38))
    W, H = w + 4, h + 2
    a = np.zeros((H, W), np.uint8)
    cx = W // 2
    y_cap, y_sh0, y_sh1 = int(h * 0.09), int(h * 0.26), int(h * 0.4)
    r = max(3, w // 6)
    cv2.rectangle(a, (cx - w // 2, y_sh1), (cx + w // 2 - 1, h - r), 255, -1, cv2.LINE_AA)
    cv2.rectangle(a, (cx - w // 2 + r, h - 2 * r), (cx + w // 2 - 1 - r, h), 255, -1, cv2.LINE_AA)
    cv2.circle(a, (cx - w // 2 + r, h - r), r, 255, -1, cv2.LINE_AA)
    cv2.circle(a, (cx + w // 2 - 1 - r, h - r), r, 255, -1, cv2.LINE_AA)
    sh = np.array([[cx - neck // 2, y_sh0], [cx + neck // 2, y_sh0], [cx + w // 2 - 1, y_sh1 + 1],
                  [cx - w // 2, y_sh1 + 1]], np.int32)
    cv2.fillConvexPoly(a, sh, 255, cv2.LINE_AA)
    cv2.rectangle(a, (cx - neck // 2, y_cap), (cx + neck // 2, y_sh0 + 1), 255, -1, cv2.LINE_AA)
    cap = np.zeros_like(a)
    cv2.rectangle(cap, (cx - int(neck * 0.62), 1), (cx + int(neck * 0.62), y_cap + 1), 255, -1, cv2.LINE_AA)
    f, spec = _cyl(W, H, gloss=0.45)
    img = _specular(_shade(color, f), spec)
    # label band: slightly lighter, matte
    y_l0, y_l1 = int(h * rng.uniform(0.5, 0.56)), int(h * rng.uniform(0.76, 0.84))
    img[y_l0:y_l1] = img[y_l0:y_l1] * 0.8 + _shade(color, f[y_l0:y_l1] * 1.12) * 0.2
    img[y_l0:y_l0 + 2] *= 0.7
    img[y_l1 - 2:y_l1] *= 0.7
    cap_col = np.array([235, 235, 235], np.float32) if color.mean() < 120 else np.array([40, 40, 40], np.float32)
    if rng.random() < 0.5:
        cap_col = color * 0.6
    ca = _alpha_from(cap)[..., None]
    img = img * (1 - ca) + _shade(cap_col, f) * ca
    return img, np.maximum(_alpha_from(a), _alpha_from(cap))


def _draw_ball(rng, color, size):
    d = int(size)
    W = H = d + 4
    a = np.zeros((H, W), np.uint8)
    c = (W // 2, H // 2)
    cv2.circle(a, c, d // 2, 255, -1, cv2.LINE_AA)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = d / 2
    lx, ly = c[0] - 0.35 * r, c[1] - 0.4 * r
    dist = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) / (1.45 * r)
    f = np.clip(1.12 - 0.7 * dist ** 1.3, 0.35, 1.15)
    img = _shade(color, f)
    spec = 0.75 * np.exp(-(((xx - lx) ** 2 + (yy - ly) ** 2) / (0.12 * r) ** 2))
    img = _specular(img, spec)
    if rng.random() < 0.6:  # a seam line
        seam = np.zeros_like(a)
        cv2.ellipse(seam, c, (int(r * 0.95), int(r * rng.uniform(0.25, 0.6))), float(rng.uniform(0, 180)),
                    0, 360, 255, max(1, d // 40), cv2.LINE_AA)
        sa = _alpha_from(seam)[..., None] * 0.5
        img = img * (1 - sa) + img * 0.55 * sa
    return img, _alpha_from(a)


def _draw_box(rng, color, size):
    w = int(size)
    h = int(w * rng.uniform(0.55, 0.85))
    d = int(w * rng.uniform(0.22, 0.35))
    W, H = w + d + 4, h + d + 4
    x0, y0 = 2, d + 2
    front = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.int32)
    top = np.array([[x0, y0], [x0 + d, y0 - d], [x0 + w + d, y0 - d], [x0 + w, y0]], np.int32)
    side = np.array([[x0 + w, y0], [x0 + w + d, y0 - d], [x0 + w + d, y0 + h - d], [x0 + w, y0 + h]], np.int32)
    img = np.zeros((H, W, 3), np.float32)
    a = np.zeros((H, W), np.uint8)
    for poly, k in ((front, 0.88), (top, 1.08), (side, 0.62)):
        m = np.zeros((H, W), np.uint8)
        cv2.fillConvexPoly(m, poly, 255, cv2.LINE_AA)
        ma = _alpha_from(m)[..., None]
        img = img * (1 - ma) + np.clip(color * k, 0, 255)[None, None] * ma
        a = np.maximum(a, m)
    edge = tuple(float(v) for v in color * 0.45)
    for poly in (front, top, side):
        cv2.polylines(img, [poly], True, edge, max(1, w // 70), cv2.LINE_AA)
    if rng.random() < 0.5:  # tape across the top
        tape = np.array([[x0 + w // 2 - w // 14, y0], [x0 + w // 2 - w // 14 + d, y0 - d],
                         [x0 + w // 2 + w // 14 + d, y0 - d], [x0 + w // 2 + w // 14, y0]], np.int32)
        cv2.fillConvexPoly(img, tape, tuple(float(v) for v in np.clip(color * 1.2 + 25, 0, 255)), cv2.LINE_AA)
    return img, _alpha_from(a)


def _draw_book(rng, color, size):
    w = int(size)
    h = int(w * rng.uniform(0.66, 0.78))
    t = max(5, int(w * rng.uniform(0.05, 0.08)))  # page-block thickness
    W, H = w + t + 4, h + t + 4
    img = np.zeros((H, W, 3), np.float32)
    a = np.zeros((H, W), np.uint8)
    x0, y0 = 2, 2
    pages = np.array([[x0 + t, y0 + t], [x0 + w + t, y0 + t], [x0 + w + t, y0 + h + t], [x0 + t, y0 + h + t]], np.int32)
    cv2.fillConvexPoly(a, pages, 255, cv2.LINE_AA)
    cv2.fillConvexPoly(img, pages, (215.0, 225.0, 232.0), cv2.LINE_AA)
    for i in range(1, t, 2):  # page lines
        cv2.line(img, (x0 + w + i, y0 + t + i), (x0 + w + i, y0 + h + i), (175.0, 185.0, 195.0), 1)
        cv2.line(img, (x0 + t + i, y0 + h + i), (x0 + w + i, y0 + h + i), (175.0, 185.0, 195.0), 1)
    cover = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.int32)
    m = np.zeros((H, W), np.uint8)
    cv2.fillConvexPoly(m, cover, 255, cv2.LINE_AA)
    a = np.maximum(a, m)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    f = 0.85 + 0.15 * (1 - (xx + yy) / (W + H))
    cov_img = _shade(color, f)
    spine = int(w * 0.1)
    cov_img[:, x0:x0 + spine] *= 0.7
    ma = _alpha_from(m)[..., None]
    img = img * (1 - ma) + cov_img * ma
    # title panel
    px0, py0 = x0 + int(w * 0.3), y0 + int(h * 0.2)
    px1, py1 = x0 + int(w * 0.85), y0 + int(h * 0.42)
    panel = np.clip(color * 0.55 + 100, 0, 255) if color.mean() < 200 else color * 0.7
    cv2.rectangle(img, (px0, py0), (px1, py1), tuple(float(v) for v in panel), -1, cv2.LINE_AA)
    cv2.polylines(img, [cover], True, tuple(float(v) for v in color * 0.5), max(1, w // 90), cv2.LINE_AA)
    return img, _alpha_from(a)


def _draw_can(rng, color, size):
    h = int(size)
    w = int(h * rng.uniform(0.6, 0.72))
    e = max(5, int(w * 0.16))
    W, H = w + 4, h + e + 2
    x0, cx = 2, W // 2
    a = np.zeros((H, W), np.uint8)
    cv2.rectangle(a, (x0, e // 2 + 1), (x0 + w - 1, h), 255, -1, cv2.LINE_AA)
    cv2.ellipse(a, (cx, h), (w // 2, e // 2), 0, 0, 180, 255, -1, cv2.LINE_AA)
    cv2.ellipse(a, (cx, e // 2 + 1), (w // 2, e // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    f, spec = _cyl(W, H, gloss=0.5)
    img = _specular(_shade(color, f), spec)
    metal = np.array([192, 192, 198], np.float32)
    band = max(3, int(h * 0.06))
    img[: e // 2 + 1 + band] = _specular(_shade(metal, f), spec)[: e // 2 + 1 + band]
    img[h - band:] = _specular(_shade(metal, f), spec)[h - band:]
    top = np.zeros((H, W), np.uint8)
    cv2.ellipse(top, (cx, e // 2 + 1), (w // 2 - 1, e // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    ta = _alpha_from(top)[..., None]
    img = img * (1 - ta) + np.array([205, 205, 210], np.float32)[None, None] * ta
    cv2.ellipse(img, (cx, e // 2 + 1), (int(w * 0.38), max(2, int(e * 0.35))), 0, 0, 360, (140.0, 140.0,
                145.0), 1, cv2.LINE_AA)
    return img, _alpha_from(a)


def _draw_banana(rng, color, size):
    L = int(size)
    R = L * rng.uniform(0.6, 0.75)
    thick = L * rng.uniform(0.17, 0.22)
    sweep = math.radians(rng.uniform(80, 100))
    n = 40
    angs = np.linspace(-sweep / 2, sweep / 2, n) + math.pi / 2
    taper = np.sin(np.linspace(0.08, math.pi - 0.08, n)) ** 0.6
    outer = np.stack([R * np.cos(angs), R * np.sin(angs)], 1)
    inner = np.stack([(R - thick * taper) * np.cos(angs), (R - thick * taper) * np.sin(angs)], 1)
    pts = np.concatenate([outer, inner[::-1]], 0)
    pts -= pts.min(0) - 3
    W, H = int(pts[:, 0].max()) + 4, int(pts[:, 1].max()) + 4
    a = np.zeros((H, W), np.uint8)
    cv2.fillPoly(a, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cxy = np.array([0, 0], np.float32) - (np.stack([R * np.cos(angs), R * np.sin(angs)], 1).min(0) - 3)
    rad = np.sqrt((xx - cxy[0]) ** 2 + (yy - cxy[1]) ** 2)
    u = np.clip((R - rad) / thick, 0, 1)  # 0 outer .. 1 inner edge
    f = 0.62 + 0.5 * np.sin(np.pi * np.clip(u * 0.9 + 0.1, 0, 1))
    img = _shade(color, f)
    for end in (outer[0], outer[-1]):  # brown tips
        p = end - (np.stack([R * np.cos(angs), R * np.sin(angs)], 1).min(0) - 3)
        cv2.circle(img, (int(p[0]), int(p[1])), max(3, int(thick * 0.22)), (25.0, 45.0, 70.0), -1, cv2.LINE_AA)
    # ridge line along the middle
    mid = np.concatenate([(R - thick * taper * 0.45)[:, None] * np.cos(angs)[:, None],
                          (R - thick * taper * 0.45)[:, None] * np.sin(angs)[:, None]], 1)
    mid -= np.stack([R * np.cos(angs), R * np.sin(angs)], 1).min(0) - 3
    cv2.polylines(img, [np.round(mid[3:-3]).astype(np.int32)], False, tuple(float(v) for v in color * 0.75),
                  max(1, L // 80), cv2.LINE_AA)
    return img, _alpha_from(a)


def _draw_plate(rng, color, size):
    w = int(size)
    h = int(w * rng.uniform(0.5, 0.62))
    W, H = w + 4, h + 4
    c = (W // 2, H // 2)
    a = np.zeros((H, W), np.uint8)
    cv2.ellipse(a, c, (w // 2, h // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    nd = np.sqrt(((xx - c[0]) / (w / 2)) ** 2 + ((yy - c[1]) / (h / 2)) ** 2)
    f = np.where(nd < 0.68, 0.9, 1.04 - 0.12 * (nd - 0.68) / 0.32).astype(np.float32)
    f += (0.06 * (1 - yy / H)).astype(np.float32)
    img = _shade(color, f)
    cv2.ellipse(img, c, (int(w * 0.34), int(h * 0.34)), 0, 0, 360, tuple(float(v) for v in color * 0.7),
                max(1, w // 80), cv2.LINE_AA)
    spec = 0.45 * np.exp(-(((nd - 0.84) / 0.05) ** 2)) * np.clip((c[1] - yy) / (h / 2), 0,
                         1) * np.clip((xx - c[0]) / (w / 2) + 0.6, 0, 1)
    img = _specular(img, spec)
    cv2.ellipse(img, c, (w // 2 - 1, h // 2 - 1), 0, 0, 360, tuple(float(v) for v in color * 0.6), 1, cv2.LINE_AA)
    return img, _alpha_from(a)


_DRAWERS = {"cup": _draw_cup, "bottle": _draw_bottle, "ball": _draw_ball, "box": _draw_box,
            "book": _draw_book, "can": _draw_can, "banana": _draw_banana, "plate": _draw_plate}
_MAX_TILT = {"cup": 8, "bottle": 10, "ball": 180, "box": 12, "book": 35, "can": 8, "banana": 180, "plate": 6}


@dataclass
class _Sprite:
    kind: str
    color: str
    img: np.ndarray  # float32 [h, w, 3]
    alpha: np.ndarray  # float32 [h, w]
    shadow: np.ndarray  # float32 [h + pad, w + pad] blurred shadow alpha
    shadow_off: tuple[int, int]  # shadow top-left relative to sprite top-left


def make_sprite(rng: np.random.Generator, kind: str, color: str, scale: float = 1.0,
                light_dir: tuple[float, float] = (0.6, 0.35)) -> _Sprite:
    """Draw one object sprite (random size, tilt, shade) and its soft shadow."""
    lo, hi = _SIZES[kind]
    return sized_sprite(rng, kind, color, rng.uniform(lo, hi) * scale, light_dir)


def size_range(kind: str) -> tuple[int, int]:
    """The sizes ``make_sprite`` draws for ``kind`` at scale 1 (long side in pixels at 480 rows), min..max."""
    check_choice("kind", kind, KINDS)
    return _SIZES[kind]


def sized_sprite(rng: np.random.Generator, kind: str, color: str, size: float,
                 light_dir: tuple[float, float] = (0.6, 0.35), tilt_scale: float = 1.0) -> _Sprite:
    """``make_sprite`` with the size chosen by the caller: ``size`` is the drawing's long side in frame pixels
    (before tilt). ``tilt_scale`` shrinks the random tilt (0 = upright) without changing what ``rng`` draws.
    Layouts use it to control which of several objects is the largest and to pack groups."""
    check_choice("kind", kind, KINDS)
    check_choice("color", color, COLOR_NAMES)
    img, alpha = _DRAWERS[kind](rng, sample_color(rng, color), size)
    tilt = float(rng.uniform(-1, 1) * _MAX_TILT[kind]) * tilt_scale
    if abs(tilt) > 1:
        h, w = alpha.shape
        diag = int(math.ceil(math.hypot(h, w))) + 2
        M = cv2.getRotationMatrix2D((w / 2, h / 2), tilt, 1.0)
        M[0, 2] += (diag - w) / 2
        M[1, 2] += (diag - h) / 2
        img = cv2.warpAffine(img, M, (diag, diag), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(alpha, M, (diag, diag), flags=cv2.INTER_LINEAR)
        ys, xs = np.nonzero(alpha > 0.01)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        img, alpha = img[y0:y1], alpha[y0:y1]
        img, alpha = img[:, x0:x1], alpha[:, x0:x1]
    img = np.clip(img, 0, 255).astype(np.float32)
    h, w = alpha.shape
    flat = kind in ("plate", "book", "banana")
    # Shadow: the silhouette squashed towards the base and pushed away from the light.
    sq = 0.25 if not flat else 1.0
    sh_h = max(2, int(h * sq))
    sil = cv2.resize(alpha, (w, sh_h), interpolation=cv2.INTER_AREA)
    k = max(3, int(0.08 * max(h, w)) | 1)
    pad = k * 2
    shadow = np.zeros((sh_h + 2 * pad, w + 2 * pad), np.float32)
    shadow[pad:pad + sh_h, pad:pad + w] = sil
    shadow = cv2.GaussianBlur(shadow, (0, 0), k / 2.5)
    dx = int(light_dir[0] * (0.12 if flat else 0.25) * w)
    dy = int(light_dir[1] * 0.1 * h) + (h - sh_h) + (0 if flat else int(0.06 * h))
    return _Sprite(kind, color, img, alpha, shadow, (dx - pad, dy - pad))


# ----------------------------------------------------------------------------- backgrounds
def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    small = rng.random((cells[0], cells[1])).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def render_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Table (wood, cloth or plain) with an optional wall strip at the top; float32 BGR."""
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    style = ("wood", "cloth", "plain")[int(rng.integers(3))]
    if style == "wood":
        base = cv2.cvtColor(np.uint8([[[rng.uniform(10, 20), rng.uniform(60, 120), rng.uniform(120, 200)]]]),
                            cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        warp = _value_noise(rng, (H, W), (4, 6)) * rng.uniform(20, 45)
        freq = rng.uniform(0.12, 0.25)
        grain = 0.5 + 0.5 * np.sin(yy * freq + warp + 3 * _value_noise(rng, (H, W), (3, 24)))
        f = 0.85 + 0.16 * grain ** 3 + 0.05 * _value_noise(rng, (H, W), (20, 40))
        plank = int(rng.uniform(70, 140))
        seams = ((yy.astype(np.int32) % plank) < 2).astype(np.float32)
        f = f * (1 - 0.35 * seams)
        bg = f[..., None] * base
    elif style == "cloth":
        base = cv2.cvtColor(np.uint8([[[rng.uniform(0, 180), rng.uniform(10, 70), rng.uniform(90, 200)]]]),
                            cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        p = rng.uniform(3.0, 6.0)
        weave = 0.5 + 0.25 * np.sin(xx * 2 * np.pi / p) * np.sin(yy * 2 * np.pi / p)
        f = 0.9 + 0.1 * weave + 0.08 * (_value_noise(rng, (H, W), (6, 8)) - 0.5)
        if rng.random() < 0.4:  # faint check pattern
            c = int(rng.uniform(40, 90))
            chk = (((xx // c) + (yy // c)) % 2).astype(np.float32)
            f = f * (1 - 0.07 * chk)
        bg = f[..., None] * base
    else:
        g = rng.uniform(110, 215)
        tint = rng.uniform(-10, 10, 3)
        bg = np.full((H, W, 3), g, np.float32) + tint.astype(np.float32)
        bg = bg * (0.96 + 0.08 * _value_noise(rng, (H, W), (5, 7)))[..., None]
    if rng.random() < 0.5:  # wall behind the table
        horizon = int(H * rng.uniform(0.08, 0.25))
        wall = cv2.cvtColor(np.uint8([[[rng.uniform(0, 180), rng.uniform(0, 40), rng.uniform(150, 235)]]]),
                            cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        wall_img = wall[None, None] * (0.92 + 0.08 * _value_noise(rng, (horizon, W), (2, 4)))[..., None]
        bg[:horizon] = wall_img
        bg[horizon:horizon + 3] *= 0.6  # table edge
    return bg.astype(np.float32)


def _lighting(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Smooth multiplicative lighting field [H, W, 3] (gradient + vignette + colour cast)."""
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = ((xx / W - 0.5) * np.cos(ang) + (yy / H - 0.5) * np.sin(ang))
    amp = rng.uniform(0.08, 0.35)
    vig = 1 - rng.uniform(0.0, 0.2) * (((xx / W - 0.5) ** 2 + (yy / H - 0.5) ** 2) * 2)
    f = (1 + amp * g) * vig * rng.uniform(0.9, 1.1)
    cast = 1 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    return f[..., None] * cast[None, None]


# ----------------------------------------------------------------------------- composition
def _paste_shadow(canvas: np.ndarray, sp: _Sprite, x: int, y: int, strength: float) -> None:
    H, W = canvas.shape[:2]
    sx, sy = x + sp.shadow_off[0], y + sp.shadow_off[1]
    sh, sw = sp.shadow.shape
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(sx + sw, W), min(sy + sh, H)
    if x1 <= x0 or y1 <= y0:
        return
    s = sp.shadow[y0 - sy:y1 - sy, x0 - sx:x1 - sx]
    canvas[y0:y1, x0:x1] *= (1 - strength * s)[..., None]


def _paste_sprite(canvas: np.ndarray, sp: _Sprite, x: int, y: int) -> tuple[np.ndarray, tuple[int, int, int,
                  int]] | None:
    """Alpha-blend the sprite at (x, y); return its hard mask (alpha >= .5) cropped to the frame
    and the crop window (x0, y0, x1, y1), or None when it is fully outside."""
    H, W = canvas.shape[:2]
    h, w = sp.alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        return None
    a = sp.alpha[y0 - y:y1 - y, x0 - x:x1 - x]
    img = sp.img[y0 - y:y1 - y, x0 - x:x1 - x]
    region = canvas[y0:y1, x0:x1]
    region += (img - region) * a[..., None]
    return a >= 0.5, (x0, y0, x1, y1)


def compose(background: np.ndarray, placed: list[tuple[_Sprite, int, int]], shadow_strength: float = 0.45
            ) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw shadows then sprites (in list order = back to front) on a copy of ``background``;
    return the float canvas and the objects with their visible masks."""
    canvas = background.copy()
    H, W = canvas.shape[:2]
    for sp, x, y in placed:
        _paste_shadow(canvas, sp, x, y, shadow_strength)
    masks: list[tuple[_Sprite, np.ndarray]] = []
    for sp, x, y in placed:
        got = _paste_sprite(canvas, sp, x, y)
        if got is None:
            continue
        hard, (x0, y0, x1, y1) = got
        for _, m in masks:  # occlusion: this sprite hides what is below it
            m[y0:y1, x0:x1] &= ~hard
        full = np.zeros((H, W), bool)
        full[y0:y1, x0:x1] = hard
        masks.append((sp, full))
    objects = []
    for sp, m in masks:
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if len(ys) == 0:
            continue
        bbox = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
        objects.append(SceneObject(sp.kind, sp.color, bbox, m))
    return canvas, objects


def _degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Sensor noise, optional blur and JPEG artefacts; float canvas -> uint8 BGR."""
    sigma = rng.uniform(1.5, 6.0)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.35:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.4))
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 90))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"size must be an (H, W) pair, got {size!r}") from None
    if h < 96 or w < 96:
        raise ConfigError(f"size must be at least (96, 96) so objects fit, got {(h, w)}")
    return h, w


def _pick_objects(rng: np.random.Generator) -> list[tuple[str, str]]:
    """3..6 distinct (kind, colour) pairs; half the scenes hold one kind in two colours."""
    n = int(rng.integers(3, 7))
    chosen: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        k = KINDS[int(rng.integers(len(KINDS)))]
        c1, c2 = rng.choice(len(COLOR_NAMES), 2, replace=False)
        chosen += [(k, COLOR_NAMES[c1]), (k, COLOR_NAMES[c2])]
    while len(chosen) < n:
        pair = (KINDS[int(rng.integers(len(KINDS)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))])
        if pair not in chosen:
            chosen.append(pair)
    return chosen


REPEATED_SHARE = 0.5  # training scenes (render_scene(repeats=True)) drawn by _pick_repeated


def _pick_repeated(rng: np.random.Generator) -> list[tuple[str, str]]:
    """2..5 objects of one (kind, colour), 1..3 look-alikes (the same colour in another kind, or the same kind
    in another colour) and 0..1 other object: what "how many red cups" and "all red cups" ask about. Only for
    training scenes: ``_pick_objects`` never repeats a description, so a model trained on it alone never saw
    one, and on held-out counting layouts it counted a red plate among red cups as one more cup."""
    k = KINDS[int(rng.integers(len(KINDS)))]
    c = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    chosen = [(k, c)] * int(rng.integers(2, 6))
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.6:  # same colour, other kind: the commonest miscount
            pair = (KINDS[int(rng.integers(len(KINDS)))], c)
        else:
            pair = (k, COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))])
        if pair != (k, c):
            chosen.append(pair)
    if rng.random() < 0.5:
        pair = (KINDS[int(rng.integers(len(KINDS)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))])
        if pair != (k, c):
            chosen.append(pair)
    order = rng.permutation(len(chosen))  # the placement drops objects that do not fit: not always the last kind
    return [chosen[i] for i in order]


def _place(rng: np.random.Generator, sprites: list[_Sprite], size: tuple[int, int], top: int,
           min_visible: float = 0.55, tries: int = 30) -> list[tuple[_Sprite, int, int]]:
    """Random positions on the table; each object keeps >= min_visible of its own area
    visible (checked approximately with bounding boxes), else it is dropped."""
    H, W = size
    placed: list[tuple[_Sprite, int, int]] = []
    boxes: list[tuple[int, int, int, int]] = []
    for sp in sprites:
        h, w = sp.alpha.shape
        if h >= H - top or w >= W:
            continue
        for _ in range(tries):
            x = int(rng.integers(0, W - w))
            y = int(rng.integers(top, H - h))
            ok = True
            for bx0, by0, bx1, by1 in boxes:
                iw = max(0, min(x + w, bx1) - max(x, bx0))
                ih = max(0, min(y + h, by1) - max(y, by0))
                inter = iw * ih
                if inter > (1 - min_visible) * min(w * h, (bx1 - bx0) * (by1 - by0)):
                    ok = False
                    break
            if ok:
                placed.append((sp, x, y))
                boxes.append((x, y, x + w, y + h))
                break
    placed.sort(key=lambda p: p[2] + p[0].alpha.shape[0])  # lower on the table = nearer = drawn later
    return placed


def render_scene(seed: int, size: tuple[int, int] = (480, 640), repeats: bool = False) -> Scene:
    """Render one tabletop scene, deterministic for ``seed`` (and ``repeats``).

    ``repeats``: the training distribution of the demo model, where a share (:data:`REPEATED_SHARE`) of the
    scenes hold several objects of one description among look-alikes (``_pick_repeated``); without it every
    object differs from the others in kind or colour (the held-out benchmark's scenes, unchanged)."""
    H, W = _check_size(size)
    rng = np.random.default_rng(int(seed))
    scale = H / _REF_SHORT_SIDE * rng.uniform(0.9, 1.2)
    bg = render_background(rng, (H, W))
    light = (float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 1)))
    pick = _pick_repeated if repeats and rng.random() < REPEATED_SHARE else _pick_objects
    sprites = [make_sprite(rng, k, c, scale, light) for k, c in pick(rng)]
    placed = _place(rng, sprites, (H, W), top=int(H * 0.12))
    canvas, objects = compose(bg, placed, shadow_strength=float(rng.uniform(0.3, 0.6)))
    canvas *= _lighting(rng, (H, W))
    frame = _degrade(rng, canvas)
    return Scene(frame, tuple(objects))


# ----------------------------------------------------------------------------- placed layouts
# For scenes whose geometry matters (the command benchmark in ``vlmedge.scenes.layouts``): the caller
# chooses every object's size and position, everything else (table, light, shadows, sensor) is drawn
# the way render_scene draws it, so a model sees the same kind of image.

Sprite = _Sprite  # what make_sprite / sized_sprite return: kind, colour, img, alpha, shadow


@dataclass(frozen=True)
class Stage:
    """What render_scene draws around the objects: the table (and wall), light direction, object scale,
    shadow strength. Drawn once per layout; objects are then placed on it by the caller."""

    background: np.ndarray = field(repr=False)  # float32 BGR [H, W, 3], the empty table
    light_dir: tuple[float, float]  # the direction make_sprite shades objects and casts shadows from
    scale: float  # object size factor: frame rows / 480 x a per-scene jitter, as in render_scene
    shadow_strength: float
    top: int  # first row objects may stand on (render_scene keeps them off the wall strip)

    @property
    def size(self) -> tuple[int, int]:
        return self.background.shape[0], self.background.shape[1]


def draw_stage(rng: np.random.Generator, size: tuple[int, int] = (480, 640),
               scale_jitter: tuple[float, float] = (0.9, 1.2)) -> Stage:
    """An empty table drawn from ``rng`` with render_scene's distributions (``scale_jitter`` is its default)."""
    H, W = _check_size(size)
    scale = H / _REF_SHORT_SIDE * rng.uniform(*scale_jitter)
    bg = render_background(rng, (H, W))
    light = (float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 1)))
    return Stage(bg, light, float(scale), float(rng.uniform(0.3, 0.6)), int(H * 0.12))


def sprite_box(sprite: _Sprite) -> tuple[int, int, int, int]:
    """The tight box of the sprite's hard mask (alpha >= .5, as compose() cuts it) in sprite pixels."""
    ys, xs = np.nonzero(sprite.alpha >= 0.5)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def visible_masks(placed: list[tuple[_Sprite, int, int]], size: tuple[int, int]) -> list[np.ndarray]:
    """The masks compose() would give ``placed`` (back to front), one per entry, without painting anything:
    cheap enough to try many layouts before rendering one. An entry fully outside or hidden gets an empty mask."""
    H, W = size
    masks: list[np.ndarray] = []
    for sp, x, y in placed:
        h, w = sp.alpha.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        full = np.zeros((H, W), bool)
        if x1 > x0 and y1 > y0:
            hard = sp.alpha[y0 - y:y1 - y, x0 - x:x1 - x] >= 0.5
            for m in masks:
                m[y0:y1, x0:x1] &= ~hard
            full[y0:y1, x0:x1] = hard
        masks.append(full)
    return masks


def render_placed(rng: np.random.Generator, stage: Stage, placed: list[tuple[_Sprite, int, int]]) -> Scene:
    """Finish a layout as render_scene finishes a scene: compose (list order = back to front), light, sensor
    noise. ``Scene.objects`` follow ``placed`` order, leaving out entries with no visible pixel."""
    canvas, objects = compose(stage.background, placed, shadow_strength=stage.shadow_strength)
    canvas *= _lighting(rng, stage.size)
    return Scene(_degrade(rng, canvas), tuple(objects))


# ----------------------------------------------------------------------------- stream
@dataclass
class _Mover:
    sprite: _Sprite
    x: float
    y: float
    vx: float  # px / s
    vy: float
    born: float  # s
    dies: float  # s
    featured: bool = False  # never leaves, stays inside the frame, drawn on top


class TabletopStream:
    """A moving tabletop: objects slide around, new ones appear and old ones leave.

    ``read()`` returns ``(frame_bgr, scene)`` for the next time step (t = step / fps);
    the sequence is deterministic for ``seed``. The background, lighting and sprites are
    drawn once, so a frame costs a few alpha blends (well over 30 fps at 480x640).

    ``featured``: ``(colour, kind)`` pairs, e.g. ``(("red", "cup"),)``, present in every frame:
    they move and bounce like the others but never leave and are drawn on top (never hidden).
    They keep their left-to-right order and never overlap one another (each bounces off its
    neighbours), so a featured pair stays in its relation: with ``(("green", "bottle"),
    ("purple", "bottle"))`` "the bottle left of the purple bottle" holds in every frame. Other
    objects never duplicate them (another red object of another kind can still appear); the more
    featured objects, the fewer others (at most max(6, featured + 2) objects in all).
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] = (480, 640), fps: float = 30.0,
                 featured: tuple[tuple[str, str], ...] = ()):
        self.size = _check_size(size)
        if not fps or fps <= 0:
            raise ConfigError(f"TabletopStream fps must be positive, got {fps!r}")
        self.featured = check_featured(featured)
        self.seed = int(seed)
        self.fps = float(fps)
        self.step = 0
        H, W = self.size
        self._rng = np.random.default_rng(self.seed)
        rng = self._rng
        self._scale = H / _REF_SHORT_SIDE
        self._light = (float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 1)))
        light = _lighting(rng, self.size)
        self._bg = render_background(rng, self.size) * light
        self._light_field = light
        self._shadow = float(rng.uniform(0.3, 0.5))
        self._top = int(H * 0.12)
        self._noise = [rng.normal(0, 3.0, (H, W, 3)).astype(np.float32) for _ in range(4)]
        self._movers: list[_Mover] = []
        feat = [(k, c) for c, k in self.featured]  # internal pairs are (kind, colour)
        for pair in feat:
            # a little smaller than the others, so that four fit side by side across the frame
            m = self._spawn(pair, 0.0, anywhere=True, scale=(0.85, 1.0))
            m.featured, m.dies = True, math.inf
            self._movers.append(m)
        self._featured_fit = self._line_up_featured()
        n_other = max(0, 5 - len(feat))
        for pair in [p for p in _pick_objects(rng) if p not in feat][:n_other]:
            self._movers.append(self._spawn(pair, 0.0, anywhere=True))

    def _spawn(self, pair: tuple[str, str], t: float, anywhere: bool = False,
               scale: tuple[float, float] = (0.85, 1.15)) -> _Mover:
        rng = self._rng
        H, W = self.size
        sp = make_sprite(rng, pair[0], pair[1], self._scale * rng.uniform(*scale), self._light)
        # bake the (static) lighting roughly into the sprite colour: use the field's mean
        sp.img = sp.img * self._light_field.mean(axis=(0, 1))[None, None]
        h, w = sp.alpha.shape
        speed = rng.uniform(15, 60) * self._scale
        ang = rng.uniform(0, 2 * np.pi)
        if anywhere:
            x, y = rng.uniform(0, max(1, W - w)), rng.uniform(self._top, max(self._top + 1, H - h))
        else:  # slide in from the left or right edge
            left = rng.random() < 0.5
            x = -w + 1.0 if left else W - 1.0
            y = rng.uniform(self._top, max(self._top + 1, H - h))
            ang = rng.uniform(-0.4, 0.4) + (0.0 if left else np.pi)
        return _Mover(sp, float(x), float(y), float(speed * np.cos(ang)), float(speed * np.sin(ang) * 0.5),
                      t, t + float(rng.uniform(6, 20)))

    def _featured_movers(self) -> list[_Mover]:
        return [m for m in self._movers if m.featured]  # in ``featured`` order: they never leave

    def _line_up_featured(self) -> bool:
        """Place the featured objects side by side in their order, random gaps between them; False (and
        left where they were spawned, free to overlap) when they do not fit across the frame together."""
        movers = self._featured_movers()
        widths = [m.sprite.alpha.shape[1] for m in movers]
        free = self.size[1] - sum(widths)
        if len(movers) < 2 or free < 0:
            return len(movers) < 2
        gaps = self._rng.dirichlet(np.ones(len(movers) + 1)) * free
        x = 0.0
        for m, w, gap in zip(movers, widths, gaps):
            m.x = x + float(gap)
            x = m.x + w
        return True

    def _keep_featured_apart(self) -> None:
        """Each featured object bounces off the frame's sides and off its featured neighbours, keeping their
        left-to-right order (when they fit side by side)."""
        movers = self._featured_movers()
        W = self.size[1]
        for i, m in enumerate(movers):
            w = m.sprite.alpha.shape[1]
            lo, hi = 0.0, float(max(0, W - w))
            if self._featured_fit:
                if i > 0:
                    prev = movers[i - 1]
                    lo = prev.x + prev.sprite.alpha.shape[1]
                if i + 1 < len(movers):
                    hi = min(hi, movers[i + 1].x - w)
            if m.x < lo:
                m.x, m.vx = lo, abs(m.vx)
            elif m.x > hi:
                m.x, m.vx = max(lo, hi), -abs(m.vx)

    def _advance(self, t: float, dt: float) -> None:
        H, W = self.size
        keep = []
        for m in self._movers:
            if t >= m.dies:
                continue
            h, w = m.sprite.alpha.shape
            m.x += m.vx * dt
            m.y += m.vy * dt
            if m.y < self._top or m.y > H - h:
                m.vy = -m.vy
                m.y = min(max(m.y, self._top), H - h)
            settled = m.featured or t - m.born > 3
            if (m.x < 0 and m.vx < 0 and settled) or (m.x > W - w and m.vx > 0 and settled):
                m.vx = -m.vx  # bounce off the side walls once settled in
            keep.append(m)
        self._movers = keep
        self._keep_featured_apart()
        present = {(m.sprite.kind, m.sprite.color) for m in keep}
        nf = len(self.featured)
        least, most = (3, 6) if not nf else (max(3, nf + 1), max(6, nf + 2))
        while len(self._movers) < least or (len(self._movers) < most and self._rng.random() < 0.25 * dt):
            pair = (KINDS[int(self._rng.integers(len(KINDS)))], COLOR_NAMES[int(self._rng.integers(len(COLOR_NAMES)))])
            if pair in present:
                continue
            present.add(pair)
            self._movers.append(self._spawn(pair, t))

    def read(self) -> tuple[np.ndarray, Scene]:
        """Advance one step; return (frame BGR uint8 [H, W, 3], scene)."""
        t = self.step / self.fps
        if self.step:
            self._advance(t, 1.0 / self.fps)
        placed = sorted(((m.sprite, int(round(m.x)), int(round(m.y))) for m in self._movers if not m.featured),
                        key=lambda p: p[2] + p[0].alpha.shape[0])
        placed += [(m.sprite, int(round(m.x)), int(round(m.y))) for m in self._movers if m.featured]  # on top
        canvas, objects = compose(self._bg, placed, self._shadow)
        canvas += self._noise[self.step % len(self._noise)]
        frame = np.clip(canvas, 0, 255).astype(np.uint8)
        self.step += 1
        return frame, Scene(frame, tuple(objects))

    def __iter__(self):
        while True:
            yield self.read()
