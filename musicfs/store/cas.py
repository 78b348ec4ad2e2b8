"""Chunk files on disk: ``<dir>/chunks/ab/ab12...`` addressed by their xxh3-128 digest.

Writes go to a temporary name in the same shard, then are renamed, so a killed
daemon leaves either the whole chunk or a temp file that start-up removes.
Every read is checked against the address; a missing, short or corrupt file is
reported as a miss (``None``) and the caller fetches the bytes again. Nothing
here raises on bad data: a damaged cache costs a re-fetch, never a crash.

Why no fsync: the check on read is what keeps wrong bytes out, and it catches
a file that a power loss left empty or short under its final name as surely as
one damaged any other way. An fsync per chunk (~0.6 ms each here) would only
save the newest chunks from being fetched again after a power cut; it cost
cold reads about a tenth of their speed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .chunker import MAX_SIZE
from .digest import digest, is_address

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


@dataclass
class CasStats:
    reads: int = 0
    writes: int = 0
    missing: int = 0
    corrupt: int = 0
    bytes_written: int = 0


class ChunkFiles:
    def __init__(self, root: Path | str):
        self.root = Path(root) / "chunks"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for shard in range(256):
            (self.root / f"{shard:02x}").mkdir(mode=0o700, exist_ok=True)
        self.stats = CasStats()
        self._prefix = f"{self.root}/"  # string paths on the hot path: no Path objects per read
        self._sequence = itertools.count()
        self.unlisted: list[str] = []  # shard folders the last scan could not list

    def path(self, address: str) -> Path:
        return self.root / address[:2] / address

    def write(self, address: str, data: bytes) -> bool:
        """Store ``data`` under ``address``; False if it was already there, intact.

        An existing file is only trusted after checking it: a crash or a damaged
        disk may have left a short or altered file under the right name.
        """
        final = f"{self._prefix}{address[:2]}/{address}"  # strings: pathlib costs more than the write
        if os.path.exists(final):
            if self._intact(final, address, len(data)):
                return False
            self.stats.corrupt += 1
            log.warning("chunk %s was damaged on disk; rewriting it", address)
        # unique within this daemon (one per cache, by its lock): a counter, not os.urandom per chunk
        tmp = f"{self._prefix}{address[:2]}/{TMP_PREFIX}{address}-{os.getpid()}-{next(self._sequence)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        self.stats.writes += 1
        self.stats.bytes_written += len(data)
        return True

    @staticmethod
    def _intact(path: str, address: str, size: int) -> bool:
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(size + 1)
        except OSError:
            return False
        return len(data) == size and digest(data) == address

    def read(self, address: str, size: int) -> bytes | None:
        """The chunk's bytes if the file is whole and matches its address, else None."""
        return self.load(address, size)[0]

    def load_many(self, chunks: list[tuple[str, int]]) -> list[tuple[bytes | None, str | None]]:
        """:meth:`load` of each (address, size), every file opened and its disk read started first.

        Loading chunk files one after another from a cold disk waits one disk round trip per
        file (~64 KiB): about 200 MB/s however fast the disk streams. A read-ahead hint for
        each file of the batch first (posix_fadvise WILLNEED) puts all their reads in the
        disk's queue together; the loads that follow, on the same descriptors, find the bytes
        arriving or arrived. A file that cannot be opened ahead is loaded as usual, which
        reports it.
        """
        if len(chunks) < 2:
            return [self.load(address, size) for address, size in chunks]
        opened: list[int | None] = []
        try:
            for address, size in chunks:
                opened.append(self._open_ahead(address, size))
            return [self.load(address, size, fd) for (address, size), fd in zip(chunks, opened)]
        finally:
            for fd in opened:
                if fd is not None:
                    os.close(fd)

    def _open_ahead(self, address: str, size: int) -> int | None:
        if not self._plausible(address, size):
            return None  # never opened: the load says why
        try:
            fd = os.open(f"{self._prefix}{address[:2]}/{address}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # the load opens it again and reports what it finds
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError as exc:  # a hint the filesystem does not take: the load reads anyway
            log.debug("no read-ahead for chunk %s: %s", address, exc)
        return fd

    @staticmethod
    def _plausible(address: str, size: int) -> bool:
        return 0 < size <= MAX_SIZE and is_address(address)

    def load(self, address: str, size: int, fd: int | None = None) -> tuple[bytes | None, str | None]:
        """(bytes, None) if the file is whole and matches its address, else (None, "missing" or "corrupt").

        ``size`` comes from the chunk index, which a damaged or hostile file
        may have changed: a size no chunk can have (the chunker never cuts
        more than ``MAX_SIZE``) or an address that is no digest is a miss,
        never an allocation of that size or a path outside the store. ``fd``:
        the file already opened (by :meth:`load_many`), read from its start.
        """
        self.stats.reads += 1
        if not self._plausible(address, size):
            self.stats.corrupt += 1
            log.warning("chunk %r has an impossible size %r in the chunk index: treated as missing",
                        address, size)
            return None, "corrupt"
        try:
            if fd is not None:
                data = os.pread(fd, size + 1, 0)
            else:
                fd = os.open(f"{self._prefix}{address[:2]}/{address}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.read(fd, size + 1)
                finally:
                    os.close(fd)
        except FileNotFoundError:
            self.stats.missing += 1
            return None, "missing"
        except OSError as exc:
            log.warning("chunk %s unreadable: %s", address, exc)
            self.stats.corrupt += 1
            return None, "corrupt"
        if len(data) != size or digest(data) != address:
            self.stats.corrupt += 1
            log.warning("chunk %s is corrupt on disk (%d bytes, expected %d): it will be fetched again",
                        address, len(data), size)
            try:
                self.discard(address)
            except OSError as exc:  # a read-only cache: the file stays, and is checked at every read
                log.debug("cannot remove corrupt chunk %s: %s", address, exc)
            return None, "corrupt"
        return data, None

    def discard(self, address: str) -> int:
        """Remove a chunk file; returns the bytes freed (0 if it was not there)."""
        path = self.path(address)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def exists(self, address: str) -> bool:
        return self.path(address).exists()

    def scan(self, remove_temp_before: float | None = None) -> Iterator[tuple[str, int]]:
        """Every chunk file as (address, size).

        Temp files last changed before ``remove_temp_before`` (a unix time: when
        this daemon started) are leftovers of a crash and are removed; newer ones
        may be writes in flight and are left alone, as are all of them when no
        time is given (read-only tools).

        A shard folder that cannot be listed (a failing disk: EIO, or EBADMSG for a
        directory block that fails its checksum) is logged and named in
        :attr:`unlisted` once the scan is done: what it holds is unknown, not gone, so
        callers must not treat its chunks as missing.
        """
        self.unlisted = []
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir():
                continue
            try:
                with os.scandir(shard) as entries:
                    yield from self._scan_shard(shard.name, entries, remove_temp_before)
            except OSError as exc:
                log.warning("chunk folder %s cannot be listed (%s): its chunks are left as they are",
                            shard, exc.strerror or exc)
                self.unlisted.append(shard.name)

    @staticmethod
    def _scan_shard(name: str, entries: Iterator[os.DirEntry], remove_temp_before: float | None
                    ) -> Iterator[tuple[str, int]]:
        for entry in entries:
            try:
                if entry.name.startswith(TMP_PREFIX):
                    if remove_temp_before is not None and entry.stat().st_mtime < remove_temp_before:
                        try:
                            Path(entry.path).unlink(missing_ok=True)
                        except OSError as exc:  # a read-only cache keeps it: it is never read
                            log.debug("cannot remove the stale temp file %s: %s", entry.path, exc)
                elif is_address(entry.name) and entry.name[:2] == name:
                    yield entry.name, entry.stat().st_size
            except FileNotFoundError:  # evicted or renamed while we looked
                continue

    def statistics(self) -> dict:
        return dict(self.stats.__dict__)
