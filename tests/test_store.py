"""The chunk store on its own: chunking, chunk files, the chunk index, eviction, dedup."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import sqlite3
import sys
import time

import pytest
from fastcdc.fastcdc_cy import fastcdc_cy
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.digest import digest
from musicfs.events import EventBus
from musicfs.store.cache import ContentCache
from musicfs.store.cas import LOOSE, ChunkFiles, Place
from musicfs.store.chunkdb import ChunkIndex, ChunkRef
from musicfs.store.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE, StreamChunker
from musicfs.store.inspect import chunk_summary
from tests.cachefiles import pack_files, stored_chunks

DATA = random.Random(5).randbytes(6 * 1024 * 1024)


def whole_file_chunks(data: bytes) -> list[tuple[int, int]]:
    return [(c.offset, c.length) for c in fastcdc_cy(data, MIN_SIZE, AVG_SIZE, MAX_SIZE, False, None)]


STREAMED = DATA[:3 * 1024 * 1024]  # ~48 chunks: every size from MIN_SIZE to MAX_SIZE is cut
MAX_FEEDS = 3000  # then the rest in one piece: 1-byte pieces of the whole took minutes


@given(cuts=st.lists(st.integers(min_value=1, max_value=600_000), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_streamed_chunks_equal_whole_file_chunks(cuts):
    chunker, got, pos, i = StreamChunker(), [], 0, 0
    while pos < len(STREAMED):
        step = cuts[i % len(cuts)] if i < MAX_FEEDS else len(STREAMED)
        got += chunker.feed(STREAMED[pos:pos + step])
        pos += step
        i += 1
        # what is not cut yet is exactly what follows the last chunk (a fill serves reads from it)
        assert chunker.buffered == STREAMED[chunker.position:pos]
    got += chunker.finish()
    assert chunker.buffered == b""
    assert [(p.offset, len(p.data)) for p in got] == whole_file_chunks(STREAMED)
    assert b"".join(p.data for p in got) == STREAMED
    assert all(MIN_SIZE <= len(p.data) <= MAX_SIZE for p in got[:-1])


@pytest.mark.req("CAS-1")
def test_the_compiled_scan_cuts_where_the_fastcdc_package_does_and_so_does_the_fallback(monkeypatch):
    """Chunks are cut by musicfs's own scan (C, the GIL released) where it is built, as it is by
    make setup; its cuts are the fastcdc package's, so a cache filled before keeps deduplicating
    (and delta sync keeps finding old chunks). Without it the package's scan cuts the same."""
    import musicfs.store
    from musicfs.store import _fastcdc, chunker

    rng = random.Random(9)
    samples = [b"", b"x", bytes(3 * MAX_SIZE), DATA[:MIN_SIZE + 1], DATA] + [
        rng.randbytes(rng.randint(1, 2 * 1024 * 1024)) for _ in range(8)]
    scans = []
    for built in (True, False):
        chunker._scanner.cache_clear()
        if not built:  # the import fails, as where it could not be compiled
            monkeypatch.setitem(sys.modules, "musicfs.store._fastcdc", None)
            monkeypatch.delattr(musicfs.store, "_fastcdc")
        scans.append(chunker._scanner())
        # streamed in blocks larger than a chunk, each after kept bytes (cut apart from the block)
        streamed, pos = StreamChunker(), 0
        pieces = []
        for step in itertools.cycle((300_000, 1_000_000, 70_000, MAX_SIZE, 2_000_000)):
            if pos >= len(DATA):
                break
            pieces += streamed.feed(DATA[pos:pos + step])
            pos += step
            assert streamed.buffered == DATA[streamed.position:pos]
        pieces += streamed.finish()
        assert [(piece.offset, len(piece.data)) for piece in pieces] == whole_file_chunks(DATA)
        assert b"".join(piece.data for piece in pieces) == DATA
    chunker._scanner.cache_clear()
    assert scans[0].__code__ is not scans[1].__code__ and _fastcdc.cut_lengths
    for data in samples:
        whole = whole_file_chunks(data) if data else []
        for scan in scans:
            assert scan(memoryview(data), len(data)) == [n for _, n in whole]
            early = len(data) // 2  # only the chunks starting before a point
            assert scan(memoryview(data), early) == [n for o, n in whole if o < early]


def test_restart_at_a_chunk_boundary_gives_the_same_chunks():
    reference = whole_file_chunks(DATA)
    start = reference[10][0]
    chunker = StreamChunker(start)
    got = chunker.feed(DATA[start:]) + chunker.finish()
    assert [(p.offset, len(p.data)) for p in got] == reference[10:]


