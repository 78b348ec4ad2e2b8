"""What the cache saves: dedup of shared audio, warm hit rate, cached throughput, bounded memory."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from mutagen.wave import WAVE

from conformance.measure import drop_page_cache
from fixtures.bigfile import write_wav
from tests.harness import mount_library, settled
from tests.harness import mount_status as status

MiB = 1024 * 1024


def tag(path: Path, **tags: str) -> None:
    from mutagen.id3 import TALB, TIT2, TPE1, TPE2, TRCK

    audio = WAVE(path)
    if audio.tags is None:
        audio.add_tags()
    frames = {"title": TIT2, "artist": TPE1, "album": TALB, "albumartist": TPE2, "track": TRCK}
    for key, value in tags.items():
        audio.tags.add(frames[key](encoding=3, text=[value]))
    audio.save()


def read_all(paths, block: int = 1 << 20) -> int:
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while data := f.read(block):
                total += len(data)
    return total


@pytest.fixture(scope="module")
def album_and_compilation(tmp_path_factory):
    """Three albums of four tracks, and a best-of compilation re-tagging five of those recordings."""
    root = tmp_path_factory.mktemp("dedup-origin")
    recordings = []
    for a in range(3):
        for t in range(4):
            path = root / "albums" / f"artist{a}" / f"{t + 1:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, 3 * MiB // 2, seed=100 + 10 * a + t)
            tag(path, title=f"Song {a}-{t}", artist=f"Artist {a}", album=f"Album {a}", track=str(t + 1))
            recordings.append(path)
    for i, source in enumerate(recordings[::2][:5]):
        copy = root / "compilations" / "best of" / f"{i + 1:02d}.wav"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, copy)
        tag(copy, title=f"Best {i}", artist="Various", album="Best Of", albumartist="Various Artists",
            track=str(i + 1))
    return root


@pytest.mark.req("FR-20", "NFR-6.5")
def test_shared_recordings_are_stored_once_and_replays_hit(album_and_compilation, tmp_path,
                                                           record_requirement):
    work = tmp_path / "work"
    with mount_library(origin=album_and_compilation, work=work) as mounted:
        files = sorted(p for p in mounted.mountpoint.rglob("*.wav"))
        assert len(files) == 17
        read_all(files)
        cache = settled(mounted.mountpoint)["cache"]
    ratio = 100 * cache["dedup_ratio"]
    record_requirement("FR-20", ratio, detail=f"{cache['logical_bytes']} B of files in {cache['bytes']} B "
                                              "of chunks (5 of 17 tracks are re-tagged album tracks)")
    assert cache["bytes"] < cache["logical_bytes"]
    # replay the same listening session after a remount: the chunks come from the cache
    with mount_library(origin=album_and_compilation, work=work, index=work / "state" / "index.db") as again:
        read_all(sorted(p for p in again.mountpoint.rglob("*.wav")))
        replay = status(again.mountpoint)
    reads = replay["cache"]["hits"] + replay["cache"]["misses"]
    hit_rate = 100 * replay["cache"]["hits"] / reads
    record_requirement("NFR-6.5", hit_rate, detail=f"{replay['cache']['hits']} of {reads} reads hit",
                       samples=reads)
    assert replay["reader"]["origin_requests"] == 0


@pytest.fixture(scope="module")
def big_track(tmp_path_factory):
    # half a GiB: more than twice the memory bound below, so holding the file would show; the
    # 1 GiB figure (MM-4) is make perf's
    root = tmp_path_factory.mktemp("big-origin")
    write_wav(root / "half a gibibyte.wav", 512 * MiB, seed=77)
    return root


@pytest.mark.req("NFR-2.1", "NFR-4.2")
@pytest.mark.alone
def test_a_half_gib_track_streams_in_bounded_memory(big_track, tmp_path, record_requirement):
    source = next(big_track.iterdir())
    work = tmp_path / "work"
    with mount_library(origin=big_track, work=work) as mounted:
        (path,) = list(mounted.mountpoint.rglob("*.wav"))
        peak = [mounted.rss_mb()]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(mounted.rss_mb())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            started = time.perf_counter()
            assert read_all([path]) == source.stat().st_size
            cold = source.stat().st_size / MiB / (time.perf_counter() - started)
            settled(mounted.mountpoint, timeout=60)
            rates = []
            for _ in range(3):  # median of three warm re-reads
                started = time.perf_counter()
                read_all([path])
                rates.append(source.stat().st_size / MiB / (time.perf_counter() - started))
            warm = sorted(rates)[1]
        finally:
            stop.set()
            sampler.join()
    record_requirement("NFR-4.2", max(peak), detail=f"peak RSS while streaming a 512 MiB track "
                                                    f"({len(peak)} samples)")
    assert max(peak) < 200, "a whole file must never be held in memory"
    with mount_library(origin=big_track, work=work, index=work / "state" / "index.db") as again:
        (path,) = list(again.mountpoint.rglob("*.wav"))
        dropped = drop_page_cache()  # the chunk files too: read from disk through the daemon
        started = time.perf_counter()
        read_all([path])
        from_chunks = source.stat().st_size / MiB / (time.perf_counter() - started)
    started = time.perf_counter()
    read_all([source])
    native = source.stat().st_size / MiB / (time.perf_counter() - started)
    # the daemon's own cache path: a remount (nothing of the file in the kernel's page cache for
    # it), every read a request answered from chunk files; the page-cache re-read is put beside it
    record_requirement("NFR-2.1", from_chunks * 1.048576,
                       detail=f"512 MiB track read from the chunk cache after a remount"
                              f"{' with the page cache dropped' if dropped else ''}; a re-read from the "
                              f"kernel's page cache {warm:.0f} MiB/s; cold fill {cold:.0f} MiB/s; native "
                              f"{native:.0f} MiB/s (MB/s recorded: MiB/s x 1.048576)")
