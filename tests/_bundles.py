"""Tiny random bundles for tests, built with the real export code (needs torch to BUILD only).

    from _bundles import tiny_bundle          # tests/ is on sys.path (pytest pythonpath)
    path = tiny_bundle()                        # fp32, cpu, 64x64 input, 8x8 patch grid, D=32
    path = tiny_bundle(vocab=("the red cup",))  # + text_embeddings.npz

Bundles are cached per process (and per argument set) in a temporary directory removed at exit.
The weights are seeded random: the maps mean nothing, but shapes, files, sessions and the whole
runtime path are real. Set ``VLMEDGE_TEST_BUNDLE_CACHE`` to keep them across runs.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TEXTS = ["the red cup", "a blue ball", "the green bottle", "a yellow box", "background", "a table", "a wall",
         "the floor", "a photo of a cup", "a photo of a ball", "a photo of a plate", "the black can",
         "the white plate", "the purple book", "the orange banana", "the pink ball"]
SPEC = dict(image_size=64, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
            text_width=48, text_layers=2, text_heads=4, vocab_size=600, context_length=16, embed_dim=32)

_cache: dict[str, Path] = {}
_root: Path | None = None


def _root_dir() -> Path:
    global _root
    if _root is None:
        keep = os.environ.get("VLMEDGE_TEST_BUNDLE_CACHE")
        if keep:
            _root = Path(keep)
            _root.mkdir(parents=True, exist_ok=True)
        else:
            _root = Path(tempfile.mkdtemp(prefix="vlmedge-test-bundles-"))
            atexit.register(shutil.rmtree, _root, True)
    return _root


def tiny_clip(seed: int = 0):
    """A ``LoadedClip``: a seeded random CLIP with a trained tiny BPE tokenizer and an in-memory source (torch)."""
    import torch

    from vlmedge.export.loaders import LoadedClip
    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec
    from vlmedge.tokenizer import ClipTokenizer

    s = SPEC
    spec = ClipSpec(vision=VisionSpec(s["image_size"], s["patch_size"], s["vision_width"], s["vision_layers"],
                                      s["vision_heads"]),
                    text=TextSpec(s["text_width"], s["text_layers"], s["text_heads"], vocab_size=s["vocab_size"],
                                  context_length=s["context_length"]),
                    embed_dim=s["embed_dim"])
    torch.manual_seed(seed)
    model = CLIP(spec).eval()
    with torch.no_grad():  # make outputs depend clearly on the input
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.1)
        model.logit_scale.fill_(float(torch.log(torch.tensor(50.0))))
    tok = ClipTokenizer.train(TEXTS * 3, vocab_size=s["vocab_size"], context_length=s["context_length"])
    source = {"id": f"tests/tiny-random-{seed}", "revision": None, "layout": "in-memory", "weights_sha256": None}
    return LoadedClip(model, tokenizer=tok, source=source)


def tiny_bundle(*, vocab: tuple[str, ...] | None = None, precision: str = "fp32", seed: int = 0,
                grounding: dict | None = None, preprocess_mode: str | None = None) -> Path:
    """Build (once per process) and return a tiny bundle directory."""
    key_data = json.dumps({"vocab": list(vocab) if vocab else None, "precision": precision, "seed": seed,
                           "grounding": grounding, "mode": preprocess_mode, "spec": SPEC}, sort_keys=True)
    key = hashlib.sha256(key_data.encode()).hexdigest()[:12]
    if key in _cache:
        return _cache[key]
    out = _root_dir() / f"tiny-{precision}-{key}"
    if not (out / "manifest.json").is_file():
        import torch

        from vlmedge.export.bundle import export_bundle

        torch.set_num_threads(1)
        export_bundle(tiny_clip(seed), out, precision=precision, vocab=list(vocab) if vocab else None,
                      grounding=grounding, preprocess_mode=preprocess_mode, calib="synthetic", calib_count=4,
                      force=True)
    _cache[key] = out
    return out
