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
    those two sub-packages would be missing. A finder maps exactly those two names to their folders, so
    nothing else of the checkout (``setup.py``, ``tests``, ``benchmarks``) becomes part of the package.
    Only done when the parent folder is the vlmedge checkout itself.
    """
    import importlib.abc
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    marker = os.path.join(root, "pyproject.toml")
    folders = {f"{__name__}.{name}": os.path.join(root, name) for name in ("export", "runtime")}
    if not (all(os.path.isfile(os.path.join(d, "__init__.py")) for d in folders.values()) and os.path.isfile(marker)):
        return
    try:
        with open(marker, encoding="utf-8") as f:
            if 'name = "vlmedge"' not in f.read():
                return
    except OSError:
        return

    class _CheckoutFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(
                fullname, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])

    if not any(type(f).__name__ == "_CheckoutFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutFinder())


_map_source_tree()

from vlmedge.errors import (  # noqa: E402
    ArtifactError,
    BackendUnavailable,
    ConfigError,
    InputError,
    ProtocolError,
    SourceError,
    VlmEdgeError,
)
from vlmedge.spec import ClipSpec, PreprocessSpec, TextSpec, VisionSpec  # noqa: E402

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
