"""Content-defined chunking of a byte stream with FastCDC (16/64/256 KiB).

Boundaries depend only on content, so an edit inside a file changes the chunks
around it and no others (delta sync, dedup). :class:`StreamChunker` takes the
stream in pieces of any size and cuts exactly the chunks FastCDC cuts over the
whole file at once: a chunk is only emitted once at least ``MAX_SIZE`` bytes
after its start are known (or the stream has ended), which is all FastCDC ever
looks at. Memory stays below one maximum chunk plus one piece. The bytes not
cut yet are kept as one immutable ``bytes`` (:attr:`buffered`), so a fill can
serve reads from them without a copy while the next piece is on its way.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import math
from array import array
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MIN_SIZE = 16 * 1024
AVG_SIZE = 64 * 1024
MAX_SIZE = 256 * 1024


@cache
def _scanner():
    """``lengths(buffer, until)``: FastCDC's lengths of the chunks of a buffer that start before
    ``until``, as the fastcdc package cuts them.

    musicfs's own scan (``_fastcdc``, C) releases the GIL while it runs, so fills cut side by
    side with each other and with the loop; it takes the package's gear table and the masks
    and bounds the package derives, so it cuts at the same places. Where it was not built (or
    the table cannot be read), the package's own scan is used, imported on first use."""
    try:
        from . import _fastcdc

        gear = _gear_table()
    except (ImportError, OSError, SyntaxError, ValueError, TypeError, OverflowError):
        # not built, or the package's table cannot be read as 256 32-bit values: its own scan
        from fastcdc.fastcdc_cy import fastcdc_cy

        def lengths(data, until: int) -> list[int]:
            chunks = fastcdc_cy(data, MIN_SIZE, AVG_SIZE, MAX_SIZE, False, None)
            try:
                return list(itertools.takewhile(lambda n: n > 0, (
                    chunk.length if chunk.offset < until else 0 for chunk in chunks)))
            finally:
                chunks.close()  # drop its view of the buffer
        return lengths
    bits = round(math.log2(AVG_SIZE))
    center = AVG_SIZE - min(AVG_SIZE, MIN_SIZE + -(-MIN_SIZE // 2))
    args = (gear, MIN_SIZE, MAX_SIZE, min(center, MAX_SIZE), 2 ** (bits + 1) - 1, 2 ** (bits - 1) - 1,
            max(64 * 1024, MAX_SIZE))
    return lambda data, until: _fastcdc.cut_lengths(data, until, *args)


def _gear_table() -> bytes:
    """The fastcdc package's gear table (256 32-bit values), read from its source without
    importing the package: importing it pulls in a CLI library (click) that stayed in the
    daemon for good, ~9.5 MB of an idle mount's memory after its first fill (NFR-4.1)."""
    spec = importlib.util.find_spec("fastcdc")  # a top-level package: found, not run
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the fastcdc package is not installed")
    source = Path(spec.submodule_search_locations[0], "fastcdc_py.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "GEAR" for t in node.targets):
            table = ast.literal_eval(node.value)
            if len(table) == 256:
                return array("I", table).tobytes()
    raise ValueError("the fastcdc package has no gear table of 256 values")


@dataclass(frozen=True, slots=True)
class Piece:
    offset: int  # byte offset of the chunk in the file
    data: bytes


class StreamChunker:
    def __init__(self, start: int = 0):
        self._buffer = b""
        self._offset = start  # file offset of _buffer[0]

    def _cut(self, final: bool) -> list[Piece]:
        pieces = []
        consumed = 0
        # a chunk is final once MAX_SIZE bytes from its start are known (or the stream ended):
        # before that, more bytes could still move its boundary
        until = len(self._buffer) if final else len(self._buffer) - MAX_SIZE + 1
        with memoryview(self._buffer) as view:
            for length in _scanner()(view, until):
                end = consumed + length
                pieces.append(Piece(self._offset + consumed, bytes(view[consumed:end])))
                consumed = end
        if consumed:
            self._buffer = self._buffer[consumed:]
            self._offset += consumed
        return pieces

    def feed(self, data: bytes) -> list[Piece]:
        """Add the next bytes of the stream; return the chunks that are now final."""
        self._buffer = self._buffer + data if self._buffer else bytes(data)
        if len(self._buffer) < MAX_SIZE:  # not even the first chunk could be final yet
            return []
        return self._cut(final=False)

    def finish(self) -> list[Piece]:
        """The stream ended: cut whatever is left."""
        if not self._buffer:
            return []
        return self._cut(final=True)

    @property
    def buffered(self) -> bytes:
        """The bytes fed and not cut yet, from :attr:`position` on (never changed in place)."""
        return self._buffer

    @property
    def position(self) -> int:
        """File offset up to which chunks have been emitted."""
        return self._offset
