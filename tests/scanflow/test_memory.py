"""scanflow.memory: free heap pages go back to the system (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from scanflow.memory import trim_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_heap_returns_freed_memory_that_malloc_kept() -> None:
    # in a fresh process: 64 MiB in 64 KiB blocks (under the mmap threshold: from the
    # heap), the last one kept so the heap's top cannot shrink, the rest freed. malloc keeps
    # the freed pages; trim_heap hands them back.
    code = """
import ctypes, sys
from scanflow.memory import trim_heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [libc.malloc(64 << 10) for _ in range(1024)]
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
for b in blocks[:-1]:
    libc.free(b)
kept = rss()
assert trim_heap()
print(kept - rss())
"""
    released = int(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert released >= 48 << 20, released
    assert trim_heap() is True
