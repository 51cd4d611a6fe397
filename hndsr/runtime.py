"""Process-wide tuning that every entry point applies once at start (the CLI's callback does).

glibc's allocator serves blocks above its mmap threshold (a few MB, adjusted at run time) with fresh
``mmap`` calls and returns them on free, and threads other than the main one get arenas whose large
blocks always take that route. A model pass allocates activation tensors of tens to hundreds of MB,
so every pass page-faults (and the kernel zeroes) that memory again. Keeping them in one heap makes
a pass markedly faster; the cost is freed memory kept for reuse (measured: benchmarks/NOTES.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # never shrink the heap between passes
DISABLE_ENV = "HNDSR_MALLOC_TUNING"  # "0" leaves the allocator alone

_applied: bool | None = None


def tune_allocator() -> bool:
    """Keep large blocks in one heap (glibc only; elsewhere, or with ``HNDSR_MALLOC_TUNING=0``, a
    no-op returning False). Idempotent; call it before the process starts its worker threads."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(DISABLE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # One arena: its heap has no size cap, unlike a thread arena's, so large blocks are reused too.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _applied = all(mallopt(param, value) == 1 for param, value in settings)
    if not _applied:
        logger.debug("mallopt refused the allocator settings; glibc defaults stay")
    return _applied


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 natively (CPU: AVX-512 BF16 / AMX; CUDA: Ampere+).

    Elsewhere bf16 autocast is emulated and slower than fp32, so training and inference fall back
    to fp32 there.
    """
    import torch

    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
