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

from dataclasses import dataclass

MIN_SIZE = 16 * 1024
AVG_SIZE = 64 * 1024
MAX_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class Piece:
    offset: int  # byte offset of the chunk in the file
    data: bytes


class StreamChunker:
    def __init__(self, start: int = 0):
        self._buffer = b""
        self._offset = start  # file offset of _buffer[0]

    def _cut(self, final: bool) -> list[Piece]:
        # imported on first use: the fastcdc package pulls in a CLI library a mount never needs
        from fastcdc.fastcdc_cy import fastcdc_cy

        pieces = []
        view = memoryview(self._buffer)
        consumed = 0
        chunks = fastcdc_cy(view, MIN_SIZE, AVG_SIZE, MAX_SIZE, False, None)
        try:
            for chunk in chunks:
                if not final and len(self._buffer) - chunk.offset < MAX_SIZE:
                    break  # not enough look-ahead yet: the boundary could still move
                end = chunk.offset + chunk.length
                pieces.append(Piece(self._offset + chunk.offset, bytes(view[chunk.offset:end])))
                consumed = end
        finally:
            chunks.close()  # drop its view of the buffer before the buffer is resized
            view.release()
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
