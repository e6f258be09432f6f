"""vlmedge.runtime: device side. Never imports torch."""

from __future__ import annotations

import importlib

_LAZY = {
    "Grounder": ("vlmedge.runtime.grounder", "Grounder"),
    "GroundingResult": ("vlmedge.runtime.results", "GroundingResult"),
    "Target": ("vlmedge.runtime.results", "Target"),
    "Classification": ("vlmedge.runtime.results", "Classification"),
    "RunConfig": ("vlmedge.runtime.app", "RunConfig"),
    "run": ("vlmedge.runtime.app", "run"),
    "Tracker": ("vlmedge.runtime.tracking", "Tracker"),
    "render_scene": ("vlmedge.runtime.synthetic", "render_scene"),
    "open_source": ("vlmedge.runtime.sources", "open_source"),
    "Capture": ("vlmedge.runtime.capture", "Capture"),
    "Frame": ("vlmedge.runtime.capture", "Frame"),
    "Publisher": ("vlmedge.runtime.publisher", "Publisher"),
    "ControlServer": ("vlmedge.runtime.control", "ControlServer"),
    "ControlClient": ("vlmedge.runtime.control", "ControlClient"),
    "ControlState": ("vlmedge.runtime.control", "ControlState"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'vlmedge.runtime' has no attribute {name!r}")


__all__ = list(_LAZY)
