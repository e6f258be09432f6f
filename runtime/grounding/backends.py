"""Where a bundle's ONNX graphs run: ONNX Runtime, OpenVINO (the same ONNX files, no re-export) or a TensorRT
engine built by ``vlmedge build-engine``. Torch-free; OpenVINO and TensorRT are imported only when used.

    session = open_session("openvino", path, threads=2)      # .run(x) -> [outputs], .input_name
    choice = resolve_backend("auto", bundle_dir, manifest, threads=2, spinning=False)  # BackendChoice

``auto`` on the CPU: the faster of ONNX Runtime and OpenVINO for this bundle on this CPU (within the runtime's
memory budget), measured once (a short interleaved timing in a child process, so this process keeps neither
session nor its memory) and cached in a small JSON file (``cache_dir()``), keyed by the bundle's files, the
CPU model, both backends' versions, the thread count and spinning: any change measures again. Without
OpenVINO, or with a GPU provider, ``auto`` is ONNX Runtime. Every choice is logged with its reason.

TensorRT: ``select_engine`` (a pure function of the bundle's engine sidecars, the TensorRT version and the GPU)
picks the engine ``vlmedge build-engine`` wrote for exactly this TensorRT version and GPU, or says why there is
none; the runtime then falls back to ONNX Runtime without its TensorRT provider, which would otherwise build
an engine of its own at every start (minutes) without a word.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmedge.errors import ArtifactError, BackendUnavailable, ConfigError, check_choice
from vlmedge.gpu import cuda_device
from vlmedge.runtime.grounding.openvino_ir import MappedWeights, ir_for

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
OPENVINO_HINT = 'pip install "vlmedge[openvino]" (or: pip install openvino)'
CACHE_FILE = "backend-choice.json"
CACHE_VERSION = 1
# ``auto`` keeps ONNX Runtime (the path every platform has and the tests cover most) unless OpenVINO is faster
# by more than this share: two backends within a few percent swap places from one measurement to the next.
AUTO_MARGIN = 0.03
# ``auto`` keeps the runtime within this resident memory (the runtime's goal, checked by `vlmedge bench`): the faster
# backend is chosen unless it alone would take the process above it while the other would not. Each backend's
# share is measured in a fresh child of its own (ViT-B/16 int8 image encoder, 2026-11-30: OpenVINO +278 MB with its
# libraries, ONNX Runtime +146 MB), plus PIPELINE_RESERVE_MB for what the grounding pipeline holds around the
# encoder (frames, maps, regions, tokenizer: a Grounder process grew 26-40 MB beyond the encoder on ViT-B/16).
MEMORY_BUDGET_MB = 350.0
PIPELINE_RESERVE_MB = 30.0
MEASURE_ROUNDS = 8  # interleaved rounds of the auto measurement, 2 calls per backend each
# A measurement during which other processes kept more than this share of the CPUs busy is not kept as the
# answer: under load the two backends slow by different factors (benchmarks/contention.py: ONNX Runtime 1.4x,
# OpenVINO up to 2.5x with pinning), so a choice made then can be wrong on the quiet machine it later runs on.
# Such an entry is measured again at the next starts, at most LOADED_MEASUREMENTS times in all; after that the
# least loaded one stands (a machine that is always busy still starts in its usual time).
LOADED_SHARE = 0.25
LOADED_MEASUREMENTS = 3
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

# OpenVINO settings for latency on a small CPU: one stream (one frame at a time), the inference threads given,
# threads not pinned to cores: with pinning, a competing busy process on a pinned core stalls every parallel
# region (benchmarks/contention.py measures both; docs in README "Encoder backends").
OPENVINO_PINNING = False
# TBB's work split: "AUTO" (chunks sized at run time, idle threads steal) was 12% faster than "STATIC" on ViT-B/16
# and B/32 int8, 7/8 and 6/8 paired rounds (OpenVINO's own default ran like STATIC: 0.96-0.99 paired)
# (benchmarks/results/alternatives-openvino-partitioner-2026-11-30.md); None: OpenVINO's default
OPENVINO_PARTITIONER = "AUTO"


# ------------------------------------------------------------------------------------------------ sessions
class OrtSession:
    """One ONNX graph on ONNX Runtime. ``spinning``: worker threads spin-wait during a run and stop when it
    returns (``session.force_spinning_stop``); False: they sleep between the parallel parts. ``block_base``:
    ONNX Runtime's ``session.dynamic_block_base`` (a parallel loop handed out in blocks that shrink as it runs,
    so a thread that lost its core does less of it); 0, the default, leaves ONNX Runtime's own split: 4 did not
    win on both ViTs (benchmarks/results/amx-2026-12-02.md)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int, spinning: bool = False, providers=None,
                 provider_options=None, block_base: int = 0):
        import onnxruntime as ort

        if isinstance(block_base, bool) or not isinstance(block_base, int) or block_base < 0:
            raise ConfigError(f"ONNX Runtime block base must be an integer >= 0 (0: its own split), got {block_base!r}")

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Off by default: with other busy processes on the cores, spinning workers burn the time slices the
        # straggler needs (benchmarks/contention.py: 2-2.6x slower beside one busy process, off: 1.1-1.4x); on an
        # idle machine spinning was 0-1.4x faster. Spinning that outlived the run starved the capture and
        # preprocessing threads in an earlier loop, hence force_spinning_stop when it is on.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if spinning:
            so.add_session_config_entry("session.force_spinning_stop", "1")
        if block_base:
            so.add_session_config_entry("session.dynamic_block_base", str(block_base))
        self.providers = list(providers or ["CPUExecutionProvider"])
        try:
            self._s = ort.InferenceSession(str(path), so, providers=self.providers,
                                           provider_options=provider_options)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: ONNX Runtime could not load it with {self.providers} ({e})") from e
        self.input_name = self._s.get_inputs()[0].name
        self.version = ort.__version__

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._s.run(None, {self.input_name: x})


