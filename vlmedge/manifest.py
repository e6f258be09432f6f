"""The bundle manifest: the one file a device reads to know everything about a bundle.

A bundle is a directory::

    manifest.json          this file's content (see docs/BUNDLE.md)
    image_encoder.onnx     pixel_values f32 [B,3,H,W] -> image_embeds [B,D], patch_embeds [B,h,w,D]
    text_encoder.onnx      input_ids i64 [N,77] -> text_embeds [N,D]
    tokenizer.json         Hugging Face `tokenizers` file
    text_embeddings.npz    optional: fixed vocabulary, arrays `queries` (str) and `embeds` f32 [N,D]

``read_manifest`` validates the structure; ``open_bundle`` also checks that every
listed file exists with the recorded size and sha256. Torch-free.

The deployment platform is ``Manifest.platform`` in Python and ``"target"`` in the JSON: format
version 1 is read by vlmedge runtimes already on devices, which look up ``"target"``; renaming the
key would make every new bundle unreadable to them (and would need a format_version bump), while
the word on disk costs nothing. The shipped bundles keep their recorded sha256 untouched.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmedge.errors import ArtifactError, ConfigError, check_choice
from vlmedge.platforms import PLATFORMS
from vlmedge.spec import ClipSpec, PreprocessSpec

FORMAT = "vlmedge-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
DENSE_HEADS = ("naive", "maskclip", "sclip", "clearclip", "naclip")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    shape: tuple  # ints, or strings for dynamic axes ("batch")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TensorSpec":
        try:
            return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{where}: tensor entry needs name, dtype and shape ({e!r}); got {d!r}") from None


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
        if not isinstance(d, dict) or "file" not in d:
            raise ArtifactError(f"{where}: expected an object with 'file', 'inputs', 'outputs'; got {d!r}")
        return cls(str(d["file"]),
                   tuple(TensorSpec.from_dict(t, f"{where}.inputs") for t in d.get("inputs", [])),
                   tuple(TensorSpec.from_dict(t, f"{where}.outputs") for t in d.get("outputs", [])))


@dataclass(frozen=True)
class GroundingDefaults:
    """Defaults the runtime uses for this model unless the user overrides them."""

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

    def to_dict(self) -> dict:
        d = {"background_prompts": list(self.background_prompts), "threshold": self.threshold,
             "min_area_patches": self.min_area_patches}
        if self.score_temperature is not None:  # optional fields: absent from bundles that do not set them
            d["score_temperature"] = self.score_temperature
        if self.expand_colours:
            d["expand_colours"] = list(self.expand_colours)
        if self.count_min_score is not None:
            d["count_min_score"] = self.count_min_score
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GroundingDefaults":
        d = dict(d or {})
        for key in ("background_prompts", "expand_colours"):
            if key in d:
                if isinstance(d[key], str) or not isinstance(d[key], (list, tuple)):
                    raise ArtifactError(f"manifest.grounding.{key} must be a list of strings, got {d[key]!r}")
                d[key] = tuple(d[key])
        f = d.get("count_min_score")
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1):
            raise ArtifactError(f"manifest.grounding.count_min_score must be a number in [0, 1], got {f!r}")
        t = d.get("score_temperature")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 10):
            raise ArtifactError(f"manifest.grounding.score_temperature must be a number in (0, 10], got {t!r}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ArtifactError(f"manifest.grounding: {e}") from None


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
    vlmedge_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # free-form, e.g. export timings, int8 cosine report

    def __post_init__(self):
        check_choice("manifest.precision", self.precision, PRECISIONS)
        check_choice("manifest.target (platform)", self.platform, PLATFORMS)
        check_choice("manifest.dense_head", self.dense_head, DENSE_HEADS)

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
            "encoders": {"image": self.image_encoder.to_dict(), "text": self.text_encoder.to_dict()},
            "tokenizer": {"file": self.tokenizer, "context_length": self.context_length},
            "text_embeddings": self.text_embeddings, "grounding": self.grounding.to_dict(),
            "files": self.files, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(d, dict):
            raise ArtifactError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{where}: field 'format' is {d.get('format')!r}, expected {FORMAT!r}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: unknown format_version {version!r}; this vlmedge reads version {FORMAT_VERSION}"
                " (re-export the bundle with a matching vlmedge, or upgrade vlmedge)")
        try:
            enc = d["encoders"]
            tok = d.get("tokenizer") or {}
            return cls(
                model_id=str(d["model_id"]), source=dict(d.get("source") or {}),
                spec=ClipSpec.from_dict(d["spec"]),
                image_size=tuple(int(x) for x in d["image_size"]),
                patch_grid=tuple(int(x) for x in d["patch_grid"]),
                embed_dim=int(d["embed_dim"]), logit_scale=float(d["logit_scale"]),
                dense_head=str(d["dense_head"]), precision=str(d["precision"]), platform=str(d["target"]),
                opset=int(d["opset"]), preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                image_encoder=EncoderEntry.from_dict(enc["image"], f"{where}: encoders.image"),
                text_encoder=EncoderEntry.from_dict(enc["text"], f"{where}: encoders.text"),
                tokenizer=str(tok.get("file", "tokenizer.json")),
                context_length=int(tok.get("context_length", 77)),
                text_embeddings=d.get("text_embeddings"),
                grounding=GroundingDefaults.from_dict(d.get("grounding")),
                files=dict(d.get("files") or {}), vlmedge_version=str(d.get("vlmedge_version", "")),
                format_version=version, extra=dict(d.get("extra") or {}),
            )
        except KeyError as e:
            raise ArtifactError(f"{where}: missing required field {e.args[0]!r}") from None
        except ConfigError as e:
            raise ArtifactError(f"{where}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: malformed field ({e})") from None


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise ArtifactError(f"bundle {str(bundle_dir)!r} is not a directory")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; a vlmedge bundle needs a {MANIFEST_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    return Manifest.from_dict(data, where=str(path))


def verify_files(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Check every file the manifest lists: present, recorded size, recorded sha256."""
    root = Path(bundle_dir)
    needed = {manifest.image_encoder.file, manifest.text_encoder.file, manifest.tokenizer}
    if manifest.text_embeddings:
        needed.add(manifest.text_embeddings)
    unlisted = sorted(needed - set(manifest.files))
    if unlisted:
        raise ArtifactError(f"{root / MANIFEST_NAME}: files {unlisted} are used but have no sha256 entry in 'files'")
    for name, entry in sorted(manifest.files.items()):
        p = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{root / MANIFEST_NAME}: file entry {name!r} points outside the bundle")
        if not p.is_file():
            raise ArtifactError(f"{p}: missing from the bundle (listed in {MANIFEST_NAME})")
        size = p.stat().st_size
        if "bytes" in entry and size != int(entry["bytes"]):
            raise ArtifactError(f"{p}: size is {size} bytes, manifest records {entry['bytes']} (truncated or replaced)")
        digest = sha256_file(p)
        if digest != entry.get("sha256"):
            recorded = str(entry.get("sha256"))[:12]
            raise ArtifactError(f"{p}: sha256 mismatch (file {digest[:12]}…, manifest {recorded}…); "
                                "the file was modified or corrupted")


def open_bundle(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and (by default) fully verify a bundle directory. Returns its manifest."""
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


def file_entry(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}
