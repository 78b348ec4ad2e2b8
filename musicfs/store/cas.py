"""Chunks on disk: packs of chunks (``<dir>/chunks/packs/<name>``), and the loose chunk files
(``<dir>/chunks/ab/ab12...``) of caches made before packs, read and evicted as before.

A chunk's address is its xxh3-128 digest; its place (which pack, at which
offset, or its own loose file) is kept by the chunk index. New chunks are
written a store at a time into a pack (see :mod:`.packs` for why and how), to a
temporary name in the same folder, then renamed, so a killed daemon leaves
either the whole pack or a temp file that start-up removes. Every read is
checked against the address; a missing, short or corrupt chunk is reported as
a miss (``None``) and the caller fetches the bytes again. Nothing here raises
on bad data: a damaged cache costs a re-fetch, never a crash.

Why no fsync: the check on read is what keeps wrong bytes out, and it catches
a pack or file that a power loss left empty or short under its final name as
surely as one damaged any other way. An fsync per store (~0.6 ms each here)
would only save the newest chunks from being fetched again after a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..digest import digest, is_address
from . import packs
from .chunker import MAX_SIZE

# preadv2's flag to fail rather than wait for the disk (Linux 4.14); None where there is none
NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
PACKS = "packs"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a chunk's bytes are: a pack and the offset in it, or (``pack`` None) its own file."""

    pack: str | None = None
    offset: int = 0


LOOSE = Place()


class Loaded(NamedTuple):
    """A chunk read with the chunks beside it in one read: its bytes, checked, as a view of the
    buffer of the whole run (``run``) where it starts at ``at``.

    Nothing is copied out of the run's buffer: a request that spans several chunks of one
    run is answered with one slice of ``run`` instead of a join of copies (two of the five
    passes over each byte that a cached read made). The buffer lives as long as any of its
    chunks is kept in memory.
    """

    data: memoryview
    run: memoryview
    at: int


@dataclass
class CasStats:
    reads: int = 0
    writes: int = 0
    missing: int = 0
    corrupt: int = 0
    bytes_written: int = 0
    packs_written: int = 0


