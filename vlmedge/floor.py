"""The GEMM floor file: what ``benchmarks/gemm_floor.py`` measured, read back by ``vlmedge bench``.

The floor of an image encoder on a CPU is the time its matrix products would take at the best int8
matmul rate measured on that CPU for their shapes (how it is measured: benchmarks/gemm_floor.py).
``vlmedge bench`` prints the measured encoder time as a multiple of it when the file has an entry
for the bundle's image encoder (by sha256 of the ONNX file) measured on this CPU model.

File: ``$VLMEDGE_GEMM_FLOOR`` if set, else ``gemm-floor.json`` in the runtime's cache folder
(``$VLMEDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlmedge``, else ``~/.cache/vlmedge``). Format (``FLOOR_SCHEMA``)::

    {"schema": "vlmedge-gemm-floor/1", "cpu": "<model name from /proc/cpuinfo>", "threads": 2,
     "encoders": {"<sha256 of image_encoder.onnx>": {"floor_ms": 41.9, "floor_ms_uniform": 40.2,
                  "macs": 17630000000, "best_rate_gmacs": 438.0, ...}}, ...}

Torch-free, onnx-free and numpy-free.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from vlmedge.errors import ArtifactError

FLOOR_SCHEMA = "vlmedge-gemm-floor/1"
FLOOR_ENV = "VLMEDGE_GEMM_FLOOR"


def default_floor_path() -> Path:
    """Where the floor file is read and written by default (see the module docstring)."""
    if os.environ.get(FLOOR_ENV):
        return Path(os.environ[FLOOR_ENV])
    if os.environ.get("VLMEDGE_CACHE_DIR"):  # the cache folder the runtime's other small files use
        return Path(os.environ["VLMEDGE_CACHE_DIR"]) / "gemm-floor.json"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vlmedge" / "gemm-floor.json"


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _positive(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ArtifactError(f"{where} must be a positive number, got {value!r}")
    return float(value)


def read_floor_file(path: str | Path) -> dict:
    """The floor file at ``path``, checked: ArtifactError naming the file and the field when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not a readable GEMM floor file ({e}); delete it or rerun "
                            "benchmarks/gemm_floor.py") from e
    if not isinstance(data, dict) or data.get("schema") != FLOOR_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"{path}: 'schema' must be {FLOOR_SCHEMA!r}, got {got!r}")
    if not isinstance(data.get("cpu"), str) or not data["cpu"]:
        raise ArtifactError(f"{path}: 'cpu' must be the CPU model name, got {data.get('cpu')!r}")
    threads = data.get("threads")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ArtifactError(f"{path}: 'threads' must be an int >= 1, got {threads!r}")
    encoders = data.get("encoders")
    if not isinstance(encoders, dict):
        raise ArtifactError(f"{path}: 'encoders' must be an object keyed by sha256, got {type(encoders).__name__}")
    for sha, entry in encoders.items():
        if not isinstance(entry, dict):
            raise ArtifactError(f"{path}: encoders[{sha[:12]!r}] must be an object, got {type(entry).__name__}")
        _positive(entry.get("floor_ms"), f"{path}: encoders[{sha[:12]!r}].floor_ms")
    return data


@dataclass(frozen=True)
class FloorMultiple:
    """The encoder time as a multiple of its GEMM floor."""

    encoder_ms: float  # the time compared
    floor_ms: float  # at the best int8 rate measured for each product's shape
    multiple: float  # encoder_ms / floor_ms
    floor_ms_uniform: float | None  # all MACs at the best rate of any shape (None if the file has none)
    threads: int  # threads the floor was measured with
    path: str  # the floor file
    # each weight read once per frame, as in the encoder (None if the file has none; gemm_floor.py explains)
    floor_ms_streamed: float | None = None

    def to_dict(self) -> dict:
        def r(v):
            return None if v is None else round(v, 3)

        return {"encoder_ms": round(self.encoder_ms, 3), "floor_ms": round(self.floor_ms, 3),
                "multiple": round(self.multiple, 3), "floor_ms_uniform": r(self.floor_ms_uniform),
                "floor_ms_streamed": r(self.floor_ms_streamed),
                "multiple_streamed": None if self.floor_ms_streamed is None
                else round(self.encoder_ms / self.floor_ms_streamed, 3),
                "threads": self.threads, "path": self.path}


def floor_multiple(encoder_ms: float, image_sha256: str, path: str | Path | None = None,
                   cpu: str | None = None) -> FloorMultiple | None:
    """``encoder_ms`` over the floor of the image encoder with this sha256, or None when there is no floor
    file, no entry for that encoder, or the file was measured on another CPU model (``cpu``, default this
    one). A floor file that is not one raises ArtifactError naming it."""
    path = Path(path) if path is not None else default_floor_path()
    if not path.is_file():
        return None
    data = read_floor_file(path)
    entry = data["encoders"].get(image_sha256)
    if entry is None or data["cpu"] != (cpu or cpu_model()):
        return None
    floor = float(entry["floor_ms"])
    optional = {key: _positive(entry[key], f"{path}: {key}") if entry.get(key) is not None else None
                for key in ("floor_ms_uniform", "floor_ms_streamed")}
    return FloorMultiple(float(encoder_ms), floor, float(encoder_ms) / floor, optional["floor_ms_uniform"],
                         data["threads"], str(path), optional["floor_ms_streamed"])


# ----------------------------------------------------------------------------- for `vlmedge bench`
def bench_floor(manifest, encoder: dict, providers=()) -> dict | None:
    """The ``encoder.gemm_floor`` entry of a ``vlmedge bench`` report: the bare encoder's p50 (and fastest
    call, ``min_ms``) over the floor of the bundle's image encoder, or None when the floor file has no entry
    for it on this CPU, or the encoder runs on a GPU (``providers``)."""
    if any(p not in ("CPUExecutionProvider", "OpenVINOExecutionProvider") for p in providers or ()):
        return None
    entry = manifest.files.get(manifest.image_encoder.file) or {}
    got = floor_multiple(float(encoder["p50_ms"]), str(entry.get("sha256", "")))
    if got is None:
        return None
    out = got.to_dict()
    if encoder.get("min_ms") is not None:
        out["min_multiple"] = round(float(encoder["min_ms"]) / got.floor_ms, 3)
    return out


def floor_lines(floor: dict | None, threads: int | None = None) -> list[str]:
    """The report line for ``bench_floor``'s entry (none without one)."""
    if not floor:
        return []
    note = "" if threads in (None, floor["threads"]) else f"; the floor was measured at {floor['threads']} threads"
    fastest = f", fastest call {floor['min_multiple']:.2f}x" if floor.get("min_multiple") is not None else ""
    streamed = (f"; {floor['multiple_streamed']:.2f}x the {floor['floor_ms_streamed']:.2f} ms with each weight read "
                "once per frame" if floor.get("floor_ms_streamed") is not None else "")
    return [f"{'  vs the GEMM floor':<34}   p50 {floor['multiple']:.2f}x the floor of {floor['floor_ms']:.2f} ms"
            f"{fastest}{streamed} (benchmarks/gemm_floor.py, {floor['path']}{note})"]
