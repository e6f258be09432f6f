"""Check a bundle end to end: hashes and manifest, both encoders on sample inputs, and (with the
source model at hand) parity and latency against PyTorch eager."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmedge.errors import ArtifactError

log = logging.getLogger(__name__)

SAMPLE_TEXTS = ("a photo of a red cup", "the blue ball", "background")
NORM_TOL = {"fp32": 1e-4, "fp16": 5e-3, "int8": 1e-3}  # |‖e‖ - 1| allowed per precision
SAME_ENCODER_COS = 0.9999  # the two files of one image encoder (cpu int8: ORT CPU form, OpenVINO QDQ graph)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [..., D] arrays, flattened to [M]."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def agreement(ref: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              text_embeds: np.ndarray) -> dict:
    """Image-embedding cosine (mean/min) and per-patch argmax agreement over ``text_embeds``.

    A patch agrees when the query with the highest patch-text similarity is the same for both
    encoders (the label a grounding map would give it).
    """
    cos = cosine_rows(ref[0], test[0])
    labels_ref = (ref[1] @ text_embeds.T).argmax(-1)
    labels_test = (test[1] @ text_embeds.T).argmax(-1)
    patch_cos = cosine_rows(ref[1], test[1])
    return {"image_cosine_mean": float(cos.mean()), "image_cosine_min": float(cos.min()),
            "patch_cosine_mean": float(patch_cos.mean()), "patch_cosine_min": float(patch_cos.min()),
            "patch_argmax_agreement": float((labels_ref == labels_test).mean()),
            "frames": int(ref[0].shape[0]), "queries": int(text_embeds.shape[0])}


@dataclass
class VerifyReport:
    bundle: str
    checks: list[str] = field(default_factory=list)  # what passed, one line each
    parity: dict | None = None  # vs the torch source
    latency_ms: dict | None = None  # per image, batch 1

    def summary(self) -> str:
        lines = [f"bundle {self.bundle}: OK"] + [f"  ok  {c}" for c in self.checks]
        if self.parity:
            p = self.parity
            lines.append(f"  parity vs torch: image max|d| {p['image_max_abs']:.2e} "
                         f"cos min {p['image_cosine_min']:.6f}; "
                         f"patches max|d| {p['patch_max_abs']:.2e} cos min {p['patch_cosine_min']:.6f}; "
                         f"text max|d| {p['text_max_abs']:.2e}")
        if self.latency_ms:
            lat = self.latency_ms
            lines.append(f"  image encoder latency (batch 1, median): onnxruntime {lat['onnxruntime']:.2f} ms, "
                         f"torch eager {lat['torch_eager']:.2f} ms ({lat['torch_eager'] / lat['onnxruntime']:.2f}x)")
        return "\n".join(lines)


def _check_unit(name: str, x: np.ndarray, tol: float, shape: tuple, where: str) -> None:
    if x.shape != shape:
        raise ArtifactError(f"{where}: output {name} has shape {list(x.shape)}, expected {list(shape)}")
    if not np.isfinite(x).all():
        raise ArtifactError(f"{where}: output {name} has NaN/inf values")
    dev = float(np.abs(np.linalg.norm(x.astype(np.float64), axis=-1) - 1).max())
    if dev > tol:
        raise ArtifactError(f"{where}: output {name} is not L2-normalized (| |e| - 1 | up to {dev:.2e} > {tol:.0e})")


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def verify_bundle(bundle_dir: str | Path, against=None, *, runs: int = 5, seed: int = 0,
                  providers: list[str] | None = None) -> VerifyReport:
    """Verify ``bundle_dir``; ``against`` (a checkpoint path or hub id, a LoadedClip or a CLIP module) adds
    parity and latency vs PyTorch eager."""
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    report = VerifyReport(str(bundle_dir))
    enc = BundleEncoders(bundle_dir, providers=providers or ["CPUExecutionProvider"], verify=True)
    m = enc.manifest
    report.checks.append(f"manifest format {m.format_version}, every field in range, {len(m.files)} files inside the "
                         "bundle, sizes and sha256 match")
    report.checks.append("ONNX graphs: self-contained (no external data), inputs and outputs as the manifest says")
    tol = NORM_TOL[m.precision]
    h, w = m.image_size
    gh, gw = m.patch_grid
    d = m.embed_dim
    rng = np.random.default_rng(seed)
    batch = 1 if enc.static_batch == 1 else 2
    pixels = rng.normal(0, 1, (batch, 3, h, w)).astype(np.float32)
    image, patches = enc.encode_image(pixels)
    where = str(Path(bundle_dir) / m.image_encoder.file)
    _check_unit("image_embeds", image, tol, (batch, d), where)
    _check_unit("patch_embeds", patches, tol, (batch, gh, gw, d), where)
    report.checks.append(f"image encoder: [{batch},3,{h},{w}] -> image_embeds [{batch},{d}], "
                         f"patch_embeds [{batch},{gh},{gw},{d}], unit norm")
    if m.image_openvino is not None:
        report.checks.append(_same_encoder(Path(bundle_dir), m, pixels))
    ids = np.asarray(enc.tokenizer.encode(list(SAMPLE_TEXTS)), dtype=np.int64)
    text = enc.encode_ids(ids)
    where = str(Path(bundle_dir) / m.text_encoder.file)
    _check_unit("text_embeds", text, NORM_TOL["fp16"] if m.precision == "fp16" else NORM_TOL["fp32"],
                (len(SAMPLE_TEXTS), d), where)
    report.checks.append(f"text encoder: [{len(SAMPLE_TEXTS)},{m.context_length}] -> text_embeds "
                         f"[{len(SAMPLE_TEXTS)},{d}], unit norm")
    vocab = enc.text_embeddings()
    if vocab is not None:
        queries, embeds = vocab
        fresh = enc.encode_text(queries)
        worst = float(cosine_rows(fresh, embeds).min())
        if not worst >= 0.99:  # NaN included
            raise ArtifactError(f"{Path(bundle_dir) / m.text_embeddings}: stored embeddings disagree with the "
                                f"text encoder (cosine {worst:.4f} < 0.99)")
        report.checks.append(f"text_embeddings: {len(queries)} queries match the text encoder (cos min {worst:.5f})")
    if against is not None:
        report.parity, report.latency_ms = _against_torch(enc, against, pixels, ids, runs)
    return report


def _same_encoder(root: Path, m, pixels: np.ndarray) -> str:
    """OpenVINO's image encoder file is the image encoder in another form: both files on ONNX Runtime, the same
    outputs (cosine >= SAME_ENCODER_COS), or an ArtifactError naming the file."""
    from vlmedge.runtime.grounding.backends import open_session

    outs = [open_session("onnxruntime", root / f, threads=1).run(pixels)[:2]
            for f in (m.image_encoder.file, m.image_openvino.file)]
    d = m.embed_dim
    worst = min(float(cosine_rows(a.reshape(-1, d), b.reshape(-1, d)).min()) for a, b in zip(*outs))
    if not worst >= SAME_ENCODER_COS:  # NaN included
        raise ArtifactError(f"{root / m.image_openvino.file}: OpenVINO's image encoder disagrees with "
                            f"{m.image_encoder.file} (cosine {worst:.5f} < {SAME_ENCODER_COS}); they must be one "
                            "encoder in two forms: re-export the bundle")
    return (f"{m.image_openvino.file} (OpenVINO's image encoder): the outputs of {m.image_encoder.file} "
            f"(ONNX Runtime on both, cos min {worst:.6f})")


def _against_torch(enc, against, pixels: np.ndarray, ids: np.ndarray, runs: int) -> tuple[dict, dict]:
    import torch

    from vlmedge.export.loaders import LoadedClip, load_clip

    m = enc.manifest
    if isinstance(against, LoadedClip):
        model = against.model
    elif isinstance(against, torch.nn.Module):
        model = against
    else:
        model = load_clip(against, dense=m.dense_head, image_size=m.image_size).model
    model = model.eval()
    if tuple(model.image_size) != tuple(m.image_size):
        model.set_image_size(m.image_size)
    with torch.no_grad():
        ref_img, ref_patch = (t.numpy() for t in model.encode_image(torch.from_numpy(pixels)))
        ref_text = model.encode_text(torch.from_numpy(ids)).numpy()
    img, patch = enc.encode_image(pixels)
    text = enc.encode_ids(ids)
    parity = {"image_max_abs": float(np.abs(img - ref_img).max()),
              "patch_max_abs": float(np.abs(patch - ref_patch).max()),
              "text_max_abs": float(np.abs(text - ref_text).max()),
              "image_cosine_min": float(cosine_rows(img, ref_img).min()),
              "patch_cosine_min": float(cosine_rows(patch, ref_patch).min()),
              "text_cosine_min": float(cosine_rows(text, ref_text).min())}
    one = np.ascontiguousarray(pixels[:1])
    one_t = torch.from_numpy(one)

    def eager():
        with torch.no_grad():
            model.encode_image(one_t)

    latency = {"onnxruntime": _median_ms(lambda: enc.encode_image(one), runs),
               "torch_eager": _median_ms(eager, runs), "torch_threads": torch.get_num_threads(),
               "ort_threads": enc.threads}
    return parity, latency
