"""Faults that aim at what the cache keeps: wrong bytes from an origin, damaged chunks and chunk
indexes, a cache disk that fills up or turns read-only, crashes in the middle of fills.

The rule every scenario checks: a fault may cost a read (EIO within its
bound) or cost caching, but a wrong byte is never kept, and once the fault
is gone every file reads exact again.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chaos.checks import assert_cache_sound, assert_eio_within, assert_exact
from chaos.remote import wait_for_state
from chaos.s3lab import S3Lab, wav_lab
from conformance.daemons import fd_count
from conformance.expected import sha256_of
from conformance.measure import drop_page_cache
from fixtures.bigfile import write_wav
from musicfs.store.cache import WRITE_RETRY
from musicfs.store.fill import FIRST_BLOCK
from musicfs.store.inspect import cached_files, partial_files
from musicfs.store.reader import FAIL_FAST
from tests.cachefiles import chunk_files, flip_bit, stored_chunks
from tests.harness import (
    MountedLibrary,
    mount_library,
    mount_status,
    mounted_tracks,
    settled,
    start_mount,
    unmount,
)
from tests.s3server import aws_env

TAKES = [f"Recordings/take-{i}.wav" for i in range(3)]  # no spaces: their URL paths are literal
TAKE_SIZE = 3 * 1024 * 1024  # a few fill blocks each
READ_TIMEOUT = 3.0
SLACK = 1.5  # seconds beyond read_timeout for an EIO to reach the reader


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[S3Lab]:
    """The takes in a bucket behind the fault proxy, and in a folder (a clean replica: ``lab.local``)."""
    work = tmp_path_factory.mktemp("cachefaults")
    with wav_lab(work, TAKES, TAKE_SIZE, seed=700) as lab:
        lab.local_copy(work / "library")
        yield lab


@contextmanager
def bucket_mount(lab: S3Lab, work: Path, *, backup: bool = False) -> Iterator[MountedLibrary]:
    """A mount of the bucket (through the proxy), with the local replica second when ``backup``."""
    work.mkdir(parents=True, exist_ok=True)
    config = lab.config(work / "musicfs.toml", READ_TIMEOUT, backup=lab.local if backup else None,
                        health_interval=0.5, timeout=2.0)
    with mount_library(config=config, work=work, env=aws_env(lab.work / "aws")) as mounted:
        yield mounted


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cached_paths(cache_dir: Path) -> set[str]:
    """Real paths of the files the cache holds a complete chunk map for."""
    return {real for _origin, real, _size, complete in cached_files(cache_dir) if complete}


def error_lines(mounted: MountedLibrary, needle: str) -> list[str]:
    return [line for line in mounted.log_text().splitlines() if needle in line and "ERROR" in line]


@pytest.mark.req("FAULT-11", "NFR-8.1")
def test_f11_bit_flipped_origin_bytes_never_cached(lab, proxy, tmp_path):
    """A bucket that flips a bit in every answer: the bytes fail the ETag check and nothing is kept.

    The first reader of a never-seen file may get what the origin sent before
    the file could be checked (the documented exposure); the check at the
    end of the fill then drops every chunk of it. A fill that gets there
    before the reader's last bytes (chunk writes are quick) leaves that reader
    EIO for the rest instead: never more wrong bytes once they are known to be
    wrong. From then on the file is filled "verify first": EIO while the origin
    keeps corrupting, exact and cached once it is healthy again.
    """
    real = TAKES[0]
    with bucket_mount(lab, tmp_path / "work") as mounted:
        track = mounted_tracks(mounted.mountpoint)[real]
        proxy.corrupt(path_prefix=lab.object_path())
        right = (lab.local / real).read_bytes()
        try:
            first = read_all(track)
        except OSError as exc:  # the end-of-fill check came before the reader's last bytes
            assert exc.errno == errno.EIO, exc
            cut_short = True  # its next reads ran a verify-first fill, which may count a mismatch too
        else:
            assert len(first) == len(right) and first != right
            cut_short = False
        reader = settled(mounted.mountpoint)["reader"]
        mismatches = len(error_lines(mounted, "does not match its origin's checksum"))
        # cut short, the reader's next reads ran verify-first fills, each failing its check too
        assert (reader["checksum_mismatches"], mismatches) == (1, 1) or (
            cut_short and reader["checksum_mismatches"] >= 1 and mismatches >= 1), (reader, mismatches)
        assert cached_paths(mounted.cache_dir) == set(), "a chunk map of wrong bytes was kept"
        assert chunk_files(mounted.cache_dir) == [], "chunks of wrong bytes were kept"

        assert_eio_within(track, READ_TIMEOUT + SLACK)  # still corrupting: never wrong bytes again
        settled(mounted.mountpoint)
        assert chunk_files(mounted.cache_dir) == []
        assert mounted.alive()

        proxy.clear()
        corrupted = proxy.corrupted
        time.sleep(FAIL_FAST + 0.1)  # a read within FAIL_FAST of the last failed fill fails at once
        assert_exact(lab.expected, track, real)
        assert proxy.corrupted == corrupted
        status = settled(mounted.mountpoint)
        assert status["reader"]["verified_files"] >= 1
        assert cached_paths(mounted.cache_dir) == {real}
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == 1


@pytest.mark.req("FAULT-11", "G3")
def test_f11_a_clean_replica_serves_what_a_corrupting_origin_got_wrong(lab, proxy, tmp_path):
    """Beside a corrupting bucket, a clean local replica: the second read is exact and is what is kept.

    Then the known chunk map protects refetches: with chunks gone from disk
    (evicted), the bucket's wrong bytes are refused chunk by chunk and the
    replica's are taken.
    """
    real, other = TAKES[1], TAKES[2]
    with bucket_mount(lab, tmp_path / "work", backup=True) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        wait_for_state(mounted.mountpoint, "bucket", "healthy")  # then it serves first (priority 1)
        proxy.corrupt(path_prefix=lab.object_path())
        assert read_all(tracks[real]) != (lab.local / real).read_bytes()  # unchecked until its end
        settled(mounted.mountpoint)
        # nothing of the bucket's is kept; the replica's checked bytes may be, when the check at
        # the end of the fill came before the reader's last bytes and a fill from the disk served them
        raced = cached_paths(mounted.cache_dir) == {real}
        assert raced or cached_paths(mounted.cache_dir) == set()
        assert_exact(lab.expected, tracks[real], real)  # the bucket is suspect now: the disk serves
        assert_exact(lab.expected, tracks[other], other)  # for every file: no unchecked byte from it
        status = settled(mounted.mountpoint)
        assert status["reader"]["failovers"] >= (1 if raced else 2), status["reader"]
        # raced, the first fill's check and the chunk map it left refuse the bucket's bytes again
        # for the reads that went on (each refusal counted)
        assert status["reader"]["checksum_mismatches"] == 1 or (
            raced and status["reader"]["checksum_mismatches"] >= 1), (raced, status["reader"])
        assert cached_paths(mounted.cache_dir) == {real, other}
        assert {o["id"]: o["state"] for o in mount_status(mounted.mountpoint)["origins"]}["bucket"] \
            != "unhealthy", "an origin that answers is not down, only wrong"
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == 2

    # chunks evicted: a refetch from the corrupting bucket is checked against the known map
    for path in chunk_files(mounted.cache_dir)[::2]:
        path.unlink()
    with bucket_mount(lab, tmp_path / "work", backup=True) as again:
        tracks = mounted_tracks(again.mountpoint)
        proxy.corrupt(path_prefix=lab.object_path())
        for name in (real, other):
            assert_exact(lab.expected, tracks[name], name)
        reader = settled(again.mountpoint)["reader"]
        assert reader["refetched_chunks"] > 0 and reader["checksum_mismatches"] > 0, reader
    assert assert_cache_sound(again.cache_dir, lab.expected) == 2


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own (the test runs as root), always unmounted."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A local library of six 3 MiB takes and one of 12 MiB (seeded noise: nothing deduplicates)."""
    root = tmp_path_factory.mktemp("wavs")
    for i in range(6):
        write_wav(root / f"take-{i}.wav", TAKE_SIZE, seed=800 + i)
    write_wav(root / "long.wav", 4 * TAKE_SIZE, seed=899)
    return root, {p.name: sha256_of(p) for p in root.iterdir()}


