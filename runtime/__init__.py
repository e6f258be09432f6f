"""vlmedge.runtime: device side. Never imports torch."""

from __future__ import annotations

import importlib

_LAZY = {
    "Grounder": ("vlmedge.runtime.grounding.grounder", "Grounder"),
    "Prepared": ("vlmedge.runtime.grounding.grounder", "Prepared"),
    "Encoded": ("vlmedge.runtime.grounding.grounder", "Encoded"),
    "GroundingResult": ("vlmedge.runtime.grounding.results", "GroundingResult"),
    "Target": ("vlmedge.runtime.grounding.results", "Target"),
    "Classification": ("vlmedge.runtime.grounding.results", "Classification"),
    "RunConfig": ("vlmedge.runtime.config", "RunConfig"),
    "run": ("vlmedge.runtime.app", "run"),
    "Tracker": ("vlmedge.runtime.grounding.tracking", "Tracker"),
    "render_scene": ("vlmedge.scenes.render", "render_scene"),
    "open_source": ("vlmedge.runtime.io.sources", "open_source"),
    "Capture": ("vlmedge.runtime.io.capture", "Capture"),
    "Frame": ("vlmedge.runtime.io.frames", "Frame"),
    "Publisher": ("vlmedge.runtime.messaging.publisher", "Publisher"),
    "ControlServer": ("vlmedge.runtime.messaging.control", "ControlServer"),
    "ControlClient": ("vlmedge.runtime.messaging.control", "ControlClient"),
    "ControlState": ("vlmedge.runtime.messaging.control", "ControlState"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'vlmedge.runtime' has no attribute {name!r}")


__all__ = list(_LAZY)