def test_an_edit_changes_only_nearby_chunks():
    edited = bytearray(DATA)
    edited[3_000_000:3_000_010] = b"x" * 10
    before = {digest(DATA[o:o + n]) for o, n in whole_file_chunks(DATA)}
    after = [digest(bytes(edited[o:o + n])) for o, n in whole_file_chunks(bytes(edited))]
    new = [a for a in after if a not in before]
    assert 1 <= len(new) <= 3  # delta sync moves a few chunks, not the file


def write_loose(files: ChunkFiles, data: bytes) -> str:
    """A chunk in a file of its own, as caches made before packs hold them."""
    address = digest(data)
    files.path(address).write_bytes(data)
    return address


@pytest.mark.req("NFR-8.1")
def test_chunks_in_packs_and_in_loose_files_detect_corruption_and_truncation(tmp_path):
    files = ChunkFiles(tmp_path)
    blobs = [os.urandom(70_000 + i) for i in range(3)]
    name, offsets = files.write_pack([(digest(b), b) for b in blobs])
    places = [Place(name, offset) for offset in offsets]
    assert [files.read(digest(b), len(b), p) for b, p in zip(blobs, places)] == blobs
    pack = files.pack_path(name)
    raw = bytearray(pack.read_bytes())
    raw[offsets[1] + 100] ^= 0x01
    pack.write_bytes(raw)
    assert files.read(digest(blobs[1]), len(blobs[1]), places[1]) is None
    with open(pack, "rb") as f:  # the damaged chunk's range was freed (a hole reads as zeros) ...
        f.seek(offsets[1])
        assert f.read(len(blobs[1])) == bytes(len(blobs[1]))
    # ... and its neighbours, and the pack's table, are untouched
    assert [files.read(digest(b), len(b), places[i]) for i, b in enumerate(blobs) if i != 1] == [blobs[0], blobs[2]]
    assert files.pack_contents(name) == [(digest(b), len(b), o) for b, o in zip(blobs, offsets)]
    os.truncate(pack, offsets[2] + 10)  # a pack cut short
    assert files.read(digest(blobs[2]), len(blobs[2]), places[2]) is None
    assert files.pack_contents(name) is None
    # a loose file of an older cache: read, and removed when wrong
    data = os.urandom(30_000)
    address = write_loose(files, data)
    assert files.read(address, len(data)) == data
    files.path(address).write_bytes(data[:1000])
    assert files.read(address, len(data)) is None and not files.path(address).exists()
    assert files.read("0" * 32, 10) is None
    assert files.read(address, len(data), Place("../../secret", 0)) is None  # a hostile place
    assert files.stats.corrupt == 4 and files.stats.missing == 1


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_batch_load_reports_each_chunk_as_one_load_would_and_closes_every_file(tmp_path):
    """load_many (a read-ahead batch, its disk reads started together) returns what load returns
    chunk by chunk: good bytes, a missing pack, a corrupt chunk (its range freed), a hostile index
    row (an address that is a path, a pack name that is one, a size no chunk has) never opened;
    and it keeps no descriptor."""
    files = ChunkFiles(tmp_path)
    blobs = [os.urandom(20_000 + i) for i in range(4)]
    name, offsets = files.write_pack([(digest(b), b) for b in blobs])
    at = [Place(name, o) for o in offsets]
    with open(files.pack_path(name), "r+b") as f:
        f.seek(offsets[2] + 5)
        f.write(b"x")
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 10)
    batch = [(digest(blobs[0]), len(blobs[0]), at[0]), ("f" * 32, 100, Place("0" * 16, 0)),
             (digest(blobs[2]), len(blobs[2]), at[2]), (digest(blobs[3]), len(blobs[3]), at[3]),
             ("../../secret", 10, LOOSE), (digest(blobs[0]), 10, Place("../../secret", 0)),
             (digest(blobs[1]), MAX_SIZE + 1, at[1])]
    before = fd_count()
    loaded = [(chunk and chunk.data, problem) for chunk, problem in files.load_many(batch)]
    assert fd_count() == before
    assert loaded == [(blobs[0], None), (None, "missing"), (None, "corrupt"), (blobs[3], None),
                      (None, "corrupt"), (None, "corrupt"), (None, "corrupt")]
    assert files.read(digest(blobs[1]), len(blobs[1]), at[1]) == blobs[1]
    assert secret.read_bytes() == b"x" * 10
    assert files.load_many([]) == [] and files.load_many(batch[:1])[0][0].data == blobs[0]


