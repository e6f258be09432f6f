"""Load CLIP checkpoints into :class:`vlmedge.export.model.CLIP`; save our native layout.

``load_clip(source)`` accepts:

- a Hugging Face model directory (``config.json`` + ``model.safetensors`` /
  ``model.safetensors.index.json`` shards / ``pytorch_model.bin``) or a hub id such as
  ``openai/clip-vit-base-patch16`` (optionally ``id@revision``), downloaded with
  ``huggingface_hub.snapshot_download``;
- an OpenAI/OpenCLIP state dict file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) or a
  directory holding one plus ``open_clip_config.json``;
- a vlmedge native directory written by :func:`save_clip`.

It returns a :class:`LoadedClip`: the model and, beside it rather than hung on it, the tokenizer,
the preprocessing recipe and where the weights came from.

Pickles are only read with ``torch.load(weights_only=True)``; TorchScript archives are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlmedge.errors import ArtifactError, ConfigError, check_choice
from vlmedge.export import checkpoint_layouts as layouts
from vlmedge.export.dense import check_head
from vlmedge.export.model import CLIP
from vlmedge.spec import ACTIVATIONS, ClipSpec, PreprocessSpec

if TYPE_CHECKING:
    from vlmedge.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

NATIVE_FORMAT = "vlmedge-clip"
NATIVE_SPEC = "clip_spec.json"
NATIVE_WEIGHTS = "model.safetensors"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HUB_PATTERNS = ["config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                "vocab.json", "merges.txt", "special_tokens_map.json"]
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


# ----------------------------------------------------------------------------- public API
@dataclasses.dataclass(frozen=True)
class LoadedClip:
    """A CLIP and what came with its checkpoint. ``model.encode_image`` / ``encode_text`` are the model's own."""

    model: CLIP  # eval mode, dense head and image size as asked
    tokenizer: ClipTokenizer | None = None  # None when the checkpoint ships none and the default BPE does not fit
    preprocess: PreprocessSpec | None = None  # the checkpoint's recipe at model.image_size; None: OpenAI's
    # {"id", "revision", "layout", "weights_sha256"} (+ "origin" for native dirs); {} for an in-memory model
    source: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, torch.nn.Module) or not all(
                callable(getattr(self.model, m, None)) for m in ("encode_image", "encode_text")):
            raise ConfigError(f"LoadedClip.model must be a torch module with encode_image and encode_text, "
                              f"got {type(self.model).__name__}")
        if self.tokenizer is not None and not callable(getattr(self.tokenizer, "encode", None)):
            raise ConfigError(f"LoadedClip.tokenizer must be a ClipTokenizer or None, got "
                              f"{type(self.tokenizer).__name__}")
        if self.preprocess is not None and not isinstance(self.preprocess, PreprocessSpec):
            raise ConfigError(f"LoadedClip.preprocess must be a PreprocessSpec or None, got "
                              f"{type(self.preprocess).__name__}")
        if not isinstance(self.source, dict):
            raise ConfigError(f"LoadedClip.source must be a dict, got {type(self.source).__name__}")


def load_clip(source: str | os.PathLike, dense: str = "naive", image_size=None, act: str | None = None,
              heads: int | tuple[int, int] | None = None) -> LoadedClip:
    """Load a CLIP checkpoint (see module docstring for ``source``); the model is in eval mode.

    - dense: dense head name (``vlmedge.manifest.DENSE_HEADS``).
    - image_size: (H, W) input size (position embeddings interpolated); default the checkpoint's.
    - act: MLP activation for OpenAI/OpenCLIP state dicts (default quick_gelu, or what an
      ``open_clip_config.json`` beside the weights says); other layouts must agree with it.
    - heads: (vision, text) head counts, or one int for both, for state dicts; default from
      ``open_clip_config.json``, else width // 64 as OpenAI.

    Returns a :class:`LoadedClip`; ``source`` holds id, revision, layout and weights_sha256.
    """
    check_head(dense)
    if act is not None:
        check_choice("act", act, ACTIVATIONS)
    heads = _check_heads(heads)
    path, info = _resolve(source)
    clip = _load_path(path, act, heads)
    model, layout = clip.model, clip.source["layout"]
    if act is not None and model.spec.act != act and layout != "openai":
        raise ConfigError(f"act={act!r} conflicts with {layout} checkpoint {path} "
                          f"(which uses {model.spec.act!r}); act= only applies to OpenAI/OpenCLIP state dicts")
    found = clip.source if layout == "native" else {**clip.source, **info}  # native keeps the id it was saved from
    model.dense_head = dense
    pp = clip.preprocess
    if image_size is not None:
        model.set_image_size(image_size)
        pp = PreprocessSpec(model.image_size, pp.mean, pp.std, pp.mode, pp.interpolation)
    model.eval()
    return dataclasses.replace(clip, preprocess=pp, source=found)


