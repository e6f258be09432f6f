"""The bundle manifest: the one file a device reads to know everything about a bundle.

A bundle is a directory::

    manifest.json          this file's content (see docs/BUNDLE.md)
    image_encoder.onnx     pixel_values f32 [B,3,H,W] -> image_embeds [B,D], patch_embeds [B,h,w,D]
    text_encoder.onnx      input_ids i64 [N,77] -> text_embeds [N,D]
    tokenizer.json         Hugging Face `tokenizers` file
    text_embeddings.npz    optional: fixed vocabulary, arrays `queries` (str) and `embeds` f32 [N,D]

``read_manifest`` reads and validates the manifest: every field's JSON type and range, and the fields
against each other (grid = image size / patch size, D, context length, the encoders' tensor shapes).
``open_bundle`` then checks the files: every listed file inside the bundle (no symbolic link out of it),
present with the recorded size and sha256; each ONNX file self-contained (no external data) and declaring
the inputs and outputs the manifest names (``check_graph``); the stored vocabulary finite unit vectors.
Every refusal is an ArtifactError naming the file and the field. Torch-free, and free of the onnx package
(``vlmedge.onnx_proto`` reads the graphs' declarations).

The deployment platform is ``Manifest.platform`` in Python and ``"target"`` in the JSON: format
version 1 is read by vlmedge runtimes already on devices, which look up ``"target"``; renaming the
key would make every new bundle unreadable to them (and would need a format_version bump), while
the word on disk costs nothing. The shipped bundles keep their recorded sha256 untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vlmedge.errors import ArtifactError, ConfigError, check_choice
from vlmedge.onnx_proto import OnnxFile, read_onnx
from vlmedge.platforms import PLATFORMS
from vlmedge.spec import ClipSpec, PreprocessSpec
from vlmedge.validation import QueryRules, check_positive, check_queries, check_threshold

FORMAT = "vlmedge-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
DENSE_HEADS = ("naive", "maskclip", "sclip", "clearclip", "naclip")
TENSOR_DTYPES = ("float32", "float16", "int64")  # what the encoders' inputs and outputs may be
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; the export's report in `extra` adds tens of KB
MAX_JSON_DEPTH = 32  # the manifest nests 4 levels (files -> entry -> value); `extra` reports a few more
LOGIT_SCALE_MAX = 1000.0  # CLIP clamps its learned scale at 100; far above is a damaged or foreign value
OPSETS = (7, 99)  # ONNX opsets vlmedge could meet (exports use 16/17)
# Prompts and colours are text the text encoder embeds at start-up: the control socket's limits.
PROMPT_RULES = QueryRules(max_count=64, max_chars=200)
UNIT_NORM_TOL = 1e-2  # |‖e‖ - 1| allowed for a stored text embedding (fp16 graphs included)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- field checks: each raises ConfigError naming the field; Manifest.from_dict adds the file ----------------------

def _show(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bound}, got {_show(value)}")
    return value


def _str(value: Any, name: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ConfigError(f"{name} must be a {'' if empty else 'non-empty '}string, got {_show(value)}")
    return value


def _obj(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object, got {type(value).__name__} {_show(value)}")
    return value


def _pair(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise ConfigError(f"{name} must be [height, width], two positive integers, got {_show(value)}")
    return int(value[0]), int(value[1])


def _file_name(value: Any, name: str) -> str:
    """A file name inside the bundle: relative, normalized ("a/b.onnx"), no "..", no NUL or backslash."""
    ok = isinstance(value, str) and value and "\x00" not in value and "\\" not in value
    if ok:
        pure = PurePosixPath(value)
        ok = str(pure) == value and not pure.is_absolute() and ".." not in pure.parts
    if not ok:
        raise ConfigError(f"{name} must be a file name inside the bundle (relative, no '..'), got {_show(value)}")
    return value


def _choice(value: Any, name: str, choices) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, one of {list(choices)}; got {_show(value)}")
    return check_choice(name, value, choices)


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    d = {}
    for k, v in pairs:
        if k in d:
            raise ConfigError(f"key {k!r} appears more than once in one object; a manifest must say one thing")
        d[k] = v
    return d


# -- the parts ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    shape: tuple  # ints, or strings for dynamic axes ("batch")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TensorSpec":
        """``where``: the field, e.g. "encoders.image.inputs[0]"."""
        d = _obj(d, where)
        missing = [k for k in ("name", "dtype", "shape") if k not in d]
        if missing:
            raise ConfigError(f"{where} needs name, dtype and shape; missing {missing}")
        shape = d["shape"]
        if not isinstance(shape, list) or not shape or not all(
                (_is_int(s) and s > 0) or (isinstance(s, str) and s.strip()) for s in shape):
            raise ConfigError(f"{where}.shape must be a list of positive integers and axis names (strings), "
                              f"got {_show(shape)}")
        return cls(_str(d["name"], f"{where}.name"), _choice(d["dtype"], f"{where}.dtype", TENSOR_DTYPES),
                   tuple(shape))


@dataclass(frozen=True)
class EncoderEntry:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {"file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "EncoderEntry":
        """``where``: the field, e.g. "encoders.image"."""
        d = _obj(d, where)
        missing = [k for k in ("file", "inputs", "outputs") if k not in d]
        if missing:
            raise ConfigError(f"{where} needs file, inputs and outputs; missing {missing}")
        lists = {}
        for key in ("inputs", "outputs"):
            if not isinstance(d[key], list):
                raise ConfigError(f"{where}.{key} must be a list of tensors, got {_show(d[key])}")
            lists[key] = tuple(TensorSpec.from_dict(t, f"{where}.{key}[{i}]") for i, t in enumerate(d[key]))
        return cls(_file_name(d["file"], f"{where}.file"), lists["inputs"], lists["outputs"])


@dataclass(frozen=True)
class GroundingDefaults:
    """Defaults the runtime uses for this model unless the user overrides them. Checked when made: every
    field's type and range (a ConfigError naming ``grounding.<field>``)."""

    background_prompts: tuple[str, ...] = ("background", "a table", "a wall", "the floor")
    threshold: float = 0.5  # probability a patch must exceed to belong to a target region
    min_area_patches: int = 1  # smallest region (in patches) reported as a target
    # Temperature that turns the patch probability into a calibrated target score (fitted by minimum
    # log-loss on held-out scenes); None: the runtime's default.
    score_temperature: float | None = None
    # Colours a noun phrase without one is also grounded as ("the cup" = the largest map of "the red cup",
    # "the blue cup", ...): for a model that was only ever shown coloured captions. Empty for CLIP checkpoints.
    expand_colours: tuple[str, ...] = ()
    # Score an instance needs to be counted or ordered (calibrated score scale); None: no floor.
    count_min_score: float | None = None
    # How far below the best instance of its phrase an instance of a composed command (not a negation) may score
    # (None: any): a look-alike that passes the threshold (a red plate among red cups) scores below the objects
    # that really fit the description.
    instance_score_margin: float | None = None

    def __post_init__(self):
        for key in ("background_prompts", "expand_colours"):
            value = check_queries(getattr(self, key), f"grounding.{key}", error=ConfigError, rules=PROMPT_RULES)
            object.__setattr__(self, key, value)
        object.__setattr__(self, "threshold", check_threshold(self.threshold, "grounding.threshold"))
        _int(self.min_area_patches, "grounding.min_area_patches")
        if self.score_temperature is not None:
            object.__setattr__(self, "score_temperature", check_positive(
                self.score_temperature, "grounding.score_temperature", upper=10.0, text=False))
        if self.count_min_score is not None:
            object.__setattr__(self, "count_min_score",
                               check_threshold(self.count_min_score, "grounding.count_min_score"))
        if self.instance_score_margin is not None:
            object.__setattr__(self, "instance_score_margin",
                               check_threshold(self.instance_score_margin, "grounding.instance_score_margin"))

    def to_dict(self) -> dict:
        d = {"background_prompts": list(self.background_prompts), "threshold": self.threshold,
             "min_area_patches": self.min_area_patches}
        if self.score_temperature is not None:  # optional fields: absent from bundles that do not set them
            d["score_temperature"] = self.score_temperature
        if self.expand_colours:
            d["expand_colours"] = list(self.expand_colours)
        if self.count_min_score is not None:
            d["count_min_score"] = self.count_min_score
        if self.instance_score_margin is not None:
            d["instance_score_margin"] = self.instance_score_margin
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "GroundingDefaults":
        d = dict(_obj(d, "grounding")) if d is not None else {}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"grounding: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def _files(files: Any) -> dict:
    """``files``: {name: {"sha256": 64 hex digits, "bytes": int >= 0}}, checked entry by entry."""
    files = _obj(files, "files")
    for name, entry in files.items():
        _file_name(name, f"files key {name!r}")
        where = f"files[{name!r}]"
        entry = _obj(entry, where)
        if "bytes" not in entry or "sha256" not in entry:
            raise ConfigError(f"{where} needs 'sha256' and 'bytes'; got keys {sorted(entry)}")
        _int(entry["bytes"], f"{where}.bytes", low=0)
        sha = entry["sha256"]
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise ConfigError(f"{where}.sha256 must be 64 lowercase hex digits, got {_show(sha)}")
    return files


