"""Network faults between a mount and its remote origins (S3 and SFTP behind the chaos proxy).

Every scenario runs against a real mount and checks the same three things:
each byte served is the origin's byte (or the read fails with EIO within its
bound), the daemon stays up, and nothing wrong is left in the chunk cache.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from chaos.checks import assert_cache_sound, assert_eio_within, assert_exact
from chaos.remote import KINDS, origin_states, remote_lab, wait_for_state
from tests.harness import mount_status, mounted_tracks, settled

READ = 256 * 1024
SLACK = 1.5  # seconds allowed beyond read_timeout for an EIO to arrive (scheduling, FUSE round trip)
TAKE = "Recordings/take {}.wav"

kinds = pytest.mark.parametrize("kind", KINDS)


@pytest.fixture(scope="module")
def lab(toxiproxy, sample_library, good_files, tmp_path_factory):
    with remote_lab(tmp_path_factory.mktemp("lab"), toxiproxy, sample_library[0], good_files) as lab:
        yield lab


def uncached_read(path: Path) -> None:
    """Forget the kernel's copy of a mounted file, so the next read asks the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)




def read_until_error(lab, path: Path, real: str, opened) -> tuple[int, OSError | None, float]:
    """Read on in ``READ`` pieces, each checked against the local copy, until EOF or an error.

    Returns (bytes read, the error or None, seconds the failing read took).
    """
    position = opened.tell()
    with open(lab.local / real, "rb") as truth:
        while True:
            truth.seek(position)
            started = time.monotonic()
            try:
                piece = opened.read(READ)
            except OSError as exc:
                return position, exc, time.monotonic() - started
            assert piece == truth.read(len(piece)), f"{real}: wrong bytes at {position}"
            if not piece:
                return position, None, 0.0
            position += len(piece)


@pytest.mark.req("NFR-1.6")
@kinds
def test_without_faults_the_proxy_costs_nothing(lab, kind, tmp_path, record_requirement):
    """The baseline the faults are measured against: cold first reads through the idle proxy."""
    with lab.mount(tmp_path / "work", [("remote", kind)]) as mounted:
        latencies = []
        for real, path in sorted(mounted_tracks(mounted.mountpoint).items()):
            with open(path, "rb") as f:
                started = time.perf_counter()
                first = f.read(128 * 1024)
                latencies.append((time.perf_counter() - started) * 1000)
                rest = f.read()
            assert hashlib.sha256(first + rest).hexdigest() == lab.expected[real]
        ordered = sorted(latencies)
        record_requirement("NFR-1.6", ordered[-1] if len(ordered) < 100 else ordered[int(0.99 * len(ordered))],
                           samples=len(latencies),
                           detail=f"{kind} through the chaos proxy (no toxics): first 128 KiB of each "
                                  f"uncached track; median {ordered[len(ordered) // 2]:.1f} ms")
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.1", "NFR-7.2")
@kinds
def test_origin_down_in_the_middle_of_reads(lab, kind, tmp_path):
    proxy = lab.proxies[kind]
    read_timeout = 3.0
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=read_timeout) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        cached, uncached = TAKE.format(0), TAKE.format(1)
        assert_exact(lab.expected, tracks[cached], cached)
        settled(mounted.mountpoint)
        proxy.add_toxic(name="slow", type="bandwidth", attributes={"rate": 1000})
        with open(tracks[uncached], "rb") as f:
            assert f.read(READ)  # the fill is under way, slowed down: the origin now goes away
            proxy.disable()
            position, error, took = read_until_error(lab, tracks[uncached], uncached, f)
        assert error is not None and error.errno == errno.EIO, f"read to {position} without EIO: {error!r}"
        assert 0 < position < lab.local.joinpath(uncached).stat().st_size
        assert took <= read_timeout + SLACK, f"EIO took {took:.2f} s"

        uncached_read(tracks[cached])
        assert_exact(lab.expected, tracks[cached], cached)  # offline: the cached file plays on
        assert set(mounted_tracks(mounted.mountpoint)) == set(lab.expected)  # and the tree is whole
        wait_for_state(mounted.mountpoint, "remote", "unhealthy")

        proxy.destroy_toxic("slow")
        proxy.enable()  # the origin is back: the same mount serves again, no remount
        wait_for_state(mounted.mountpoint, "remote", "healthy")
        assert_exact(lab.expected, tracks[uncached], uncached)
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.1", "NFR-7.2")
@kinds
def test_origin_down_at_mount_serves_the_cache(lab, kind, tmp_path):
    proxy = lab.proxies[kind]
    work = tmp_path / "work"
    cached, uncached = TAKE.format(0), TAKE.format(2)
    with lab.mount(work, [("remote", kind)]) as mounted:
        assert_exact(lab.expected, mounted_tracks(mounted.mountpoint)[cached], cached)
        settled(mounted.mountpoint)
    proxy.disable()
    read_timeout = 2.0
    with lab.mount(work, [("remote", kind)], read_timeout=read_timeout) as mounted:
        assert "is not reachable" in mounted.log_text()
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == set(lab.expected)  # offline start: the whole tree, from the index
        assert_exact(lab.expected, tracks[cached], cached)  # from the chunk store (a new mount, no page cache)
        assert_eio_within(tracks[uncached], read_timeout + SLACK)
        wait_for_state(mounted.mountpoint, "remote", "unhealthy")
        proxy.enable()
        wait_for_state(mounted.mountpoint, "remote", "healthy")
        assert_exact(lab.expected, tracks[uncached], uncached)
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.2")
@pytest.mark.slow
@kinds
def test_latency_of_two_seconds_with_jitter(lab, kind, tmp_path):
    """Every answer 2 s ± 0.5 s late: reads are slow but exact (the deadlines allow for it)."""
    proxy = lab.proxies[kind]
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=30.0, origin_timeout=20.0) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        small = sorted(real for real in lab.expected if not real.startswith("Recordings/"))[0]
        proxy.add_toxic(name="late", type="latency", attributes={"latency": 2000, "jitter": 500})
        started = time.monotonic()
        assert_exact(lab.expected, tracks[small], small)
        elapsed = time.monotonic() - started
        assert elapsed >= 1.5, f"read in {elapsed:.2f} s: the latency was not applied"
        assert mounted.alive()
        assert mount_status(mounted.mountpoint)["reader"]["fills_failed"] == 0
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.2", "G3")
@kinds
def test_a_trickling_origin_counts_as_timed_out_and_fails_over(lab, kind, tmp_path):
    """1 KB/s is as good as down: the read moves to the next replica within its deadline."""
    proxy = lab.proxies[kind]
    read_timeout = 4.0
    real = TAKE.format(1)
    lab.index_for([("remote", kind)])  # scanned before the fault, for the second mount
    with lab.mount(tmp_path / "a", [("remote", kind), ("backup", "local")], read_timeout=read_timeout) as mounted:
        path = mounted_tracks(mounted.mountpoint)[real]
        wait_for_state(mounted.mountpoint, "remote", "healthy")  # so reads go to it first
        proxy.add_toxic(name="trickle", type="bandwidth", attributes={"rate": 1})
        started = time.monotonic()
        with open(path, "rb") as f:
            assert f.read(READ)
        assert time.monotonic() - started <= read_timeout + SLACK
        assert_exact(lab.expected, path, real)
        # the trickling origin is marked down (by the failed read or by its probe), the backup serves
        assert origin_states(mounted.mountpoint)["remote"] in ("degraded", "unhealthy")
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)
    with lab.mount(tmp_path / "b", [("remote", kind)], read_timeout=read_timeout) as alone:
        assert_eio_within(mounted_tracks(alone.mountpoint)[real], read_timeout + SLACK)
        assert alone.alive()
    assert_cache_sound(alone.cache_dir, lab.expected)


