"""CPU training memory: keep freed heap pages mapped, so large tensors reuse them instead of faulting in fresh ones.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap, unmaps it on free and
trims the heap top above its trim threshold, so a training step at 256 x 256 faults in and zeroes all its large
tensors again. Measured cost and gain: benchmarks/README.md, "CPU training setup". The price: the process keeps
its peak heap until it exits.
"""
import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
OPT_OUT = "FEWSHOT_DA_SYSTEM_MALLOC"

_applied = False


def _glibc():
    """The C library when it is glibc (it has gnu_get_libc_version and mallopt), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - AttributeError on musl, macOS, Windows
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Switch glibc malloc to heap-only allocation with trimming at its maximum (2 GiB), once per process.

    True when it is (or already was) in effect; False on other C libraries, when mallopt refuses, or when the
    environment variable FEWSHOT_DA_SYSTEM_MALLOC is set to 1 (keep the system's defaults).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT, "") == "1":
        return False
    libc = _glibc()
    if libc is None:
        return False
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
