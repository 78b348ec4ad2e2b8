"""Measuring a real mount: percentiles, timed loops, synthetic indexes, precise mount timing.

Shared by the timed and scale checks in ``conformance/`` and by the benchmarks in
``perf/``. Everything here talks to a mount from the outside, the way a user's
tools do (``os.stat``, ``os.scandir``, ``os.pread``), and reads the daemon's
memory from ``/proc/<pid>/status``.

The machine these run on is small and shared, so single timings mean little:
every figure is a percentile or a median over many operations, taken after a
warm-up pass, and comparisons are measured as ratios within one run.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musicfs import daemon
from tests.harness import musicfs_cmd

SYNTHETIC_ORIGIN_ID = "synthetic"
DAEMON_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


# -- statistics ---------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (p99 of 1000 values is the 990th smallest)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of no values")
    middle = n // 2
    return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass
class Latencies:
    """Per-operation latencies in milliseconds, with the figures a report wants."""

    name: str
    ms: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ms)

    def p(self, q: float) -> float:
        return percentile(self.ms, q)

    def summary(self) -> str:
        return (f"{self.name}: n={self.count} p50={self.p(50):.4f} ms p99={self.p(99):.4f} ms "
                f"max={max(self.ms):.3f} ms")


def time_each(name: str, operation: Callable[[Any], Any], items: Sequence[Any], *,
              count: int, warmup: int | None = None) -> Latencies:
    """Run ``operation`` ``count`` times over ``items`` (round robin), timing each call.

    A warm-up pass first calls it once on every item (or on ``warmup`` items), untimed.
    """
    if not items:
        raise ValueError(f"{name}: nothing to measure")
    for item in items[:warmup] if warmup is not None else items:
        operation(item)
    clock = time.perf_counter_ns
    result = Latencies(name)
    samples = result.ms
    n = len(items)
    for i in range(count):
        item = items[i % n]
        started = clock()
        operation(item)
        samples.append((clock() - started) / 1e6)
    return result


def rate(operation: Callable[[], int], *, min_seconds: float = 1.0, min_ops: int = 1000
         ) -> tuple[float, int, float]:
    """Call ``operation`` (which returns how many operations it did) until both minima are
    reached; returns (operations per second, operations, seconds)."""
    done, started = 0, time.perf_counter()
    while True:
        done += operation()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and done >= min_ops:
            return done / elapsed, done, elapsed


# -- the daemon and the kernel -------------------------------------------------
def proc_status_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A memory figure of process ``pid`` from /proc (VmRSS: now, VmHWM: its peak), in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, *, seconds: float = 0.3) -> float:
    """Wait until the daemon has nothing in flight (its CPU time stops moving); return its RSS."""
    deadline = time.monotonic() + 10
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(seconds)
        after = cpu_seconds(pid)
        if after == before:
            break
        before = after
    return proc_status_mb(pid)


def drop_page_cache(level: int = 3) -> bool:
    """Drop the kernel's caches (root only); False if not allowed.

    ``level`` as for /proc/sys/vm/drop_caches: 1 page cache, 2 dentries and inodes (the
    kernel forgets a FUSE mount's names and asks the daemon again), 3 both. Every mount on the
    machine loses its caches, so a test that calls this runs alone (``@pytest.mark.alone``):
    beside it, another test's cache-hit counts would be wrong.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        raise RuntimeError("drop_page_cache empties every mount's kernel caches: mark the test "
                           "@pytest.mark.alone so that make test runs it on its own")
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as knob:
            knob.write(f"{level}\n")
    except OSError:
        return False
    return True


def evict_files(paths: Iterable[Path | str]) -> None:
    """Drop the cached pages of just these files (works without root)."""
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to at least ``wanted``; return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# -- walking a mount -------------------------------------------------------------
@dataclass
class Tree:
    """What a walk of a mount found: directories that hold files, and the files."""

    album_dirs: list[Path]
    files: list[Path]
    dirs: list[Path]


def walk_tree(root: Path, *, skip_hidden: bool = True) -> Tree:
    album_dirs, files, dirs = [], [], []
    for path, subdirs, names in os.walk(root):
        if skip_hidden:
            subdirs[:] = [d for d in subdirs if not d.startswith(".musicfs")]
        here = Path(path)
        dirs.append(here)
        if names:
            album_dirs.append(here)
            files.extend(here / name for name in names)
    return Tree(album_dirs, files, dirs)


def read_whole(path: Path, block: int = 1 << 20) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            total += len(chunk)
    return total


# -- synthetic indexes -----------------------------------------------------------
def build_synthetic_index(path: Path, n: int, *, seed: int = 11, single_album: int | None = None,
                          stamp: str = "") -> Path:
    """An index of ``n`` synthetic tracks with its tree (no audio), made once per path.

    A ``.done`` marker beside it says the build finished (and with which ``stamp``, e.g. a
    hash of the code that builds it); an unfinished or differently stamped file is rebuilt.
    """
    from fixtures.synthetic import synthetic_tracks
    from musicfs.index.bulk import load_tracks
    from musicfs.index.library import LibraryIndex
    from musicfs.index.template import PathTemplate

    done = path.with_name(path.name + ".done")
    label = f"{n} {seed} {single_album} {stamp}".strip()
    if path.exists() and done.exists() and done.read_text().strip() == label:
        return path
    done.unlink(missing_ok=True)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = LibraryIndex(path)
    try:
        count = load_tracks(index, SYNTHETIC_ORIGIN_ID,
                            synthetic_tracks(n, seed=seed, single_album=single_album), PathTemplate())
        index.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        index.close()
    assert count == n
    done.write_text(label + "\n")
    return path


