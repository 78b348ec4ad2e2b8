"""musicfs against its peers: the same library read natively, through bindfs, rclone and musicfs.

    python -m perf.compare [--size ci|full] [--rounds N] [--work DIR] [--json PATH]
                           [--peers native,bindfs,rclone,musicfs]

The requirement tables of ``make perf`` compare musicfs with the folder it serves; that says
what musicfs costs, not whether it is a good FUSE filesystem. Issue 18 asks for the other
yardstick: the same files and the same workload through the FUSE filesystems people would
otherwise use. bindfs is the thinnest possible passthrough (the price of FUSE itself);
``rclone mount`` with ``--vfs-cache-mode full`` is the nearest in kind (a daemon that copies an
origin into a cache of its own and serves reads from it).

The library (built once per size under the work dir and kept, with a musicfs index scanned
from it) holds tagged tracks written by the fixture generators: long WAV tracks for the
throughput rows, and many small FLAC tracks, a large share of them in one folder that is one
album (so one directory) in musicfs' tree too.

Every peer is mounted over that folder and runs the same workload; rounds are interleaved
(round 1: native, bindfs, rclone, musicfs; round 2: the same ...) so that noise on a shared
machine lands on all of them alike, and each row shows the median over rounds and the range.
A cold read starts with the kernel's page cache dropped and an empty cache in the peer (a
fresh mount over a fresh cache folder for rclone and musicfs); a peer that is not installed is
skipped, and said so. Every mount is unmounted and every process it started stopped, also on
failure or Ctrl-C.

Goals (issue 18) are judged on the medians: cold sequential reads at least bindfs's (and over
500 MB/s where the disk allows it), 8 parallel cold readers at least bindfs's, the chunk cache
after a remount at 800 MB/s or more, a warm re-read at least half of native, listing the
10K-entry folder within 3x native, ``ls -l`` and ``find`` faster than rclone, and the daemon's
peak memory within 200 MB.

Two rows have no goal and say where a sequential read's time goes: the median time from a
track's open to the end of its first 1 MiB read, cold and (musicfs) from its chunk cache after
a remount. Against the MB/s beside them they show how much of a pass is spent starting tracks,
which for musicfs is a disk round trip to its chunk files before the first bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conformance.measure import drop_page_cache
from musicfs import daemon

from .goals import GOALS, Goal
from .library import (
    ALBUM_TRACKS,
    CROWD_ALBUM,
    CROWD_ARTIST,
    CROWD_DIR,
    LARGE_ARTIST,
    LIBRARY_VERSION,
    ROOT,
    SIZES,
    CompareSize,
    LargeTrack,
    Library,
    build_library,
)
from .peers import (
    FUSE_PEERS,
    PEER_TYPES,
    PEERS,
    BindfsPeer,
    Mounted,
    MusicfsPeer,
    NativePeer,
    Peer,
    RclonePeer,
)
from .report import Comparison
from .workload import (
    BLOCK,
    MB,
    METRIC_BY_KEY,
    METRICS,
    PARALLEL_READERS,
    Metric,
    PeerRound,
    find,
    list_dir,
    ls_l,
    median_seconds,
    peak_mb,
    read_files,
    run_peer_round,
    timed_read,
)

__all__ = [
    "ALBUM_TRACKS", "BLOCK", "CROWD_ALBUM", "CROWD_ARTIST", "CROWD_DIR", "DEFAULT_JSON", "DEFAULT_WORK",
    "FUSE_PEERS", "GOALS", "LARGE_ARTIST", "LIBRARY_VERSION", "MB", "METRIC_BY_KEY", "METRICS",
    "PARALLEL_READERS", "PEER_TYPES", "PEERS", "ROOT", "SIZES", "BindfsPeer", "CompareOptions",
    "CompareSize", "Comparison", "Goal", "LargeTrack", "Library", "Metric", "Mounted", "MusicfsPeer",
    "NativePeer", "Peer", "PeerRound", "RclonePeer", "build_library", "compare", "find", "list_dir",
    "ls_l", "main", "median_seconds", "peak_mb", "read_files", "run_peer_round", "timed_read",
]

DEFAULT_WORK = ROOT / "build" / "perf-compare"
DEFAULT_JSON = ROOT / "build" / "perf-compare.json"


@dataclass
class CompareOptions:
    size: str = "ci"
    rounds: int = 3
    work: Path = DEFAULT_WORK
    json_path: Path | None = DEFAULT_JSON
    peers: tuple[str, ...] = PEERS
    verify: bool = True  # hash the long tracks through each peer once (untimed)


def _check_clean(run_dir: Path) -> None:
    """Nothing of a run may stay mounted: a leftover would be found by the next run."""
    left = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(run_dir))]
    for mountpoint in left:
        daemon.abort_connection(Path(mountpoint))
        daemon.fusermount_unmount(Path(mountpoint), lazy=True)
    if left:
        raise RuntimeError(f"mounts left behind and now removed: {left}")


def compare(options: CompareOptions, log: Callable[[str], None] = print) -> Comparison:
    """Build (or reuse) the library, run every round through every peer, return the figures."""
    size = SIZES[options.size]
    if options.rounds < 1:
        raise ValueError("rounds must be at least 1")
    unknown = set(options.peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peer(s) {sorted(unknown)}; known: {', '.join(PEERS)}")
    work = options.work.resolve()
    library = build_library(size, work, log)
    peers: list[Peer] = []
    skipped: dict[str, str] = {}
    for name in PEERS:
        if name not in options.peers:
            continue
        peer = PEER_TYPES[name]()
        if (why := peer.missing()) is not None:
            skipped[name] = why
            log(f"{name}: skipped ({why})")
        else:
            peers.append(peer)
    run_dir = work / f"run-{os.getpid()}"
    result = Comparison(size, options.rounds, [p.name for p in peers], skipped,
                        {p.name: p.version() for p in peers}, library, run_dir,
                        page_cache_dropped=drop_page_cache())
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.mkdir(parents=True)
        for round_no in range(options.rounds):
            for peer in peers:
                place = run_dir / f"round-{round_no + 1}" / peer.name
                place.mkdir(parents=True)
                started = time.perf_counter()
                figures = run_peer_round(peer, library, place, verify=options.verify and round_no == 0)
                result.per_round.setdefault(peer.name, []).append(figures)
                shutil.rmtree(place)  # the caches: a full-size round fills gigabytes
                log(f"round {round_no + 1}/{options.rounds} {peer.name}: "
                    f"{time.perf_counter() - started:.1f} s, " +
                    ", ".join(f"{k} {v:,.4g}" for k, v in figures.figures.items()))
    finally:
        _check_clean(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return result


def _terminate(signum, frame) -> None:
    """SIGTERM as Ctrl-C: unwind, so every mount is unmounted and every daemon stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ci")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="where the library (kept between runs) and the mounts go")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, dest="json_path",
                        help="write the figures here as JSON")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated subset of " + ",".join(PEERS))
    args = parser.parse_args(argv)
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    unknown = sorted(set(peers) - set(PEERS))
    if unknown or not peers:
        parser.error(f"--peers: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(PEERS)}")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = compare(CompareOptions(args.size, args.rounds, args.work, args.json_path, peers))
    except KeyboardInterrupt:
        print("interrupted: every mount is unmounted", file=sys.stderr)
        return 130
    print(result.render())
    if args.json_path is not None:
        print(f"figures written to {args.json_path}")
    return 0