@pytest.mark.req("NFR-8.1")
def test_a_load_on_the_event_loop_serves_only_whole_matching_chunks_and_reports_nothing(tmp_path):
    """load_if_in_memory (a chunk served without a worker thread) gives the bytes of a chunk the
    OS holds in memory; for anything else (damaged, cut short, gone, a stale or hostile place)
    it gives None and leaves the finding and the reporting to the ordinary load: no counter
    moves, no range is freed, no descriptor is kept."""
    files = ChunkFiles(tmp_path)
    blobs = [os.urandom(40_000 + i) for i in range(3)]
    name, offsets = files.write_pack([(digest(b), b) for b in blobs])
    at = [Place(name, o) for o in offsets]
    loose = os.urandom(25_000)
    address = write_loose(files, loose)
    before = fd_count()
    if files.load_if_in_memory(digest(blobs[0]), len(blobs[0]), at[0]) is None:
        pytest.skip("this kernel or filesystem refuses reads that must not wait (RWF_NOWAIT)")
    assert files.load_if_in_memory(digest(blobs[1]), len(blobs[1]), at[1]) == blobs[1]
    assert files.load_if_in_memory(address, len(loose), LOOSE) == loose
    with open(files.pack_path(name), "r+b") as f:
        f.seek(offsets[2] + 7)
        f.write(b"x")
    assert files.load_if_in_memory(digest(blobs[2]), len(blobs[2]), at[2]) is None  # damaged
    assert files.load_if_in_memory(digest(blobs[1]), len(blobs[1]), at[0]) is None  # a stale place
    files.path(address).write_bytes(loose + b"more")  # a loose file longer than its chunk
    assert files.load_if_in_memory(address, len(loose), LOOSE) is None
    assert files.load_if_in_memory("0" * 32, 10, LOOSE) is None  # gone
    assert files.load_if_in_memory(digest(blobs[0]), 10, Place("../../secret", 0)) is None
    assert fd_count() == before
    assert (files.stats.corrupt, files.stats.missing) == (0, 0)
    with open(files.pack_path(name), "rb") as f:  # nothing freed: the ordinary load decides
        f.seek(offsets[2])
        assert f.read(len(blobs[2])) != bytes(len(blobs[2]))
    assert files.read(digest(blobs[2]), len(blobs[2]), at[2]) is None and files.stats.corrupt == 1


@pytest.mark.req("NFR-8.1")
def test_side_by_side_chunks_load_together_and_each_is_checked_on_its_own(tmp_path):
    """A pack's run of chunks is read at once, in a worker (load_many) or on the loop
    (load_many_if_in_memory), but each chunk is still checked against its address: a damaged
    one in the middle of a run is a miss (reported by the ordinary load), its neighbours are
    served, and a run read only in part serves what it holds."""
    files = ChunkFiles(tmp_path)
    blobs = [os.urandom(30_000 + i) for i in range(6)]
    name, offsets = files.write_pack([(digest(b), b) for b in blobs])
    batch = [(digest(b), len(b), Place(name, o)) for b, o in zip(blobs, offsets)]
    if files.load_many_if_in_memory(batch[:1]) == [None]:
        pytest.skip("this kernel or filesystem refuses reads that must not wait (RWF_NOWAIT)")
    def loaded(chunks):  # each chunk's bytes; those of one run are views of one buffer, where they start at `at`
        found = files.load_many_if_in_memory(chunks)
        for chunk in found:
            if chunk is not None:
                assert chunk.run is found[0].run and chunk.run[chunk.at:chunk.at + len(chunk.data)] == chunk.data
        return [None if chunk is None else bytes(chunk.data) for chunk in found]

    assert loaded(batch) == blobs
    assert [chunk.data for chunk, _ in files.load_many(batch)] == blobs
    with open(files.pack_path(name), "r+b") as f:
        f.seek(offsets[3] + 11)
        f.write(b"x")
    before = fd_count()
    assert loaded(batch) == blobs[:3] + [None] + blobs[4:]
    assert files.stats.corrupt == 0  # on the loop nothing is reported: the worker's load decides
    stale = batch[:2] + [(batch[2][0], batch[2][1], Place(name, offsets[2] + 1))]  # a stale place
    assert loaded(stale) == blobs[:2] + [None]
    assert [(chunk and chunk.data, problem) for chunk, problem in files.load_many(batch)] == [
        (b, None) for b in blobs[:3]] + [(None, "corrupt")] + [(b, None) for b in blobs[4:]]
    assert files.stats.corrupt == 1
    assert fd_count() == before


