"""FAULT-38: more than a hundred concurrent readers, then a soak of listings and reads.

Readers are fio jobs doing 4 KiB random reads of a fully cached 32 MiB track with ``O_DIRECT``
(so every read reaches the daemon instead of the kernel's page cache), timed by fio itself
(completion latency percentiles from its JSON output).

The bound "p99 with 128 readers within 2x the p99 of one" is judged with every reader at the
same pace (:data:`READER_IOPS` reads per second, Poisson arrivals, like players each pulling
their own stream): the only thing that changes between the two runs is how many readers there
are. Readers that never pause (fio's default) are also measured and printed: with one request
queue, N readers that each wait for their own answer wait N times as long as one (Little's law),
on any server whose throughput does not grow N-fold, so that figure says how the daemon copes
with saturation rather than with concurrency.

The soak lists directories, stats and reads whole tracks (checking their bytes), reads the
generated status file and random ranges of the big track, from several threads; the daemon's
pid, resident memory and descriptors are sampled throughout: same pid at the end, descriptors
back to where they were, memory not growing with the work done. The full 15-minute soak and the
strict latency bound are ``slow`` (``make chaos``); ``make test`` runs a short soak and the
fio runs as a progress and stall check.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conformance.daemons import fd_count
from conformance.expected import sha256_of
from conformance.measure import proc_status_mb
from fixtures.bigfile import write_wav
from tests.harness import MountedLibrary, mount_library, mount_status, mounted_tracks, settled

BIG_SIZE = 32 * 1024 * 1024
BIG_REAL = "Soak/big take.wav"
READERS = 128
READER_IOPS = 20  # reads per second per reader: 128 of them offer ~2,500 reads/s in all
STALL_MS = 2_000  # no read through a live mount may take longer than this, however loaded
FD_SLACK = 8  # descriptors the daemon may hold at the end of a soak beyond where it started
RSS_GROWTH_MB = 24  # resident memory the daemon may gain over a soak (a leak grows with the work)
SHORT_SOAK = 10.0
LONG_SOAK = 15 * 60.0


@pytest.fixture(scope="module")
def soak_mount(sample_library, good_files, tmp_path_factory) -> tuple[MountedLibrary, dict[str, str]]:
    """The sample library plus one big track, mounted, the big track cached; (mount, real -> sha256)."""
    work = tmp_path_factory.mktemp("soak")
    library = work / "library"
    shutil.copytree(sample_library[0], library)
    (library / BIG_REAL).parent.mkdir(parents=True)
    write_wav(library / BIG_REAL, BIG_SIZE, seed=38)
    expected = {f["path"]: f["sha256"] for f in good_files}
    expected[BIG_REAL] = sha256_of(library / BIG_REAL)
    with mount_library(origin=library, work=work / "m") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert sha256_of(tracks[BIG_REAL]) == expected[BIG_REAL]
        settled(mounted.mountpoint)
        yield mounted, expected


# -- fio ------------------------------------------------------------------------------------
@dataclass
class FioRun:
    readers: int
    paced: bool
    direct: bool
    ios: int
    iops: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int

    def summary(self) -> str:
        pace = f"{READER_IOPS}/s each" if self.paced else "unpaced"
        pace += "" if self.direct else ", kernel page cache only"
        return (f"{self.readers} readers ({pace}): {self.ios} reads, {self.iops:,.0f}/s, p50 {self.p50_ms:.3f} ms, "
                f"p99 {self.p99_ms:.3f} ms, max {self.max_ms:.1f} ms")


def fio(path: Path, readers: int, seconds: float, *, paced: bool, direct: bool = True) -> FioRun:
    """``fio --numjobs=readers`` of 4 KiB random O_DIRECT reads of ``path``; its figures.

    ``direct=False`` reads through the kernel's page cache, which answers without asking the
    daemon once the file was read: a measure of the machine's own scheduling noise."""
    binary = shutil.which("fio")
    if binary is None:
        pytest.skip("fio is not installed (make setup installs it)")
    args = [binary, "--name=readers", f"--filename={str(path).replace(':', chr(92) + ':')}", "--readonly",
            "--rw=randread", "--bs=4k", f"--direct={int(direct)}", "--ioengine=psync", "--thread",
            f"--numjobs={readers}", "--time_based", f"--runtime={seconds:g}", "--group_reporting",
            "--output-format=json"]
    if paced:
        args += [f"--rate_iops={READER_IOPS}", "--rate_process=poisson"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    assert done.returncode == 0, done.stderr[-2000:]
    job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]
    read, clat = job["read"], job["read"]["clat_ns"]
    return FioRun(readers, paced, direct, read["total_ios"], read["iops"], clat["percentile"]["50.000000"] / 1e6,
                  clat["percentile"]["99.000000"] / 1e6, clat["max"] / 1e6, job["error"])


