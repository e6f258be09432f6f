"""vlmedge: language-grounded robot perception on edge devices.

The core package is torch-free. ``vlmedge.export`` (host, needs torch) builds bundles;
``vlmedge.runtime`` (device, no torch) runs them on camera frames.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _map_source_tree() -> None:
    """Make ``vlmedge.export`` / ``vlmedge.runtime`` importable from a source checkout.

    The repository keeps them in top-level ``export/`` and ``runtime/`` folders, which the installer maps
    into the package (``package-dir`` in pyproject.toml). When Python runs with the checkout's root on
    ``sys.path`` (``python -c ...`` or a script started there), this folder shadows the installed package and
    those two sub-packages would be missing; adding the checkout root to ``__path__`` finds them there.
    Only done when the parent folder is the vlmedge checkout itself.
    """
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    marker = os.path.join(root, "pyproject.toml")
    if not (os.path.isfile(os.path.join(root, "runtime", "__init__.py"))
            and os.path.isfile(os.path.join(root, "export", "__init__.py")) and os.path.isfile(marker)):
        return
    try:
        with open(marker, encoding="utf-8") as f:
            if 'name = "vlmedge"' not in f.read():
                return
    except OSError:
        return
    if root not in __path__:
        __path__.append(root)


_map_source_tree()

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