def scan_count(index: Path) -> int:
    """How many scans the index has recorded (a mount that rescanned would add one)."""
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    finally:
        conn.close()


def copy_index(source: Path, target: Path) -> Path:
    """A consistent copy of an index (safe while a daemon has the source open)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


# -- precise mount timing ----------------------------------------------------------
@dataclass
class TimedMount:
    mountpoint: Path
    proc: subprocess.Popen
    log: Path
    seconds: float  # from spawning the command to the first answered stat of the root

    @property
    def pid(self) -> int:
        return self.proc.pid


def _stop(mountpoint: Path, proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            daemon.abort_connection(mountpoint)  # frees a daemon blocked on its own mount
            proc.kill()
            proc.wait(10)
    if daemon.is_mounted(mountpoint):
        daemon.fusermount_unmount(mountpoint, lazy=True)
    if daemon.is_mounted(mountpoint):
        daemon.abort_connection(mountpoint)
        daemon.fusermount_unmount(mountpoint, lazy=True)


@contextlib.contextmanager
def timed_mount(work: Path, *, index: Path, origin: Path, cache_dir: Path | None = None,
                timeout: float = 60.0, poll: float = 0.001) -> Iterator[TimedMount]:
    """Start ``musicfs mount --foreground`` and time it to the first answered stat of its root.

    The mount point is polled every ``poll`` seconds: while it is not mounted a stat
    returns the underlying directory at once; once the FUSE mount is in place the stat
    waits for the daemon to answer it. The daemon is always stopped afterwards.

    The daemon runs the way an installed one does, with its bytecode cached: a
    ``PYTHONDONTWRITEBYTECODE`` in the test environment is not passed on (otherwise every
    start would compile musicfs' modules again and time the compiler, not the mount).
    """
    work.mkdir(parents=True, exist_ok=True)
    mountpoint = work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    log = work / "daemon.log"
    cmd = musicfs_cmd("--state-dir", str(work / "state"), "mount", "--foreground",
                      "--index", str(index), "--cache-dir", str(cache_dir or work / "cache"),
                      "--origin", str(origin), str(mountpoint))
    underlying = os.stat(mountpoint).st_dev
    deadline = time.monotonic() + timeout
    with open(log, "ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=DAEMON_ENV)
    try:
        while os.stat(mountpoint).st_dev == underlying:
            if proc.poll() is not None:
                raise RuntimeError(f"musicfs exited with {proc.returncode}:\n"
                                   f"{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"musicfs did not mount within {timeout} s")
            time.sleep(poll)
        seconds = time.perf_counter() - started
        yield TimedMount(mountpoint, proc, log, seconds)
    finally:
        _stop(mountpoint, proc)


def mount_seconds(work: Path, *, index: Path, origin: Path, cache_dir: Path | None = None,
                  manager: Path | None = None) -> float:
    """Seconds from the command to the mount's first answered stat: ``musicfs mount --foreground``
    as a new process, or, with ``manager`` (the state directory of a running manager), ``musicfs
    mount`` as a user types it, handed to the manager."""
    if manager is not None:
        return _managed_mount_seconds(work, state=manager, index=index, origin=origin, cache_dir=cache_dir)
    with timed_mount(work, index=index, origin=origin, cache_dir=cache_dir) as mounted:
        return mounted.seconds


def _managed_mount_seconds(work: Path, *, state: Path, index: Path, origin: Path, cache_dir: Path | None,
                           timeout: float = 60.0) -> float:
    mountpoint = work / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    underlying = os.stat(mountpoint).st_dev
    command = musicfs_cmd("--state-dir", str(state), "mount", "--index", str(index), "--cache-dir",
                          str(cache_dir or work / "cache"), "--origin", str(origin), str(mountpoint))
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=DAEMON_ENV,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"musicfs mount exited with {result.returncode}:\n{result.stderr}")
        while os.stat(mountpoint).st_dev == underlying:  # returned once mounted: this is at once
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"musicfs did not mount within {timeout} s")
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        subprocess.run(musicfs_cmd("--state-dir", str(state), "umount", str(mountpoint)), capture_output=True,
                       timeout=60)
        if daemon.is_mounted(mountpoint):
            daemon.abort_connection(mountpoint)
            daemon.fusermount_unmount(mountpoint, lazy=True)


def interleaved_mount_times(libraries: dict[str, Path], work: Path, origin: Path, *,
                            repeats: int, warmup: int = 1, manager: Path | None = None) -> dict[str, list[float]]:
    """Mount each library ``repeats`` times, alternating between them so that noise on a
    shared machine lands on all of them alike; returns seconds per library."""
    times: dict[str, list[float]] = {name: [] for name in libraries}
    for round_no in range(warmup + repeats):
        for name, index in libraries.items():
            seconds = mount_seconds(work / name, index=index, origin=origin, manager=manager)
            if round_no >= warmup:
                times[name].append(seconds)
    return times