def check_run(run: FioRun, seconds: float, capacity: float | None = None) -> None:
    """Every reader made progress at its pace, nothing failed, nothing stalled.

    ``capacity`` is what the daemon served per second to the same readers unpaced in the same
    run: paced readers that offer more than that (a slow or busy machine) are judged against it,
    since no server keeps a pace beyond its throughput; what is checked is that pacing does not
    lose throughput and that no read stalls."""
    assert run.errors == 0, run.summary()
    if run.paced:
        offered = run.readers * READER_IOPS * seconds
        servable = offered if capacity is None else min(offered, capacity * seconds)
        assert run.ios >= 0.8 * servable, f"readers fell behind their pace: {run.summary()}"
    assert run.max_ms <= STALL_MS, f"a read stalled: {run.summary()}"


# -- the soak -------------------------------------------------------------------------------
@dataclass
class Soak:
    ops: int = 0
    bytes_read: int = 0
    failures: list[str] = field(default_factory=list)
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (time, rss MB, fds)


def soak(mounted: MountedLibrary, expected: dict[str, str], seconds: float, workers: int = 6) -> Soak:
    """Listings, stats, whole-track reads (checked), status reads and random ranges, from
    ``workers`` threads for ``seconds``; the daemon's memory and descriptors sampled twice a second."""
    mnt = mounted.mountpoint
    tracks = mounted_tracks(mnt)
    dirs = sorted({p.parent for p in tracks.values()} | {mnt})
    small = [real for real in tracks if real != BIG_REAL]
    result, lock, stop = Soak(), threading.Lock(), threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with open(tracks[BIG_REAL], "rb", buffering=0) as big:
            while not stop.is_set():
                action = rng.randrange(5)
                try:
                    if action == 0:
                        folder = rng.choice(dirs)
                        for name in os.listdir(folder):
                            os.stat(folder / name)
                        got = 0
                    elif action == 1:
                        real = rng.choice(small)
                        with open(tracks[real], "rb") as f:
                            data = f.read()
                        if hashlib.sha256(data).hexdigest() != expected[real]:
                            raise AssertionError(f"{real}: wrong bytes")
                        got = len(data)
                    elif action == 2:
                        got = len((mnt / ".musicfs" / "status.json").read_bytes())
                    elif action == 3:
                        real = rng.choice(small)
                        if os.getxattr(tracks[real], "user.musicfs.real_path").decode() != real:
                            raise AssertionError(f"{real}: wrong xattr")
                        got = 0
                    else:
                        got = len(os.pread(big.fileno(), 64 * 1024, rng.randrange(BIG_SIZE - 65536)))
                except (OSError, AssertionError) as exc:
                    with lock:
                        result.failures.append(f"action {action}: {exc}")
                    continue
                with lock:
                    result.ops += 1
                    result.bytes_read += got

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while time.monotonic() - started < seconds:
            result.samples.append((time.monotonic() - started, proc_status_mb(mounted.pid), fd_count(mounted.pid)))
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    return result


def sample(mounted: MountedLibrary) -> tuple[float, int]:
    """The daemon's (RSS MB, descriptors) once nothing is in flight."""
    settled(mounted.mountpoint)
    time.sleep(0.3)
    return proc_status_mb(mounted.pid), fd_count(mounted.pid)


