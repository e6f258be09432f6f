"""Architecture and preprocessing specs: plain frozen dataclasses, JSON round-trippable.

These are shared by the export side (which builds torch modules from them) and the
runtime (which reads them from a bundle manifest). No torch here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from vlmedge.errors import ConfigError, check_choice

ACTIVATIONS = ("quick_gelu", "gelu")
RESIZE_MODES = ("shortest-crop", "full-frame")


def hw_pair(name: str, value: Any) -> tuple[int, int]:
    """An int (square) or an (H, W) pair of positive ints; ConfigError naming ``name`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer())
                                                  for v in value):
            raise TypeError
        h, w = (int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be an int or an (H, W) pair, got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{type(obj).__name__}.{n} must be a positive int, got {v!r}")


def _real_in(obj: Any, name: str, low: float, high: float, *, low_open: bool = True) -> float:
    """``obj.name`` as a finite float in (low, high] (or [low, high] when not ``low_open``); NaN and bools fail."""
    v = getattr(obj, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (low < v if low_open else low <= v) and v <= high
    if not ok:
        raise ConfigError(f"{type(obj).__name__}.{name} must be a number in {'(' if low_open else '['}{low:g}, "
                          f"{high:g}], got {v!r}")
    return float(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What a JSON value must be for a field of each annotation (``from_dict`` reads JSON: "8" is not 8 there).
_JSON_TYPES: dict[str, tuple[str, Any]] = {
    "int": ("an integer", _is_int),
    "float": ("a number", _is_real),
    "str": ("a string", lambda v: isinstance(v, str)),
    "int | None": ("an integer or null", lambda v: v is None or _is_int(v)),
    "tuple[int, int]": ("an integer or a list of 2 integers",
                        lambda v: _is_int(v) or (isinstance(v, (list, tuple)) and len(v) == 2
                                                 and all(map(_is_int, v)))),
    "tuple[float, float, float]": ("a list of 3 numbers",
                                   lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_real, v))),
    "VisionSpec": ("an object", lambda v: isinstance(v, dict)),
    "TextSpec": ("an object", lambda v: isinstance(v, dict)),
}


def _from_dict(cls, data: dict, where: str):
    """Read a spec from JSON: an object with known fields only, each of its annotated JSON type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
    for name, value in data.items():
        expected = _JSON_TYPES.get(str(known[name].type))
        if expected is not None and not expected[1](value):
            raise ConfigError(f"{where}.{name} must be {expected[0]}, got {value!r}")
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
        _real_in(self, "mlp_ratio", 0, 64)
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
        _real_in(self, "mlp_ratio", 0, 64)
        e = self.eos_token_id
        if e is not None and not (_is_int(e) and 0 <= e < self.vocab_size):
            raise ConfigError(f"TextSpec.eos_token_id must be null or a token id in [0, {self.vocab_size}), got {e!r}")
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
        for name, kind in (("vision", VisionSpec), ("text", TextSpec)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"ClipSpec.{name} must be a {kind.__name__} or an object, "
                                  f"got {type(getattr(self, name)).__name__}")
        _positive(self, "embed_dim")
        if not isinstance(self.act, str):
            raise ConfigError(f"ClipSpec.act must be a string, one of {list(ACTIVATIONS)}; got {self.act!r}")
        check_choice("ClipSpec.act", self.act, ACTIVATIONS)
        _real_in(self, "eps", 0, 0.1)

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
            try:
                v = tuple(float(x) for x in getattr(self, n))
            except (TypeError, ValueError):
                raise ConfigError(f"PreprocessSpec.{n} must be 3 numbers (R, G, B), got {getattr(self, n)!r}") from None
            if len(v) != 3:
                raise ConfigError(f"PreprocessSpec.{n} must have 3 values (R, G, B), got {v}")
            object.__setattr__(self, n, v)
        # Both on the [0, 1] pixel scale the preprocessing divides to (every CLIP recipe: OpenAI, OpenCLIP, HF).
        if not all(0 <= x <= 1 for x in self.mean):
            raise ConfigError(f"PreprocessSpec.mean must be 3 numbers in [0, 1] (R, G, B), got {self.mean}")
        # std only has to divide: recipes that widen the range (std > 1) exist, a zero/NaN/infinite one is a bug.
        if not all(math.isfinite(x) and x > 0 for x in self.std):
            raise ConfigError(f"PreprocessSpec.std must be 3 finite numbers > 0 (R, G, B), got {self.std}")

    def to_dict(self) -> dict:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "mode": self.mode, "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return _from_dict(cls, data, "PreprocessSpec")
