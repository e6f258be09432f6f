"""Locate the embedded demo model, shipped as package data of ``vlmedge`` (every side uses it: the
runtime runs it by default, the export side trains and exports it, the evaluation scores it).

Layout under ``vlmedge/assets/tabletop/``: ``model/`` (native: clip_spec.json, model.safetensors,
tokenizer.json; written by ``vlmedge train-demo``), ``bundle-fp32/`` and ``bundle-int8/``
(written by ``vlmedge.export.bundle.export_bundle`` from ``model/``).
"""

from __future__ import annotations

from pathlib import Path

from vlmedge.errors import ArtifactError, check_choice

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_DIR = ASSETS_DIR / "tabletop"
PRECISIONS = ("fp32", "int8")
_HINT = "rebuild it with `vlmedge train-demo --replace-shipped` (needs torch; see README)"


def embedded_model_dir() -> Path:
    """The demo model in the vlmedge native layout; ArtifactError when it is not built."""
    d = DEMO_DIR / "model"
    missing = [n for n in ("clip_spec.json", "model.safetensors", "tokenizer.json") if not (d / n).is_file()]
    if missing:
        raise ArtifactError(f"embedded demo model {d} is missing {', '.join(missing)}; {_HINT}")
    return d


def embedded_bundle(precision: str = "int8") -> Path:
    """The demo bundle directory for ``precision`` ("fp32" or "int8"); ArtifactError when absent."""
    check_choice("precision", precision, PRECISIONS)
    d = DEMO_DIR / f"bundle-{precision}"
    if not (d / "manifest.json").is_file():
        raise ArtifactError(f"embedded {precision} bundle {d} is missing (no manifest.json); {_HINT}")
    return d


def resolve_bundle(bundle: str | Path | None) -> Path:
    """The bundle directory to use: the given one, or the embedded int8 demo bundle."""
    if bundle is not None:
        return Path(bundle)
    try:
        return embedded_bundle("int8")
    except ArtifactError as e:
        raise ArtifactError(
            f"no --bundle given and the embedded demo bundle is not available ({e}). Either pass "
            "--bundle DIR with a bundle exported by `vlmedge export SOURCE --out DIR --precision int8`, "
            "or build the embedded model with `vlmedge train-demo --replace-shipped` (needs torch) first") from None
