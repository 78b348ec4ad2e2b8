"""Giving memory the daemon freed back to the system.

File content passes through the daemon as blocks and chunks of 16 KiB to 1 MiB,
allocated and freed by worker threads. glibc keeps what they free in its arenas
(one per thread that allocated, and after the first large free it raises its
mmap threshold, so later blocks come from those arenas too): after eight readers
side by side, a daemon with nothing open still held ~145 MB it no longer used,
for as long as it then sat idle. ``malloc_trim`` hands the free pages of every
arena back; it costs a few milliseconds, so the reader calls it once a busy spell
has ended, not per read.

On a C library without ``malloc_trim`` (musl, other systems) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except (AttributeError, OSError):  # not glibc: freed memory is the allocator's business
    _malloc_trim = None


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the system; True if any were returned.

    Blocking (a few ms for a heap of a hundred MB): call it in a worker thread.
    """
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