def test_a_pack_of_more_chunks_than_one_writev_takes_is_written_whole(tmp_path):
    """A pack's chunks and contents table go out in as few writev calls as the OS allows (IOV_MAX
    buffers each): a store of more chunks than that is still written whole, every chunk at the
    offset the pack reports, and the cache's rows for them are made in one statement."""
    files = ChunkFiles(tmp_path / "files")
    blobs = [os.urandom(17 + i % 50) for i in range(os.sysconf("SC_IOV_MAX") + 300)]
    name, offsets = files.write_pack([(digest(b), b) for b in blobs])
    assert [files.read(digest(b), len(b), Place(name, o)) for b, o in zip(blobs, offsets)] == blobs
    assert offsets == sorted(offsets) and offsets[-1] + len(blobs[-1]) <= files.pack_path(name).stat().st_size
    cache = ContentCache(tmp_path / "cache", 10**9, EventBus().publish)
    try:
        assert cache.store_chunks([(digest(b), b) for b in blobs]) == len(blobs)
        refs = [ChunkRef(0, len(b), digest(b)) for b in blobs]
        assert cache.read_chunks(refs) == blobs
        assert cache.store_chunks([(digest(b), b) for b in blobs[:10]], pin=1) == 10  # known: rows updated
        assert cache.read_chunks(refs[:10]) == blobs[:10]
    finally:
        cache.close()


def test_a_chunk_is_forgotten_only_at_the_place_it_was_found_bad(tmp_path):
    """A reader may hold a place looked up before the chunk was stored again elsewhere: finding
    the old place empty must not drop the row of the good copy."""
    index = ChunkIndex(tmp_path / "chunks.db")
    blob = os.urandom(1000)
    index.conn.execute("INSERT INTO chunks (address, size, pack, pack_offset, last_access) VALUES (?, ?, ?, ?, 0)",
                       (digest(blob), len(blob), "a" * 16, 4096))
    index.forget_chunk(digest(blob), Place("b" * 16, 0))
    index.forget_chunk(digest(blob), Place("a" * 16, 0))
    index.forget_chunk(digest(blob), LOOSE)
    assert index.places([digest(blob)]) == {digest(blob): (len(blob), Place("a" * 16, 4096))}
    index.forget_chunk(digest(blob), Place("a" * 16, 4096))
    assert index.places([digest(blob)]) == {}
    index.close()


def test_a_cache_batch_read_counts_and_forgets_like_single_reads(tmp_path):
    bus = EventBus()
    cache = ContentCache(tmp_path, 10**9, bus.publish)
    blobs = [os.urandom(30_000 + i) for i in range(3)]
    for blob in blobs:  # a pack each
        cache.store_chunks([(digest(blob), blob)])
    refs = [ChunkRef(0, len(b), digest(b)) for b in blobs]
    stored_chunks(tmp_path)[refs[1].address].path.unlink()
    assert cache.read_chunks(refs) == [blobs[0], None, blobs[2]]
    assert cache.counters.missing == 1
    assert [e.address for e in bus.recent() if e.kind == "ChunkStored"] == [r.address for r in refs]
    rows = {address for (address,) in cache.index.conn.execute("SELECT address FROM chunks")}
    assert rows == {refs[0].address, refs[2].address}  # the missing chunk's row went with its pack
    cache.close()


def test_a_store_writes_one_pack_and_chunks_already_held_are_not_written_again(tmp_path):
    cache = ContentCache(tmp_path, 10**9, EventBus().publish)
    blobs = [os.urandom(20_000 + i) for i in range(16)]
    assert cache.store_chunks([(digest(b), b) for b in blobs[:10]]) == 10
    assert cache.store_chunks([(digest(b), b) for b in blobs[5:]]) == 11  # 5 held already
    assert cache.counters.deduplicated == 5 and len(pack_files(tmp_path)) == 2
    places = stored_chunks(tmp_path)
    assert len({places[digest(b)].path for b in blobs[:10]}) == 1
    assert cache.read_chunks([ChunkRef(0, len(b), digest(b)) for b in blobs]) == blobs
    assert cache.size == sum(len(b) for b in blobs)
    cache.close()


def test_evicted_chunks_free_their_space_and_an_emptied_pack_is_deleted(tmp_path):
    cache = ContentCache(tmp_path, 10**9, EventBus().publish)
    blobs = [os.urandom(64 * 1024) for _ in range(16)]
    cache.store_chunks([(digest(b), b) for b in blobs])
    (pack,) = pack_files(tmp_path)
    full = pack.stat().st_blocks * 512
    freed = cache.evict(target=cache.size // 2)
    assert freed == 8 * 64 * 1024 and pack.exists()
    assert pack.stat().st_blocks * 512 <= full - 7 * 64 * 1024  # holes where the evicted chunks were
    left = [ChunkRef(0, len(b), digest(b)) for b in blobs[8:]]  # the newest stay (LRU)
    assert cache.read_chunks(left) == blobs[8:]
    cache.evict(target=0)
    assert not pack.exists() and cache.size == 0
    cache.close()


def test_only_old_temp_files_are_removed_by_scan(tmp_path):
    files = ChunkFiles(tmp_path)
    data = b"a" * 20000
    address = write_loose(files, data)
    name, _ = files.write_pack([(address, data)])
    leftovers = [files.root / "ab" / ".tmp-abc-123", files.packs_dir / ".tmp-0123456789abcdef-1-0"]
    in_flight = [files.root / "cd" / ".tmp-cde-456", files.packs_dir / ".tmp-fedcba9876543210-1-1"]
    for path in leftovers + in_flight:
        path.write_bytes(b"partial")
    for path in leftovers:
        os.utime(path, (1000, 1000))  # left by a crash long ago
    assert dict(files.scan()) == {address: 20000} and set(files.pack_names()) == {name}
    assert all(p.exists() for p in leftovers + in_flight)  # a read-only scan removes nothing
    started = time.time() - 60
    assert dict(files.scan(remove_temp_before=started)) == {address: 20000}
    assert set(files.pack_names(remove_temp_before=started)) == {name}
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in in_flight)  # a write in flight is never cut off


