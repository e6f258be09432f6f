"""The compiled preprocessing kernels (``_kernels.c``), loaded with ctypes; None where not available.

``resample_rows`` and ``normalize_planar`` are the C functions (GIL released while they run) or
None: the library was not built (no C compiler when vlmedge was installed), cannot be loaded, has
another interface version or is older than its source (a stale build), or ``VLMEDGE_KERNELS=numpy``
is set. Callers then use
their numpy path, which gives the same output. ``backend()`` says which is in use and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import logging
import os
from pathlib import Path

ABI = 1  # vlm_kernels_abi() of the C file this module was written for

log = logging.getLogger(__name__)


def _load(here: Path | None = None) -> tuple[ctypes.CDLL | None, str]:
    """(the library or None, what is in use and why); ``here`` is the folder holding it (this package)."""
    if os.environ.get("VLMEDGE_KERNELS", "").strip().lower() == "numpy":
        return None, "numpy (VLMEDGE_KERNELS=numpy)"
    here = Path(__file__).resolve().parent if here is None else Path(here)
    path = next((p for p in (here / f"_kernels{s}" for s in importlib.machinery.EXTENSION_SUFFIXES) if p.is_file()),
                None)
    if path is None:
        return None, "numpy (the compiled kernels were not built: no C compiler when vlmedge was installed?)"
    source = here / "_kernels.c"  # present in a source checkout (editable install), not in a wheel
    if source.is_file() and source.stat().st_mtime > path.stat().st_mtime:
        log.warning("%s is older than %s (a failed or skipped rebuild?); preprocessing with numpy until vlmedge is "
                    "reinstalled", path, source)
        return None, f"numpy ({path.name} is older than _kernels.c: reinstall vlmedge to rebuild it)"
    try:
        lib = ctypes.CDLL(str(path))
        abi = lib.vlm_kernels_abi()
        rows, normalize = lib.vlm_resample_rows, lib.vlm_normalize_planar
    except (OSError, AttributeError) as e:
        log.warning("cannot load %s (%s); preprocessing with numpy", path, e)
        return None, f"numpy (cannot load {path.name}: {e})"
    if abi != ABI:
        log.warning("%s has interface version %s, expected %s (a stale build?); preprocessing with numpy", path,
                    abi, ABI)
        return None, f"numpy ({path.name} has interface {abi}, expected {ABI}: reinstall vlmedge)"
    p, n, i = ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int
    rows.argtypes = [p, n, p, n, n, i, p, p, p, i]
    normalize.argtypes = [p, n, n, n, i, p, p, p]
    rows.restype = normalize.restype = i
    return lib, f"compiled ({path.name})"


_lib, _description = _load()
resample_rows = _lib.vlm_resample_rows if _lib is not None else None
normalize_planar = _lib.vlm_normalize_planar if _lib is not None else None


def backend() -> str:
    """``compiled (<library>)`` or ``numpy (<why>)``."""
    return _description if resample_rows is not None else (
        "numpy (switched off in this block)" if _lib is not None else _description)


@contextlib.contextmanager
def numpy_only():
    """Use the numpy paths inside the block (for side-by-side measurements and tests). Process-wide:
    not while other threads preprocess."""
    global resample_rows, normalize_planar
    saved = resample_rows, normalize_planar
    resample_rows = normalize_planar = None
    try:
        yield
    finally:
        resample_rows, normalize_planar = saved