@pytest.mark.req("FAULT-23", "NFR-7.2")
def test_f23_a_full_cache_disk_costs_caching_never_a_read(wavs, tmp_path):
    """The cache on an 8 MiB filesystem, a library of 30 MiB: every read exact, the disk never the reason
    for an error. Old chunks are evicted to make room; a file bigger than the whole disk is served
    uncached, with one log line; chunks are kept again once there is room."""
    root, expected = wavs
    with tmpfs(tmp_path / "cachefs", "8m") as cache_dir, \
            mount_library(origin=root, work=tmp_path / "work", cache_dir=cache_dir) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        takes = sorted(name for name in tracks if name != "long.wav")
        for real in takes:  # 18 MiB through 8: older takes make room for newer ones
            assert_exact(expected, tracks[real], real)
            settled(mounted.mountpoint)
        cache = mount_status(mounted.mountpoint)["cache"]
        assert cache["evictions"] > 0 and cache["write_failures"] == 0, cache
        assert takes[-1] in cached_paths(cache_dir)

        assert_exact(expected, tracks["long.wav"], "long.wav")  # in use while read: nothing to evict
        settled(mounted.mountpoint)
        lines = [line for line in mounted.log_text().splitlines() if "cannot be written" in line]
        assert len(lines) == 1 and "No space left" in lines[0], lines  # once, not once per chunk
        assert "long.wav" not in cached_paths(cache_dir)

        time.sleep(WRITE_RETRY + 0.5)
        assert_exact(expected, tracks[takes[0]], takes[0])
        settled(mounted.mountpoint)
        assert takes[0] in cached_paths(cache_dir), "caching did not resume once there was room"
        assert "read(" not in mounted.log_text(), "a read failed"
        assert mount_status(mounted.mountpoint)["cache"]["corruptions"] == 0
        assert mounted.alive()
        assert_cache_sound(cache_dir, expected)


