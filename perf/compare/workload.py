"""The workload every peer runs in every round, the metrics it yields, and one peer's round."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from conformance.expected import sha256_of
from conformance.measure import drop_page_cache, median, proc_status_mb

from .library import Library
from .peers import FUSE_PEERS, PEERS, Mounted, Peer

MB = 1_000_000
BLOCK = 1 << 20  # every read is 1 MiB, as a copy or a player reading ahead does
PARALLEL_READERS = 8
# seconds a daemon is left with nothing open after the parallel pass before its memory is read:
# longer than musicfs waits (5 s) before it gives back what the reads freed
IDLE_SETTLE = 7.0


def read_files(paths: list[Path], firsts: list[float] | None = None) -> int:
    """Read every file front to back in 1 MiB reads; the bytes read. ``firsts``: gets, per
    file, the seconds from its open to the end of its first read (what a player waits for)."""
    buf = bytearray(BLOCK)
    total = 0
    for path in paths:
        started = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            n = f.readinto(buf)
            if firsts is not None:
                firsts.append(time.perf_counter() - started)
            while n:
                total += n
                n = f.readinto(buf)
    return total


def timed_read(paths: list[Path], readers: int = 1, firsts: list[float] | None = None) -> tuple[float, int]:
    """(MB/s, bytes) reading ``paths``; with ``readers`` threads, reader i takes every
    i-th file (each thread its own files, all at once). ``firsts``: see :func:`read_files`
    (one reader only)."""
    started = time.perf_counter()
    if readers == 1:
        total = read_files(paths, firsts)
    else:
        with ThreadPoolExecutor(max_workers=readers) as pool:
            total = sum(pool.map(read_files, [paths[i::readers] for i in range(readers)]))
    return total / MB / (time.perf_counter() - started), total


def median_seconds(operation: Callable[[], object], repeats: int) -> float:
    """The median time of ``operation`` over ``repeats`` runs, after one untimed (warm) run."""
    operation()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        times.append(time.perf_counter() - started)
    return median(times)


def list_dir(folder: Path) -> int:
    return len(os.listdir(folder))


def ls_l(folder: Path) -> int:
    """What ``ls -l`` asks of a filesystem: the names, then every entry's attributes."""
    names = os.listdir(folder)
    for name in names:
        os.lstat(os.path.join(folder, name))
    return len(names)


def find(root: Path) -> int:
    """What ``find`` asks: every folder listed (musicfs' hidden folders left out)."""
    count = 0
    for _, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        count += len(dirnames) + len(filenames)
    return count


def peak_mb(pid: int | None) -> float | None:
    return None if pid is None else proc_status_mb(pid, "VmHWM")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    peers: tuple[str, ...] = PEERS  # who the row applies to


METRICS = (
    Metric("cold_seq", "sequential read, cold", "MB/s", True),
    Metric("first_mib_cold", "open and first MiB of a track, cold (median)", "ms", False),
    Metric("cold_parallel", f"{PARALLEL_READERS} parallel readers, cold", "MB/s", True),
    Metric("warm_seq", "sequential re-read, warm", "MB/s", True),
    Metric("cached_remount", "cached, after remount", "MB/s", True, ("musicfs",)),
    Metric("first_mib_cached", "open and first MiB of a track, cached (median)", "ms", False, ("musicfs",)),
    Metric("list_dir", "list the big directory", "s", False),
    Metric("ls_l", "ls -l of it", "s", False),
    Metric("find", "find over the library, warm", "s", False),
    Metric("peak_rss", "daemon peak memory (VmHWM)", "MB", False, FUSE_PEERS),
    Metric("idle_rss", "daemon memory, idle after the parallel pass (VmRSS)", "MB", False, FUSE_PEERS),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass
class PeerRound:
    """One peer's figures in one round, and the bytes each read pass returned."""

    figures: dict[str, float] = field(default_factory=dict)
    bytes_read: dict[str, int] = field(default_factory=dict)
    digests_match: bool | None = None  # the long tracks hashed through the peer (first round)
    remount_fills: int | None = None  # musicfs: origin fills the read after a remount started


def run_peer_round(peer: Peer, library: Library, place: Path, *, verify: bool) -> PeerRound:
    """The whole workload through one peer: two mounts over fresh caches (a sequential and a
    parallel cold pass), and for musicfs a remount over the first one's chunk cache."""
    out = PeerRound()
    repeats = library.size.repeats
    peaks: list[float] = []

    def note_peak(mounted: Mounted) -> None:
        if (value := peak_mb(mounted.pid)) is not None:
            peaks.append(value)

    with peer.mount(library, place, "a") as mounted:
        drop_page_cache()
        firsts: list[float] = []
        out.figures["cold_seq"], out.bytes_read["cold_seq"] = timed_read(mounted.large, firsts=firsts)
        out.figures["first_mib_cold"] = median(firsts) * 1000
        out.figures["warm_seq"], out.bytes_read["warm_seq"] = timed_read(mounted.large)
        if verify:
            out.digests_match = all(sha256_of(path, BLOCK) == track.sha256
                                    for path, track in zip(mounted.large, library.large))
        entries = list_dir(mounted.crowd)
        if entries != library.size.crowd_tracks:
            raise RuntimeError(f"{peer.name}: the big directory lists {entries} entries, "
                               f"not {library.size.crowd_tracks}")
        out.figures["list_dir"] = median_seconds(lambda: list_dir(mounted.crowd), repeats)
        out.figures["ls_l"] = median_seconds(lambda: ls_l(mounted.crowd), repeats)
        out.figures["find"] = median_seconds(lambda: find(mounted.root), repeats)
        note_peak(mounted)
    if peer.name == "musicfs":  # MM-4's path: the chunk cache read back by a new daemon
        with peer.mount(library, place, "a") as mounted:
            drop_page_cache()
            firsts = []
            out.figures["cached_remount"], out.bytes_read["cached_remount"] = timed_read(mounted.large,
                                                                                         firsts=firsts)
            out.figures["first_mib_cached"] = median(firsts) * 1000
            if mounted.origin_fills is not None:
                out.remount_fills = mounted.origin_fills()
            note_peak(mounted)
    with peer.mount(library, place, "b") as mounted:
        drop_page_cache()
        out.figures["cold_parallel"], out.bytes_read["cold_parallel"] = timed_read(
            mounted.large, PARALLEL_READERS)
        note_peak(mounted)
        if mounted.pid is not None:  # every file closed: what the daemon keeps while it idles
            time.sleep(IDLE_SETTLE)
            out.figures["idle_rss"] = proc_status_mb(mounted.pid)
    if peaks:
        out.figures["peak_rss"] = max(peaks)
    return out
