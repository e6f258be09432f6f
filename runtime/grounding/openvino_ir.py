"""OpenVINO's own form (IR) of a bundle's ONNX file, kept in the cache, and its weights' pages handed back.

Why (issue #17, the 350 MB budget): compiled from the ONNX file, OpenVINO holds the weights twice on the heap,
as read from the ONNX constants and again repacked for its int8 kernels at the first inference (ViT-B/16 int8:
87 MB each; `benchmarks/auto_memory.py`). Compiled from IR, the constants stay in the ``.bin`` file, mapped
read-only. Once repacked, OpenVINO does not read them again, so their pages can be handed back with
``madvise(MADV_PAGEOUT)`` (Linux >= 5.4): clean file pages are simply dropped, and a later read maps the same
bytes again from the file. PAGEOUT rather than DONTNEED because it never loses data whatever the range holds:
were the mapping ever gone and its addresses reused by the heap, PAGEOUT would at most swap those pages out,
where DONTNEED would zero them. Outputs are bit-identical (tests/test_openvino_ir.py). Even without the
release (an older kernel), file pages are memory the kernel can reclaim under pressure, heap copies are not.

The IR is OpenVINO's own serialization of the graph it reads from the bundle's ONNX, with the same ops and
weights (not a re-export, no compression). It is written once per ONNX file (sha256) and OpenVINO version, in a
child process so that this process never holds the ONNX parse, under ``cache_dir()/openvino/``. The newest
``KEEP`` entries are kept.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from vlmedge.manifest import sha256_file

log = logging.getLogger(__name__)

KEEP = 6  # IR entries kept in the cache (a ViT-B/16 int8 image encoder: 87 MB)
MADV_PAGEOUT = 21  # the same value on every Linux architecture
RELEASE_PERIOD_S = 0.002  # while the first inference repacks, hand pages back this often

_CONVERT = """
import sys
import openvino as ov
model = ov.Core().read_model(sys.argv[1])
ov.save_model(model, sys.argv[2], compress_to_fp16=False)
"""


def ir_for(onnx_path: str | Path, version: str, cache: Path, sha256: str | None = None) -> Path | None:
    """The cached IR (``model.xml``) of ``onnx_path`` for OpenVINO ``version``, written first when missing;
    None when it cannot be written or converted (logged: the caller compiles the ONNX file instead).
    ``sha256``: the file's, when the caller has verified it (a bundle's manifest); else the file is hashed."""
    onnx_path = Path(onnx_path)
    root = cache / "openvino"
    entry = root / f"{(sha256 or sha256_file(onnx_path))[:24]}-ov{version}"
    xml = entry / "model.xml"
    if xml.is_file() and (entry / "model.bin").is_file():
        os.utime(entry)  # most recently used: kept by _prune
        return xml
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    except OSError as e:
        log.warning("OpenVINO IR cache %s not writable (%s): compiling %s itself, which holds its weights twice "
                    "(~2x the file's size more memory)", root, e, onnx_path)
        return None
    try:
        done = subprocess.run([sys.executable, "-c", _CONVERT, str(onnx_path), str(tmp / "model.xml")],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            log.warning("OpenVINO could not convert %s to its IR (%s): compiling the ONNX file itself", onnx_path,
                        (done.stderr.strip().splitlines() or ["no message"])[-1])
            return None
        try:
            os.rename(tmp, entry)  # atomic; another process may have written it meanwhile: theirs is the same
        except OSError:
            if not xml.is_file():
                raise
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("OpenVINO IR of %s not cached (%s): compiling the ONNX file itself", onnx_path, e)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("OpenVINO IR of %s written to %s", onnx_path.name, entry)
    _prune(root)
    return xml


def _prune(root: Path) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


class MappedWeights:
    """The read-only mappings of one weights file in this process, whose pages can be handed back (Linux).

    While the first inference of an input shape repacks the weights, ``releasing()`` calls ``release()`` every
    RELEASE_PERIOD_S and once after, so the pages read for repacking do not pile up on top of the repacked copy
    (the process's peak)."""

    def __init__(self, path: Path):
        self.path = str(Path(path).resolve())
        self.ranges = self._find()
        self._madvise = None
        if self.ranges:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._madvise = libc.madvise
            except (OSError, AttributeError):
                self.ranges = []

    def _find(self) -> list[tuple[int, int]]:
        found = []
        try:
            with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    # read-only mappings only: a writable private page may hold changes a drop would lose
                    if len(parts) == 6 and parts[5].strip() == self.path and "w" not in parts[1]:
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        found.append((lo, hi - lo))
        except OSError:  # no /proc: not Linux
            pass
        return found

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def release(self) -> None:
        for start, size in self.ranges:
            if self._madvise(start, size, MADV_PAGEOUT) != 0:
                err = ctypes.get_errno()
                log.info("madvise(MADV_PAGEOUT) on %s failed (%s): its pages stay resident (the kernel can still "
                         "reclaim them under pressure)", self.path, os.strerror(err))
                self.ranges = []  # an older kernel (< 5.4) or a refusal: do not try again
                return

    def releasing(self):
        return _Releasing(self)


class _Releasing:
    def __init__(self, weights: MappedWeights):
        self.weights = weights
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlmedge-ov-release", daemon=True)

    def _loop(self):
        while not self._stop.wait(RELEASE_PERIOD_S):
            self.weights.release()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.weights.release()
        return False
