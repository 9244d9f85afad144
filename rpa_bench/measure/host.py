"""Host allocator setting that makes CPU timings repeatable across processes.

glibc raises its mmap threshold as large blocks are freed, so whether a multi-MB XLA
buffer on the CPU backend is a fresh mapping (page faults on every call) or reused heap
memory depends on the process's history. Measured on a 2-core VM: the same reference
decode point (8 x 1K context) took 4.4 ms in one ``rpa-bench run`` and 15 ms in the next,
each with tight samples, so two identical runs compared as significantly different.
A fixed threshold (``mallopt(M_MMAP_THRESHOLD, ...)``) turns the adjustment off: large
buffers are then always fresh mappings, slower but the same in every process.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
CPU_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, now fixed

_applied: dict = {}


def fix_mmap_threshold(threshold_bytes: int = CPU_MMAP_THRESHOLD_BYTES) -> dict:
    """Fix glibc's mmap threshold for this process; returns what was set (for the manifest)."""
    if threshold_bytes < 0:
        raise ValueError(f"{threshold_bytes=} must be >= 0")
    if not sys.platform.startswith("linux"):
        result = {"malloc_mmap_threshold_bytes": None, "reason": f"not set on {sys.platform} (glibc only)"}
    else:
        try:
            ok = ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)) == 1
        except (OSError, AttributeError):
            ok = False
        result = {"malloc_mmap_threshold_bytes": int(threshold_bytes) if ok else None,
                  "reason": "fixed for repeatable CPU timings" if ok else "mallopt unavailable (not glibc)"}
    _applied.clear()
    _applied.update(result)
    return dict(result)


def applied() -> dict | None:
    """The setting made in this process, or None when the allocator was left alone."""
    return dict(_applied) if _applied else None
