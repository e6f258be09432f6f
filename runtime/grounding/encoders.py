"""ONNX Runtime sessions over a vlmedge bundle: the device-side image and text encoders. Torch-free.

    enc = BundleEncoders("bundles/tabletop")          # verifies every sha256 first
    image, patches = enc.encode_image(pixel_values)    # f32 [B,D], [B,h,w,D], L2-normalized
    texts = enc.encode_text(["the red cup"])          # f32 [N,D]

Everything (input size, names, precision, providers) comes from the bundle's manifest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from vlmedge.errors import ArtifactError, BackendUnavailable, ConfigError, InputError
from vlmedge.manifest import Manifest, open_bundle
from vlmedge.platforms import PLATFORMS

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
    """Image and text encoders of a bundle on ONNX Runtime.

    ``providers``: ONNX Runtime provider names (each must be available) or None for the best
    available for the bundle's platform. ``verify``: check every file's size and sha256 first.
    ``threads``: intra-op threads (default: physical cores). ``spinning``: ONNX Runtime's worker
    threads spin-wait between the parallel parts of a run and stop when it returns (see ``_session``);
    False: they sleep between parts (for machines where other busy processes need those cycles).
    """

    def __init__(self, bundle_dir: str | Path, providers: list[str] | None = None, verify: bool = True,
                 threads: int | None = None, spinning: bool = True):
        from vlmedge.tokenizer import ClipTokenizer

        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = open_bundle(self.bundle_dir, verify=verify)
        self.providers = choose_providers(self.manifest.platform, providers)
        self.threads = threads or physical_cores()
        if spinning not in (True, False):
            raise ConfigError(f"spinning must be True or False, got {spinning!r}")
        self.spinning = spinning
        self.tokenizer = ClipTokenizer.from_file(self.bundle_dir / self.manifest.tokenizer)
        m = self.manifest
        self._image = self._session(m.image_encoder.file)
        self._text = None  # created on first use: devices with text_embeddings.npz may never need it
        shape = m.image_encoder.inputs[0].shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.image_input = m.image_encoder.inputs[0].name
        self.text_input = m.text_encoder.inputs[0].name

    # -- sessions ------------------------------------------------------------------------
    def _session(self, name: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Worker threads spin-wait between the parallel regions of a run, and stop spinning when it
        # returns (force_spinning_stop), so they never compete with the loop's work between encodes.
        # Spinning made `vlmedge run` faster than sleeping workers, on a file and as a camera (`vlmedge
        # bench` measures both); spinning that outlived the run starved the capture and preprocessing
        # threads in an earlier loop.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.spinning:
            so.add_session_config_entry("session.force_spinning_stop", "1")
        path = self.bundle_dir / name
        try:
            return ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: ONNX Runtime could not load it with {self.providers} ({e})") from e

    @property
    def image_size(self) -> tuple[int, int]:
        return self.manifest.image_size

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    # -- encoders ------------------------------------------------------------------------
    def encode_image(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B,3,H,W] (``vlmedge.preprocess`` output) -> (image [B,D], patches [B,h,w,D])."""
        h, w = self.manifest.image_size
        x = pixel_values
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != (3, h, w) or x.shape[0] < 1:
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise InputError(f"pixel_values must be float32 [B,3,{h},{w}], got {got}")
        if x.dtype != np.float32:
            raise InputError(f"pixel_values must be float32, got {x.dtype}")
        x = np.ascontiguousarray(x)
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            parts = [self._image.run(None, {self.image_input: x[i:i + 1]}) for i in range(x.shape[0])]
            image, patches = (np.concatenate([p[k] for p in parts]) for k in range(2))
        else:
            image, patches = self._image.run(None, {self.image_input: x})
        return image.astype(np.float32, copy=False), patches.astype(np.float32, copy=False)

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        """int64 [N, context_length] token ids -> text_embeds float32 [N,D]."""
        n = self.manifest.context_length
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.shape[1] != n or ids.shape[0] < 1:
            got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, np.ndarray) else type(ids).__name__
            raise InputError(f"input_ids must be int64 [N,{n}], got {got}")
        if ids.dtype != np.int64:
            raise InputError(f"input_ids must be int64, got {ids.dtype}")
        if self._text is None:
            self._text = self._session(self.manifest.text_encoder.file)
        (out,) = self._text.run(None, {self.text_input: np.ascontiguousarray(ids)})
        return out.astype(np.float32, copy=False)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> text_embeds float32 [N,D], L2-normalized."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts \
                or not all(isinstance(t, str) for t in texts):
            raise InputError(f"texts must be a non-empty list of str, got {texts!r}")
        return self.encode_ids(np.asarray(self.tokenizer.encode(list(texts)), dtype=np.int64))

    def text_embeddings(self) -> tuple[list[str], np.ndarray] | None:
        """The bundle's precomputed vocabulary (queries, embeds [N,D]) or None."""
        name = self.manifest.text_embeddings
        if not name:
            return None
        path = self.bundle_dir / name
        try:
            with np.load(path, allow_pickle=False) as z:
                queries, embeds = [str(q) for q in z["queries"]], np.asarray(z["embeds"], dtype=np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise ArtifactError(f"{path}: expected arrays 'queries' and 'embeds' ({e})") from None
        if embeds.shape != (len(queries), self.manifest.embed_dim):
            raise ArtifactError(f"{path}: 'embeds' has shape {list(embeds.shape)}, expected "
                                f"[{len(queries)},{self.manifest.embed_dim}]")
        return queries, embeds
