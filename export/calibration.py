"""Calibration data for static int8 quantization: real frames through the runtime's preprocessing.

``calib`` is a folder of images, a video file (read with OpenCV), or ``"synthetic"`` (the
built-in table-top scenes of ``vlmedge.scenes.render``). Every frame goes through
``vlmedge.preprocess.preprocess`` with the bundle's own PreprocessSpec, so the quantizer sees
exactly the tensors the device will feed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from vlmedge.errors import ConfigError, InputError, SourceError
from vlmedge.spec import PreprocessSpec

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
EVAL_SEED_OFFSET = 100_000  # synthetic evaluation scenes never overlap the calibration seeds


def frames_from_folder(path: str | Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` BGR images from a folder, sorted by name, evenly spread over the folder."""
    import cv2

    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise InputError(f"calibration folder {str(path)!r} holds no images ({', '.join(IMAGE_EXTS)})")
    pick = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)]
    frames = []
    for f in dict.fromkeys(pick):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"calibration image {str(f)!r} could not be decoded by OpenCV")
        frames.append(img)
    return frames


def frames_from_video(path: str | Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` BGR frames spread evenly over a video file."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"calibration video {str(path)!r} could not be opened by OpenCV")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        wanted = set(np.linspace(0, max(total - 1, 0), count).round().astype(int).tolist()) if total > 0 else None
        frames, index = [], 0
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if wanted is None or index in wanted:
                frames.append(frame)
            index += 1
    finally:
        cap.release()
    if not frames:
        raise SourceError(f"calibration video {str(path)!r} yielded no frames")
    return frames


def frames_synthetic(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` rendered table-top scenes (seeds ``seed .. seed+count-1``)."""
    from vlmedge.scenes.render import render_scene

    return [render_scene(seed + i).frame for i in range(count)]


def calibration_frames(calib: str | Path, count: int) -> list[np.ndarray]:
    """Dispatch on ``calib``: "synthetic", an image folder, or a video file."""
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise ConfigError(f"calib_count must be a positive int, got {count!r}")
    if str(calib) == "synthetic":
        return frames_synthetic(count)
    p = Path(calib)
    if p.is_dir():
        return frames_from_folder(p, count)
    if p.is_file():
        if p.suffix.lower() in IMAGE_EXTS:
            return _single_image(p)
        return frames_from_video(p, count)
    raise ConfigError(f"calib {str(calib)!r} is neither 'synthetic', an image folder nor a video file")


def _single_image(p: Path) -> list[np.ndarray]:
    import cv2

    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"calibration image {str(p)!r} could not be decoded by OpenCV")
    return [img]


def evaluation_frames(calib: str | Path, count: int, calib_frames: list[np.ndarray]) -> list[np.ndarray]:
    """Frames for the fp32-vs-int8 report: fresh synthetic scenes, else the calibration frames."""
    if str(calib) == "synthetic":
        return frames_synthetic(count, seed=EVAL_SEED_OFFSET)
    return calib_frames[:count]


def preprocess_frames(frames: Iterable[np.ndarray], spec: PreprocessSpec) -> list[np.ndarray]:
    """Each frame -> float32 [1,3,H,W] with the runtime's own preprocessing."""
    from vlmedge.preprocess import preprocess

    return [np.ascontiguousarray(preprocess(f, spec), dtype=np.float32) for f in frames]


class TensorCalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration reader over already-preprocessed [1,3,H,W] tensors."""

    def __init__(self, tensors: list[np.ndarray], input_name: str = "pixel_values"):
        if not tensors:
            raise InputError("calibration needs at least one frame")
        self.tensors = tensors
        self.input_name = input_name
        self._it = iter(self.tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


def frame_reader(frames: list[np.ndarray], spec: PreprocessSpec,
                 input_name: str = "pixel_values") -> TensorCalibrationReader:
    """A calibration reader over BGR frames, preprocessed once with ``spec``."""
    return TensorCalibrationReader(preprocess_frames(frames, spec), input_name)
