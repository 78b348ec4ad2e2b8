"""The chunk cache on a real mount: persistence, offline reads, integrity, limits, single-flight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conformance.expected import sha256_of
from fixtures.bigfile import write_wav
from musicfs.mount import READ_AHEAD_KIB
from musicfs.store.chunker import MAX_SIZE
from musicfs.store.fill import FIRST_BLOCK
from tests.cachefiles import artwork_chunks, chunk_files, cut_short, flip_bit, remove, stored_chunks
from tests.harness import NO_PREFETCH, mount_library, mount_status, settled
from tests.harness import mounted_tracks as mounted_files


@pytest.fixture
def library(sample_library, tmp_path):
    root = tmp_path / "origin"
    shutil.copytree(sample_library[0], root)
    return root


@pytest.mark.req("NFR-7.1", "NFR-5.2", "FS-5", "PH-1.2")
def test_whole_library_reads_offline_after_remount(library, good_files, tmp_path):
    work = tmp_path / "work"
    expected = {f["path"]: f["sha256"] for f in good_files}
    with mount_library(origin=library, work=work) as mounted:
        files = mounted_files(mounted.mountpoint)
        assert set(files) == set(expected)
        for real, path in files.items():
            assert sha256_of(path) == expected[real]
        cache = settled(mounted.mountpoint)["cache"]
        assert cache["manifests"] == len(expected) and cache["limit_bytes"] == 10 * 10**9
    library.rename(tmp_path / "moved-away")
    with mount_library(origin=library, work=work, index=work / "state" / "index.db") as mounted:
        assert not mount_status(mounted.mountpoint)["origins"][0]["reachable"]
        for real, path in mounted_files(mounted.mountpoint).items():
            assert sha256_of(path) == expected[real], f"{real} differs when read offline"
        after = mount_status(mounted.mountpoint)
        assert after["reader"]["origin_requests"] == 0
        assert after["cache"]["hits"] > 0 and after["cache"]["misses"] == 0


def inspect_chunks(cache_dir, *flags: str) -> tuple[int, dict | str]:
    """``musicfs-inspect chunks FLAGS --json`` on a cache: (exit code, report, or the error said)."""
    done = subprocess.run([sys.executable, "-m", "musicfs.cli.inspect", "chunks", *flags, "--json",
                           "--cache-dir", str(cache_dir)], capture_output=True, text=True)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else done.stderr


def damage(cache_dir: Path, flip: bool = True, truncate: bool = True, delete: bool = True) -> dict[str, list]:
    """Damage every seventh chunk in turn by a flipped bit, a cut, and the removal of the file
    holding it (a pack: every chunk in it goes); the addresses damaged each way."""
    covers = artwork_chunks(cache_dir)  # covers have their own damage test (tests/test_artwork.py)
    stored = sorted((c for c in stored_chunks(cache_dir).values() if c.address not in covers),
                    key=lambda c: (str(c.path), c.offset))
    kinds = [k for k, wanted in (("flip", flip), ("truncate", truncate), ("delete", delete)) if wanted]
    done: dict[str, list] = {k: [] for k in kinds}
    removed: set[Path] = set()
    for i, chunk in enumerate(stored[::7][:15]):
        kind = kinds[i % len(kinds)]
        if chunk.path in removed:
            continue
        if kind == "flip":
            flip_bit(chunk, at=chunk.size // 3)
        elif kind == "truncate":
            cut_short(chunk)
        else:
            remove(chunk)
            removed.add(chunk.path)
            done[kind] += [c.address for c in stored if c.path == chunk.path]
            continue
        done[kind].append(chunk.address)
    held = {c.address: c.path for c in stored}
    for kind in ("flip", "truncate"):  # damage in a file removed later is a removal
        if kind in done:
            done[kind] = [a for a in done[kind] if held[a] not in removed]
    return done


def cache_whole_library(library, work):
    """Mount, read every track whole (so every chunk is stored), unmount."""
    with mount_library(origin=library, work=work) as mounted:
        for path in mounted_files(mounted.mountpoint).values():
            path.read_bytes()
        settled(mounted.mountpoint)


@pytest.mark.req("FAULT-17", "NFR-8.1", "NFR-8.4")
def test_f17_chunk_corrupted_at_rest_is_detected_and_fetched_again(library, good_files, tmp_path):
    """Bits flipped in chunk files: each is caught by its hash when read, counted, dropped, fetched
    again from the origin; every file reads exact and the store is whole again."""
    work = tmp_path / "work"
    expected = {f["path"]: f["sha256"] for f in good_files}
    cache_whole_library(library, work)
    flipped = damage(work / "cache", truncate=False, delete=False)["flip"]
    with mount_library(origin=library, work=work, index=work / "state" / "index.db") as mounted:
        for real, path in mounted_files(mounted.mountpoint).items():
            assert sha256_of(path) == expected[real]
        status = settled(mounted.mountpoint)
        assert status["cache"]["corruptions"] == len(flipped)
        assert status["reader"]["refetched_chunks"] == len(flipped)
        log = mounted.log_text()
        assert all(f"chunk {name} is corrupt on disk" in log for name in flipped)
    assert inspect_chunks(work / "cache", "--verify")[1]["verify"]["corrupt"] == 0


@pytest.mark.req("FAULT-19", "NFR-8.1", "FS-10")
def test_f19_truncated_or_deleted_chunks_are_reported_repaired_and_fetched_again(library, good_files,
                                                                                 tmp_path):
    """Chunk files cut short or removed: the offline check reports them and exits non-zero before
    any repair, --repair removes them (refused while a mount uses the cache), and a mount reads
    every file exact, fetching the damaged chunks again."""
    work = tmp_path / "work"
    expected = {f["path"]: f["sha256"] for f in good_files}
    cache_whole_library(library, work)
    with mount_library(origin=library, work=work, index=work / "state" / "index.db"):
        code, said = inspect_chunks(work / "cache", "--repair")
        assert code == 2 and "already in use" in said, "a repair under a running mount must be refused"
    damaged = damage(work / "cache", flip=False)
    assert damaged["truncate"] and damaged["delete"]
    before = {p: p.read_bytes() for p in chunk_files(work / "cache")}

    code, report = inspect_chunks(work / "cache", "--verify")
    assert code == 1
    assert sorted(report["verify"]["corrupt_chunks"]) == sorted(damaged["truncate"])
    assert sorted(report["verify"]["missing_chunks"]) == sorted(damaged["delete"])
    assert {p: p.read_bytes() for p in chunk_files(work / "cache")} == before, "--verify alone changed the store"
    code, report = inspect_chunks(work / "cache", "--repair")
    assert code == 1 and report["repair"]["chunks_removed"] == len(damaged["truncate"])
    code, report = inspect_chunks(work / "cache", "--verify")
    assert code == 0 and report["verify"]["corrupt"] == report["verify"]["missing"] == 0

    with mount_library(origin=library, work=work, index=work / "state" / "index.db") as mounted:
        for real, path in mounted_files(mounted.mountpoint).items():
            assert sha256_of(path) == expected[real]
        status = settled(mounted.mountpoint)
        assert status["reader"]["refetched_chunks"] == sum(len(v) for v in damaged.values())
    assert inspect_chunks(work / "cache", "--verify")[0] == 0


@pytest.mark.req("NFR-5.2")
def test_store_stays_within_its_limit_under_churn(library, good_files, tmp_path):
    limit = 600_000
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[cache]\nsize = {limit}\n\n[[origins]]\nid = "local"\ntype = "local"\n'
                      f'path = "{library}"\n')
    work = tmp_path / "work"
    peak = 0
    stop = threading.Event()

    def stored_bytes() -> int:
        """Disk space the chunks take (a pack's evicted chunks are holes, freed), less one table and
        the two partly used disk blocks each pack may have."""
        total = 0
        for path in chunk_files(work / "cache"):
            try:
                total += path.stat().st_blocks * 512 - 8192
            except FileNotFoundError:  # evicted while we looked
                pass
        return total

    def watch():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, stored_bytes())
            time.sleep(0.01)

    with mount_library(config=config, work=work) as mounted:
        files = list(mounted_files(mounted.mountpoint).values())
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            def reader(offset):
                for path in files[offset::4] * 2:
                    path.read_bytes()
            threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            time.sleep(0.3)
            stop.set()
            watcher.join()
        cache = mount_status(mounted.mountpoint)["cache"]
        biggest = max(f["size"] for f in good_files)
        # files being read are never evicted from under their readers: at most four at a time
        assert peak <= limit + 4 * biggest + 256 * 1024
        assert cache["bytes"] <= limit and cache["evictions"] > 0
        assert stored_bytes() <= limit


@pytest.fixture(scope="module")
def big_origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("big-origin")
    write_wav(root / "long take.wav", 48 * 1024 * 1024, seed=3)
    return root


@pytest.mark.req("FAULT-39", "FR-18.1", "ASYNC-1")
def test_f39_fifty_readers_of_one_uncached_file_cause_one_fetch_per_chunk(big_origin, tmp_path):
    source = big_origin / "long take.wav"
    expected = sha256_of(source)
    with mount_library(origin=big_origin, work=tmp_path / "work") as mounted:
        (path,) = mounted_files(mounted.mountpoint).values()
        results = []

        def read_whole():
            results.append(sha256_of(path))

        threads = [threading.Thread(target=read_whole) for _ in range(50)]
        for t in threads:  # all at once: the file is uncached when the first opens it
            t.start()
        for t in threads:
            t.join()
        assert results == [expected] * 50
        reader = settled(mounted.mountpoint)["reader"]
        assert reader["fills_started"] == 1 and reader["fills_completed"] == 1
        # every byte came from the origin once (seeks ahead of the fill may add a little)
        assert source.stat().st_size <= reader["origin_bytes"] <= 1.1 * source.stat().st_size
        events = mount_status(mounted.mountpoint)["events"]["published"]
        assert events["FillCompleted"] == 1 and events["ChunkStored"] >= 48 * 1024 * 1024 // (256 * 1024)


def kernel_read_ahead(mountpoint) -> int:
    """The kernel's read-ahead window on a mount, in bytes (``read_ahead_kb`` of its bdi)."""
    device = os.stat(mountpoint).st_dev
    kb = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").read_text()
    return int(kb) * 1024


def cached_map(mounted, path) -> dict:
    """``musicfs-inspect manifest --json`` of a mounted file: what of it is in the chunk cache."""
    inspect = [sys.executable, "-m", "musicfs.cli.inspect", "--state-dir", str(mounted.state_dir)]
    return json.loads(subprocess.run(inspect + ["manifest", str(path), "--json"], capture_output=True,
                                     text=True, check=True).stdout)


@pytest.mark.req("FS-11")
def test_reading_the_heads_of_tracks_fetches_their_heads_not_the_tracks(tmp_path):
    """A tag scanner opens every track, reads its head and closes it: each costs the first
    block, not the track; a player then reads one to its end: the fill resumes where it stopped
    and the track ends up cached whole.

    Heads are read as programs do (a 4 KiB read(), ``head -c 64K`` in a process of its own,
    one held open long after its read, as a close reaching the daemon late would be), and
    measured one by one as the bytes the origin served for them (the readers' per-origin
    counters). The kernel turns a head into reads of up to one read-ahead window beyond it; a
    fill's first block covers that, and the fill goes no further until a reader reads on.
    So each head costs at most the first block plus one read-ahead window (with the kernel's
    default 128 KiB window, not the next 1 MiB block, which a fill that went straight on, and
    a late close, used to add); six such heads are far from half of the six tracks.
    """
    origin = tmp_path / "origin"
    origin.mkdir()
    sizes = {}
    for i in range(6):
        path = write_wav(origin / f"take {i}.wav", 6 * 1024 * 1024, seed=40 + i)
        sizes[path.name] = path.stat().st_size
    with mount_library(extra_args=NO_PREFETCH, origin=origin, work=tmp_path / "work") as mounted:
        if os.geteuid() == 0:  # raised by the daemon once the kernel's INIT is done: 512 KiB requests
            deadline = time.monotonic() + 5
            while kernel_read_ahead(mounted.mountpoint) != READ_AHEAD_KIB * 1024 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert kernel_read_ahead(mounted.mountpoint) == READ_AHEAD_KIB * 1024
        most_per_head = FIRST_BLOCK + kernel_read_ahead(mounted.mountpoint)
        assert len(sizes) * most_per_head < sum(sizes.values()) / 2
        files = mounted_files(mounted.mountpoint)
        served = settled(mounted.mountpoint)["reader"]["bytes_by_origin"]
        assert sum(served.values()) == 0
        heads = {}
        for i, (real, path) in enumerate(sorted(files.items())):
            if i % 3 == 0:
                with open(path, "rb") as f:
                    assert f.read(4096) == (origin / real).read_bytes()[:4096]
            elif i % 3 == 1:
                head = subprocess.run(["head", "-c", "64K", str(path)], capture_output=True, check=True)
                assert head.stdout == (origin / real).read_bytes()[:64 * 1024]
            else:
                with open(path, "rb") as f:
                    assert len(f.read(64 * 1024)) == 64 * 1024
                    time.sleep(0.5)  # open long after its read: time for many blocks
            status = settled(mounted.mountpoint)
            now = status["reader"]["bytes_by_origin"]
            heads[real] = sum(now.values()) - sum(served.values())
            served = now
        assert all(0 < cost <= most_per_head for cost in heads.values()), (heads, most_per_head)
        assert status["reader"]["fills_stopped"] == len(sizes)
        assert status["reader"]["fills_completed"] == 0
        assert status["events"]["published"]["FillStopped"] == len(sizes)

        played = files["take 0.wav"]
        assert sha256_of(played) == sha256_of(origin / "take 0.wav")
        reader = settled(mounted.mountpoint)["reader"]
        assert reader["fills_completed"] == 1
        # resumed where its fill stopped: only the tail of the head not yet cut is fetched again
        again = sum(reader["bytes_by_origin"].values()) - sum(served.values())
        assert sizes["take 0.wav"] - heads["take 0.wav"] <= again < sizes["take 0.wav"] - heads["take 0.wav"] + MAX_SIZE
        whole = cached_map(mounted, played)
        assert whole["percent_cached"] == 100.0 and sum(c["size"] for c in whole["chunks"]) == sizes["take 0.wav"]
        assert all(cached_map(mounted, files[real])["percent_cached"] < 100.0 for real in files if real != "take 0.wav")


@pytest.mark.req("FS-10")
def test_inspect_manifest_and_cache_tools_on_a_running_mount(library, tmp_path):
    work = tmp_path / "work"
    inspect = [sys.executable, "-m", "musicfs.cli.inspect", "--state-dir", str(work / "state")]
    with mount_library(extra_args=NO_PREFETCH, origin=library, work=work) as mounted:
        files = sorted(mounted_files(mounted.mountpoint).values(), key=lambda p: -p.stat().st_size)
        read, unread = files[0], files[1]
        read.read_bytes()
        settled(mounted.mountpoint)
        chunk_map = json.loads(subprocess.run(inspect + ["manifest", str(read), "--json"],
                                              capture_output=True, text=True, check=True).stdout)
        assert chunk_map["percent_cached"] == 100.0
        assert sum(c["size"] for c in chunk_map["chunks"]) == read.stat().st_size
        assert all(c["cached"] for c in chunk_map["chunks"])
        offsets = [c["offset"] for c in chunk_map["chunks"]]
        assert offsets == sorted(offsets) and offsets[0] == 0
        table = subprocess.run(inspect + ["manifest", str(read)], capture_output=True, text=True,
                               check=True).stdout
        assert chunk_map["chunks"][0]["address"] in table and "100.0% cached" in table
        untouched = json.loads(subprocess.run(inspect + ["manifest", str(unread), "--json"],
                                              capture_output=True, text=True, check=True).stdout)
        assert untouched["chunks"] is None and untouched["percent_cached"] == 0.0
        cache = json.loads(subprocess.run(inspect + ["cache", "--cache-dir", str(mounted.cache_dir), "--json"],
                                          capture_output=True, text=True, check=True).stdout)
        assert cache["daemon"] == mounted.pid and cache["misses"] >= 1 and cache["manifests"] == 1
    dry = json.loads(subprocess.run(inspect + ["cache", "clear", "--dry-run", "--json", "--cache-dir",
                                               str(work / "cache")], capture_output=True, text=True,
                                    check=True).stdout)
    assert dry["dry_run"] and dry["chunks"] >= 1
    assert any((work / "cache" / "chunks").rglob("*"))
    cleared = json.loads(subprocess.run(inspect + ["cache", "clear", "--json", "--cache-dir",
                                                   str(work / "cache")], capture_output=True, text=True,
                                        check=True).stdout)
    assert cleared["bytes_freed"] >= dry["bytes"]
    assert not [p for p in (work / "cache" / "chunks").rglob("*") if p.is_file()]
    assert not chunk_files(work / "cache")
