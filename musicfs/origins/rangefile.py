"""A read-only, seekable file object over any origin's ``read_range``, for tag readers.

Why: mutagen wants a file it can seek in and read from, and reading tags
touches only a few spots of a file (the header and metadata blocks at the
start; ID3v1 and APEv2 tags at the end). Fetching those spots, not whole
files, is what makes scanning a remote library affordable.

How: reads are served from blocks of ``block_size`` bytes (64 KiB by default:
one round trip costs far more than 64 KiB of bandwidth, and parsers read in
small pieces). The last few blocks are kept (least recently used goes first),
so a parser hopping between the start and the end of a file does not fetch
anything twice. Blocks that are missing next to each other are fetched with one
``read_range``, so a large read (an embedded cover image) is one request, not dozens.

For the header tier (``keep=True``), every range fetched is also kept in
:attr:`fetched`, in order, and a fetch from byte 0 asks for at least ``head``
bytes: what a tag reader reads through a mount later (the kernel reads ahead of
it) is then what the scanner already has.

Errors from the origin pass through unchanged (``NotFound``,
``OriginUnavailable``): a tag reader can then tell an origin that is down from
a file that is corrupt. Retrying is the caller's business: pass a ``read``
callable that retries if wanted. An origin that returns fewer bytes than the
listed size promised means the file changed while it was read; that is
reported as :class:`OriginUnavailable` (try again later), not as a short file
that would parse as corrupt.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable

from ..errors import OriginUnavailable
from .base import Origin

__all__ = ["RangeFile"]

BLOCK_SIZE = 64 * 1024
CACHE_BLOCKS = 4


class RangeFile(io.RawIOBase):
    """``size`` bytes of ``path`` on ``origin``, readable like a local binary file.

    ``name`` is ``path``, so format detection by extension works (mutagen
    scores candidates by file name as well as by header).
    """

    def __init__(self, origin: Origin, path: str, size: int, *, block_size: int = BLOCK_SIZE,
                 cache_blocks: int = CACHE_BLOCKS, read: Callable[[str, int, int], bytes] | None = None,
                 keep: bool = False, head: int = 0):
        super().__init__()
        if size < 0 or block_size < 1 or cache_blocks < 1:
            raise ValueError("size must be >= 0, block_size and cache_blocks >= 1")
        self.name = path
        self.size = size
        self.block_size = block_size
        self.cache_blocks = max(cache_blocks, head // block_size + cache_blocks)  # the head stays
        self._read_range = read or origin.read_range
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.requests = 0  # read_range calls made (for tests and statistics)
        self.bytes_fetched = 0
        self.keep = keep
        self.head = head
        self.fetched: list[tuple[int, bytes]] = []  # (offset, bytes) of every fetch, when keep

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_closed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_closed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_closed()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        data = self._bytes(self._pos, end)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._blocks.clear()
        super().close()

    # -- blocks ----------------------------------------------------------------------------------

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _bytes(self, start: int, end: int) -> bytes:
        """The bytes in [start, end), from cached blocks and as few fetches as possible."""
        if start >= end:
            return b""
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        parts: list[bytes] = []
        index = first
        while index <= last:
            block = self._blocks.get(index)
            if block is not None:
                self._blocks.move_to_end(index)
                parts.append(block)
                index += 1
                continue
            run_end = index  # fetch this block and the missing ones right after it in one request
            while run_end < last and run_end + 1 not in self._blocks:
                run_end += 1
            data = self._fetch(index * bs, (run_end + 1) * bs)
            for i in range(index, index + (len(data) + bs - 1) // bs):  # a head fetch holds more
                block = data[(i - index) * bs:(i - index + 1) * bs]
                if i <= run_end:
                    parts.append(block)
                self._keep(i, block)
            index = run_end + 1
        joined = b"".join(parts)
        offset = start - first * bs
        return joined[offset:offset + (end - start)]

    def _fetch(self, start: int, end: int) -> bytes:
        if start == 0:
            end = max(end, self.head)
        end = min(end, self.size)
        data = self._read_range(self.name, start, end - start)
        self.requests += 1
        self.bytes_fetched += len(data)
        if len(data) != end - start:
            raise OriginUnavailable(f"{self.name}: got {len(data)} bytes at {start} where {end - start} "
                                    f"were expected; the file changed while it was read")
        if self.keep:
            self.fetched.append((start, data))
        return data

    def _keep(self, index: int, block: bytes) -> None:
        self._blocks[index] = block
        self._blocks.move_to_end(index)
        while len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
