"""release_free_memory gives freed heap pages back to the OS (glibc), so RSS after a big job falls."""

from __future__ import annotations

import platform

import psutil
import pytest

from inference.heap import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is a glibc function")
def test_freed_small_allocations_are_returned_to_the_os() -> None:
    process = psutil.Process()
    chunks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MiB below the mmap threshold: in the heap
    for chunk in chunks:
        chunk[::4096] = b"x" * len(chunk[::4096])  # touch every page
    held = process.memory_info().rss
    del chunks
    assert release_free_memory()
    assert held - process.memory_info().rss > 100 * 2**20
