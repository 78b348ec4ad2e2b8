"""The write half of the origin contract: :meth:`Origin.put` and :meth:`Origin.remove`.

:class:`~musicfs.testing.origin_contract.OriginContract` includes it, so every kind runs it
with the same ``make_origin`` fixture: a kind whose class says ``writable = True`` is held to
the guarantees :meth:`Origin.put` lists (atomic replacement, bounded reads of the source,
nothing left by a failure, paths checked as reads check them); any other kind must refuse both
calls with :class:`~musicfs.errors.OriginReadOnly`. Which tests apply is decided per origin,
so a plugin needs nothing more than the read contract's fixture.
"""

from __future__ import annotations

import hashlib
import io
import random
import tracemalloc

import pytest

from musicfs.errors import NotFound, NotRepeatable, OriginReadOnly

MiB = 1 << 20
BIG = 12 * MiB  # a put of several chunks (and parts, for a kind that uploads in parts)
MOST_READ = 8 * MiB  # the most a put may ask of its source at once


class SourceBroke(Exception):
    """What a :class:`Source` raises where it is told to fail."""


class Source(io.RawIOBase):
    """What a test puts: ``data``, read in whatever sizes a put asks for (each size is recorded
    in ``asked``), rewindable or not (as a pipe), failing with :class:`SourceBroke` at a read that
    would pass ``fail_at`` bytes, and calling ``during(taken)`` once a read passes ``during_at``."""

    def __init__(self, data: bytes, *, seekable: bool = True, fail_at: int | None = None,
                 during=None, during_at: int = 0):
        super().__init__()
        self.data, self._seekable, self.fail_at = data, seekable, fail_at
        self.during, self.during_at = during, during_at
        self.pos = 0
        self.asked: list[int | None] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(size)
        end = len(self.data) if size is None or size < 0 else min(len(self.data), self.pos + size)
        if self.fail_at is not None and end > self.fail_at:
            raise SourceBroke(f"the source broke at {self.fail_at} bytes")
        data, self.pos = self.data[self.pos:end], end
        if self.during is not None and self.pos > self.during_at:
            during, self.during = self.during, None
            during(self.pos)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def tell(self) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("not seekable")
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("not seekable")
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.data)}[whence] + offset
        return self.pos


