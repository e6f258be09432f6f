"""Whole-frame zero-shot classification (CLIP style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vlmedge.errors import ConfigError, InputError
from vlmedge.runtime.grounding.results import Classification
from vlmedge.similarity import zero_shot_probs


def format_prompts(labels: Sequence[str], prompt: str) -> list[str]:
    """``prompt.format(label)`` for every label; the prompt must contain one ``{}``."""
    if not isinstance(prompt, str) or prompt.count("{}") != 1:
        raise ConfigError(f"prompt must contain exactly one '{{}}' for the label, got {prompt!r}")
    return [prompt.replace("{}", label) for label in labels]


def zero_shot(image_embed: np.ndarray, labels: Sequence[str], embed_texts: Callable[[list[str]], np.ndarray],
              logit_scale: float, prompt: str = "a photo of {}") -> Classification:
    """Labels sorted by ``softmax(logit_scale * cos(image_embed, embed(prompt(label))))``."""
    texts = format_prompts(labels, prompt)
    probs = zero_shot_probs(image_embed, embed_texts(texts), logit_scale)
    order = np.argsort(-probs, kind="stable")
    return Classification(labels=tuple(labels[i] for i in order), probs=tuple(float(probs[i]) for i in order),
                          prompt=prompt)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (typed error when missing or unreadable)."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise InputError(f"image {str(p)!r} does not exist")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"image {str(p)!r} could not be decoded (expected a PNG/JPEG/BMP... file)")
    return img
