"""vlmedge.export: host-side toolchain (needs torch). Attributes load lazily so that
`import vlmedge.export` (e.g. by the CLI to register commands) does not import torch."""

from __future__ import annotations

import importlib

_LAZY = {
    "load_clip": ("vlmedge.export.loaders", "load_clip"),
    "LoadedClip": ("vlmedge.export.loaders", "LoadedClip"),
    "save_clip": ("vlmedge.export.loaders", "save_clip"),
    "CLIP": ("vlmedge.export.model", "CLIP"),
    "export_bundle": ("vlmedge.export.bundle", "export_bundle"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'vlmedge.export' has no attribute {name!r}")


__all__ = list(_LAZY)