def save_clip(clip: LoadedClip, directory: str | os.PathLike) -> Path:
    """Write the vlmedge native layout: clip_spec.json, model.safetensors, tokenizer.json (if any).

    Returns the directory.
    """
    from safetensors.torch import save_file

    if not isinstance(clip, LoadedClip):
        raise ConfigError(f"save_clip needs a LoadedClip (model, tokenizer, preprocess, source), got "
                          f"{type(clip).__name__}; wrap a bare model as LoadedClip(model, tokenizer=...)")
    model = clip.model
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / NATIVE_WEIGHTS), metadata={"format": NATIVE_FORMAT})
    pp = clip.preprocess or default_preprocess(model.spec)
    meta = {"format": NATIVE_FORMAT, "format_version": 1, "spec": model.spec.to_dict(), "preprocess": pp.to_dict(),
            "source": dict(clip.source), "saved_image_size": list(model.image_size),
            "saved_dense_head": model.dense_head}
    if clip.tokenizer is not None:
        clip.tokenizer.save(d / "tokenizer.json")
    tmp = d / (NATIVE_SPEC + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, d / NATIVE_SPEC)
    log.info("saved CLIP (%s) to %s", meta["source"].get("id", "?"), d)
    return d


def default_preprocess(spec: ClipSpec) -> PreprocessSpec:
    """OpenAI's recipe: shortest-side resize + center crop to the native size, OpenAI mean/std."""
    return PreprocessSpec(size=spec.vision.image_size)


# ----------------------------------------------------------------------------- source resolution
def _resolve(source) -> tuple[Path, dict]:
    """Local path, or a hub id downloaded to the cache. Returns (path, partial source: id, revision)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return path, {"id": str(source), "revision": None}
    local_like = (path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1
                  or path.suffix in STATE_DICT_SUFFIXES or os.sep != "/" and os.sep in text)
    if local_like:
        raise ArtifactError(f"checkpoint {text!r} does not exist (no such file or directory)")
    repo_id, _, revision = text.partition("@")
    return _download(repo_id, revision or None)


def _download(repo_id: str, revision: str | None) -> tuple[Path, dict]:
    """Fetch configs first, then only the weights of the layout they describe."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ArtifactError(f"{repo_id!r} is not a local path, and huggingface_hub (needed to download hub ids) "
                            "is not installed: pip install huggingface_hub") from None
    try:
        path = Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=HUB_PATTERNS + ["open_clip_config.json"]))
        if _is_hf_clip_config(path) or not (path / "open_clip_config.json").is_file():
            candidates = [["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"],
                          ["pytorch_model.bin"]]
            names = HF_WEIGHTS
        else:
            candidates, names = [[OPEN_CLIP_WEIGHTS[0]], [OPEN_CLIP_WEIGHTS[1]]], OPEN_CLIP_WEIGHTS
        for patterns in candidates:
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
            if _first_existing(path, names):
                break
    except Exception as e:  # hub errors are many types: not found, offline, auth, bad id
        raise ArtifactError(f"model {repo_id!r} is not a local path and could not be found or downloaded from the "
                            f"Hugging Face hub (offline? HF_HUB_OFFLINE set? typo?): {type(e).__name__}: {e}") from None
    return path, {"id": repo_id, "revision": path.name if len(path.name) == 40 else revision}


def _is_hf_clip_config(directory: Path) -> bool:
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and any(k in cfg for k in ("vision_config", "text_config", "vision_config_dict"))


def _check_heads(heads) -> tuple[int, int] | None:
    if heads is None:
        return None
    pair = (heads, heads) if isinstance(heads, int) else tuple(heads) if isinstance(heads, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in pair):
        raise ConfigError(f"heads must be a positive int or a (vision_heads, text_heads) pair, got {heads!r}")
    return pair


def _first_existing(directory: Path, names) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