@dataclass(frozen=True)
class Manifest:
    model_id: str  # human-readable id, e.g. "openai/clip-vit-base-patch16" or "vlmedge/tabletop"
    source: dict  # {"id", "revision", "layout", "weights_sha256"}
    spec: ClipSpec  # architecture (native image size is spec.vision.image_size)
    image_size: tuple[int, int]  # (H, W) export input size; may differ from the native one
    patch_grid: tuple[int, int]  # (h, w) = image_size // patch_size
    embed_dim: int
    logit_scale: float  # exp() already applied: similarity logits = logit_scale * cosine
    dense_head: str
    precision: str
    platform: str  # a key of vlmedge.platforms.PLATFORMS; stored as "target" in the JSON (module docstring)
    opset: int
    preprocess: PreprocessSpec
    image_encoder: EncoderEntry
    text_encoder: EncoderEntry
    tokenizer: str = "tokenizer.json"
    context_length: int = 77
    text_embeddings: str | None = None
    grounding: GroundingDefaults = field(default_factory=GroundingDefaults)
    files: dict = field(default_factory=dict)  # name -> {"sha256": hex, "bytes": int}
    # the image encoder OpenVINO runs when the bundle has one of its own ("encoders.image_openvino": the QDQ graph
    # beside ONNX Runtime's CPU form, same inputs and outputs); None: every backend runs image_encoder
    image_openvino: EncoderEntry | None = None
    vlmedge_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # free-form, e.g. export timings, int8 cosine report

    def __post_init__(self):
        """Every field's type and range, then the fields against each other (ConfigError naming the field)."""
        _str(self.model_id, "model_id")
        _obj(self.source, "source")
        _obj(self.extra, "extra")
        _str(self.vlmedge_version, "vlmedge_version", empty=True)
        for name, kind in (("spec", ClipSpec), ("preprocess", PreprocessSpec), ("grounding", GroundingDefaults),
                           ("image_encoder", EncoderEntry), ("text_encoder", EncoderEntry)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.image_openvino is not None and not isinstance(self.image_openvino, EncoderEntry):
            raise ConfigError(f"image_openvino must be an EncoderEntry or None, got "
                              f"{type(self.image_openvino).__name__}")
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        object.__setattr__(self, "patch_grid", _pair(self.patch_grid, "patch_grid"))
        _int(self.embed_dim, "embed_dim")
        scale = self.logit_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or not 0 < scale <= LOGIT_SCALE_MAX:
            raise ConfigError(f"logit_scale must be a finite number in (0, {LOGIT_SCALE_MAX:g}] (exp() applied; "
                              f"CLIP's is at most 100), got {_show(scale)}")
        object.__setattr__(self, "logit_scale", float(scale))
        _choice(self.precision, "manifest.precision", PRECISIONS)
        _choice(self.platform, "manifest.target (platform)", PLATFORMS)
        _choice(self.dense_head, "manifest.dense_head", DENSE_HEADS)
        _int(self.opset, "opset", *OPSETS)
        _file_name(self.tokenizer, "tokenizer.file")
        _int(self.context_length, "tokenizer.context_length")
        if self.text_embeddings is not None:
            _file_name(self.text_embeddings, "text_embeddings")
        _files(self.files)
        if not _is_int(self.format_version) or self.format_version != FORMAT_VERSION:
            raise ConfigError(f"format_version must be {FORMAT_VERSION}, got {_show(self.format_version)}")
        self._check_consistency()

    def image_file(self, backend: str) -> str:
        """The image encoder file ``backend`` runs: OpenVINO its own when the bundle has one, else image_encoder."""
        if backend == "openvino" and self.image_openvino is not None:
            return self.image_openvino.file
        return self.image_encoder.file

    def _check_consistency(self) -> None:
        (h, w), (gh, gw), d, p = self.image_size, self.patch_grid, self.embed_dim, self.spec.vision.patch_size
        if self.preprocess.size != (h, w):
            raise ConfigError(f"preprocess.size {list(self.preprocess.size)} differs from image_size {[h, w]}")
        if h % p or w % p:
            raise ConfigError(f"image_size {[h, w]} is not a multiple of spec.vision.patch_size {p}")
        if (gh, gw) != (h // p, w // p):
            raise ConfigError(f"patch_grid {[gh, gw]} contradicts image_size {[h, w]} / spec.vision.patch_size {p} "
                              f"= {[h // p, w // p]}")
        if d != self.spec.embed_dim:
            raise ConfigError(f"embed_dim {d} differs from spec.embed_dim {self.spec.embed_dim}")
        if self.context_length != self.spec.text.context_length:
            raise ConfigError(f"tokenizer.context_length {self.context_length} differs from "
                              f"spec.text.context_length {self.spec.text.context_length}")
        if self.grounding.min_area_patches > gh * gw:
            raise ConfigError(f"grounding.min_area_patches {self.grounding.min_area_patches} exceeds the "
                              f"{gh}x{gw} patch grid ({gh * gw} patches): no region could ever be reported")
        if self.image_encoder.file == self.text_encoder.file:
            raise ConfigError(f"encoders.image.file and encoders.text.file are the same file "
                              f"{self.image_encoder.file!r}")
        self._check_encoder("image", self.image_encoder, [["B", 3, h, w]], [["B", d], ["B", gh, gw, d]],
                            ("float32",), ("float32", "float16"))
        if self.image_openvino is not None:
            ov, img = self.image_openvino, self.image_encoder
            if ov.file in (img.file, self.text_encoder.file):
                raise ConfigError(f"encoders.image_openvino.file {ov.file!r} is also another encoder's file")
            if (ov.inputs, ov.outputs) != (img.inputs, img.outputs):
                raise ConfigError("encoders.image_openvino must have the inputs and outputs of encoders.image (the "
                                  "same encoder in another form)")
        self._check_encoder("text", self.text_encoder, [["B", self.context_length]], [["B", d]],
                            ("int64",), ("float32", "float16"))

    @staticmethod
    def _check_encoder(role: str, entry: EncoderEntry, inputs: list, outputs: list, in_types: tuple,
                       out_types: tuple) -> None:
        """``inputs``/``outputs``: the shapes the runtime needs, "B" the batch axis (a name or an int,
        the same in every tensor of the encoder)."""
        batch = []
        for kind, tensors, wanted, types in (("inputs", entry.inputs, inputs, in_types),
                                             ("outputs", entry.outputs, outputs, out_types)):
            where = f"encoders.{role}.{kind}"
            if len(tensors) != len(wanted):
                shapes = " and ".join(_shape_text(s) for s in wanted)
                raise ConfigError(f"{where} must be {len(wanted)} tensor(s) shaped {shapes}, got {len(tensors)}")
            for i, (t, shape) in enumerate(zip(tensors, wanted)):
                if t.dtype not in types:
                    raise ConfigError(f"{where}[{i}].dtype must be {' or '.join(types)}, got {t.dtype!r}")
                ok = len(t.shape) == len(shape) and all(s == "B" or s == v for s, v in zip(shape, t.shape))
                if not ok:
                    raise ConfigError(f"{where}[{i}].shape {list(t.shape)} contradicts the manifest's image_size, "
                                      f"patch_grid, embed_dim or context_length: expected {_shape_text(shape)}")
                batch.append(t.shape[0])
        if len(set(batch)) != 1:
            raise ConfigError(f"encoders.{role}: the batch axis differs between its tensors ({batch})")

    @property
    def target(self) -> str:
        """Deprecated name of :attr:`platform`."""
        warnings.warn("Manifest.target is deprecated; use Manifest.platform", DeprecationWarning, stacklevel=2)
        return self.platform

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "format_version": self.format_version, "vlmedge_version": self.vlmedge_version,
            "model_id": self.model_id, "source": self.source, "spec": self.spec.to_dict(),
            "image_size": list(self.image_size), "patch_grid": list(self.patch_grid),
            "embed_dim": self.embed_dim, "logit_scale": self.logit_scale, "dense_head": self.dense_head,
            "precision": self.precision, "target": self.platform, "opset": self.opset,
            "preprocess": self.preprocess.to_dict(),
            "encoders": {"image": self.image_encoder.to_dict(), "text": self.text_encoder.to_dict(),
                         **({"image_openvino": self.image_openvino.to_dict()} if self.image_openvino else {})},
            "tokenizer": {"file": self.tokenizer, "context_length": self.context_length},
            "text_embeddings": self.text_embeddings, "grounding": self.grounding.to_dict(),
            "files": self.files, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST_NAME) -> "Manifest":
        """Parse parsed JSON; ``where`` (the file) starts every error, which then names the field."""
        try:
            return cls._parse(d)
        except ConfigError as e:
            raise ArtifactError(f"{where}: {e}") from None

    @classmethod
    def _parse(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ConfigError(f"field 'format' is {_show(d.get('format'))}, expected {FORMAT!r}")
        version = d.get("format_version")
        if not _is_int(version) or version != FORMAT_VERSION:
            raise ConfigError(
                f"unknown format_version {_show(version)}; this vlmedge reads version {FORMAT_VERSION}"
                " (re-export the bundle with a matching vlmedge, or upgrade vlmedge)")

        def need(obj: dict, key: str, path: str = ""):
            if key not in obj:
                raise ConfigError(f"missing required field {path + key!r}")
            return obj[key]

        def section(name: str, parse, value):
            try:
                return parse(value)
            except ConfigError as e:
                raise ConfigError(f"{name}: {e}") from None

        enc = _obj(need(d, "encoders"), "encoders")
        tok = d.get("tokenizer")
        tok = {} if tok is None else _obj(tok, "tokenizer")
        optional = {k: d.get(k) if d.get(k) is not None else {} for k in ("source", "files", "extra")}
        return cls(
            model_id=need(d, "model_id"), source=optional["source"],
            spec=section("spec", ClipSpec.from_dict, need(d, "spec")),
            image_size=need(d, "image_size"), patch_grid=need(d, "patch_grid"),
            embed_dim=need(d, "embed_dim"), logit_scale=need(d, "logit_scale"),
            dense_head=need(d, "dense_head"), precision=need(d, "precision"), platform=need(d, "target"),
            opset=need(d, "opset"), preprocess=section("preprocess", PreprocessSpec.from_dict, need(d, "preprocess")),
            image_encoder=EncoderEntry.from_dict(need(enc, "image", "encoders."), "encoders.image"),
            text_encoder=EncoderEntry.from_dict(need(enc, "text", "encoders."), "encoders.text"),
            image_openvino=None if enc.get("image_openvino") is None
            else EncoderEntry.from_dict(enc["image_openvino"], "encoders.image_openvino"),
            tokenizer=tok.get("file", "tokenizer.json"), context_length=tok.get("context_length", 77),
            text_embeddings=d.get("text_embeddings"), grounding=GroundingDefaults.from_dict(d.get("grounding")),
            files=optional["files"], vlmedge_version=d.get("vlmedge_version", ""),
            format_version=version, extra=optional["extra"],
        )


# -- the bundle on disk -------------------------------------------------------------------------------------------

def _inside(root: Path, path: Path) -> None:
    """Refuse ``path`` when it resolves (symbolic links followed) outside the bundle ``root``."""
    try:
        real, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a link loop
        raise ArtifactError(f"{path}: cannot be resolved ({e})") from None
    if not real.is_relative_to(real_root):
        raise ArtifactError(f"{path}: a symbolic link to {real}, outside the bundle {real_root}; a bundle's files "
                            "must lie inside it (copy the file in, or link the whole bundle directory instead)")


def read_manifest(bundle_dir: str | Path) -> Manifest:
    root = Path(bundle_dir)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ArtifactError(f"bundle {str(bundle_dir)!r} is not a directory")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; a vlmedge bundle needs a {MANIFEST_NAME}")
    _inside(root, path)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: JSON nested too deeply to be a manifest (at most {MAX_JSON_DEPTH} levels)") \
            from None
    except ConfigError as e:
        raise ArtifactError(f"{path}: {e}") from None
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise ArtifactError(f"{path}: JSON nested too deeply to be a manifest (at most {MAX_JSON_DEPTH} levels)")
    return Manifest.from_dict(data, where=str(path))


def verify_files(bundle_dir: str | Path, manifest: Manifest, *, hashes: bool = True) -> None:
    """Check every file the manifest lists: inside the bundle (symbolic links followed), present, and with
    ``hashes`` the recorded size and sha256."""
    root = Path(bundle_dir)
    needed = {manifest.image_encoder.file, manifest.text_encoder.file, manifest.tokenizer}
    if manifest.image_openvino is not None:
        needed.add(manifest.image_openvino.file)
    if manifest.text_embeddings:
        needed.add(manifest.text_embeddings)
    unlisted = sorted(needed - set(manifest.files))
    if unlisted:
        raise ArtifactError(f"{root / MANIFEST_NAME}: files {unlisted} are used but have no sha256 entry in 'files'")
    for name, entry in sorted(manifest.files.items()):
        p = root / name
        if not p.is_file():
            raise ArtifactError(f"{p}: missing from the bundle (listed in {MANIFEST_NAME})")
        _inside(root, p)
        if not hashes:
            continue
        size = p.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"{p}: size is {size} bytes, manifest records {entry['bytes']} (truncated or replaced)")
        digest = sha256_file(p)
        if digest != entry["sha256"]:
            raise ArtifactError(f"{p}: sha256 mismatch (file {digest[:12]}…, manifest {entry['sha256'][:12]}…); "
                                "the file was modified or corrupted")


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _shape_text(value: Any) -> str:
    """(1, 'batch') -> "[1, batch]"; a scalar as it is."""
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def check_graph(bundle_dir: str | Path, manifest: Manifest, role: str, graph: OnnxFile | None = None) -> OnnxFile:
    """The ONNX file of encoder ``role`` ("image" | "text" | "image_openvino", the image encoder's OpenVINO file when
    the bundle has one) against the manifest: self-contained (no external
    data), its recorded role and shape summary (``vlmedge.*`` metadata, when present), and the names, element
    types and shapes of its inputs and outputs. ``graph``: the file as ``read_onnx`` read it (read here if None).

    A graph axis the file leaves symbolic accepts the manifest's number (ONNX Runtime's optimizer drops some
    static output shapes); a fixed graph axis must match, and a manifest axis name must be symbolic in the graph.
    """
    entry = {"image": manifest.image_encoder, "text": manifest.text_encoder,
             "image_openvino": manifest.image_openvino}[role]
    if entry is None:
        raise ConfigError(f"the bundle has no {role} encoder")
    encoder = "text" if role == "text" else "image"  # what the file's vlmedge.role metadata says
    root = Path(bundle_dir)
    path, mpath, field_ = root / entry.file, root / MANIFEST_NAME, f"encoders.{role}"
    graph = graph if graph is not None else read_onnx(path)
    if graph.external_data:
        raise ArtifactError(
            f"{path}: {graph.external_tensors} tensor(s) refer to external data {list(graph.external_data)} "
            "(weights stored outside the .onnx file); a bundle's ONNX files must be self-contained "
            "(docs/BUNDLE.md): re-export the bundle with `vlmedge export`")
    recorded = graph.metadata.get("vlmedge.role")
    if recorded is not None and recorded != encoder:
        raise ArtifactError(f"{path}: this is the {recorded} encoder (its vlmedge.role metadata), but {mpath} names "
                            f"it in {field_}.file")
    try:
        summary = json.loads(graph.metadata.get("vlmedge.manifest", "null"))
    except ValueError:
        summary = None
    if isinstance(summary, dict):  # informative metadata; when present it must agree
        for key in ("embed_dim", "image_size", "patch_grid") if encoder == "image" else ("embed_dim",):
            mine = getattr(manifest, key)
            if key in summary and _norm(summary[key]) != _norm(mine):
                raise ArtifactError(f"{path}: the graph was exported with {key} {summary[key]} (its vlmedge.manifest "
                                    f"metadata), but {mpath} says {key} {_shape_text(mine)}")
    for kind, actual, declared in (("inputs", graph.inputs, entry.inputs), ("outputs", graph.outputs, entry.outputs)):
        names = [t.name for t in actual]
        if names != [t.name for t in declared]:
            raise ArtifactError(f"{path}: the graph's {kind} are {names}, but {mpath} {field_}.{kind} names "
                                f"{[t.name for t in declared]}")
        for i, (g, m) in enumerate(zip(actual, declared)):
            ok = g.dtype == m.dtype and len(g.shape) == len(m.shape) and all(
                isinstance(gd, str) if isinstance(md, str) else (isinstance(gd, str) or gd == md)
                for gd, md in zip(g.shape, m.shape))
            if not ok:
                raise ArtifactError(f"{path}: {kind[:-1]} {g.name!r} is {g.dtype} {list(g.shape)} in the graph, but "
                                    f"{mpath} says {field_}.{kind}[{i}] is {m.dtype} {list(m.shape)}")
    return graph


def check_vocabulary(bundle_dir: str | Path, manifest: Manifest) -> tuple[list[str], np.ndarray] | None:
    """The stored vocabulary (``text_embeddings.npz``): arrays ``queries`` [N] of text and ``embeds`` [N, D] of
    finite unit vectors (the text encoder's output). Returns (queries, embeds float32), or None without one."""
    if not manifest.text_embeddings:
        return None
    path = Path(bundle_dir) / manifest.text_embeddings
    try:
        with np.load(path, allow_pickle=False) as z:
            queries, embeds = z["queries"], z["embeds"]
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise ArtifactError(f"{path}: expected arrays 'queries' and 'embeds' ({e})") from None
    d = manifest.embed_dim
    if queries.ndim != 1 or queries.dtype.kind != "U":
        raise ArtifactError(f"{path}: 'queries' must be a 1-D array of text, got {queries.dtype} {list(queries.shape)}")
    if embeds.dtype.kind != "f" or embeds.shape != (len(queries), d):
        raise ArtifactError(f"{path}: 'embeds' has {embeds.dtype} {list(embeds.shape)}, expected float "
                            f"[{len(queries)},{d}] (one row per query, embed_dim {d})")
    embeds = embeds.astype(np.float32, copy=False)
    # row norms in float32 (no [N, D] temporaries: a device's memory peak is start-up); NaN/inf rows fail too
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", embeds, embeds))
    bad = np.flatnonzero(~(np.abs(norms - 1) <= UNIT_NORM_TOL))
    if bad.size:
        i = int(bad[0])
        what = "has NaN/inf values" if not np.isfinite(embeds[i]).all() else f"has norm {norms[i]:.4g}"
        raise ArtifactError(f"{path}: 'embeds' row {i} ({str(queries[i])!r}) {what}; stored text embeddings must be "
                            f"finite unit vectors (|norm - 1| <= {UNIT_NORM_TOL:g}); {bad.size} bad row(s)")
    return [str(q) for q in queries], embeds


def open_bundle(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and check a bundle directory; returns its manifest. Always: the manifest, files inside the bundle,
    the ONNX graphs against the manifest, the stored vocabulary. ``verify``: also every file's size and sha256
    (first, so that the graphs are read only once their bytes are known to be the recorded ones)."""
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest, hashes=verify)
    for role in ("image", "text") + (("image_openvino",) if manifest.image_openvino is not None else ()):
        check_graph(bundle_dir, manifest, role)
    check_vocabulary(bundle_dir, manifest)
    return manifest


def file_entry(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}
