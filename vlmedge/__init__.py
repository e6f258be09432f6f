"""vlmedge: language-grounded robot perception on edge devices.

The core package is torch-free. ``vlmedge.export`` (host, needs torch) builds bundles;
``vlmedge.runtime`` (device, no torch) runs them on camera frames.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ArtifactError, BackendUnavailable, ConfigError, InputError, ProtocolError, SourceError, VlmEdgeError,
)
from .spec import ClipSpec, PreprocessSpec, TextSpec, VisionSpec  # noqa: E402

_LAZY = {
    "ClipTokenizer": ("vlmedge.tokenizer", "ClipTokenizer"),
    "preprocess": ("vlmedge.preprocess", "preprocess"),
    "Manifest": ("vlmedge.manifest", "Manifest"),
    "open_bundle": ("vlmedge.manifest", "open_bundle"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'vlmedge' has no attribute {name!r}")


__all__ = ["__version__", "VlmEdgeError", "ConfigError", "InputError", "ArtifactError", "BackendUnavailable",
           "ProtocolError", "SourceError", "ClipSpec", "VisionSpec", "TextSpec", "PreprocessSpec", *_LAZY]
