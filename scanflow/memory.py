"""Keep the flow process's peak memory flat however long the scan.

glibc's malloc keeps freed memory in its heaps (one per thread that allocates: the decoder
loop, the JPEG threads, the model's thread) and reuses it only where it fits; the holes the
model's batches and the decoded frames leave behind stay resident, so the process's peak
crept up with the length of the video (+56 MB from a 1- to a 10-minute scan).
``trim_heap`` hands the free pages of every heap back to the system (``malloc_trim``);
extract_frames calls it every few kept frames. Fixing malloc's mmap threshold instead
(``mallopt``) flattened the peak less and made every large block a fresh mapping: the
model ran ~40% slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the heaps' free pages to the system; False where malloc is not glibc's."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
