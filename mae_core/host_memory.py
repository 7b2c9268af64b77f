"""Keeping freed host memory in the process (glibc malloc).

By default glibc hands blocks above 32 MB back to the kernel on free (mmap threshold) and trims the
heap top above 64 MB, so a training step whose activations are tens of MB each page-faults them
in afresh every step, a cost that shows in a small model's step time at a large batch
(docs/benchmarks.md, "The demo's pretraining epoch"). Raising both thresholds keeps those pages
mapped for the next step. Preloading jemalloc instead made that step slower."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_LIMIT = 1 << 30  # largest block still taken from the heap; larger ones stay mmap'ed
TRIM_LIMIT = (1 << 31) - 1


def retain_freed_memory() -> bool:
    """Raises glibc's mmap and trim thresholds for this process; False (and a log line) where the
    C library is not glibc, which leaves allocation as it was."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("no glibc mallopt here: freed host memory is returned as the C library decides")
        return False
    if mallopt(M_MMAP_THRESHOLD, MMAP_LIMIT) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_LIMIT) != 1:
        raise RuntimeError("glibc mallopt refused the mmap/trim thresholds")
    return True