@contextmanager
def ext4_image(where: Path, size_mb: int = 64) -> Iterator[tuple[Path, Path]]:
    """An ext4 filesystem on a loop device, mounted with errors=remount-ro, always unmounted.

    Yields (mountpoint, the file that makes the kernel record an error): writing
    to it turns the filesystem read-only as a failing disk does, open files
    and all, which ``mount -o remount,ro`` refuses to do while files are open
    for writing.
    """
    image, mountpoint = where / "cache.img", where / "cachefs"
    mountpoint.mkdir(parents=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        subprocess.run(["blockdev", "--setrw", device], check=True)  # a reused loop device may be ro
        subprocess.run(["mount", "-o", "errors=remount-ro", device, str(mountpoint)], check=True)
        try:
            yield mountpoint, Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        finally:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.mark.req("FAULT-23", "NFR-7.1")
def test_f23_a_read_only_cache_disk_passes_reads_through(wavs, tmp_path):
    """The cache's disk fails and the kernel turns it read-only under a running mount: cached files
    still read from it, uncached ones pass through from the origin, one log line, no read error;
    a mount started on the read-only cache does the same."""
    root, expected = wavs
    names = sorted(n for n in expected if n != "long.wav")
    with ext4_image(tmp_path) as (cache_dir, trigger):
        with mount_library(origin=root, work=tmp_path / "work", cache_dir=cache_dir) as mounted:
            tracks = mounted_tracks(mounted.mountpoint)
            assert_exact(expected, tracks[names[0]], names[0])
            settled(mounted.mountpoint)
            trigger.write_text("musicfs test: the disk fails\n")
            for name in names[1:4]:
                assert_exact(expected, tracks[name], name)
                settled(mounted.mountpoint)
            drop_page_cache()
            assert_exact(expected, tracks[names[0]], names[0])  # from the read-only chunk store
            cache = mount_status(mounted.mountpoint)["cache"]
            assert cache["writable"] is False and "Read-only" in cache["write_problem"], cache
            lines = [line for line in mounted.log_text().splitlines() if "cannot be written" in line]
            assert len(lines) == 1, lines
            assert "read(" not in mounted.log_text(), "a read failed"
            assert mounted.alive()
        assert names[0] in cached_paths(cache_dir) and names[1] not in cached_paths(cache_dir)

        with mount_library(origin=root, work=tmp_path / "work", cache_dir=cache_dir,
                           index=tmp_path / "work" / "state" / "index.db") as again:
            tracks = mounted_tracks(again.mountpoint)
            for name in (names[0], names[4]):  # cached, and passed through
                assert_exact(expected, tracks[name], name)
            settled(again.mountpoint)
            assert mount_status(again.mountpoint)["cache"]["writable"] is False
            assert "read(" not in again.log_text(), "a read failed"
        assert_cache_sound(cache_dir, expected)


@pytest.mark.req("FAULT-24", "NFR-8.3", "NFR-8.2")
def test_f24_sigkill_mid_fill_resumes_without_fetching_committed_chunks_again(lab, proxy, tmp_path):
    """The daemon is killed while a fill waits on the origin: the chunks it had committed are
    listed by a partial chunk map, and the next mount fetches only the rest of the file."""
    real = TAKES[2]
    path = lab.object_path(real)
    work = tmp_path / "work"
    config = lab.config(tmp_path / "musicfs.toml", READ_TIMEOUT, health_interval=0.5, timeout=2.0)
    mounted = start_mount(config=config, work=work, env=aws_env(lab.work / "aws"))
    try:
        track = mounted_tracks(mounted.mountpoint)[real]
        proxy.hold(method="GET", path_prefix=path, skip=2)  # two blocks (1.5 MiB) arrive, then a stall
        with open(track, "rb") as f:
            # a reader that reads on past the first block keeps the fill going (FS-11 stops it at
            # the first block for one that reads only a head)
            assert f.read(FIRST_BLOCK) == (lab.local / real).read_bytes()[:FIRST_BLOCK]
            proxy.wait_held(1)
            deadline = time.monotonic() + 10
            # what the two blocks yield (all but the last chunk cut) is saved within a second
            while partial_files(mounted.cache_dir).get(("bucket", real), 0) < 1024 * 1024:
                assert time.monotonic() < deadline, f"no progress saved: {partial_files(mounted.cache_dir)}"
                time.sleep(0.1)
            committed = partial_files(mounted.cache_dir)["bucket", real]
            os.kill(mounted.pid, signal.SIGKILL)
            mounted.proc.wait(10)
    except OSError:
        pass  # the reader's handle dies with the daemon
    finally:
        proxy.release()
        unmount(mounted)

    with mount_library(config=config, work=work, index=work / "state" / "index.db",
                       env=aws_env(lab.work / "aws")) as again:
        assert_exact(lab.expected, mounted_tracks(again.mountpoint)[real], real)
        reader = settled(again.mountpoint)["reader"]
        size = (lab.local / real).stat().st_size
        assert reader["origin_bytes"] <= size - committed, \
            f"{reader['origin_bytes']} bytes fetched again; {committed} of {size} were committed before"
        assert reader["verified_files"] == 1  # the resumed file still passed its ETag check whole
        assert real in cached_paths(again.cache_dir)
        assert not list((work / "cache" / "chunks").glob("*/.tmp-*"))
    assert assert_cache_sound(again.cache_dir, lab.expected, lab.local) == 1


def cache_once(root: Path, work: Path, names: list[str], expected: dict[str, str]) -> None:
    """Mount, read ``names`` whole (cached), unmount."""
    with mount_library(origin=root, work=work) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        for name in names:
            assert_exact(expected, tracks[name], name)
        settled(mounted.mountpoint)


def manifest_chunks(cache_dir: Path, real: str) -> list[tuple[int, int, str]]:
    """(offset, size, address) of a cached file's chunks, in order."""
    conn = sqlite3.connect(cache_dir / "chunks.db")
    try:
        return conn.execute("SELECT c.offset, c.size, c.address FROM manifest_chunks c JOIN manifests m"
                            " ON c.manifest_id = m.id WHERE m.real_path = ? ORDER BY c.seq", (real,)).fetchall()
    finally:
        conn.close()


@pytest.mark.req("FAULT-18", "NFR-7.1", "NFR-8.1")
def test_f18_a_corrupt_chunk_with_its_origin_offline_fails_that_file_only(wavs, tmp_path):
    """Two files cached, a chunk of one damaged, the origin gone: that file fails with EIO within the
    read deadline (never wrong bytes, never a hang), the other reads exact, the daemon carries on."""
    root, expected = wavs
    work, names = tmp_path / "work", ["take-0.wav", "take-1.wav"]
    origin = tmp_path / "origin"
    shutil.copytree(root, origin)
    cache_once(origin, work, names, expected)
    chunks = manifest_chunks(work / "cache", names[0])
    address = chunks[len(chunks) // 2][2]
    chunk = stored_chunks(work / "cache")[address]
    flip_bit(chunk, at=chunk.size // 2)
    origin.rename(tmp_path / "gone")
    with mount_library(origin=origin, work=work, index=work / "state" / "index.db") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        before = chunks[len(chunks) // 2][0] // (256 * 1024) * (256 * 1024) - 256 * 1024
        with open(tracks[names[0]], "rb") as f:  # well before the damaged chunk (a FUSE read is 128 KiB)
            head = f.read(before)
            assert head == (tmp_path / "gone" / names[0]).read_bytes()[:before], "the range before it"
        assert_eio_within(tracks[names[0]], 5.0 + SLACK)  # the daemon's default read_timeout
        assert_exact(expected, tracks[names[1]], names[1])
        status = mount_status(mounted.mountpoint)
        assert status["cache"]["corruptions"] == 1
        assert mounted.alive()
    (tmp_path / "gone").rename(origin)
    assert assert_cache_sound(work / "cache", expected) == 1  # the other file; the damaged one is a miss


@pytest.mark.req("FAULT-20", "NFR-8.1")
def test_f20_hostile_lengths_in_the_chunk_index_are_a_clean_miss(wavs, tmp_path):
    """Chunk sizes of 2^63-1, negative and zero, and a chunk map that does not tile its file, written
    into the chunk index while unmounted: no read allocates them, each is a miss fetched again,
    every file reads exact, and the daemon's memory stays small."""
    root, expected = wavs
    work, names = tmp_path / "work", ["take-0.wav", "take-1.wav", "take-2.wav"]
    cache_once(root, work, names, expected)
    huge = 2**63 - 1
    conn = sqlite3.connect(work / "cache" / "chunks.db")
    with conn:
        first = [row[0] for row in conn.execute(
            "SELECT c.address FROM manifest_chunks c JOIN manifests m ON c.manifest_id = m.id"
            " WHERE c.seq = 1 ORDER BY m.real_path")]
        conn.execute("UPDATE chunks SET size = ? WHERE address = ?", (huge, first[0]))
        conn.execute("UPDATE chunks SET size = -5 WHERE address = ?", (first[1],))
        conn.execute("UPDATE manifest_chunks SET size = ? WHERE address = ?", (huge, first[0]))
        conn.execute("UPDATE manifest_chunks SET size = 0 WHERE address = ?", (first[1],))
        conn.execute("UPDATE manifest_chunks SET offset = offset + 1 WHERE address = ?", (first[2],))
    conn.close()
    with mount_library(origin=root, work=work, index=work / "state" / "index.db") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        for name in names:
            assert_exact(expected, tracks[name], name)
        settled(mounted.mountpoint)
        assert mounted.rss_mb() < 200, f"{mounted.rss_mb():.0f} MB: a hostile length was allocated"
        log = mounted.log_text()
        assert "impossible sizes" in log and log.count("chunk map of") == 3, log[-2000:]
        assert mounted.alive()
    assert assert_cache_sound(work / "cache", expected) == 3


@pytest.mark.req("FAULT-21", "NFR-8.2")
def test_f21_a_chunk_index_replaced_by_garbage_is_rebuilt_at_mount(wavs, tmp_path):
    """`echo bla > chunks.db` while unmounted: the mount sets it aside with one log line, rebuilds it
    from the chunk files (adopted, checked on read) and reads every file exact."""
    root, expected = wavs
    work, names = tmp_path / "work", ["take-0.wav", "take-1.wav"]
    cache_once(root, work, names, expected)
    for suffix in ("-wal", "-shm"):
        Path(f"{work / 'cache' / 'chunks.db'}{suffix}").unlink(missing_ok=True)
    on_disk = len(stored_chunks(work / "cache"))
    (work / "cache" / "chunks.db").write_text("bla\n")
    with mount_library(origin=root, work=work, index=work / "state" / "index.db") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        for name in names:
            assert_exact(expected, tracks[name], name)
        status = settled(mounted.mountpoint)
        assert status["cache"]["chunks"] >= on_disk, status["cache"]  # the files were adopted
        log = mounted.log_text()
        assert log.count("is damaged") == 1 and "rebuilt from the chunk files" in log
        assert mounted.alive()
    assert list((work / "cache").glob("chunks.db.damaged-*"))
    assert assert_cache_sound(work / "cache", expected) == 2


def daemon_threads_and_fds(mounted: MountedLibrary) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{mounted.pid}/task")), fd_count(mounted.pid)


@pytest.mark.req("FAULT-16", "NFR-7.2")
def test_f16_a_reader_killed_while_blocked_frees_its_handle_and_request(lab, proxy, tmp_path):
    """`cat` of an uncached file whose origin never answers, killed: the process, its handle, fill
    and origin request are gone within the read deadline (pyfuse3 does not pass FUSE INTERRUPT on,
    so the deadline is what ends them), a cached file reads at once meanwhile, and three kills leak
    no thread or descriptor."""
    real, cached = TAKES[0], TAKES[1]
    with bucket_mount(lab, tmp_path / "work") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert_exact(lab.expected, tracks[cached], cached)
        settled(mounted.mountpoint)
        baseline = None
        for _ in range(3):
            proxy.hold(method="GET", path_prefix=lab.object_path(real))
            cat = subprocess.Popen(["cat", str(tracks[real])], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            proxy.wait_held(1)
            cat.kill()
            killed = time.monotonic()
            # the kernel waits for the answer to a request already sent to the daemon: the read's
            # deadline ends it, and with it the killed process
            cat.wait(READ_TIMEOUT + SLACK)

            started = time.monotonic()  # the tree and cached files do not wait on the black hole
            assert_exact(lab.expected, tracks[cached], cached)
            assert time.monotonic() - started < 1.0

            while True:
                status = mount_status(mounted.mountpoint)
                reader, fuse = status["reader"], status["fuse"]
                idle = reader["fills_started"] == (reader["fills_completed"] + reader["fills_failed"]
                                                   + reader["fills_stopped"])
                if idle and fuse["open_handles"] == 0 and reader["open_files"] == 0:
                    break
                assert time.monotonic() - killed < READ_TIMEOUT + SLACK, \
                    f"still busy {time.monotonic() - killed:.1f} s after the kill: {reader}, {fuse}"
                time.sleep(0.05)
            proxy.release()
            proxy.reset()
            time.sleep(2.5)  # abandoned origin calls end at the origin's own timeout (2 s)
            if baseline is None:
                baseline = daemon_threads_and_fds(mounted)
        threads, fds = daemon_threads_and_fds(mounted)
        assert threads <= baseline[0] + 2 and fds <= baseline[1] + 2, (baseline, (threads, fds))
        assert_exact(lab.expected, tracks[real], real)  # and the file itself reads once it answers
        assert mounted.alive()
