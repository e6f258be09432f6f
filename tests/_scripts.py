"""Loading a script that is not part of the package (benchmarks/, examples/, an old file of the protocol) as a
module, so that tests can call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str | Path, name: str | None = None):
    """The file at ``path`` (relative paths: from the repository root) imported as module ``name`` (default: its
    stem). Registered in ``sys.modules`` first: dataclasses look their module up there by name."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
