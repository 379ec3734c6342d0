"""The host allocator for training on the CPU: large blocks stay in the heap between steps.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it
with munmap on free, so each training step's large activations fault in new zeroed pages. On the
2-core VM, configs/cifar10_cpu.yaml (3 epochs then) spent 33 s of an 83 s process in the kernel doing
that; with mmap off a 2-thread run spent 2 s there and trained 1.8x faster (2026-11-26, torch 2.14.1,
N=1 each; docs/BENCHMARKS.md, "CPU").
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4


def keep_large_blocks() -> bool:
    """Turn glibc's mmap allocations and heap trimming off for this process; False where the C
    library is not glibc (nothing changes there)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # 2**31 - 1 bytes: freed memory is kept for the next step instead of being given back
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