class Generated(io.RawIOBase):
    """``size`` bytes made as they are read and never held whole: what a put's memory is measured with."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.pos = size, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        size = self.size - self.pos if size is None or size < 0 else min(size, self.size - self.pos)
        self.pos += size
        return bytes([self.pos % 251]) * size


def read_all(origin, path: str) -> bytes:
    """The whole file, read in pieces of a few MiB as a reader would."""
    size, parts = origin.stat(path).size, []
    for offset in range(0, size, 4 * MiB):
        parts.append(origin.read_range(path, offset, 4 * MiB))
    return b"".join(parts)


def listing(origin, prefix: str) -> dict[str, int]:
    """Every name in one folder: files with their sizes, folders as -1 (leftovers show here too)."""
    files, dirs = origin.list_all(prefix)
    return {**{e.path: e.size for e in files}, **{f"{prefix}{d}/": -1 for d in dirs}}


class WriteContract:
    """:meth:`Origin.put` and :meth:`Origin.remove` as every writable kind must do them (and the
    refusal every other kind gives). Uses the ``origin`` and ``files`` fixtures of :class:`OriginContract`."""

    @pytest.fixture
    def writable(self, origin):
        if not origin.writable:
            pytest.skip(f"{origin.kind} origins are read-only")
        return origin

    def test_put_then_stat_and_read(self, writable, files):
        data = random.Random(11).randbytes(150_000)
        writable.put("new.bin", Source(data))
        assert writable.stat("new.bin").size == len(data)
        assert writable.read_range("new.bin", 0, len(data)) == data
        assert writable.read_range("new.bin", 1000, 10) == data[1000:1010]
        assert "new.bin" in listing(writable, "")
        assert read_all(writable, "a.flac") == files["a.flac"]  # the others are as they were

    def test_put_of_nothing_is_an_empty_file(self, writable):
        writable.put("dir/nothing.bin", Source(b""))
        assert writable.stat("dir/nothing.bin").size == 0
        assert writable.read_range("dir/nothing.bin", 0, 10) == b""

    def test_put_replaces_a_file(self, writable, files):
        old = writable.stat("a.flac")
        data = b"the new content, shorter than the old"
        writable.put("a.flac", Source(data))
        new = writable.stat("a.flac")
        assert new.size == len(data) != old.size and new.version_key != old.version_key
        assert writable.read_range("a.flac", 0, 1 << 20) == data
        assert listing(writable, "") == {"a.flac": len(data), "dir/": -1, "many/": -1, "ünï cödé/": -1}

    @pytest.mark.parametrize("seekable", [True, False], ids=["rewindable", "stream"])
    def test_a_put_of_many_mib_is_streamed_in_bounded_reads(self, writable, seekable):
        data = random.Random(12).randbytes(BIG)
        source = Source(data, seekable=seekable)
        writable.put("dir/sub/big.bin", source)
        assert writable.stat("dir/sub/big.bin").size == BIG
        assert hashlib.sha256(read_all(writable, "dir/sub/big.bin")).digest() == hashlib.sha256(data).digest()
        assert source.pos == BIG
        assert all(size is not None and 0 < size <= MOST_READ for size in source.asked), source.asked

    def test_a_put_holds_a_few_chunks_in_memory_not_the_file(self, writable):
        size = 96 * MiB
        tracemalloc.start()
        try:
            writable.put("dir/huge.bin", Generated(size))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert writable.stat("dir/huge.bin").size == size
        assert peak < size // 2, f"a put of {size // MiB} MiB held {peak / MiB:.0f} MiB at once"

    def test_put_makes_the_folders_it_needs(self, writable):
        writable.put("new/deeper/x.bin", Source(b"x" * 100))
        assert writable.stat("new/deeper/x.bin").size == 100
        assert writable.list_all("new/") == ([], ["deeper"])
        assert listing(writable, "new/deeper/") == {"new/deeper/x.bin": 100}
        writable.put("new/deeper/y.bin", Source(b"y"))  # into a folder that exists now
        assert listing(writable, "new/deeper/") == {"new/deeper/x.bin": 100, "new/deeper/y.bin": 1}

    def test_readers_see_the_old_file_until_the_put_ends(self, writable, files):
        old, data = files["dir/sub/c.ogg"], random.Random(13).randbytes(BIG)
        seen = []

        def look(_taken: int) -> None:  # halfway through the put, as a reader elsewhere would
            seen.append((writable.stat("dir/sub/c.ogg").size, writable.read_range("dir/sub/c.ogg", 0, 1 << 20)))

        writable.put("dir/sub/c.ogg", Source(data, during=look, during_at=BIG // 2))
        assert seen == [(len(old), old)]
        assert read_all(writable, "dir/sub/c.ogg") == data

    @pytest.mark.parametrize("seekable", [True, False], ids=["rewindable", "stream"])
    def test_a_source_failing_midway_leaves_the_old_file_and_nothing_else(self, writable, files, seekable):
        before = listing(writable, "dir/")
        for path in ("dir/b.mp3", "dir/fresh.bin"):  # a file replaced, and a new one
            source = Source(random.Random(14).randbytes(BIG), seekable=seekable, fail_at=BIG - 3 * MiB)
            if seekable:  # raised as it is, the source rewound: the put may be called again
                with pytest.raises(SourceBroke):
                    writable.put(path, source)
                assert source.tell() == 0
            else:  # half of it is gone: calling again would store the rest only, so it says so
                with pytest.raises(NotRepeatable) as info:
                    writable.put(path, source)
                assert isinstance(info.value.__cause__, SourceBroke)
        assert read_all(writable, "dir/b.mp3") == files["dir/b.mp3"]
        with pytest.raises(NotFound):
            writable.stat("dir/fresh.bin")
        assert listing(writable, "dir/") == before

    def test_remove(self, writable, files):
        writable.remove("dir/b.mp3")
        with pytest.raises(NotFound):
            writable.stat("dir/b.mp3")
        assert "dir/b.mp3" not in listing(writable, "dir/")
        assert read_all(writable, "dir/sub/c.ogg") == files["dir/sub/c.ogg"]
        writable.remove("ünï cödé/d é.flac")
        with pytest.raises(NotFound):
            writable.stat("ünï cödé/d é.flac")

    def test_removing_what_is_not_there_is_no_error(self, writable):
        writable.remove("dir/no such file.flac")
        writable.remove("no/such/folder/file.flac")
        writable.remove("a.flac")
        writable.remove("a.flac")

    @pytest.mark.parametrize("path", ["../escaped.bin", "dir/../../escaped.bin", "dir/sub/../../../escaped.bin",
                                      "", "dir/", "dir/.."])
    def test_writes_cannot_leave_the_origin_or_name_no_file(self, writable, path):
        source = Source(b"should not be stored")
        with pytest.raises(ValueError):
            writable.put(path, source)
        with pytest.raises(ValueError):
            writable.remove(path)
        assert source.asked == []  # refused before reading anything

    def test_an_absolute_path_is_refused_or_inside_the_origin(self, writable):
        try:
            writable.put("/escaped.bin", Source(b"where?"))
        except ValueError:
            return
        assert writable.read_range("escaped.bin", 0, 100) == b"where?"  # the origin's own file

    def test_a_read_only_origin_refuses_writes(self, origin, files):
        if origin.writable:
            pytest.skip(f"{origin.kind} origins are writable")
        source = Source(b"should not be stored")
        with pytest.raises(OriginReadOnly) as info:
            origin.put("a.flac", source)
        assert origin.id in str(info.value) and origin.kind in str(info.value)
        with pytest.raises(OriginReadOnly):
            origin.remove("a.flac")
        assert source.asked == []
        assert read_all(origin, "a.flac") == files["a.flac"]
