"""flows.memory: the flow process's malloc settings (glibc), applied once."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from flows.memory import limit_heap_growth


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_heap_settings_apply_and_large_blocks_go_back_to_the_system() -> None:
    # in a fresh process: a 4 MiB block freed, then the same again. glibc's default raises
    # its mmap threshold after the first free and serves the second from the heap, which
    # keeps it after free; with the fixed threshold both are mapped and unmapped.
    code = """
import ctypes, sys
from flows.memory import limit_heap_growth
if sys.argv[1] == "on":
    assert limit_heap_growth()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
for _ in range(3):
    p = libc.malloc(4 << 20); ctypes.memset(p, 1, 4 << 20); libc.free(p)
print(rss() - before)
"""
    held = {
        mode: int(subprocess.check_output([sys.executable, "-c", code, mode], text=True))
        for mode in ("off", "on")
    }
    assert held["off"] >= 3 << 20, held  # the default keeps the block in the heap
    assert held["on"] < 1 << 20, held
    assert limit_heap_growth() is True and limit_heap_growth() is True  # once, cached
