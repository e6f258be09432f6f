"""The CUDA GPU of this machine through the driver library (libcuda) with ctypes: no CUDA Python package, so the
torch-free runtime (which engine fits this GPU) and the export toolchain (which GPU an engine is built for) ask
the same question the same way."""

from __future__ import annotations

import ctypes

from vlmedge.errors import BackendUnavailable

# CUdevice_attribute values of the driver API.
_CC_MAJOR, _CC_MINOR = 75, 76


def cuda_device(device: int = 0, hint: str = "install the NVIDIA driver") -> tuple[str, tuple[int, int]]:
    """(name, (major, minor) compute capability) of CUDA device ``device``; BackendUnavailable without one."""
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise BackendUnavailable("a CUDA GPU (NVIDIA driver library libcuda)", hint)
    if lib.cuInit(0) != 0:
        raise BackendUnavailable("a CUDA GPU (cuInit failed: no usable device)", hint)
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), device) != 0:
        raise BackendUnavailable(f"CUDA device {device}", hint)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, 256, dev)
    return buf.value.decode(errors="replace"), (major.value, minor.value)