def _refs(blobs):
    refs, offset = [], 0
    for blob in blobs:
        refs.append(ChunkRef(offset, len(blob), digest(blob)))
        offset += len(blob)
    return refs


@pytest.mark.req("FR-20")
def test_manifests_count_references_and_dedup(tmp_path):
    index = ChunkIndex(tmp_path / "chunks.db")
    a, b, c = (os.urandom(20000) for _ in range(3))
    index.add_chunks([(digest(blob), len(blob), LOOSE) for blob in (a, b, c)])
    index.save_manifest("o", "one.flac", 60000, "v1", _refs([a, b, c]))
    index.save_manifest("o", "two.flac", 40000, "v1", _refs([a, b]))
    stats = index.statistics()
    assert stats["manifests"] == 2 and stats["logical_bytes"] == 100000 and stats["bytes"] == 60000
    assert stats["dedup_ratio"] == pytest.approx(0.4)
    # a new version replaces the map; shared chunks stay referenced
    index.save_manifest("o", "two.flac", 20000, "v2", _refs([c]))
    refs = dict(index.conn.execute("SELECT address, refs FROM chunks").fetchall())
    assert refs == {digest(a): 1, digest(b): 1, digest(c): 2}
    assert index.manifest("o", "two.flac").version == "v2"


def test_a_cache_made_before_packs_is_read_and_evicted_as_it_is(tmp_path):
    """An older cache: its chunk index has no pack columns, each chunk has a file of its own. It is
    migrated in place, its chunks are read and evicted (their files removed), new ones go to packs."""
    old = [os.urandom(40_000 + i) for i in range(3)]
    files = ChunkFiles(tmp_path)
    for blob in old:
        write_loose(files, blob)
    conn = sqlite3.connect(tmp_path / "chunks.db")
    conn.execute("CREATE TABLE chunks (address TEXT PRIMARY KEY, size INTEGER NOT NULL, refs INTEGER NOT NULL"
                 " DEFAULT 0, last_access REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0)")
    conn.executemany("INSERT INTO chunks (address, size, last_access) VALUES (?, ?, ?)",
                     [(digest(b), len(b), 1000 + i) for i, b in enumerate(old)])
    conn.commit()
    conn.close()
    cache = ContentCache(tmp_path, 10**9, EventBus().publish)
    assert cache.reconcile()["rows_dropped"] == 0
    assert cache.read_chunks([ChunkRef(0, len(b), digest(b)) for b in old]) == old
    new = os.urandom(50_000)
    cache.store_chunks([(digest(new), new)])
    assert len(pack_files(tmp_path)) == 1 and stored_chunks(tmp_path)[digest(new)].packed
    cache.flush()
    cache.evict(target=len(new))  # the old chunks were used before the new one: they go
    assert not any(files.path(digest(b)).exists() for b in old)
    assert cache.read_chunks([ChunkRef(0, len(new), digest(new))]) == [new]
    cache.close()