def timed_listing(mountpoint: Path, rounds: int) -> list[float]:
    """Milliseconds per readdir and per stat over ``rounds`` walks of the tag tree."""
    times = []
    for _ in range(rounds):
        for dirpath, dirnames, filenames in os.walk(mountpoint):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in dirnames + filenames:
                started = time.perf_counter()
                os.lstat(os.path.join(dirpath, name))
                times.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            os.listdir(dirpath)
            times.append((time.perf_counter() - started) * 1000)
    return times


@pytest.mark.req("NFR-7.2", "NFR-7.1", "ASYNC-1")
@kinds
def test_black_hole_reads_fail_in_bounded_time_while_the_tree_stays_fast(lab, kind, tmp_path):
    proxy = lab.proxies[kind]
    read_timeout = 3.0
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=read_timeout) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        cached, uncached = TAKE.format(0), TAKE.format(1)
        assert_exact(lab.expected, tracks[cached], cached)
        settled(mounted.mountpoint)
        proxy.add_toxic(name="hole", type="timeout", attributes={"timeout": 0})
        outcome = {}

        def hang():
            try:
                outcome["elapsed"] = assert_eio_within(tracks[uncached], read_timeout + SLACK)
            except AssertionError as exc:
                outcome["error"] = exc

        reader = threading.Thread(target=hang)
        reader.start()
        time.sleep(0.2)  # the read is stuck on the origin now
        times = timed_listing(mounted.mountpoint, rounds=5)
        uncached_read(tracks[cached])
        assert_exact(lab.expected, tracks[cached], cached)
        reader.join(read_timeout + 10)
        assert "error" not in outcome, outcome.get("error")
        assert "elapsed" in outcome, "the read of an uncached file never returned"
        ordered = sorted(times)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        assert p99 <= 50, f"listing while the origin hangs: p99 {p99:.1f} ms over {len(times)} calls"

        proxy.destroy_toxic("hole")
        assert_exact(lab.expected, tracks[uncached], uncached)
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.2", "NFR-7.3")
@kinds
def test_reset_in_the_middle_of_a_body_is_retried(lab, kind, tmp_path):
    """A connection reset mid-transfer costs a retry, not the read."""
    proxy = lab.proxies[kind]
    real = TAKE.format(2)
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=8.0) as mounted:
        path = mounted_tracks(mounted.mountpoint)[real]
        proxy.add_toxic(name="slow", type="bandwidth", attributes={"rate": 2000})
        cut = threading.Timer(0.5, lambda: proxy.add_toxic(name="reset", type="reset_peer",
                                                           attributes={"timeout": 0}))
        heal = threading.Timer(0.8, lambda: proxy.destroy_toxic("reset"))
        cut.start()
        heal.start()
        try:
            assert_exact(lab.expected, path, real)
        finally:
            cut.join()
            heal.join()
        assert re.search(r"failed \(attempt 1\)", mounted.log_text()), "no retry was logged"
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.2")
@kinds
def test_transfers_cut_short_fail_cleanly_then_recover(lab, kind, tmp_path):
    """Every connection closed after 100 KB: no truncated chunk is stored, reads fail with EIO."""
    proxy = lab.proxies[kind]
    read_timeout = 3.0
    real = TAKE.format(1)
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=read_timeout) as mounted:
        path = mounted_tracks(mounted.mountpoint)[real]
        proxy.add_toxic(name="cut", type="limit_data", attributes={"bytes": 100_000})
        assert_eio_within(path, read_timeout + SLACK)
        assert mounted.alive()
        proxy.destroy_toxic("cut")
        assert_exact(lab.expected, path, real)
    assert_cache_sound(mounted.cache_dir, lab.expected)


