"""The flow process's heap: keep its peak flat however long the scan.

glibc's malloc serves a large block from the heap rather than a fresh mapping once a block
that size has been freed (its mmap threshold rises up to 32 MB), and gives each thread
its own arena: the model's batches, decoded frames and JPEG buffers then leave holes that
are never returned, and the process's peak creeps up with the length of the video
(measured: +44 MB between a 1- and a 10-minute scan). A fixed 128 KiB threshold maps and
unmaps every large block; two arenas bound the per-thread heaps. Measured with
``python bench/pipeline.py``: the 10-minute scan's peak then within a few percent of the
1-minute one's, and both lower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENAS = 2


@functools.cache
def limit_heap_growth() -> bool:
    """Apply the settings above once per process; False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_ARENA_MAX, ARENAS)
    )