@pytest.mark.req("NFR-8.2")
def test_reconcile_and_rebuild_of_a_garbage_index(tmp_path):
    files = ChunkFiles(tmp_path)
    kept, lost = os.urandom(30000), os.urandom(30000)
    write_loose(files, kept)
    index = ChunkIndex(tmp_path / "chunks.db")
    index.add_chunks([(digest(lost), len(lost), LOOSE)])  # a row whose file never made it
    result = index.reconcile(dict(files.scan()), packs=set())
    assert result == {"rows_dropped": 1, "files_adopted": 1}
    index.close()
    (tmp_path / "chunks.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"chunks.db{suffix}").unlink(missing_ok=True)
    rebuilt = ChunkIndex(tmp_path / "chunks.db")
    assert rebuilt.rebuilt
    rebuilt.reconcile(dict(files.scan()))
    assert rebuilt.addresses() == {digest(kept)}


@pytest.mark.req("NFR-8.2")
def test_packs_whose_rows_were_lost_are_adopted_and_broken_ones_removed(tmp_path):
    """A crash between a pack's rename and its rows' commit, or an index rebuilt after damage,
    leaves packs no row names: start-up adopts their chunks from their tables (and reads them
    back whole); a pack without a whole table, and older than the daemon, is removed; so is
    the row of a chunk whose pack is gone."""
    bus = EventBus()
    cache = ContentCache(tmp_path, 10**9, bus.publish)
    blobs = [os.urandom(25_000 + i) for i in range(12)]
    for group in (blobs[:4], blobs[4:8], blobs[8:]):
        cache.store_chunks([(digest(b), b) for b in group])
    places = stored_chunks(tmp_path)
    adopted, broken, vanished = (places[digest(g[0])].path for g in (blobs[:4], blobs[4:8], blobs[8:]))
    cache.close()
    conn = sqlite3.connect(tmp_path / "chunks.db")
    conn.execute("DELETE FROM chunks WHERE pack IN (?, ?)", (adopted.name, broken.name))
    conn.commit()
    conn.close()
    os.truncate(broken, broken.stat().st_size - 3)
    os.utime(broken, (1000, 1000))
    vanished.unlink()
    cache = ContentCache(tmp_path, 10**9, bus.publish)
    assert cache.reconcile() == {"rows_dropped": 4, "files_adopted": 4, "packs_removed": 1}
    assert not broken.exists() and adopted.exists()
    assert cache.read_chunks([ChunkRef(0, len(b), digest(b)) for b in blobs[:4]]) == blobs[:4]
    assert cache.size == sum(len(b) for b in blobs[:4])
    cache.close()


@pytest.mark.req("NFR-8.2", "FAULT-23")
def test_a_chunk_folder_a_failing_disk_cannot_list_loses_nothing(tmp_path, monkeypatch, caplog):
    """A folder whose listing fails (EBADMSG: a directory block failing its checksum on a dying
    disk) is logged and named; start-up reconciliation keeps its rows (what it holds is unknown,
    not gone) and verification neither crashes nor calls its chunks missing: the packs folder,
    and a shard folder of loose chunk files (a cache made before packs)."""
    from musicfs.store.inspect import verify_chunks

    blobs = [os.urandom(20000 + i) for i in range(40)]
    bus = EventBus()
    cache = ContentCache(tmp_path, 10**9, bus.publish)
    assert cache.store_chunks([(digest(b), b) for b in blobs[:20]]) == 20
    cache.close()
    files = ChunkFiles(tmp_path)
    loose = [write_loose(files, b) for b in blobs[20:]]
    hidden = {"packs", loose[0][:2]}
    in_hidden = {a for a in loose if a[:2] in hidden}
    real_scandir = os.scandir

    def failing_scandir(path):
        if os.path.basename(os.fspath(path)) in hidden:
            raise OSError(74, "Bad message", os.fspath(path))
        return real_scandir(path)

    cache = ContentCache(tmp_path, 10**9, bus.publish)
    assert cache.reconcile()["files_adopted"] == 20  # the loose files of an older cache
    cache.close()
    monkeypatch.setattr(os, "scandir", failing_scandir)
    report = verify_chunks(tmp_path)
    assert sorted(report["unlisted"]) == sorted(hidden)
    assert report["corrupt"] == 0 and report["missing"] == 0, report
    assert report["checked"] == 20 - len(in_hidden)
    with caplog.at_level(logging.WARNING):
        cache = ContentCache(tmp_path, 10**9, bus.publish)
        assert cache.reconcile() == {"rows_dropped": 0, "files_adopted": 0, "packs_removed": 0}
        assert cache.index.addresses() == {digest(b) for b in blobs}
        cache.close()
    for name in hidden:
        assert any("cannot be listed" in r.getMessage() and name in r.getMessage() for r in caplog.records)


@pytest.mark.req("NFR-5.2")
def test_eviction_keeps_the_limit_and_spares_chunks_in_use(tmp_path):
    bus = EventBus()
    cache = ContentCache(tmp_path, limit_bytes=500_000, publish=bus.publish)
    blobs = [os.urandom(50_000) for _ in range(20)]
    protected = digest(blobs[0])
    cache.store_chunk(protected, blobs[0])
    cache.hold([protected])
    for blob in blobs[1:]:
        cache.store_chunk(digest(blob), blob)
        assert cache.size <= 500_000
    assert cache.has(ChunkRef(0, len(blobs[0]), protected))
    assert cache.counters.evictions >= 10
    on_disk = chunk_summary(tmp_path)
    assert on_disk["bytes_on_disk"] == cache.size <= 500_000
    assert on_disk["disk_used"] <= 500_000 + 8192 * on_disk["pack_files"]  # evicted chunks' space given back
    assert bus.counts["ChunkEvicted"] == cache.counters.evictions


def test_default_cache_limit_is_ten_gigabytes():
    from musicfs.config import config_for_folder

    assert config_for_folder("/").cache_size == 10 * 10**9


def _mapped(sizes: list[int]) -> list[ChunkRef]:
    refs, offset = [], 0
    for size in sizes:
        data = random.Random(offset).randbytes(size)
        refs.append(ChunkRef(offset, size, digest(data)))
        offset += size
    return refs


@pytest.mark.req("FAULT-20")
def test_chunk_maps_that_cannot_describe_their_file_are_refused(tmp_path):
    index = ChunkIndex(tmp_path / "chunks.db")
    refs = _mapped([20_000, 30_000, 10_000])
    index.save_manifest("o", "ok", 60_000, "v", refs)
    assert index.manifest("o", "ok").problem() is None
    bad = {
        "gap": [refs[0], ChunkRef(refs[1].offset + 1, refs[1].size, refs[1].address), refs[2]],
        "huge": [refs[0], ChunkRef(refs[1].offset, 2**63 - 1, refs[1].address)],
        "empty": [refs[0], ChunkRef(refs[1].offset, 0, refs[1].address), refs[2]],
        "short": refs[:2],
    }
    for name, chunks in bad.items():
        index.save_manifest("o", name, 60_000, "v", chunks)
        assert index.manifest("o", name) is None, name  # refused, and dropped: fetched again
        assert index.conn.execute("SELECT COUNT(*) FROM manifests WHERE real_path = ?", (name,)).fetchone()[0] == 0
    files = ChunkFiles(tmp_path)
    assert files.load(refs[0].address, 2**63 - 1) == (None, "corrupt")  # never read with that length
    assert files.load(refs[0].address, -1) == (None, "corrupt")
    index.close()


@pytest.mark.req("FAULT-24", "NFR-8.3")
def test_partial_chunk_maps_grow_in_place_and_never_undo_a_complete_one(tmp_path):
    index = ChunkIndex(tmp_path / "chunks.db")
    refs = _mapped([20_000] * 6)
    index.save_manifest("o", "f", 120_000, "v", refs[:2], complete=False)
    index.save_manifest("o", "f", 120_000, "v", refs[:4], complete=False)
    partial = index.manifest("o", "f")
    assert not partial.complete and partial.covered == 80_000 and list(partial.chunks) == refs[:4]
    first_id = partial.id
    index.save_manifest("o", "f", 120_000, "v", refs)
    whole = index.manifest("o", "f")
    assert whole.complete and whole.id == first_id and list(whole.chunks) == refs
    index.save_manifest("o", "f", 120_000, "v", refs[:5], complete=False)  # a save that came late
    assert index.manifest("o", "f").complete
    index.save_manifest("o", "f", 120_000, "v2", refs[:1], complete=False)  # a new version starts over
    again = index.manifest("o", "f")
    assert again.version == "v2" and not again.complete and list(again.chunks) == refs[:1]
    index.close()


@pytest.mark.req("FAULT-23")
def test_a_cache_that_cannot_be_written_serves_on_and_says_so_once(tmp_path, caplog, monkeypatch):
    cache = ContentCache(tmp_path, 10**9, EventBus().publish, write_retry=0.3)
    data = b"x" * 40_000
    assert cache.store_chunks([(digest(data), data)]) == 1
    real_write = cache.files.write_pack

    def full(items):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.files, "write_pack", full)
    others = [bytes([i]) * 30_000 for i in range(5)]
    for chunk in others:
        assert cache.store_chunks([(digest(chunk), chunk)]) == 0  # not an error: just not kept
    stats = cache.statistics()
    assert stats["writable"] is False and stats["write_failures"] == 1 and stats["skipped_writes"] == 4
    assert [r.message for r in caplog.records].count(
        [r.message for r in caplog.records if "cannot be written" in r.message][0]) == 1
    monkeypatch.setattr(cache.files, "write_pack", real_write)
    time.sleep(0.35)
    assert cache.store_chunks([(digest(others[0]), others[0])]) == 1
    assert cache.statistics()["writable"] is True
    assert any("caching resumed" in r.message for r in caplog.records)
    assert cache.statistics()["evictions"] == 1  # the disk was full: the old chunk made way
    assert cache.read_chunk(ChunkRef(0, len(others[0]), digest(others[0]))) == others[0]
    cache.close()


