"""What the CUDA driver says about this machine, read through ctypes (no CUDA python package, no torch).

Every function returns "nothing here" (0 / None) when there is no driver, so callers can probe freely on
CPU-only machines without loader noise.
"""

from __future__ import annotations

import ctypes
from typing import Optional

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def _driver():
    """The initialised libcuda, or None."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            return lib if lib.cuInit(0) == 0 else None
        except AttributeError:
            return None
    return None


def device_count() -> int:
    lib = _driver()
    if lib is None:
        return 0
    n = ctypes.c_int(0)
    return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def gpu_info(device_id: int = 0) -> Optional[dict]:
    """{"name", "compute_capability"} of a CUDA device, None without a driver or device."""
    lib = _driver()
    if lib is None:
        return None
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), int(device_id)) != 0:
        return None
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return {"name": buf.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}
