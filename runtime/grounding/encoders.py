"""The device-side image and text encoders of a vlmedge bundle. Torch-free.

    enc = BundleEncoders("bundles/tabletop")          # verifies every sha256 first
    image, patches = enc.encode_image(pixel_values)    # f32 [B,D], [B,h,w,D], L2-normalized
    texts = enc.encode_text(["the red cup"])          # f32 [N,D]

Everything (input size, names, precision, providers) comes from the bundle's manifest. The graphs run on
ONNX Runtime, OpenVINO or a prebuilt TensorRT engine (``backend``; ``backends.py`` chooses and says why).
The text encoder costs nothing until a text is not in the vocabulary/cache: it is loaded on first use and
released again after ``text_idle_s`` seconds without use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from vlmedge.errors import BackendUnavailable, ConfigError, InputError
from vlmedge.manifest import Manifest, check_vocabulary, open_bundle
from vlmedge.platforms import PLATFORMS
from vlmedge.runtime.grounding import backends as _backends

DEFAULT_TEXT_IDLE_S = 60.0  # the text encoder is released after this long without use (None: never)

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads don't help GEMMs); at least 1."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores, cpu, phys = set(), None, "0"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id" and cpu in allowed:
                    cores.add((phys, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def choose_providers(platform: str, providers: list[str] | tuple[str, ...] | None) -> list[str]:
    """Requested providers must all exist; with none requested, the best available for ``platform``
    (its ``providers`` in ``vlmedge.platforms.PLATFORMS``, in order; the CPU for an unknown name)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime execution provider(s) {missing}",
                f"this onnxruntime ({ort.__version__}) has {available}; install onnxruntime-gpu "
                "(CUDA/TensorRT) or the JetPack onnxruntime wheel, or pass providers=['CPUExecutionProvider']")
        return list(providers)
    wanted = PLATFORMS[platform].providers if platform in PLATFORMS else ("CPUExecutionProvider",)
    chosen = [p for p in wanted if p in available]
    if chosen[:1] == ["CPUExecutionProvider"] and platform != "cpu":
        log.warning("bundle is for platform %s but only the CPU provider is available; running on CPU", platform)
    return chosen or ["CPUExecutionProvider"]