# ----------------------------------------------------------------------------- reading tensors
def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only torch pickle (never arbitrary code)."""
    if not path.is_file():
        raise ArtifactError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from None
    convert = ("convert it once, in an environment you trust, to safetensors: "
               "sd = torch.jit.load(p).state_dict() (or torch.load(p)['state_dict']); "
               "safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')")
    if _is_torchscript(path):
        raise ArtifactError(f"{path} is a TorchScript (JIT) archive, which holds code; vlmedge does not execute "
                            f"checkpoint code. {convert}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot be read as a weights-only checkpoint (it may contain pickled code, "
                            f"which vlmedge refuses to unpickle; {convert}): {str(e).splitlines()[0][:300]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # OpenCLIP training checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------- building the model
def _build(spec: ClipSpec, state: dict[str, torch.Tensor], where: str) -> CLIP:
    """CLIP(spec) with ``state`` loaded; ArtifactError listing key/shape mismatches."""
    model = CLIP(spec)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {unexpected[:5]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), first: {shapes[:5]}")
        raise ArtifactError(f"{where}: weights do not match the architecture ({'; '.join(parts)}); "
                            "names are after mapping to vlmedge's layout")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def _find_tokenizer(spec: ClipSpec, directory: Path | None, default_ok: bool, source_id: str):
    """The tokenizer shipped in ``directory``, else (``default_ok``) the default CLIP BPE if it fits, else None."""
    try:
        from vlmedge.tokenizer import ClipTokenizer
    except ImportError as e:  # tokenizer module not available
        log.warning("no tokenizer: vlmedge.tokenizer unavailable (%s)", e)
        return None
    vocab, n = spec.text.vocab_size, spec.text.context_length
    if directory is not None:
        try:
            tok = ClipTokenizer.from_dir(directory)
            if tok.vocab_size > vocab:
                log.warning("%s: tokenizer vocabulary (%d) is larger than the model's (%d)",
                            directory, tok.vocab_size, vocab)
            return tok
        except ArtifactError as e:
            log.info("no tokenizer files in %s (%s)", directory, e)
    if default_ok:
        tok = ClipTokenizer.default(context_length=n)
        if tok.vocab_size == vocab:
            return tok
    log.warning("no tokenizer for %s: none shipped and the default CLIP BPE does not fit vocab_size %d",
                source_id, vocab)
    return None


def _hf_weights(d: Path) -> list[Path]:
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    if (d / "model.safetensors.index.json").is_file():
        index = _read_json(d / "model.safetensors.index.json")
        return [d / f for f in sorted(set(index.get("weight_map", {}).values()))]
    if (d / "pytorch_model.bin").is_file():
        return [d / "pytorch_model.bin"]
    raise ArtifactError(f"{d}: Hugging Face directory without weights; looked for {', '.join(HF_WEIGHTS)}")


def _hf_preprocess(d: Path, spec: ClipSpec) -> PreprocessSpec:
    p = d / "preprocessor_config.json"
    if not p.is_file():
        return default_preprocess(spec)
    cfg = _read_json(p)
    crop = cfg.get("crop_size", cfg.get("size"))
    if isinstance(crop, dict):
        crop = (crop.get("height", crop.get("shortest_edge")), crop.get("width", crop.get("shortest_edge")))
    try:
        return PreprocessSpec(size=crop or spec.vision.image_size,
                              mean=cfg.get("image_mean", PreprocessSpec.__dataclass_fields__["mean"].default),
                              std=cfg.get("image_std", PreprocessSpec.__dataclass_fields__["std"].default),
                              mode="shortest-crop" if cfg.get("do_center_crop", True) else "full-frame",
                              interpolation=_RESAMPLE.get(cfg.get("resample", 3), "bicubic"))
    except ConfigError as e:
        raise ArtifactError(f"{p}: {e}") from None


def _load_path(path: Path, act: str | None, heads: tuple[int, int] | None) -> LoadedClip:
    """Dispatch on what ``path`` holds: a native, Hugging Face or OpenCLIP directory, or a state dict file."""
    if not path.is_dir():
        return _load_state_dict_file(path, act, heads)
    if (path / NATIVE_SPEC).is_file():
        return _load_native(path)
    if (path / "config.json").is_file() and (_is_hf_clip_config(path)
                                             or not _first_existing(path, OPEN_CLIP_WEIGHTS)):
        return _load_hf(path)
    if weights := _first_existing(path, OPEN_CLIP_WEIGHTS):
        return _load_state_dict_file(weights, act, heads)
    raise ArtifactError(
        f"{path}: not a CLIP checkpoint directory; looked for {NATIVE_SPEC} (vlmedge), config.json + "
        f"{' / '.join(HF_WEIGHTS)} (Hugging Face), {' / '.join(OPEN_CLIP_WEIGHTS)} (OpenCLIP); "
        f"found {sorted(p.name for p in path.iterdir())[:12]}")


def _load_hf(d: Path) -> LoadedClip:
    spec = layouts.hf_spec(_read_json(d / "config.json"), where=str(d / "config.json"))
    files = _hf_weights(d)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_tensors(f))
    if layouts.is_openai_layout(state):
        raise ArtifactError(f"{d}: config.json says Hugging Face but the weights use OpenAI names (visual.conv1...)")
    model = _build(spec, layouts.hf_to_ours(state), where=str(files[0]))
    source = {"id": str(d), "revision": None, "layout": "hf", "weights_sha256": _sha256(files)}
    pp = _hf_preprocess(d, spec)
    return LoadedClip(model, _find_tokenizer(spec, d, True, source["id"]), pp, source)


def _load_state_dict_file(path: Path, act: str | None, heads: tuple[int, int] | None) -> LoadedClip:
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ArtifactError(f"{path}: unknown checkpoint file type {path.suffix!r}; expected a directory "
                            f"or one of {', '.join(STATE_DICT_SUFFIXES)}")
    state = read_tensors(path)
    if not layouts.is_openai_layout(state):
        hint = ("Hugging Face names: pass the directory holding config.json" if layouts.is_hf_layout(state) else
                f"vlmedge names: pass the directory holding {NATIVE_SPEC}" if "visual.patch_embed.weight" in state
                else "expected OpenAI/OpenCLIP names such as 'visual.conv1.weight'")
        raise ArtifactError(f"{path}: not an OpenAI/OpenCLIP state dict ({hint}); first keys: {list(state)[:5]}")
    oc_cfg = path.parent / "open_clip_config.json"
    cfg = _read_json(oc_cfg) if oc_cfg.is_file() else {}
    vh, th = heads if heads is not None else layouts.open_clip_heads(cfg) if cfg else (None, None)
    use_act = act or (layouts.open_clip_act(cfg) if cfg else "quick_gelu")
    if act is None and not cfg:
        log.warning("%s: a bare OpenAI/OpenCLIP state dict (no open_clip_config.json beside it) does not say its MLP "
                    "activation; assuming QuickGELU as OpenAI's CLIP models. LAION-trained OpenCLIP models use GELU: "
                    "pass --act gelu (load_clip/export_bundle act='gelu'), or --act quick_gelu to silence this",
                    path)
    spec = layouts.openai_spec(state, str(path), act=use_act, vision_heads=vh, text_heads=th)
    model = _build(spec, layouts.openai_to_ours(state), where=str(path))
    source = {"id": str(path), "revision": None, "layout": "openai", "weights_sha256": _sha256([path])}
    pp_cfg = cfg.get("preprocess_cfg", {})
    pp = PreprocessSpec(size=spec.vision.image_size, **{k: pp_cfg[k] for k in ("mean", "std") if k in pp_cfg})
    return LoadedClip(model, _find_tokenizer(spec, None, True, source["id"]), pp, source)


def _load_native(d: Path) -> LoadedClip:
    meta = _read_json(d / NATIVE_SPEC)
    if meta.get("format") != NATIVE_FORMAT or "spec" not in meta:
        raise ArtifactError(f"{d / NATIVE_SPEC}: not a vlmedge CLIP spec (format {meta.get('format')!r}, "
                            f"expected {NATIVE_FORMAT!r} with a 'spec' object)")
    try:
        spec = ClipSpec.from_dict(meta["spec"])
        pp = PreprocessSpec.from_dict(meta["preprocess"]) if "preprocess" in meta else default_preprocess(spec)
    except ConfigError as e:
        raise ArtifactError(f"{d / NATIVE_SPEC}: {e}") from None
    weights = d / NATIVE_WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{d}: vlmedge directory without weights; looked for {NATIVE_WEIGHTS}")
    model = _build(spec, read_tensors(weights), where=str(weights))
    src = dict(meta.get("source") or {})
    source = {"id": src.get("id", str(d)), "revision": src.get("revision"), "layout": "native",
              "weights_sha256": _sha256([weights]), "origin": src}
    tokenizer = None
    if (d / "tokenizer.json").is_file():
        from vlmedge.tokenizer import ClipTokenizer

        tokenizer = ClipTokenizer.from_file(d / "tokenizer.json")
    return LoadedClip(model, tokenizer, pp, source)