class ChunkFiles:
    def __init__(self, root: Path | str):
        self.root = Path(root) / "chunks"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for shard in range(256):
            (self.root / f"{shard:02x}").mkdir(mode=0o700, exist_ok=True)
        self.packs_dir = self.root / PACKS
        self.packs_dir.mkdir(mode=0o700, exist_ok=True)
        self.stats = CasStats()
        self._prefix = f"{self.root}/"  # string paths on the hot path: no Path objects per read
        self._packs = f"{self.packs_dir}/"
        self._sequence = itertools.count()
        self.unlisted: list[str] = []  # folders the last scan could not list (shards, or "packs")

    def path(self, address: str) -> Path:
        """The loose file a chunk of an older cache has (see :meth:`where` for any chunk)."""
        return self.root / address[:2] / address

    def pack_path(self, name: str) -> Path:
        return self.packs_dir / name

    def where(self, address: str, place: Place) -> tuple[Path, int]:
        """The file holding a chunk, and the offset of its bytes in it."""
        if place.pack is None:
            return self.path(address), 0
        return self.pack_path(place.pack), place.offset

    def _file(self, address: str, place: Place) -> str:
        if place.pack is None:
            return f"{self._prefix}{address[:2]}/{address}"
        return f"{self._packs}{place.pack}"

    # -- writing ----------------------------------------------------------
    def write_pack(self, items: list[tuple[str, bytes]]) -> tuple[str, list[int]]:
        """Write chunks (address, bytes) into a new pack; (its name, the offset of each).

        The pack appears under its name whole (written to a temp name, then
        renamed) or not at all; on failure the temp file is removed. Its chunks and
        contents table go in one ``writev``: a write per chunk gave up the GIL and took
        it back some forty times per pack, and with a busy loop and other stores each
        take-back waited.
        """
        name = packs.new_name()
        tmp = f"{self._packs}{TMP_PREFIX}{name}-{os.getpid()}-{next(self._sequence)}"
        offsets, position = [], 0
        for _, data in items:
            offsets.append(position)
            position += len(data)
        table = packs.contents_table([(address, len(data)) for address, data in items])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, [memoryview(data) for _, data in items] + [memoryview(table)])
            os.close(fd)
            fd = -1
            os.rename(tmp, f"{self._packs}{name}")
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.stats.writes += len(items)
        self.stats.packs_written += 1
        self.stats.bytes_written += position
        return name, offsets

    # -- reading ----------------------------------------------------------
    def read(self, address: str, size: int, place: Place = LOOSE) -> bytes | memoryview | None:
        """The chunk's bytes if they are whole and match the address, else None."""
        return self.load(address, size, place)[0]

    def load_many(self, chunks: list[tuple[str, int, Place]]) -> list[tuple[Loaded | None, str | None]]:
        """:meth:`load` of each (address, size, place), every file opened once and its reads started
        first; each chunk as a view of its run's buffer (:class:`Loaded`).

        Loading chunks one after another from a cold disk waits one disk round
        trip per chunk (~64 KiB): about 200 MB/s however fast the disk streams. A
        read-ahead hint for each range of the batch first (posix_fadvise WILLNEED)
        puts all their reads in the disk's queue together; the loads that follow,
        on the same descriptors, find the bytes arriving or arrived. A pack holding
        several chunks of the batch is opened once. A file that cannot be opened
        ahead is loaded as usual, which reports it.
        """
        if len(chunks) < 2:
            return [self._load_alone(address, size, place) for address, size, place in chunks]
        opened: dict[str, int | None] = {}
        spans: dict[str, tuple[int, int]] = {}  # per file: the range the batch reads of it
        try:
            for address, size, place in chunks:
                if not self._plausible(address, size, place):
                    continue  # never opened: the load says why
                path = self._file(address, place)
                if path not in opened:
                    try:
                        opened[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        opened[path] = None  # the load opens it again and reports what it finds
                        continue
                    spans[path] = (place.offset, place.offset + size)
                elif path in spans:
                    start, end = spans[path]
                    spans[path] = (min(start, place.offset), max(end, place.offset + size))
            for path, (start, end) in spans.items():
                try:  # one hint per file: a pack's chunks of the batch are mostly side by side
                    os.posix_fadvise(opened[path], start, end - start, os.POSIX_FADV_WILLNEED)
                except OSError as exc:  # a hint the filesystem does not take: the load reads anyway
                    log.debug("no read-ahead for %s: %s", path, exc)
            return self._load_runs(chunks, opened)
        finally:
            for fd in opened.values():
                if fd is not None:
                    os.close(fd)

    def _load_runs(self, chunks: list[tuple[str, int, Place]], opened: dict[str, int | None]
                   ) -> list[tuple[Loaded | None, str | None]]:
        """:meth:`load` of each chunk, a run of them side by side in one pack read at once.

        A fill writes a file's chunks into its packs in order, so a sequential reader's batch
        is mostly one or two runs. One ``pread`` per run instead of one per chunk: each read
        gives up the GIL and must take it back, and a worker taking it back while the event
        loop is busy waits each time. A chunk of a run that comes back short or does not
        match its address is loaded again on its own, which reports and discards it."""
        results: list[tuple[Loaded | None, str | None]] = []
        for run in self._runs(chunks):
            address, size, place = run[0]
            fd = opened.get(self._file(address, place))
            if len(run) == 1 or fd is None:
                results += [self._load_alone(a, n, p, fd) for a, n, p in run]
                continue
            try:
                data = os.pread(fd, _span(run), place.offset)
            except OSError:  # each load on its own says what is wrong
                data = b""
            results += [(piece, None) if piece is not None else self._load_alone(a, n, p, fd)
                        for (a, n, p), piece in zip(run, self._pieces(data, run))]
        return results

    def _load_alone(self, address: str, size: int, place: Place, fd: int | None = None
                    ) -> tuple[Loaded | None, str | None]:
        """:meth:`load`, the chunk as a run of its own."""
        data, problem = self.load(address, size, place, fd)
        if data is None:
            return None, problem
        view = memoryview(data)
        return Loaded(view, view, 0), None

    def load_if_in_memory(self, address: str, size: int, place: Place) -> memoryview | None:
        """The chunk's bytes if the OS has them in memory now and they match their address; None
        otherwise, without waiting for the disk and without reporting anything.

        For the event loop: a read with ``RWF_NOWAIT`` fails at once (EAGAIN) instead of
        waiting for a disk, so a chunk file in the page cache (the usual case for a cache in
        use) is served without a trip to a worker thread. Anything else, whether not in
        memory, missing, short or not matching (a place gone stale since it was looked up),
        is None here; the caller then loads it the ordinary way (:meth:`load`, in a worker
        thread), which finds out which it is and reports it.
        """
        if NOWAIT is None or not self._plausible(address, size, place):
            return None
        length = size if place.pack is not None else size + 1
        buffer = bytearray(length)
        try:
            fd = os.open(self._file(address, place), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            got = os.preadv(fd, [buffer], place.offset, NOWAIT)
        except OSError:  # BlockingIOError (not in memory) above all
            return None
        finally:
            os.close(fd)
        if got != size or digest(memoryview(buffer)[:size]) != address:
            return None
        self.stats.reads += 1
        return memoryview(buffer).toreadonly()[:size]

    def load_many_if_in_memory(self, chunks: list[tuple[str, int, Place]]) -> list[Loaded | None]:
        """:meth:`load_if_in_memory` of each (address, size, place), a run of chunks side by side
        in one pack read with one ``preadv`` (``RWF_NOWAIT``): a sequential reader's chunks are
        mostly such runs, and three system calls per 64 KiB chunk cost more than the copy. A
        read the OS can serve only in part is used as far as it goes."""
        if NOWAIT is None:
            return [None] * len(chunks)
        results: list[Loaded | None] = []
        opened: dict[str, int | None] = {}
        try:
            for run in self._runs(chunks):
                address, size, place = run[0]
                if len(run) == 1 and place.pack is None:
                    data = self.load_if_in_memory(address, size, place)
                    results.append(Loaded(data, data, 0) if data is not None else None)
                    continue
                path = self._file(address, place)
                if path not in opened and self._plausible(address, size, place):
                    try:
                        opened[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        opened[path] = None
                fd, buffer, got = opened.get(path), bytearray(_span(run)), 0
                try:
                    got = os.preadv(fd, [buffer], place.offset, NOWAIT) if fd is not None else 0
                except OSError:  # BlockingIOError (not in memory) above all
                    got = 0
                results += self._pieces(memoryview(buffer)[:got], run)
        finally:
            for fd in opened.values():
                if fd is not None:
                    os.close(fd)
        return results

    def _runs(self, chunks: list[tuple[str, int, Place]]) -> Iterator[list[tuple[str, int, Place]]]:
        """``chunks`` in order, cut into runs that lie side by side in one pack (a loose chunk, or
        one whose size or place is impossible, is a run of its own)."""
        run: list[tuple[str, int, Place]] = []
        for chunk in chunks:
            address, size, place = chunk
            joins = (run and place.pack is not None and place.pack == run[-1][2].pack
                     and place.offset == run[-1][2].offset + run[-1][1]
                     and self._plausible(address, size, place) and self._plausible(*run[-1]))
            if run and not joins:
                yield run
                run = []
            run.append(chunk)
        if run:
            yield run

    def _pieces(self, data: bytes | bytearray | memoryview, run: list[tuple[str, int, Place]]
                ) -> list[Loaded | None]:
        """Each chunk of ``run`` as a view of ``data`` (read from the run's start), if it is all
        there and matches its address; None for one that is not (nothing is reported)."""
        view, start, pieces = memoryview(data).toreadonly(), run[0][2].offset, []
        for address, size, place in run:
            at = place.offset - start
            piece = view[at:at + size]
            if len(piece) == size and digest(piece) == address:
                self.stats.reads += 1
                pieces.append(Loaded(piece, view, at))
            else:
                pieces.append(None)
        return pieces

    @staticmethod
    def _plausible(address: str, size: int, place: Place) -> bool:
        return 0 < size <= MAX_SIZE and is_address(address) and (
            place.pack is None or (packs.is_name(place.pack) and place.offset >= 0))

    def load(self, address: str, size: int, place: Place = LOOSE, fd: int | None = None
             ) -> tuple[bytes | memoryview | None, str | None]:
        """(bytes, None) if the chunk is whole and matches its address, else (None, "missing" or "corrupt").

        ``size`` and ``place`` come from the chunk index, which a damaged or
        hostile file may have changed: a size no chunk can have (the chunker
        never cuts more than ``MAX_SIZE``), an address that is no digest or a
        pack name that is not one is a miss, never an allocation of that size or
        a path outside the store. ``fd``: the file already opened (by
        :meth:`load_many`).
        """
        self.stats.reads += 1
        if not self._plausible(address, size, place):
            self.stats.corrupt += 1
            log.warning("chunk %r has an impossible size %r or place %r in the chunk index: treated as "
                        "missing", address, size, place)
            return None, "corrupt"
        # a loose file is read one byte past its size: a longer file is as wrong as a shorter one
        length = size if place.pack is not None else size + 1
        try:
            if fd is not None:
                data = os.pread(fd, length, place.offset)
            else:
                fd = os.open(self._file(address, place), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.pread(fd, length, place.offset)
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
                self.discard(address, size, place)
            except OSError as exc:  # a read-only cache: the bytes stay, and are checked at every read
                log.debug("cannot remove corrupt chunk %s: %s", address, exc)
            return None, "corrupt"
        return data, None

    # -- removing -----------------------------------------------------------
    def discard(self, address: str, size: int = 0, place: Place = LOOSE) -> int:
        """Remove a chunk: its loose file, or its range of a pack (a hole punched in it).

        Returns the bytes freed (0 if it was not there). A pack left with no
        chunk is deleted by the caller, which knows from the index (:meth:`drop_pack`).
        """
        if place.pack is None:
            path = self.path(address)
            try:
                freed = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return 0
            return freed
        if not self._plausible(address, size, place):
            return 0
        try:
            fd = os.open(self._file(address, place), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            packs.punch_hole(fd, place.offset, size)
        finally:
            os.close(fd)
        return size

    def drop_pack(self, name: str) -> None:
        """Delete a pack none of whose chunks is wanted any more."""
        if packs.is_name(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self._packs}{name}")

    # -- what is on disk ----------------------------------------------------
    def scan(self, remove_temp_before: float | None = None) -> Iterator[tuple[str, int]]:
        """Every loose chunk file (a cache made before packs) as (address, size).

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
            if not shard.is_dir() or shard.name == PACKS:
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
                    ChunkFiles._remove_stale(entry, remove_temp_before)
                elif is_address(entry.name) and entry.name[:2] == name:
                    yield entry.name, entry.stat().st_size
            except FileNotFoundError:  # evicted or renamed while we looked
                continue

    def pack_names(self, remove_temp_before: float | None = None) -> dict[str, float]:
        """Every pack's name and last change (unix time); call after :meth:`scan`.

        Temp files are handled as :meth:`scan` does. A packs folder that cannot
        be listed is logged and named in :attr:`unlisted` (as ``packs``).
        """
        found: dict[str, float] = {}
        try:
            with os.scandir(self.packs_dir) as entries:
                for entry in entries:
                    try:
                        if entry.name.startswith(TMP_PREFIX):
                            self._remove_stale(entry, remove_temp_before)
                        elif packs.is_name(entry.name):
                            found[entry.name] = entry.stat().st_mtime
                    except FileNotFoundError:  # deleted while we looked
                        continue
        except OSError as exc:
            log.warning("pack folder %s cannot be listed (%s): its chunks are left as they are",
                        self.packs_dir, exc.strerror or exc)
            self.unlisted.append(PACKS)
        return found

    def pack_contents(self, name: str) -> list[tuple[str, int, int]] | None:
        """(address, size, offset) of each chunk a pack's table lists; None if it has no whole table."""
        try:
            fd = os.open(f"{self._packs}{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("pack %s cannot be opened: %s", name, exc)
            return None
        try:
            return packs.read_contents(fd, os.fstat(fd).st_size)
        except OSError as exc:
            log.warning("pack %s cannot be read: %s", name, exc)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _remove_stale(entry: os.DirEntry, remove_temp_before: float | None) -> None:
        if remove_temp_before is not None and entry.stat().st_mtime < remove_temp_before:
            try:
                Path(entry.path).unlink(missing_ok=True)
            except OSError as exc:  # a read-only cache keeps it: it is never read
                log.debug("cannot remove the stale temp file %s: %s", entry.path, exc)

    def statistics(self) -> dict:
        return dict(self.stats.__dict__)


def _write_all(fd: int, buffers: list[memoryview]) -> None:
    """Write ``buffers`` in order with as few ``writev`` calls as the OS takes (IOV_MAX at
    most per call; a short write goes on where it stopped)."""
    most = os.sysconf("SC_IOV_MAX")
    while buffers:
        done = os.writev(fd, buffers[:most])
        if not done:
            raise OSError(errno.EIO, "the pack file takes no more bytes")
        while buffers and done >= len(buffers[0]):
            done -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and done:
            buffers = [buffers[0][done:], *buffers[1:]]


def _span(run: list[tuple[str, int, Place]]) -> int:
    """Bytes from the start of a run's first chunk to the end of its last."""
    return run[-1][2].offset + run[-1][1] - run[0][2].offset