class BundleEncoders:
    """Image and text encoders of a bundle.

    ``providers``: ONNX Runtime provider names (each must be available) or None for the best available for
    the bundle's platform. ``verify``: check every file's size and sha256 first. ``threads``: intra-op
    threads (default: physical cores). ``spinning``: ONNX Runtime's worker threads spin-wait between the
    parallel parts of a run and stop when it returns; False (default): they sleep between parts. Off degrades
    least when other processes are busy on the cores (benchmarks/contention.py: spinning on slowed 2-2.6x
    beside one busy process, off 1.1-1.4x; on an idle machine on is 0-1.4x faster). ``backend``: "auto" (a
    TensorRT engine from ``vlmedge build-engine`` when there is one for this TensorRT and GPU, else the faster
    of ONNX Runtime and OpenVINO on this CPU, measured once and cached), "onnxruntime", "openvino" or
    "tensorrt"; None:
    ``$VLMEDGE_BACKEND`` when set, else "auto". ``text_idle_s``: release the text encoder after this many
    seconds without use (None: keep it; 0: release after every use). ``cache``: the auto choice's cache file
    (default in ``cache_dir()``). ``memory_budget_mb``: the resident memory ``auto`` keeps the process within
    (a number, or "none": speed alone; default ``$VLMEDGE_MEMORY_BUDGET_MB``, else 350)."""

    def __init__(self, bundle_dir: str | Path, providers: list[str] | None = None, verify: bool = True,
                 threads: int | None = None, spinning: bool = False, backend: str | None = None,
                 text_idle_s: float | None = DEFAULT_TEXT_IDLE_S, cache: str | Path | None = None,
                 memory_budget_mb: float | str | None = None):
        from vlmedge.tokenizer import ClipTokenizer

        backend = _backends.default_backend(backend)
        if spinning not in (True, False):
            raise ConfigError(f"spinning must be True or False, got {spinning!r}")
        if text_idle_s is not None and (isinstance(text_idle_s, bool) or not isinstance(text_idle_s, (int, float))
                                        or text_idle_s < 0):
            raise ConfigError(f"text_idle_s must be a number of seconds >= 0 or None, got {text_idle_s!r}")
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = open_bundle(self.bundle_dir, verify=verify)
        self.verified = verify  # every file matched its sha256 in the manifest
        self.providers = choose_providers(self.manifest.platform, providers)
        self.threads = threads or physical_cores()
        self.spinning = spinning
        self.text_idle_s = text_idle_s
        self.memory_budget_mb = _backends.memory_budget(memory_budget_mb)  # checked before anything loads
        self.tokenizer = ClipTokenizer.from_file(self.bundle_dir / self.manifest.tokenizer)
        m = self.manifest
        self.engine: Path | None = None  # the TensorRT engine of the image encoder, when one runs it
        self._provider_options = None
        self._image = self._image_session(backend, explicit_providers=bool(providers), cache=cache)
        self.backend = self._image.backend  # "onnxruntime" | "openvino" | "tensorrt"
        # the bundle file the image encoder runs (a TensorRT engine is built from image_encoder.onnx): OpenVINO's
        # own when the bundle has one (Manifest.image_file)
        self.image_file = m.image_file(self.backend)
        # The text encoder runs on OpenVINO only when asked for by name: it runs once per new text, so what
        # counts is loading it (lazily, again after each idle release), and ONNX Runtime loaded the full CLIP
        # text tower 2-3.5x faster with ~150 MB less memory here. Never on a TensorRT engine: build-engine
        # builds the image encoder's.
        self.text_backend = "openvino" if backend == "openvino" else "onnxruntime"
        # created on first use: devices with text_embeddings.npz may never need it; released when idle
        self._text = None
        self._text_lock = threading.Lock()
        self._text_last_use = 0.0
        self.text_loads = 0  # how often the text encoder was loaded (first use, and again after each release)
        self.encoded_texts: list[str] = []  # the last texts the text encoder ran on (what a vocabulary would spare)
        shape = m.image_encoder.inputs[0].shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.image_input = m.image_encoder.inputs[0].name
        self.text_input = m.text_encoder.inputs[0].name

    # -- sessions ------------------------------------------------------------------------
    def _image_session(self, backend: str, explicit_providers: bool, cache):
        """The image encoder's session: a TensorRT engine when one fits, else the chosen ONNX backend."""
        m = self.manifest
        trt_ep = "TensorrtExecutionProvider" in self.providers
        why_no_engine = f"--backend {backend}"
        if backend == "tensorrt" or (backend == "auto" and trt_ep):
            session, why_no_engine = self._tensorrt_session(backend)
            if session is not None:
                return session
        if trt_ep:
            self._tensorrt_provider(explicit_providers, why_no_engine)
        if backend == "auto" and explicit_providers:
            self.backend_choice = _backends.BackendChoice("onnxruntime", "auto: --providers names ONNX Runtime "
                                                          f"execution providers ({', '.join(self.providers)})")
            log.info("encoder backend: onnxruntime (%s)", self.backend_choice.reason)
        else:
            # OpenVINO asked for by name runs on the CPU even where the platform would pick a GPU provider;
            # only GPU providers named explicitly contradict it
            gpu = any(p in _backends.GPU_PROVIDERS for p in self.providers) and (
                backend != "openvino" or explicit_providers)
            self.backend_choice = _backends.resolve_backend(
                "onnxruntime" if backend == "tensorrt" else backend, self.bundle_dir, m, threads=self.threads,
                spinning=self.spinning, gpu_providers=gpu, cache=Path(cache) if cache else None,
                budget_mb="none" if self.memory_budget_mb is None else self.memory_budget_mb)
        return self._open(m.image_file(self.backend_choice.backend), self.backend_choice.backend)

    def _tensorrt_session(self, backend: str):
        """(the prebuilt engine's session, None) or (None, why there is none); --backend tensorrt: an error."""
        trt_version, gpu = _backends.tensorrt_environment()
        choice = _backends.select_engine(self.bundle_dir, self.manifest, trt_version, gpu)
        if choice.engine is not None:
            try:
                session = _backends.TensorRTSession(choice.engine, self.manifest.image_encoder.inputs[0].name)
            except Exception as e:  # a driver/runtime problem: fall back, loudly
                choice = _backends.EngineChoice(None, f"{choice.engine.name} did not load ({type(e).__name__}: {e})")
            else:
                self.engine = choice.engine
                # the text encoder stays on ONNX Runtime: without the TensorRT provider, which would build an
                # engine of its own for it at every start
                self.providers = [p for p in self.providers if p != "TensorrtExecutionProvider"] or \
                    ["CPUExecutionProvider"]
                self.backend_choice = _backends.BackendChoice("tensorrt",
                                                              f"engine {choice.engine.name}: {choice.reason}")
                log.info("image encoder: TensorRT engine %s (%s)", choice.engine, choice.reason)
                return session, None
        if backend == "tensorrt":
            raise BackendUnavailable(f"a TensorRT engine for {self.bundle_dir} ({choice.reason})",
                                     "build one with `vlmedge build-engine BUNDLE` on this device, or pass "
                                     "--backend auto")
        return None, choice.reason

    def _tensorrt_provider(self, explicit: bool, why_no_engine: str) -> None:
        """ONNX Runtime's TensorRT provider builds an engine of its own when a session starts (minutes): only
        when named in --providers, with its engine cache on and a warning; else it is dropped, with the reason."""
        if explicit:
            cache = _backends.cache_dir() / "ort-trt-engines"
            fp16 = self.manifest.precision in ("fp16", "int8")
            opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                    "trt_fp16_enable": str(fp16), "trt_int8_enable": str(self.manifest.precision == "int8")}
            self._provider_options = [opts if p == "TensorrtExecutionProvider" else {} for p in self.providers]
            log.warning("no prebuilt TensorRT engine used (%s); ONNX Runtime's TensorRT provider was asked for by "
                        "name: it builds an engine at the first start (minutes) and caches it in %s",
                        why_no_engine, cache)
            return
        self.providers = [p for p in self.providers if p != "TensorrtExecutionProvider"] or ["CPUExecutionProvider"]
        log.warning("no TensorRT engine used (%s); falling back to ONNX Runtime with %s", why_no_engine,
                    ", ".join(self.providers))

    def _open(self, name: str, backend: str):
        # a verified file's manifest sha256 names its OpenVINO IR: no hashing at each (re)open of the text encoder
        sha = self.manifest.files.get(name, {}).get("sha256") if self.verified else None
        return _backends.open_session(backend, self.bundle_dir / name, threads=self.threads, spinning=self.spinning,
                                      providers=self.providers, provider_options=self._provider_options, sha256=sha)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.manifest.image_size

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    # -- encoders ------------------------------------------------------------------------
    def encode_image(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B,3,H,W] (``vlmedge.preprocess`` output) -> (image [B,D], patches [B,h,w,D])."""
        self.release_idle_text_encoder()
        h, w = self.manifest.image_size
        x = pixel_values
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != (3, h, w) or x.shape[0] < 1:
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise InputError(f"pixel_values must be float32 [B,3,{h},{w}], got {got}")
        if x.dtype != np.float32:
            raise InputError(f"pixel_values must be float32, got {x.dtype}")
        x = np.ascontiguousarray(x)
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            parts = [self._image.run(x[i:i + 1]) for i in range(x.shape[0])]
            image, patches = (np.concatenate([p[k] for p in parts]) for k in range(2))
        else:
            image, patches = self._image.run(x)
        return image.astype(np.float32, copy=False), patches.astype(np.float32, copy=False)

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        """int64 [N, context_length] token ids -> text_embeds float32 [N,D]."""
        n = self.manifest.context_length
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.shape[1] != n or ids.shape[0] < 1:
            got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, np.ndarray) else type(ids).__name__
            raise InputError(f"input_ids must be int64 [N,{n}], got {got}")
        if ids.dtype != np.int64:
            raise InputError(f"input_ids must be int64, got {ids.dtype}")
        with self._text_lock:
            if self._text is None:
                t = time.perf_counter()
                self._text = self._open(self.manifest.text_encoder.file, self.text_backend)
                self.text_loads += 1
                log.info("text encoder loaded (%s, %.2f s): a text not in the vocabulary or cache", self.text_backend,
                         time.perf_counter() - t)
            (out,) = self._text.run(np.ascontiguousarray(ids))
            self._text_last_use = time.monotonic()
            self._arm_text_release()
        return out.astype(np.float32, copy=False)

    @property
    def text_loaded(self) -> bool:
        """Whether the text encoder is in memory now."""
        return self._text is not None

    def _arm_text_release(self) -> None:
        """(Under the text lock, after a use.) With ``text_idle_s`` 0 the text encoder goes at once; otherwise
        ``release_idle_text_encoder`` (called by every ``encode_image``) lets it go once idle long enough."""
        if self.text_idle_s == 0:
            self._release_text_locked(0.0)

    def release_idle_text_encoder(self) -> bool:
        """Release the text encoder if it went unused for ``text_idle_s`` seconds; True when it did. Cheap when
        there is nothing to do; ``encode_image`` calls it, so a running loop releases it within a frame (no
        timer thread: nothing is left running when the loop ends)."""
        if self._text is None or self.text_idle_s is None:
            return False
        idle = time.monotonic() - self._text_last_use
        if idle < self.text_idle_s:
            return False
        with self._text_lock:
            if self._text is None:
                return False
            self._release_text_locked(time.monotonic() - self._text_last_use)
        return True

    def _release_text_locked(self, idle: float) -> None:
        self._text = None
        _backends.release_free_heap()
        log.info("text encoder released after %.1f s without use (loaded again on the next new text)", idle)

    def release_text_encoder(self) -> None:
        """Release the text encoder now (it is loaded again when a new text needs it)."""
        with self._text_lock:
            if self._text is not None:
                self._release_text_locked(time.monotonic() - self._text_last_use)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> text_embeds float32 [N,D], L2-normalized."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts \
                or not all(isinstance(t, str) for t in texts):
            raise InputError(f"texts must be a non-empty list of str, got {texts!r}")
        out = self.encode_ids(np.asarray(self.tokenizer.encode(list(texts)), dtype=np.int64))
        self.encoded_texts = (self.encoded_texts + list(texts))[-64:]
        return out

    def text_embeddings(self) -> tuple[list[str], np.ndarray] | None:
        """The bundle's precomputed vocabulary (queries, embeds [N,D]) or None, read and checked like
        ``open_bundle`` does (finite unit rows of embed_dim)."""
        return check_vocabulary(self.bundle_dir, self.manifest)