@pytest.mark.req("NFR-7.2")
@kinds
def test_sliced_packets_still_give_exact_bytes(lab, kind, tmp_path):
    proxy = lab.proxies[kind]
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=15.0) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        proxy.add_toxic(name="slices", type="slicer",
                        attributes={"average_size": 700, "size_variation": 600, "delay": 20})
        for real in sorted(r for r in lab.expected if not r.startswith("Recordings/"))[:5]:
            assert_exact(lab.expected, tracks[real], real)
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)


def attempt_times(log: str, real: str) -> list[float]:
    """When the daemon logged each failed attempt at reading ``real`` (seconds, from the log stamps)."""
    stamps = []
    for line in log.splitlines():
        if f"reading {real} at 0 failed (attempt" in line:
            stamps.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return stamps


@pytest.mark.req("NFR-7.3", "NFR-7.2")
@kinds
def test_retries_follow_the_backoff_schedule(lab, kind, tmp_path):
    """With the origin refusing connections, attempts come 100 ms, 500 ms and 2 s apart, then EIO."""
    proxy = lab.proxies[kind]
    real = TAKE.format(2)
    read_timeout = 6.0
    with lab.mount(tmp_path / "work", [("remote", kind)], read_timeout=read_timeout) as mounted:
        path = mounted_tracks(mounted.mountpoint)[real]
        proxy.disable()
        elapsed = assert_eio_within(path, read_timeout + SLACK)
        assert elapsed >= 2.5, f"EIO after {elapsed:.2f} s: the retries were not waited for"
        stamps = attempt_times(mounted.log_text(), real)
        assert len(stamps) >= 4, f"attempts logged: {len(stamps)}"
        gaps = [b - a for a, b in zip(stamps, stamps[1:4])]
        for gap, step in zip(gaps, (0.1, 0.5, 2.0)):
            assert step * 0.9 <= gap <= step * 1.1 + 0.25, f"gaps {gaps} do not follow 0.1/0.5/2 s"
        assert mounted.alive()


@pytest.mark.req("G3", "NFR-7.1", "NFR-7.2")
def test_primary_down_secondary_serves_then_primary_returns(lab, tmp_path):
    """A bucket first, an SFTP server second: the bucket fails, SFTP serves, the bucket comes back."""
    s3, sftp = lab.proxies["s3"], lab.proxies["sftp"]
    origins = [("bucket", "s3"), ("server", "sftp")]
    with lab.mount(tmp_path / "work", origins, read_timeout=4.0) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == set(lab.expected)  # two origins, one tree
        wait_for_state(mounted.mountpoint, "bucket", "healthy")
        wait_for_state(mounted.mountpoint, "server", "healthy")
        first, second, third = (TAKE.format(i) for i in range(3))
        assert_exact(lab.expected, tracks[first], first)
        before = mount_status(mounted.mountpoint)["reader"]
        s3.disable()
        assert_exact(lab.expected, tracks[second], second)  # no user action: the secondary serves
        wait_for_state(mounted.mountpoint, "bucket", "unhealthy")
        after = mount_status(mounted.mountpoint)["reader"]
        assert after["fills_failed"] == before["fills_failed"]
        s3.enable()
        wait_for_state(mounted.mountpoint, "bucket", "healthy")
        sftp.disable()  # now only the primary can serve: it must be in use again
        assert_exact(lab.expected, tracks[third], third)
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, lab.expected)
