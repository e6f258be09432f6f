"""Scenes the tests draw on purpose with the tabletop renderer: objects of one description in a row."""

from __future__ import annotations

import numpy as np

from vlmedge.scenes import render as R

FRAME = (480, 640)


def row_scene(seed: int, kind: str, color: str, n: int, gap: int):
    """n objects of one kind and colour in a row, ``gap`` pixels between their boxes (negative: overlap),
    bottoms near one line; table, light, shadows, lighting and sensor noise as render_scene draws them."""
    rng = np.random.default_rng(seed)
    H, W = FRAME
    scale = rng.uniform(0.9, 1.2)
    bg = R.render_background(rng, FRAME)
    light = (float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 1)))
    for _ in range(6):
        sprites = [R.make_sprite(rng, kind, color, scale, light) for _ in range(n)]
        total = sum(s.alpha.shape[1] for s in sprites) + gap * (n - 1)
        if total <= 600 and max(s.alpha.shape[0] for s in sprites) < H - 80:
            break
        scale *= 0.9 * min(600 / total, 1.0)
    x = int(rng.integers(10, max(11, W - total - 10)))
    base = int(rng.integers(int(H * 0.12) + max(s.alpha.shape[0] for s in sprites), H - 5))
    placed = []
    for s in sprites:
        h, w = s.alpha.shape
        y = min(max(base - h + int(rng.uniform(-0.12, 0.12) * h), int(H * 0.12)), H - h)
        placed.append((s, x, y))
        x += w + gap
    placed.sort(key=lambda p: p[2] + p[0].alpha.shape[0])  # lower = nearer = drawn later
    canvas, objects = R.compose(bg, placed, shadow_strength=float(rng.uniform(0.3, 0.6)))
    canvas *= R._lighting(rng, FRAME)
    return R._degrade(rng, canvas), objects
