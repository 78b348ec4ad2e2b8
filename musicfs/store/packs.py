"""Pack files: the chunks of one store, back to back in one file, their table of contents at its end.

Why packs: a cold fill writes a block of a file (about 1 MiB, ~16 chunks) at a
time, and a cached read loads a batch of chunks in file order. With a file per
chunk, each chunk cost its own create, rename, open and close, and, once the
kernel's caches were dropped, its own inode read from disk: a cold fill spent
its time in those, and a cached read waited on them. A pack costs them once per
block.

Layout (little-endian)::

    chunk bytes, back to back
    per chunk: digest (16 bytes, the address) + size (u32)
    count (u32) + MAGIC (8 bytes)

The chunk index records each chunk's pack and offset; the table of contents
lets start-up adopt a pack whose index rows were lost (a crash between the
pack's rename and the rows' commit, or an index rebuilt after damage). Every
chunk is still checked against its address when read, so a pack cut short or
altered on disk costs a fetch, never a wrong byte.

Evicting a chunk punches a hole where it was (``fallocate`` PUNCH_HOLE): its
disk blocks are freed at once, and the pack is deleted when none of its chunks
is left. A filesystem that cannot punch holes keeps those bytes until then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import struct

log = logging.getLogger(__name__)

MAGIC = b"MFSPACK1"
ENTRY = struct.Struct("<16sI")
TRAILER = struct.Struct("<I8s")
NAME = re.compile(r"^[0-9a-f]{16}$")

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

try:
    _fallocate = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (AttributeError, OSError):  # no fallocate (not Linux): freed when the whole pack goes
    _fallocate = None

_said_no_holes = False


def new_name() -> str:
    """A pack's name: random, so two daemons' or two threads' packs never collide."""
    return os.urandom(8).hex()


def is_name(text: str) -> bool:
    return bool(NAME.match(text))


def contents_table(items: list[tuple[str, int]]) -> bytes:
    """The table of contents for chunks (address, size), in the order they were written."""
    return b"".join(ENTRY.pack(bytes.fromhex(address), size) for address, size in items) + \
        TRAILER.pack(len(items), MAGIC)


def read_contents(fd: int, file_size: int) -> list[tuple[str, int, int]] | None:
    """(address, size, offset) of each chunk a pack says it holds; None if its table is not whole.

    A table that does not add up (a pack cut short, a foreign file) is None,
    never an exception: the caller treats the pack as unusable.
    """
    if file_size < TRAILER.size:
        return None
    count, magic = TRAILER.unpack(os.pread(fd, TRAILER.size, file_size - TRAILER.size))
    table_size = count * ENTRY.size
    if magic != MAGIC or table_size + TRAILER.size > file_size:
        return None
    table = os.pread(fd, table_size, file_size - TRAILER.size - table_size)
    if len(table) != table_size:
        return None
    result, offset = [], 0
    for digest, size in ENTRY.iter_unpack(table):
        result.append((digest.hex(), size, offset))
        offset += size
    if offset + table_size + TRAILER.size != file_size:
        return None
    return result


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the disk blocks under a range of a pack; False if the filesystem cannot (said once)."""
    global _said_no_holes
    if _fallocate is None:
        return False
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS):
        if not _said_no_holes:
            log.info("the cache's filesystem cannot free part of a file (%s): an evicted chunk's space "
                     "is given back when the rest of its pack goes", os.strerror(code))
            _said_no_holes = True
        return False
    raise OSError(code, os.strerror(code))