@pytest.mark.req("FAULT-23")
def test_a_failing_disk_turned_read_only_is_named_so_whatever_sqlite_said(tmp_path, caplog, monkeypatch):
    """SQLite reports a disk failing under it as "disk I/O error" while the kernel remounts the
    filesystem read-only: the cache says what its disk is now (read-only), in its status and its
    one log line, not the message of whichever write happened to fail first."""
    cache = ContentCache(tmp_path, 10**9, EventBus().publish)
    real_statvfs = os.statvfs

    def read_only(path):
        found = real_statvfs(path)
        return os.statvfs_result((*found[:8], found.f_flag | os.ST_RDONLY, found.f_namemax))

    def failing(rows):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(cache, "_commit", failing)
    data = b"y" * 30_000
    assert cache.store_chunks([(digest(data), data)]) == 0  # written to a pack, refused by the index
    assert cache.statistics()["write_problem"] == "disk I/O error"  # the filesystem is writable
    cache.write_problem, cache._write_again_at = None, 0.0
    monkeypatch.setattr(os, "statvfs", read_only)
    assert cache.store_chunks([(digest(data), data)]) == 0
    assert cache.statistics()["write_problem"] == os.strerror(errno.EROFS)
    assert any("cannot be written (Read-only file system)" in r.message for r in caplog.records)
    monkeypatch.setattr(os, "statvfs", real_statvfs)
    cache.close()


