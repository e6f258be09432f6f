"""Architecture and preprocessing specs: plain frozen dataclasses, JSON round-trippable.

These are shared by the export side (which builds torch modules from them) and the
runtime (which reads them from a bundle manifest). No torch here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vlmedge.errors import ConfigError, check_choice

ACTIVATIONS = ("quick_gelu", "gelu")
RESIZE_MODES = ("shortest-crop", "full-frame")


def hw_pair(name: str, value: Any) -> tuple[int, int]:
    """An int (square) or an (H, W) pair of positive ints; ConfigError naming ``name`` otherwise."""
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or an (H, W) pair, got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{type(obj).__name__}.{n} must be a positive int, got {v!r}")


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as e:  # missing required field
        raise ConfigError(f"{where}: {e}") from None


@dataclass(frozen=True)
class VisionSpec:
    image_size: tuple[int, int]  # (H, W) the position embeddings were trained at
    patch_size: int  # square patch side in pixels
    width: int  # transformer width
    layers: int  # number of residual blocks
    heads: int  # attention heads; width % heads == 0
    mlp_ratio: float = 4.0  # MLP hidden = width * mlp_ratio

    def __post_init__(self):
        object.__setattr__(self, "image_size", hw_pair("VisionSpec.image_size", self.image_size))
        _positive(self, "patch_size", "width", "layers", "heads")
        if self.width % self.heads:
            raise ConfigError(f"VisionSpec.width ({self.width}) must be divisible by heads ({self.heads})")
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"VisionSpec.image_size {self.image_size} must be a multiple of patch_size "
                              f"{self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


@dataclass(frozen=True)
class TextSpec:
    width: int  # transformer width
    layers: int  # number of residual blocks
    heads: int  # attention heads
    vocab_size: int = 49408  # token embedding rows
    context_length: int = 77  # positions; token id arrays are [N, context_length]
    mlp_ratio: float = 4.0
    # Pooling token: None = argmax of input_ids (OpenAI convention, EOT has the largest id);
    # otherwise the first position holding this id (HF eos_token_id convention).
    eos_token_id: int | None = None

    def __post_init__(self):
        _positive(self, "width", "layers", "heads", "vocab_size", "context_length")
        if self.width % self.heads:
            raise ConfigError(f"TextSpec.width ({self.width}) must be divisible by heads ({self.heads})")


@dataclass(frozen=True)
class ClipSpec:
    vision: VisionSpec
    text: TextSpec
    embed_dim: int  # shared embedding dimension D
    act: str = "quick_gelu"  # MLP activation: quick_gelu (OpenAI) or gelu (LAION/OpenCLIP)
    eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self):
        if isinstance(self.vision, dict):
            object.__setattr__(self, "vision", _from_dict(VisionSpec, self.vision, "ClipSpec.vision"))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", _from_dict(TextSpec, self.text, "ClipSpec.text"))
        _positive(self, "embed_dim")
        check_choice("ClipSpec.act", self.act, ACTIVATIONS)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vision"]["image_size"] = list(self.vision.image_size)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "ClipSpec":
        return _from_dict(cls, data, "ClipSpec")


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a camera frame becomes ``pixel_values`` float32 [1, 3, H, W] (RGB, normalized)."""

    size: tuple[int, int]  # (H, W) model input
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    mode: str = "shortest-crop"  # shortest-crop: CLIP recipe; full-frame: resize the whole frame, no crop
    interpolation: str = "bicubic"  # bicubic | bilinear | area

    def __post_init__(self):
        object.__setattr__(self, "size", hw_pair("PreprocessSpec.size", self.size))
        check_choice("PreprocessSpec.mode", self.mode, RESIZE_MODES)
        check_choice("PreprocessSpec.interpolation", self.interpolation, ("bicubic", "bilinear", "area"))
        for n in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, n))
            if len(v) != 3:
                raise ConfigError(f"PreprocessSpec.{n} must have 3 values (R, G, B), got {v}")
            object.__setattr__(self, n, v)
        if min(self.std) <= 0:
            raise ConfigError(f"PreprocessSpec.std must be positive, got {self.std}")

    def to_dict(self) -> dict:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "mode": self.mode, "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return _from_dict(cls, data, "PreprocessSpec")