class OpenVinoSession:
    """One ONNX graph compiled by OpenVINO for the CPU, as the file is (OpenVINO reads ONNX itself).

    ``threads``: inference threads; one stream and the LATENCY hint (one frame at a time); ``pinning``: pin
    the threads to cores. Float parts run in f32 (``INFERENCE_PRECISION_HINT``, ``precision``): on CPUs with
    AMX OpenVINO would otherwise run them in bf16, which is not what the bundle was verified with (measured on
    an AMX Xeon, ViT-B/16 int8: 0.91x the time, patch agreement with fp32 98.85% against 99.17%;
    benchmarks/results/amx-2026-12-02.md). ``ir``: compile
    OpenVINO's IR of the file from the cache (``openvino_ir``), the weights mapped from disk and handed back
    once repacked; the numbers are the same as compiling the ONNX file (tests/test_openvino_ir.py).
    ``sha256``: the file's, already verified (finds its IR without hashing the file again)."""

    backend = "openvino"

    def __init__(self, path: str | Path, *, threads: int, pinning: bool = OPENVINO_PINNING, streams: int = 1,
                 ir: bool | None = None, partitioner: str | None = OPENVINO_PARTITIONER, sha256: str | None = None,
                 precision: str = "f32"):
        ov = import_openvino()
        ir = openvino_ir_enabled() if ir is None else ir
        self.version = openvino_version()
        self.config = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": int(streams),
                       "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": bool(pinning),
                       "INFERENCE_PRECISION_HINT": check_choice("OpenVINO precision", precision, ("f32", "bf16"))}
        if partitioner is not None:
            self.config["TBB_PARTITIONER"] = check_choice("OpenVINO partitioner", partitioner, ("AUTO", "STATIC"))
        # ir: compile OpenVINO's cached IR of the file, whose weights stay mapped from disk and are handed back
        # once repacked (openvino_ir: ~85 MB less for a ViT-B int8 encoder); False, or no cache: the ONNX file
        if Path(path).suffix == ".xml":  # already an IR (NNCF's): compiled as it is, re-saving it made it slower
            self.compiled_from = Path(path) if ir else None
        else:
            self.compiled_from = ir_for(path, self.version, cache_dir(), sha256) if ir else None
        self._compiled = self._compile(ov, Path(path))
        self._weights = MappedWeights(self.compiled_from.with_suffix(".bin")) if self.compiled_from else None
        if self._weights:
            self._weights.release()  # compiling read them all; the first inference reads them again to repack
        self._shapes: set[tuple] = set()  # input shapes run so far
        self.input_name = self._compiled.inputs[0].get_any_name()
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time

    def _compile(self, ov, path: Path):
        core = ov.Core()
        if self.compiled_from is not None and self.compiled_from != path:  # the cache's IR of the file
            try:
                return core.compile_model(str(self.compiled_from), "CPU", self.config)
            except Exception as e:  # a damaged cache entry must not stop a bundle that is fine
                log.warning("OpenVINO could not compile the cached IR %s (%s): compiling %s itself",
                            self.compiled_from, e, path)
                self.compiled_from = None
        try:
            return core.compile_model(str(path), "CPU", self.config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ArtifactError(f"{path}: OpenVINO {ov.get_version()} could not compile it for the CPU ({e})") from e

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            if self._weights and x.shape not in self._shapes:
                # the first run of a shape repacks the weights: hand their pages back while it does and after.
                # Not after every run: a few pages (small constants) are read by every inference, and handing
                # them back cost a page fault from disk per run (B/32: ~1 ms)
                with self._weights.releasing():
                    self._request.infer({0: x})
                self._shapes.add(x.shape)
            else:
                self._request.infer({0: x})
            # copies: the request reuses its output buffers on the next call
            return [np.array(self._request.get_output_tensor(i).data) for i in range(len(self._compiled.outputs))]


def openvino_ir_enabled() -> bool:
    """``$VLMEDGE_OPENVINO_IR``: "1" (default) compiles OpenVINO's cached IR of a bundle file, "0" the ONNX file
    itself (more memory; for a cache on a disk too small or too slow)."""
    value = os.environ.get("VLMEDGE_OPENVINO_IR", "1").strip() or "1"
    check_choice("VLMEDGE_OPENVINO_IR (environment)", value, ("0", "1"))
    return value == "1"


def open_session(backend: str, path: str | Path, *, threads: int, spinning: bool = False, providers=None,
                 provider_options=None, sha256: str | None = None):
    """A session of ``backend`` ("onnxruntime" or "openvino") over the ONNX file ``path`` (``sha256``: its
    verified hash, for OpenVINO's IR cache)."""
    if backend == "openvino":
        return OpenVinoSession(path, threads=threads, sha256=sha256)
    if backend == "onnxruntime":
        return OrtSession(path, threads=threads, spinning=spinning, providers=providers,
                          provider_options=provider_options)
    raise ConfigError(f"backend {backend!r} has no ONNX session; expected 'onnxruntime' or 'openvino'")


def memory_budget(value: float | str | None = None) -> float | None:
    """The memory budget of ``auto`` in MB: ``value`` (a number > 0, or "none"/"off": no budget, speed alone), else
    ``$VLMEDGE_MEMORY_BUDGET_MB`` (the same forms, checked naming the variable), else MEMORY_BUDGET_MB."""
    where = "memory budget"
    if value is None:
        value = os.environ.get("VLMEDGE_MEMORY_BUDGET_MB", "").strip() or MEMORY_BUDGET_MB
        where = "VLMEDGE_MEMORY_BUDGET_MB (environment)" if "VLMEDGE_MEMORY_BUDGET_MB" in os.environ else where
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = float("nan")
    if isinstance(value, bool) or not mb > 0 or mb == float("inf"):
        raise ConfigError(f"{where} must be a number of MB > 0 or 'none' (no budget: the faster backend), "
                          f"got {value!r}")
    return mb


def default_backend(backend: str | None) -> str:
    """``backend`` checked, or when None: ``$VLMEDGE_BACKEND`` (checked, naming the variable), else "auto"."""
    if backend is None:
        env = os.environ.get("VLMEDGE_BACKEND", "").strip()
        if not env:
            return "auto"
        check_choice("VLMEDGE_BACKEND (environment)", env, BACKENDS)
        return env
    check_choice("backend", backend, BACKENDS)
    return backend


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable("OpenVINO", OPENVINO_HINT) from e
    return ov


def openvino_version() -> str | None:
    """The installed OpenVINO's version, without importing it when it is absent."""
    import importlib.metadata

    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def release_free_heap() -> bool:
    """Hand memory that is allocated-then-freed back to the OS (glibc ``malloc_trim``; False elsewhere).

    After a session is released (the idle text encoder) and between the bench's pipeline runs: freed heap
    otherwise stays in glibc's arenas and in the resident figures although nothing holds it."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim(0)
    return True


# ---------------------------------------------------------------------------------------- machine, cache
def cpu_model() -> str:
    """The CPU as the auto choice keys it: model name, and a short hash of the feature flags (virtual machines
    often all report "Intel Xeon Processor"; the flags tell AVX-512/VNNI/AMX hosts apart) and usable CPUs."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    import platform

    name = name or platform.processor() or platform.machine()
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count() or 1
    digest = hashlib.sha256(flags.encode()).hexdigest()[:8] if flags else "noflags"
    return f"{name} [{ncpu} cpus, flags {digest}]"


def cache_dir() -> Path:
    """``$VLMEDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlmedge``, else ``~/.cache/vlmedge``."""
    if os.environ.get("VLMEDGE_CACHE_DIR"):
        return Path(os.environ["VLMEDGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlmedge"


def bundle_hash(manifest) -> str:
    """The encoders' sha256 from the (verified) manifest, hashed together: the bundle as the choice sees it."""
    names = (manifest.image_encoder.file, manifest.text_encoder.file) + (
        (manifest.image_openvino.file,) if manifest.image_openvino is not None else ())
    text = "|".join(f"{n}={manifest.files.get(n, {}).get('sha256', '?')}" for n in names)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def choice_key(bundle: str, cpu: str, versions: dict, threads: int, spinning: bool) -> str:
    v = ",".join(f"{k} {versions[k]}" for k in sorted(versions))
    return f"bundle {bundle} | cpu {cpu} | {v} | threads {threads} | spinning {'on' if spinning else 'off'}"


def read_cache(path: Path) -> dict:
    """The cached choices ({key: entry}); empty when the file is missing or not ours (with a warning)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("backend choice cache %s unreadable (%s); measuring again", path, e)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        log.warning("backend choice cache %s is not a version-%d cache; measuring again", path, CACHE_VERSION)
        return {}
    return data["entries"]


def write_cache(path: Path, entries: dict, keep: int = 64) -> bool:
    """Write atomically (keeping the newest ``keep`` entries); False (with a warning) when it cannot be written."""
    newest = dict(sorted(entries.items(), key=lambda kv: kv[1].get("measured_at", ""))[-keep:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".backend-choice-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "entries": newest}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning("could not write the backend choice cache %s (%s); the next start measures again", path, e)
        return False


# ------------------------------------------------------------------------------------------- auto choice
@dataclass(frozen=True)
class BackendChoice:
    """The backend the encoders run on and why (``reason`` is what the log says)."""

    backend: str  # "onnxruntime" | "openvino" | "tensorrt"
    reason: str
    measured_ms: dict = field(default_factory=dict)  # backend -> median ms of the auto measurement, when one ran
    cached: bool = False  # the measurement came from the cache file


def decide_backend(requested: str, *, openvino: str | None, gpu_providers: bool,
                   cached: dict | None = None, measured_ms: dict | None = None,
                   base_mb: float | None = None, budget_mb: float | None = MEMORY_BUDGET_MB) -> BackendChoice | None:
    """The choice, or None when ``auto`` needs a measurement first (pure: no I/O).

    ``openvino``: its version, None when absent; ``gpu_providers``: the ONNX Runtime providers include a GPU
    one; ``cached``: this key's cache entry; ``measured_ms``: a fresh measurement ({backend: median ms, and
    "resident_mb": {backend: MB}}); ``base_mb``: this process's resident memory before the image encoder
    loads: with it, the faster backend must keep the process within ``budget_mb`` (None: no budget) when the other
    would."""
    check_choice("backend", requested, BACKENDS)
    if requested == "openvino":
        if openvino is None:
            raise BackendUnavailable("OpenVINO (--backend openvino)", OPENVINO_HINT)
        if gpu_providers:
            raise ConfigError("--backend openvino runs on the CPU; it cannot be combined with GPU providers "
                              "(drop --providers, or use --backend onnxruntime)")
        return BackendChoice("openvino", "asked for (--backend openvino)")
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "asked for (--backend onnxruntime)")
    if requested == "tensorrt":
        return BackendChoice("tensorrt", "asked for (--backend tensorrt)")
    if gpu_providers:
        return BackendChoice("onnxruntime", "auto: GPU execution provider available (OpenVINO here runs on the CPU)")
    if openvino is None:
        return BackendChoice("onnxruntime", f"auto: OpenVINO is not installed ({OPENVINO_HINT} to compare)")
    if measured_ms is None and cached is not None:
        measured_ms = cached.get("measured_ms")
        from_cache = True
    else:
        from_cache = False
    if from_cache and _loaded(measured_ms) and int(cached.get("loaded_measurements", 1)) < LOADED_MEASUREMENTS:
        return None  # measured while other processes were busy: measure again (see LOADED_SHARE)
    if measured_ms and measured_ms.get("openvino_error"):
        return BackendChoice("onnxruntime", f"auto: OpenVINO cannot run this bundle ({measured_ms['openvino_error']})",
                             dict(measured_ms), from_cache)
    if not measured_ms or not all(isinstance(measured_ms.get(b), (int, float)) for b in ("onnxruntime", "openvino")):
        return None
    ort_ms, ov_ms = float(measured_ms["onnxruntime"]), float(measured_ms["openvino"])
    when = "measured earlier on this CPU (cache)" if from_cache else "measured now"
    figures = f"image encoder median ONNX Runtime {ort_ms:.2f} ms, OpenVINO {ov_ms:.2f} ms, {when}"
    mem = measured_ms.get("resident_mb")
    if isinstance(mem, dict) and all(isinstance(mem.get(b), (int, float)) for b in ("onnxruntime", "openvino")):
        figures += f"; resident memory +{mem['onnxruntime']:.0f} MB vs +{mem['openvino']:.0f} MB"
    others = measured_ms.get("others_cpu")
    if isinstance(others, (int, float)):
        figures += f"; other processes used {others:.0%} of the CPUs meanwhile"
    if ov_ms < ort_ms * (1 - AUTO_MARGIN):
        known = isinstance(mem, dict) and all(isinstance(mem.get(b), (int, float)) for b in ("openvino", "onnxruntime"))
        if base_mb is not None and budget_mb is not None and known:
            ov_total, ort_total = (base_mb + PIPELINE_RESERVE_MB + mem[b] for b in ("openvino", "onnxruntime"))
            if ov_total > budget_mb >= ort_total:
                return BackendChoice("onnxruntime", f"auto: OpenVINO is {ort_ms / ov_ms:.2f}x faster but would take "
                                     f"this process to ~{ov_total:.0f} MB, above the {budget_mb:.0f} MB memory "
                                     f"budget (ONNX Runtime: ~{ort_total:.0f} MB; --backend openvino to choose it "
                                     f"anyway, or --memory-budget) ({figures})", dict(measured_ms), from_cache)
        return BackendChoice("openvino", f"auto: OpenVINO is {ort_ms / ov_ms:.2f}x faster ({figures})",
                             dict(measured_ms), from_cache)
    why = (f"OpenVINO is not faster by more than {AUTO_MARGIN:.0%}" if ov_ms < ort_ms
           else f"ONNX Runtime is {ov_ms / ort_ms:.2f}x faster")
    return BackendChoice("onnxruntime", f"auto: {why} ({figures})", dict(measured_ms), from_cache)


def _loaded(measured_ms) -> bool:
    others = measured_ms.get("others_cpu") if isinstance(measured_ms, dict) else None
    return isinstance(others, (int, float)) and others > LOADED_SHARE


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine from /proc/stat, ticks this process used): Linux; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy, int(own[11]) + int(own[12])  # utime + stime (fields 14 and 15 of stat)


def others_cpu_share(before: tuple[int, int] | None, after: tuple[int, int] | None, seconds: float) -> float | None:
    """Share of all CPUs that other processes kept busy between two ``_cpu_ticks`` readings ``seconds`` apart."""
    if before is None or after is None or seconds <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    ncpu = os.cpu_count() or 1  # /proc/stat's first line sums every online CPU
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(min(max(others / hz / (seconds * ncpu), 0.0), 1.0), 3)


def _file_for(image_encoder, backend: str):
    """The image encoder file of ``backend``: ``image_encoder`` is one file for both, or {backend: file} (a bundle
    with an OpenVINO file of its own, ``Manifest.image_file``)."""
    return image_encoder[backend] if isinstance(image_encoder, dict) else image_encoder


def measure_backends(image_encoder, input_shape: tuple[int, ...], *, threads: int, spinning: bool,
                     rounds: int = MEASURE_ROUNDS, per_round: int = 2, warmup: int = 3) -> dict:
    """Median ms of batch-1 encodes on each backend, interleaved round by round (the order alternates), so that
    load from other processes hits both alike. Loads both sessions: run it in a child (``measure_in_child``).
    ``image_encoder``: one file, or {backend: file} (``_file_for``)."""
    x = _input(input_shape)
    sessions = {"onnxruntime": open_session("onnxruntime", _file_for(image_encoder, "onnxruntime"), threads=threads,
                                            spinning=spinning)}
    try:
        sessions["openvino"] = open_session("openvino", _file_for(image_encoder, "openvino"), threads=threads)
    except (ArtifactError, BackendUnavailable) as e:  # e.g. an ONNX Runtime-only operator in the graph
        return {"onnxruntime": None, "openvino": None, "openvino_error": str(e)}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(x)
    ticks, t0 = _cpu_ticks(), time.perf_counter()
    times = interleaved_times(sessions, x, rounds, per_round)
    out: dict = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    out["others_cpu"] = others_cpu_share(ticks, _cpu_ticks(), time.perf_counter() - t0)
    return out


def interleaved_times(sessions: dict, x: np.ndarray, rounds: int, per_round: int) -> dict[str, list[float]]:
    """ms of every ``run(x)`` per session, ``per_round`` calls each in ``rounds`` rounds whose order alternates,
    so that load from other processes hits every session alike (auto's measurement, `vlmedge bench`)."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            for _ in range(per_round):
                t = time.perf_counter()
                sessions[name].run(x)
                times[name].append((time.perf_counter() - t) * 1e3)
    return times


def _input(input_shape) -> np.ndarray:
    shape = tuple(1 if not isinstance(d, int) or d < 1 else d for d in input_shape)
    return np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)


def measure_resident(image_encoder, input_shape, backend: str, *, threads: int, spinning: bool,
                     warmup: int = 3) -> float | None:
    """MB of resident memory one backend's image encoder adds to a process (loaded and run ``warmup`` times;
    OpenVINO's includes its libraries). Run it in a fresh child per backend (``measure_in_child``): measured
    one after the other in one process, the second reuses the heap the first freed (ViT-B/16 int8: OpenVINO
    +219 MB that way, +275 MB alone; see benchmarks/results)."""
    before = _rss_mb()
    session = open_session(backend, _file_for(image_encoder, backend), threads=threads, spinning=spinning)
    x = _input(input_shape)
    for _ in range(warmup):
        session.run(x)
    release_free_heap()
    after = _rss_mb()
    return None if before is None or after is None else round(after - before, 1)


def memory_mb() -> dict:
    """VmRSS and VmHWM (peak) of this process in MB (Linux; empty elsewhere)."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MB
    except (OSError, ValueError):
        pass
    return out


def _rss_mb() -> float | None:
    return memory_mb().get("VmRSS")


def measure_in_child(image_encoder, input_shape, threads: int, spinning: bool, timeout: float = 600) -> dict:
    """``measure_backends`` in a child process (this process never holds the loser's session or its memory), then
    each backend's resident memory (``measure_resident``) in a fresh child of its own. ``image_encoder``: one file,
    or {backend: file}."""
    files = {k: str(v) for k, v in image_encoder.items()} if isinstance(image_encoder, dict) else str(image_encoder)
    opts = {"image_encoder": files, "input_shape": list(input_shape), "threads": threads, "spinning": spinning}
    out = _child(opts, timeout)
    if not out.get("openvino_error"):
        out["resident_mb"] = {b: _child({**opts, "resident": b}, timeout) for b in ("onnxruntime", "openvino")}
    return out


def _child(opts: dict, timeout: float):
    arg = json.dumps(opts)
    try:
        proc = subprocess.run([sys.executable, "-m", "vlmedge.runtime.grounding.backends", arg],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"the backend measurement (timed out after {timeout:.0f} s)",
                                 "pass --backend onnxruntime or --backend openvino") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise BackendUnavailable(f"the backend measurement ({last})",
                                 "pass --backend onnxruntime or --backend openvino")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resolve_backend(requested: str, bundle_dir: Path, manifest, *, threads: int, spinning: bool,
                    gpu_providers: bool = False, cache: Path | None = None, measure=None,
                    budget_mb: float | str | None = None) -> BackendChoice:
    """The backend for this bundle here (see the module docstring); logs the choice and its reason.

    ``cache``: the cache file (default ``cache_dir() / CACHE_FILE``); ``measure``: the measurement function
    (default ``measure_in_child``), called with (image_encoder, input_shape, threads, spinning); ``budget_mb``:
    see ``memory_budget``."""
    budget = memory_budget(budget_mb)
    ov = openvino_version()
    choice = decide_backend(requested, openvino=ov, gpu_providers=gpu_providers)
    if choice is None:
        path = cache or cache_dir() / CACHE_FILE
        versions = {"onnxruntime": onnxruntime_version(), "openvino": ov}
        if ov:  # its memory differs by the weights (openvino_ir): a measurement of one form is not the other's
            versions["openvino compiles"] = "ir" if openvino_ir_enabled() else "onnx"
        key = choice_key(bundle_hash(manifest), cpu_model(), versions, threads, spinning)
        entries = read_cache(path)
        # heap freed but kept by glibc is not this process's (parsing tokenizer.json leaves ~24 MB: 130 -> 106 MB in
        # `vlmedge run`, which put OpenVINO's prediction over the budget although it ran at 328 MB): hand it back
        release_free_heap()
        base = _rss_mb()
        choice = decide_backend(requested, openvino=ov, gpu_providers=False, cached=entries.get(key), base_mb=base,
                                budget_mb=budget)
        if choice is None:
            log.info("auto backend: measuring ONNX Runtime and OpenVINO on %s once for this CPU and these versions "
                     "(a few seconds; cached in %s)",
                     " and ".join(dict.fromkeys(manifest.image_file(b) for b in ("onnxruntime", "openvino"))), path)
            before = entries.get(key)
            before = before if isinstance(before, dict) and _loaded(before.get("measured_ms")) else None
            if before is not None:
                log.info("auto backend: the cached measurement was taken while other processes used %.0f%% of the "
                         "CPUs; measuring again", 100 * before["measured_ms"]["others_cpu"])
            files = {b: bundle_dir / manifest.image_file(b) for b in ("onnxruntime", "openvino")}
            one = files["openvino"] == files["onnxruntime"]  # each backend on the file it would run
            ms = (measure or measure_in_child)(files["openvino"] if one else files,
                                               tuple(manifest.image_encoder.inputs[0].shape), threads, spinning)
            loaded = 1 + int(before.get("loaded_measurements", 1)) if before is not None else 1
            if before is not None and _loaded(ms) and (before["measured_ms"].get("others_cpu") or 0) <= \
                    (ms.get("others_cpu") or 0):
                ms = before["measured_ms"]  # loaded again, and more: the less loaded measurement stands
            choice = decide_backend(requested, openvino=ov, gpu_providers=False, measured_ms=ms, base_mb=base,
                                    budget_mb=budget)
            entries[key] = {"choice": choice.backend, "measured_ms": ms, "reason": choice.reason,
                            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "bundle": str(bundle_dir), "cpu": cpu_model(), "versions": versions,
                            "threads": threads, "spinning": spinning, "loaded_measurements": loaded}
            if _loaded(ms):
                log.warning("auto backend: other processes used %.0f%% of the CPUs during the measurement; the "
                            "choice is measured again at the next start (up to %d times)", 100 * ms["others_cpu"],
                            LOADED_MEASUREMENTS)
            write_cache(path, entries)
    log.info("encoder backend: %s (%s)", choice.backend, choice.reason)
    return choice


# --------------------------------------------------------------------------------------------- TensorRT
@dataclass(frozen=True)
class EngineChoice:
    """The TensorRT engine to run (None: fall back) and why."""

    engine: Path | None
    reason: str
    sidecar: dict = field(default_factory=dict)


# engines of the bundle's precision first, then the faster kinds
_PRECISION_RANK = {"int8": 0, "fp16": 1, "fp32": 2}


def _sm(cc) -> str:
    return f"sm{cc[0]}{cc[1]}"


def select_engine(bundle_dir: str | Path, manifest, trt_version: str | None,
                  gpu: tuple[str, tuple[int, int]] | None) -> EngineChoice:
    """The engine ``vlmedge build-engine`` wrote for this TensorRT version and GPU, or None and why.

    Reads the JSON sidecars (``*.engine.json``) in the bundle folder; an engine is used only when its sidecar
    says it was built from this bundle's image encoder (sha256), with exactly this TensorRT version (engines
    do not load across versions, patch releases included) and for this GPU's compute capability. ``gpu``:
    (name, (major, minor)) or None when there is no CUDA GPU; ``trt_version``: None when TensorRT is absent."""
    bundle_dir = Path(bundle_dir)
    if trt_version is None:
        return EngineChoice(None, "TensorRT is not installed")
    if gpu is None:
        return EngineChoice(None, "no CUDA GPU")
    gpu_name, cc = gpu
    onnx_sha = manifest.files.get(manifest.image_encoder.file, {}).get("sha256")
    usable, rejected = [], []
    for side in sorted(bundle_dir.glob("*.engine.json")):
        engine = side.with_name(side.name[:-len(".json")])
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            built_trt, built_cc = str(meta["tensorrt_version"]), tuple(int(v) for v in meta["compute_capability"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            rejected.append(f"{side.name}: unreadable sidecar ({type(e).__name__}: {e})")
            continue
        if not engine.is_file():
            rejected.append(f"{engine.name}: sidecar without the engine file")
        elif meta.get("onnx_sha256") != onnx_sha:
            rejected.append(f"{engine.name}: built from another image encoder (sha256 differs from the bundle's)")
        elif built_trt != trt_version:
            rejected.append(f"{engine.name}: built with TensorRT {built_trt}, this is TensorRT {trt_version}")
        elif built_cc != tuple(cc):
            rejected.append(f"{engine.name}: built for {meta.get('gpu', '?')} ({_sm(built_cc)}), this GPU is "
                            f"{gpu_name} ({_sm(cc)})")
        else:
            usable.append((engine, meta))
    if usable:
        bundle_precision = manifest.precision

        def rank(item):
            p = item[1].get("precision")
            return (p != bundle_precision, _PRECISION_RANK.get(p, 9), item[1].get("built_at", "") or "")

        usable.sort(key=rank)
        engine, meta = usable[0]
        return EngineChoice(engine, f"built for TensorRT {trt_version} on {_sm(cc)} ({meta.get('precision')}) from "
                                    "this bundle's image encoder", meta)
    hint = f"build one on this device: vlmedge build-engine {bundle_dir}"
    if not rejected:
        return EngineChoice(None, f"no engine in {bundle_dir} ({hint})")
    return EngineChoice(None, "no engine for this TensorRT and GPU: " + "; ".join(rejected) + f" ({hint})")


def tensorrt_environment() -> tuple[str | None, tuple[str, tuple[int, int]] | None]:
    """(TensorRT version or None, (GPU name, compute capability) or None) of this machine. Thin: imports
    tensorrt only when it is installed; the GPU through the driver library (libcuda), no other package."""
    import importlib.util

    version = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            version = str(tensorrt.__version__)
        except Exception as e:  # a broken install: say so, run without it
            log.warning("TensorRT is installed but does not import (%s)", e)
    try:
        return version, cuda_device(0)
    except BackendUnavailable:
        return version, None


class TensorRTSession:
    """A prebuilt TensorRT engine (TensorRT >= 8.5 tensor API), device memory through libcudart with ctypes.

    Thin on purpose: the selection is ``select_engine``; this only moves arrays in and out. NOT RUN on a GPU in
    this repository's tests (no GPU here): ``benchmarks/gpu_check.sh`` exercises it where one is."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, input_name: str):
        import ctypes

        import tensorrt as trt

        self._trt = trt
        self._rt = None
        for name in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2"):
            try:
                self._rt = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self._rt is None:
            raise BackendUnavailable("the CUDA runtime library (libcudart)", "install the CUDA runtime / JetPack")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{engine_path}: TensorRT {trt.__version__} could not deserialize it")
        self._context = self._engine.create_execution_context()
        self.input_name = input_name
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._stream = ctypes.c_void_p()
        self._check(self._rt.cudaStreamCreate(ctypes.byref(self._stream)), "cudaStreamCreate")
        self.version = trt.__version__

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise BackendUnavailable(f"CUDA ({what} returned error {code})")

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        import ctypes

        trt, rt = self._trt, self._rt
        x = np.ascontiguousarray(x)
        self._context.set_input_shape(self.input_name, tuple(x.shape))
        buffers, outs = [], []
        try:
            for name, host in [(self.input_name, x)] + [
                    (n, np.empty(tuple(self._context.get_tensor_shape(n)),
                                 trt.nptype(self._engine.get_tensor_dtype(n)))) for n in self._outputs]:
                ptr = ctypes.c_void_p()
                self._check(rt.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(host.nbytes, 1))), "cudaMalloc")
                buffers.append(ptr)
                self._context.set_tensor_address(name, ptr.value)
                if name == self.input_name:
                    self._check(rt.cudaMemcpy(ptr, host.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(host.nbytes),
                                              1), "cudaMemcpy H2D")  # cudaMemcpyHostToDevice
                else:
                    outs.append((host, ptr))
            if not self._context.execute_async_v3(self._stream.value):
                raise ArtifactError("TensorRT execute_async_v3 failed")
            self._check(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            for host, ptr in outs:
                self._check(rt.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), ptr, ctypes.c_size_t(host.nbytes),
                                          2), "cudaMemcpy D2H")  # cudaMemcpyDeviceToHost
            return [host.astype(np.float32, copy=False) for host, _ in outs]
        finally:
            for ptr in buffers:
                rt.cudaFree(ptr)


def _main(argv: list[str]) -> int:
    """``python -m vlmedge.runtime.grounding.backends '{json}'``: the auto measurement (``measure_in_child``)."""
    opts = json.loads(argv[0])
    args = (opts["image_encoder"], tuple(opts["input_shape"]))
    kw = {"threads": int(opts["threads"]), "spinning": bool(opts["spinning"])}
    if opts.get("resident"):
        print(json.dumps(measure_resident(*args, opts["resident"], **kw)))
    else:
        print(json.dumps(measure_backends(*args, **kw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