@pytest.mark.req("FAULT-23")
def test_a_nearly_full_cache_that_flaps_is_one_error_not_one_per_retry(tmp_path, caplog, monkeypatch):
    """A disk with just enough room for one retry: the failure after it is the same outage (INFO),
    the same failure after ``error_repeat`` or a different one is an error again."""
    caplog.set_level(logging.INFO, logger="musicfs.store.cache")
    cache = ContentCache(tmp_path, 10**9, EventBus().publish, write_retry=0.05, error_repeat=0.6)
    real_write = cache.files.write_pack
    chunks = iter(bytes([i]) * 20_000 for i in range(50))

    def fail(errno_: int, message: str):
        def write(items):
            raise OSError(errno_, message)
        monkeypatch.setattr(cache.files, "write_pack", write)

    def errors() -> list[str]:
        return [r.message for r in caplog.records if r.levelno >= logging.ERROR and "cannot be written" in r.message]

    def store() -> int:
        chunk = next(chunks)
        return cache.store_chunks([(digest(chunk), chunk)])

    for _ in range(3):  # fail, wait out the retry, one store gets through, the next fails again
        fail(28, "No space left on device")
        assert store() == 0
        monkeypatch.setattr(cache.files, "write_pack", real_write)
        time.sleep(0.07)
        assert store() == 1 and cache.statistics()["writable"] is True
    assert len(errors()) == 1, errors()
    assert sum("writes fail again" in r.message for r in caplog.records) == 2
    fail(30, "Read-only file system")  # a different problem is news
    assert store() == 0 and len(errors()) == 2
    monkeypatch.setattr(cache.files, "write_pack", real_write)
    time.sleep(0.65)  # and so is the same one after a quiet spell
    assert store() == 1
    fail(30, "Read-only file system")
    assert store() == 0 and len(errors()) == 3
    cache.close()


@pytest.mark.req("FAULT-23")
def test_a_full_chunk_index_is_the_same_outage_as_full_chunk_files(tmp_path, caplog, monkeypatch):
    """On a full disk, whichever write meets it first (a chunk file's ENOSPC, or SQLite's "database
    or disk is full" for the index beside it) names the same problem: one error per outage."""
    caplog.set_level(logging.INFO, logger="musicfs.store.cache")
    cache = ContentCache(tmp_path, 10**9, EventBus().publish, write_retry=0.05)
    real_write, real_commit = cache.files.write_pack, cache._commit
    chunks = iter(bytes([i]) * 20_000 for i in range(10))

    def store() -> int:
        chunk = next(chunks)
        return cache.store_chunks([(digest(chunk), chunk)])

    def chunk_files_full(items):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    full = sqlite3.connect(":memory:")  # a real SQLITE_FULL: a database allowed no more pages
    full.execute("CREATE TABLE t (x)")
    full.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as raised:
        full.executemany("INSERT INTO t VALUES (?)", [(b"z" * 4000,)] * 10)
    assert raised.value.sqlite_errorcode == sqlite3.SQLITE_FULL

    def index_full(rows):
        raise raised.value

    monkeypatch.setattr(cache.files, "write_pack", chunk_files_full)
    assert store() == 0
    monkeypatch.setattr(cache.files, "write_pack", real_write)
    time.sleep(0.07)
    assert store() == 1  # room again for a moment
    monkeypatch.setattr(cache, "_commit", index_full)
    assert store() == 0
    assert cache.statistics()["write_problem"] == os.strerror(errno.ENOSPC)
    errors = [r.message for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert any("writes fail again" in r.message for r in caplog.records)
    monkeypatch.setattr(cache, "_commit", real_commit)
    cache.close()
    full.close()
