"""Give freed heap memory back to the operating system between the stages of a job.

glibc keeps memory freed by large temporaries (a CT job makes several the size of the volume) in its heap, so
a process's resident size after one big study stays near that study's peak and adds to the next stage's (and
job's) peak. ``malloc_trim(0)`` returns the free pages (a few microseconds a call here). Elsewhere (musl, macOS,
Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True when the C library could do it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