def run_soak(mounted: MountedLibrary, expected: dict[str, str], seconds: float, capsys) -> Soak:
    pid = mounted.pid
    soak(mounted, expected, min(10.0, seconds / 5))  # warm-up: caches of bounded size fill up first
    rss_start, fds_start = sample(mounted)
    result = soak(mounted, expected, seconds)
    rss_end, fds_end = sample(mounted)
    rss_peak = max(rss for _, rss, _ in result.samples)
    fds_peak = max(fds for _, _, fds in result.samples)
    with capsys.disabled():
        print(f"\nFAULT-38 soak {seconds:.0f} s: {result.ops:,} operations, {result.bytes_read / 1e6:,.0f} MB read, "
              f"{len(result.failures)} failures; RSS {rss_start:.1f} -> {rss_end:.1f} MB (peak {rss_peak:.1f}); "
              f"fds {fds_start} -> {fds_end} (peak {fds_peak})")
    assert not result.failures, result.failures[:5]
    assert result.ops > 0
    assert mounted.alive() and mount_status(mounted.mountpoint)["pid"] == pid, "the daemon was replaced"
    assert fds_end <= fds_start + FD_SLACK, f"descriptors grew from {fds_start} to {fds_end}"
    assert rss_end - rss_start <= RSS_GROWTH_MB, f"memory grew from {rss_start:.1f} to {rss_end:.1f} MB"
    assert rss_peak <= 500, f"peak RSS {rss_peak:.1f} MB (NFR-4.3 maximum 500 MB)"
    return result


# -- the checks -----------------------------------------------------------------------------
@pytest.mark.req("FAULT-38")
def test_f38_128_readers_progress_without_stalls_then_a_short_soak(soak_mount, capsys):
    """``make test``'s part: 128 readers, paced and unpaced, all served with no read stalled;
    the latency figures are printed; then a short soak."""
    mounted, expected = soak_mount
    big = mounted_tracks(mounted.mountpoint)[BIG_REAL]
    plan = ((1, 2, False), (READERS, 3, False), (READERS, 3, True))
    runs = [fio(big, readers, seconds, paced=paced) for readers, seconds, paced in plan]
    with capsys.disabled():
        print("\nFAULT-38 " + "\nFAULT-38 ".join(r.summary() for r in runs))
    capacity = runs[1].iops  # the same 128 readers unpaced, a moment before
    for run, (_, seconds, _) in zip(runs, plan):
        check_run(run, seconds, capacity)
    assert mounted.alive()
    run_soak(mounted, expected, SHORT_SOAK, capsys)


@pytest.mark.slow
@pytest.mark.req("FAULT-38")
def test_f38_p99_of_128_paced_readers_within_twice_one_reader(soak_mount, capsys):
    """The catalogue's bound, with enough reads for a steady p99 on both sides.

    Beside it, the same paced readers, one and 128, served by the kernel's page cache alone
    (the daemon not involved): how far the machine itself (other processes, 128 reader threads
    on few cores) stretches the tail. Where that control already breaks the bound, this machine
    cannot show the figure for musicfs either: the test says so, with every figure, and skips
    rather than passing or loosening the bound."""
    mounted, _ = soak_mount
    big = mounted_tracks(mounted.mountpoint)[BIG_REAL]
    one = fio(big, 1, 120, paced=True)  # 2,400 reads
    many = fio(big, READERS, 60, paced=True)  # ~150,000 reads
    control_one = fio(big, 1, 60, paced=True, direct=False)
    control = fio(big, READERS, 20, paced=True, direct=False)
    unpaced = [fio(big, 1, 10, paced=False), fio(big, READERS, 10, paced=False)]
    ratio = many.p99_ms / one.p99_ms
    control_ratio = control.p99_ms / control_one.p99_ms
    figures = (f"paced p99 ratio through the daemon {ratio:.2f} (bound 2); page cache alone "
               f"{control_ratio:.2f}; unpaced ratio {unpaced[1].p99_ms / unpaced[0].p99_ms:.1f}")
    with capsys.disabled():
        print("\nFAULT-38 " + "\nFAULT-38 ".join(
            r.summary() for r in (one, many, control_one, control, *unpaced)) + f"\nFAULT-38 {figures}")
    check_run(one, 120)
    check_run(many, 60)
    if ratio > 2 and control_ratio > 2:
        pytest.skip(f"this machine cannot show the bound: {figures}")
    assert ratio <= 2, (f"p99 {many.p99_ms:.3f} ms with {READERS} readers, {one.p99_ms:.3f} ms with one; "
                        f"{figures}")


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.req("FAULT-38")
def test_f38_fifteen_minute_soak(soak_mount, capsys):
    mounted, expected = soak_mount
    result = run_soak(mounted, expected, LONG_SOAK, capsys)
    # no creeping growth: the last third of the soak ends no higher than its first third did, give or take
    third = [s for s in result.samples if s[0] < LONG_SOAK / 3]
    last = [s for s in result.samples if s[0] > 2 * LONG_SOAK / 3]
    assert max(r for _, r, _ in last) - max(r for _, r, _ in third) <= RSS_GROWTH_MB / 2
