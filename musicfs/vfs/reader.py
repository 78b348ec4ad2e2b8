"""Bytes of a track: open a handle, read ranges, release.

This pass-through reader goes straight to a local origin with ``pread`` in a
worker thread, so a slow disk never stalls the event loop. It serves origins
whose policy is ``cache = "never"`` (a local disk gains nothing from a second
copy). One file descriptor is shared by every handle on the same track
(reference counted), so thousands of open handles (NFR-2.4) cost a few
descriptors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import trio

from ..errors import NotFound, OriginUnavailable
from ..events import EventBus, FileAccessed


@dataclass
class _OpenFile:
    fd: int
    refs: int = 0


@dataclass
class ReaderStats:
    opens: int = 0
    reads: int = 0
    bytes_read: int = 0
    errors: int = 0
    open_handles: int = 0
    open_fds: int = 0
    bytes_by_origin: dict[str, int] = field(default_factory=dict)


@dataclass
class Handle:
    """What an open file handle needs to read: the track and where its bytes live."""

    track_id: int
    origin_id: str
    real_path: str
    size: int
    _file: _OpenFile | None = field(default=None, repr=False)
    keep_cache: bool = True  # the origin's file is read as it is: the kernel may keep what it read


class DirectReader:
    """Reads tracks from their local origins; ``origins`` maps origin id -> LocalOrigin."""

    def __init__(self, origins: dict, *, max_threads: int = 16, bus: EventBus | None = None):
        """``bus`` gets a FileAccessed event for each open (not for each read)."""
        self.origins = origins
        self.bus = bus
        self.limiter = trio.CapacityLimiter(max_threads)
        self._files: dict[int, _OpenFile] = {}
        self.stats = ReaderStats()

    async def open(self, track: dict) -> Handle:
        handle = Handle(track["id"], track["origin_id"], track["real_path"], track["size"])
        shared = self._files.get(handle.track_id)
        if shared is None:
            origin = self.origins.get(handle.origin_id)
            if origin is None:
                raise OriginUnavailable(f"origin {handle.origin_id!r} is not configured")
            path = origin.local_path(handle.real_path)
            try:
                fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC,
                                                   limiter=self.limiter)
            except FileNotFoundError:
                self.stats.errors += 1
                raise NotFound(f"{handle.origin_id}:{handle.real_path} is gone from its origin") from None
            except OSError as exc:
                self.stats.errors += 1
                raise OriginUnavailable(f"{handle.origin_id}:{handle.real_path}: {exc.strerror}") from None
            shared = self._files.setdefault(handle.track_id, _OpenFile(fd))
            if shared.fd != fd:  # another open won the race while we waited
                os.close(fd)
        shared.refs += 1
        handle._file = shared
        self.stats.opens += 1
        self.stats.open_handles += 1
        self.stats.open_fds = len(self._files)
        if self.bus is not None:
            self.bus.publish(FileAccessed(handle.origin_id, handle.real_path, handle.size))
        return handle

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        if offset >= handle.size or size <= 0:
            return b""
        assert handle._file is not None
        try:
            data = await trio.to_thread.run_sync(os.pread, handle._file.fd, size, offset,
                                                 limiter=self.limiter)
        except OSError as exc:
            self.stats.errors += 1
            raise OriginUnavailable(f"{handle.origin_id}:{handle.real_path}: {exc.strerror}") from None
        self.stats.reads += 1
        self.stats.bytes_read += len(data)
        by_origin = self.stats.bytes_by_origin
        by_origin[handle.origin_id] = by_origin.get(handle.origin_id, 0) + len(data)
        return data

    def release(self, handle: Handle) -> None:
        shared, handle._file = handle._file, None
        if shared is None:
            return
        self.stats.open_handles -= 1
        shared.refs -= 1
        if shared.refs == 0:
            self._files.pop(handle.track_id, None)
            os.close(shared.fd)
        self.stats.open_fds = len(self._files)

    def close(self) -> None:
        for shared in self._files.values():
            os.close(shared.fd)
        self._files.clear()

    def statistics(self) -> dict:
        return {**self.stats.__dict__, "bytes_by_origin": dict(self.stats.bytes_by_origin)}
