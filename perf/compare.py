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
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from conformance.measure import drop_page_cache, median, proc_status_mb
from fixtures.audio import AudioSpec, encode
from fixtures.bigfile import write_wav
from fixtures.tags import TagPlan, write_tags
from musicfs import daemon
from tests.harness import mount_library, mount_status, scan, settled

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK = ROOT / "build" / "perf-compare"
DEFAULT_JSON = ROOT / "build" / "perf-compare.json"
PEERS = ("native", "bindfs", "rclone", "musicfs")
FUSE_PEERS = ("bindfs", "rclone", "musicfs")
MB = 1_000_000
BLOCK = 1 << 20  # every read is 1 MiB, as a copy or a player reading ahead does
PARALLEL_READERS = 8
ALBUM_TRACKS = 20  # tracks per album in the spread-out part of the library
# what the library holds and how it is laid out; a change here rebuilds it
LIBRARY_VERSION = "compare-library-v1"
# a change to any of these makes the musicfs index be scanned again
_INDEX_SOURCES = ("musicfs/index/schema.py", "musicfs/index/scanner.py", "musicfs/vfs/template.py")


# -- sizes and the library ---------------------------------------------------------------------
@dataclass(frozen=True)
class CompareSize:
    """How large the library is, and how often the quick metadata timings repeat, at a size."""

    name: str
    large_tracks: int  # long WAV tracks, read by the throughput rows
    large_bytes: int  # each
    crowd_tracks: int  # small FLAC tracks in one folder (one album: one directory in musicfs)
    spread_tracks: int  # small FLAC tracks in albums of ALBUM_TRACKS
    repeats: int  # timed listings / ls -l / find per round (after one untimed)


SIZES = {
    "ci": CompareSize("ci", large_tracks=8, large_bytes=8 << 20, crowd_tracks=1_000,
                      spread_tracks=1_000, repeats=3),
    "full": CompareSize("full", large_tracks=200, large_bytes=8 << 20, crowd_tracks=10_000,
                        spread_tracks=10_000, repeats=5),
}

LARGE_ARTIST = "Bench Long Player {:02d}"  # ALBUM_TRACKS long tracks each, one album
CROWD_ARTIST = "Bench Crowd"
CROWD_ALBUM = "Ten Thousand"
CROWD_DIR = "small/crowd"  # the one big folder of the native tree


@dataclass(frozen=True)
class LargeTrack:
    relpath: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Library:
    """A built library: the folder every peer serves and the musicfs index scanned from it."""

    size: CompareSize
    root: Path
    index: Path
    large: tuple[LargeTrack, ...]  # in reading order
    small_tracks: int

    @property
    def large_artists(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.relpath.split("/")[1] for t in self.large))

    @property
    def large_bytes(self) -> int:
        return sum(t.size for t in self.large)


def _stamp(paths: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for rel in paths:
        digest.update(rel.encode())
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _small_clips(count: int) -> list[bytes]:
    """A few short FLAC streams the small tracks take turns at (the tags make each file unique)."""
    return [encode(AudioSpec(key=9000 + i, seconds=0.1, sample_rate=8000, channels=1), "flac")
            for i in range(count)]


def _write_small(path: Path, clip: bytes, values: dict) -> None:
    path.write_bytes(clip)
    write_tags(path, "flac", TagPlan("vorbis", values))


def _write_library(size: CompareSize, root: Path) -> list[LargeTrack]:
    """Write every file of the library under ``root``; the long tracks, in reading order."""
    large = []
    for i in range(size.large_tracks):
        artist_no, track_no = divmod(i, ALBUM_TRACKS)
        artist = LARGE_ARTIST.format(artist_no + 1)
        relpath = f"large/{artist}/Long Album/{track_no + 1:02d} long track.wav"
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, size.large_bytes, seed=100 + i)  # noise: the chunk store dedups none of it
        write_tags(path, "wav", TagPlan("id3v2.4", {
            "title": f"Long Track {i + 1}", "artist": artist, "album": "Long Album",
            "year": 2001, "track": track_no + 1}))
        large.append(LargeTrack(relpath, path.stat().st_size, _sha256(path)))
    clips = _small_clips(8)
    crowd = root / CROWD_DIR
    crowd.mkdir(parents=True)
    for i in range(size.crowd_tracks):
        _write_small(crowd / f"{i + 1:05d} crowd song.flac", clips[i % len(clips)], {
            "title": f"Crowd Song {i + 1:05d}", "artist": CROWD_ARTIST, "album": CROWD_ALBUM,
            "year": 2010, "track": i + 1})
    for i in range(size.spread_tracks):
        album_no, track_no = divmod(i, ALBUM_TRACKS)
        artist = f"Bench Artist {album_no // 5 + 1:04d}"
        album = f"Album {album_no + 1:04d}"
        folder = root / "small" / "albums" / artist / album
        folder.mkdir(parents=True, exist_ok=True)
        _write_small(folder / f"{track_no + 1:02d} song.flac", clips[i % len(clips)], {
            "title": f"Song {i + 1}", "artist": artist, "album": album,
            "year": 1990 + album_no % 30, "track": track_no + 1})
    return large


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder of a library at a time (two runs starting together would both write it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_library(size: CompareSize, work: Path, log: Callable[[str], None] = print) -> Library:
    """The library of ``size`` under ``work``, built (and its musicfs index scanned) if needed.

    Both are kept between runs: a full-size library takes minutes to write and scan. A
    manifest beside the folder records what was built; a missing or different one rebuilds.
    """
    root = work / f"library-{size.name}"
    manifest_path = work / f"library-{size.name}.json"
    index = work / f"index-{size.name}.db"
    index_done = work / f"index-{size.name}.done"
    wanted = {"version": LIBRARY_VERSION, "size": size.name, "large_tracks": size.large_tracks,
              "large_bytes": size.large_bytes, "crowd_tracks": size.crowd_tracks,
              "spread_tracks": size.spread_tracks}
    with _locked(work / f"library-{size.name}.lock"):
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if {k: manifest.get(k) for k in wanted} != wanted or not root.is_dir():
            log(f"building the {size.name} library in {root} ...")
            started = time.perf_counter()
            manifest_path.unlink(missing_ok=True)
            index_done.unlink(missing_ok=True)
            tmp = root.with_name(root.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
            large = _write_library(size, tmp)
            tmp.rename(root)
            manifest = {**wanted, "large": [t.__dict__ for t in large]}
            manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
            log(f"  written in {time.perf_counter() - started:.1f} s")
        stamp = f"{_stamp(_INDEX_SOURCES)} {root}"
        if not (index.exists() and index_done.exists() and index_done.read_text().strip() == stamp):
            log(f"scanning it into a musicfs index ({index.name}) ...")
            started = time.perf_counter()
            index_done.unlink(missing_ok=True)
            for stale in (index, index.with_name(index.name + "-wal"),
                          index.with_name(index.name + "-shm")):
                stale.unlink(missing_ok=True)
            scan_state = work / f"scan-state-{size.name}"
            shutil.rmtree(scan_state, ignore_errors=True)
            scan(root, scan_state, index)
            shutil.rmtree(scan_state, ignore_errors=True)
            index_done.write_text(stamp + "\n")
            log(f"  scanned in {time.perf_counter() - started:.1f} s")
    large = tuple(LargeTrack(**t) for t in manifest["large"])
    return Library(size, root, index, large, size.crowd_tracks + size.spread_tracks)


# -- peers ---------------------------------------------------------------------------------------
@dataclass
class Mounted:
    """One peer serving the library: where, and which process (None: the kernel alone)."""

    root: Path
    pid: int | None
    large: list[Path]  # the long tracks, in the library's reading order
    crowd: Path  # the folder of crowd_tracks entries
    # musicfs: how many fills from the origin the daemon has started (its status document)
    origin_fills: Callable[[], int] | None = None


def _wait_mounted(mountpoint: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not daemon.is_mounted(mountpoint):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} did not mount within {timeout} s")
        time.sleep(0.01)
    os.stat(mountpoint)  # the first request answered: it serves


def _unmount(mountpoint: Path, proc: subprocess.Popen | None) -> None:
    """Unmount and stop the daemon, harder each step: unmount, SIGTERM, SIGKILL, lazy unmount."""
    if daemon.is_mounted(mountpoint):
        daemon.fusermount_unmount(mountpoint)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            daemon.abort_connection(mountpoint)
            proc.kill()
            proc.wait(10)
    if daemon.is_mounted(mountpoint):
        daemon.abort_connection(mountpoint)
        daemon.fusermount_unmount(mountpoint, lazy=True)


@contextlib.contextmanager
def _fuse_process(cmd: list[str], mountpoint: Path, log: Path, timeout: float = 60.0
                  ) -> Iterator[subprocess.Popen]:
    """Run a FUSE daemon in the foreground as our child, yield once it serves, always stop it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_mounted(mountpoint, proc, log, timeout)
        yield proc
    finally:
        _unmount(mountpoint, proc)


def _same_layout(root: Path, library: Library, pid: int | None) -> Mounted:
    """A peer that shows the native folder as it is."""
    return Mounted(root, pid, [root / t.relpath for t in library.large], root / CROWD_DIR)


def _musicfs_layout(root: Path, library: Library, pid: int) -> Mounted:
    """Where musicfs' tag tree put the long tracks and the crowd album (found, not assumed)."""
    by_real = {}
    for artist in library.large_artists:
        for dirpath, _, names in os.walk(root / artist):
            for name in names:
                path = Path(dirpath) / name
                by_real[os.getxattr(path, "user.musicfs.real_path").decode()] = path
    missing = [t.relpath for t in library.large if t.relpath not in by_real]
    if missing:
        raise RuntimeError(f"musicfs does not serve {len(missing)} long track(s), e.g. {missing[0]}")
    albums = os.listdir(root / CROWD_ARTIST)
    if len(albums) != 1:
        raise RuntimeError(f"{CROWD_ARTIST} has {len(albums)} albums in musicfs, not one")
    return Mounted(root, pid, [by_real[t.relpath] for t in library.large],
                   root / CROWD_ARTIST / albums[0],
                   origin_fills=lambda: mount_status(root)["reader"]["fills_started"])


class Peer:
    """A way of serving the library. ``mount(place, cache)`` yields it served; a new ``cache``
    name is an empty cache, the same name again is the cache a previous mount filled."""

    name = ""
    binary: str | None = None

    def missing(self) -> str | None:
        """Why this peer cannot run here, or None."""
        if self.binary and shutil.which(self.binary) is None:
            return f"{self.binary} is not installed"
        return None

    def version(self) -> str:
        return ""

    def mount(self, library: Library, place: Path, cache: str) -> contextlib.AbstractContextManager[Mounted]:
        raise NotImplementedError


class NativePeer(Peer):
    name = "native"

    def version(self) -> str:
        return os.uname().release

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        yield _same_layout(library.root, library, None)


class BindfsPeer(Peer):
    name = binary = "bindfs"

    def version(self) -> str:
        out = subprocess.run(["bindfs", "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        mnt = place / "bindfs"
        with _fuse_process(["bindfs", "-f", "-r", str(library.root), str(mnt)], mnt,
                           place / "bindfs.log") as proc:
            yield _same_layout(mnt, library, proc.pid)


class RclonePeer(Peer):
    """``rclone mount`` of the folder as an on-the-fly local remote, with its VFS cache full."""

    name = binary = "rclone"

    def version(self) -> str:
        out = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0] if out.stdout else ""

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        mnt = place / "rclone"
        config = place / "rclone.conf"  # empty: no remote of the user's is read or touched
        config.touch()
        cmd = ["rclone", "mount", f":local:{library.root}", str(mnt), "--config", str(config),
               "--read-only", "--vfs-cache-mode", "full",
               "--cache-dir", str(place / f"rclone-cache-{cache}")]
        with _fuse_process(cmd, mnt, place / "rclone.log") as proc:
            yield _same_layout(mnt, library, proc.pid)


class MusicfsPeer(Peer):
    """The real daemon (as the tests mount it) over a local origin, default cache settings;
    the index scanned once at build time, the chunk cache a folder per ``cache`` name."""

    name = "musicfs"

    def version(self) -> str:
        from importlib.metadata import version

        return version("musicfs")

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        with mount_library(work=place / "musicfs", origin=library.root, index=library.index,
                           cache_dir=place / f"musicfs-cache-{cache}") as mounted:
            yield _musicfs_layout(mounted.mountpoint, library, mounted.pid)
            # the last chunks of a read reach the cache just after it: a remount over this
            # cache must find every one (an unmount mid-fill would leave a gap to fetch again)
            settled(mounted.mountpoint)


PEER_TYPES: dict[str, type[Peer]] = {"native": NativePeer, "bindfs": BindfsPeer,
                                     "rclone": RclonePeer, "musicfs": MusicfsPeer}


# -- the workload --------------------------------------------------------------------------------
def read_files(paths: list[Path]) -> int:
    """Read every file front to back in 1 MiB reads; the bytes read."""
    buf = bytearray(BLOCK)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def timed_read(paths: list[Path], readers: int = 1) -> tuple[float, int]:
    """(MB/s, bytes) reading ``paths``; with ``readers`` threads, reader i takes every
    i-th file (each thread its own files, all at once)."""
    started = time.perf_counter()
    if readers == 1:
        total = read_files(paths)
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
    Metric("cold_parallel", f"{PARALLEL_READERS} parallel readers, cold", "MB/s", True),
    Metric("warm_seq", "sequential re-read, warm", "MB/s", True),
    Metric("cached_remount", "cached, after remount", "MB/s", True, ("musicfs",)),
    Metric("list_dir", "list the big directory", "s", False),
    Metric("ls_l", "ls -l of it", "s", False),
    Metric("find", "find over the library, warm", "s", False),
    Metric("peak_rss", "daemon peak memory (VmHWM)", "MB", False, FUSE_PEERS),
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
        out.figures["cold_seq"], out.bytes_read["cold_seq"] = timed_read(mounted.large)
        out.figures["warm_seq"], out.bytes_read["warm_seq"] = timed_read(mounted.large)
        if verify:
            out.digests_match = all(_sha256(path) == track.sha256
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
            out.figures["cached_remount"], out.bytes_read["cached_remount"] = timed_read(mounted.large)
            if mounted.origin_fills is not None:
                out.remount_fills = mounted.origin_fills()
            note_peak(mounted)
    with peer.mount(library, place, "b") as mounted:
        drop_page_cache()
        out.figures["cold_parallel"], out.bytes_read["cold_parallel"] = timed_read(
            mounted.large, PARALLEL_READERS)
        note_peak(mounted)
    if peaks:
        out.figures["peak_rss"] = max(peaks)
    return out


# -- goals ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """A goal of issue 18 for one row: musicfs' median against a peer's (times ``factor``),
    against a constant, or both; ``None`` when what it needs was not measured."""

    text: str
    judge: Callable[[Callable[[str], float | None]], tuple[bool | None, str]]
    # judged on the highest round, not the median: a peak that one round in three reaches
    # is the daemon's peak
    highest: bool = False


def _at_least(peer: str, factor: float = 1.0):
    def judge(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
        mine, theirs = m("musicfs"), m(peer)
        if mine is None or theirs is None:
            return None, f"{peer} not measured"
        return mine >= factor * theirs, ""
    return judge


def _at_most(peer: str, factor: float = 1.0, strict: bool = False):
    def judge(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
        mine, theirs = m("musicfs"), m(peer)
        if mine is None or theirs is None:
            return None, f"{peer} not measured"
        return (mine < factor * theirs) if strict else (mine <= factor * theirs), ""
    return judge


def _constant(limit: float, higher: bool):
    def judge(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
        mine = m("musicfs")
        if mine is None:
            return None, "musicfs not measured"
        return (mine >= limit) if higher else (mine <= limit), ""
    return judge


def _cold_seq(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
    """>= bindfs, and > 500 MB/s unless the disk itself (native, cold) is slower than that."""
    mine, bindfs, native = m("musicfs"), m("bindfs"), m("native")
    if mine is None:
        return None, "musicfs not measured"
    floor = 500.0 if native is None else min(500.0, native)
    notes = [] if native is not None else ["native not measured"]
    met = mine >= floor
    if bindfs is None:
        notes.append("bindfs not measured")
    else:
        met = met and mine >= bindfs
    return met, "; ".join(notes)


GOALS = {
    "cold_seq": Goal(">= bindfs, > 500 MB/s where the disk allows", _cold_seq),
    "cold_parallel": Goal(">= bindfs", _at_least("bindfs")),
    "cached_remount": Goal(">= 800 MB/s", _constant(800.0, higher=True)),
    "warm_seq": Goal(">= 0.5x native", _at_least("native", 0.5)),
    "list_dir": Goal("<= 3x native", _at_most("native", 3.0)),
    "ls_l": Goal("faster than rclone", _at_most("rclone", strict=True)),
    "find": Goal("faster than rclone", _at_most("rclone", strict=True)),
    "peak_rss": Goal("<= 200 MB (highest round)", _constant(200.0, higher=False), highest=True),
}


# -- the comparison ------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Every round's figures of every peer that ran, and what the table and JSON say of them."""

    size: CompareSize
    rounds: int
    peers: list[str]  # ran, in column order
    skipped: dict[str, str]  # peer -> why it did not run
    versions: dict[str, str]
    library: Library
    run_dir: Path
    page_cache_dropped: bool
    per_round: dict[str, list[PeerRound]] = field(default_factory=dict)

    def values(self, metric: str, peer: str) -> list[float]:
        return [r.figures[metric] for r in self.per_round.get(peer, []) if metric in r.figures]

    def median(self, metric: str, peer: str) -> float | None:
        values = self.values(metric, peer)
        return median(values) if values else None

    def ratio(self, metric: str, peer: str) -> float | None:
        mine, theirs = self.median(metric, "musicfs"), self.median(metric, peer)
        return None if mine is None or not theirs else mine / theirs

    def goal(self, metric: str) -> tuple[bool | None, str]:
        goal = GOALS[metric]
        if goal.highest:
            return goal.judge(lambda peer: max(self.values(metric, peer), default=None))
        return goal.judge(lambda peer: self.median(metric, peer))

    def bytes_read(self, peer: str) -> dict[str, int]:
        """Bytes each read pass returned in the last round."""
        rounds = self.per_round.get(peer, [])
        return rounds[-1].bytes_read if rounds else {}

    def digests_match(self, peer: str) -> bool | None:
        checks = [r.digests_match for r in self.per_round.get(peer, []) if r.digests_match is not None]
        return all(checks) if checks else None

    def remount_fills(self) -> list[int]:
        """musicfs: origin fills started by each round's read after a remount (0: all cached)."""
        return [r.remount_fills for r in self.per_round.get("musicfs", []) if r.remount_fills is not None]

    def to_json(self) -> dict:
        metrics = {}
        for metric in METRICS:
            figures = {}
            for peer in self.peers:
                values = self.values(metric.key, peer)
                if values:
                    figures[peer] = {"median": median(values), "min": min(values),
                                     "max": max(values), "values": values}
            met, note = self.goal(metric.key)
            metrics[metric.key] = {
                "label": metric.label, "unit": metric.unit,
                "higher_is_better": metric.higher_is_better, "figures": figures,
                "musicfs_ratio": {p: r for p in self.peers if p != "musicfs"
                                  if (r := self.ratio(metric.key, p)) is not None},
                "goal": {"text": GOALS[metric.key].text, "met": met, "note": note}}
        return {
            "size": self.size.name, "rounds": self.rounds,
            "library": {"large_tracks": len(self.library.large),
                        "large_track_bytes": self.size.large_bytes,
                        "large_bytes": self.library.large_bytes,
                        "small_tracks": self.library.small_tracks,
                        "big_directory_entries": self.size.crowd_tracks},
            "page_cache_dropped": self.page_cache_dropped,
            "peers": {p: ({"ran": True, "version": self.versions.get(p, "")} if p in self.peers
                          else {"ran": False, "reason": self.skipped[p]})
                      for p in PEERS if p in self.peers or p in self.skipped},
            "bytes_read": {p: self.bytes_read(p) for p in self.peers},
            "digests_match": {p: self.digests_match(p) for p in self.peers},
            "musicfs_remount_fills": self.remount_fills(),
            "metrics": metrics,
        }

    def render(self) -> str:
        """The table: a row per metric, a column per peer, musicfs' ratio to each, the goal."""
        import io

        from rich.console import Console
        from rich.table import Table

        lib = self.library
        title = (f"musicfs and its peers: {len(lib.large)} long tracks of "
                 f"{self.size.large_bytes >> 20} MiB, {lib.small_tracks:,} small tracks "
                 f"({self.size.crowd_tracks:,} in one directory); median of {self.rounds} "
                 f"round(s) (range)")
        table = Table(title=title)
        table.add_column("metric")
        for peer in self.peers:
            table.add_column(peer, justify="right")
        others = [p for p in self.peers if p != "musicfs"] if "musicfs" in self.peers else []
        for peer in others:
            table.add_column(f"musicfs/{peer}", justify="right")
        table.add_column("goal")
        table.add_column("met")
        for metric in METRICS:
            cells = [f"{metric.label} ({metric.unit})"]
            for peer in self.peers:
                values = self.values(metric.key, peer)
                cells.append(_cell(values, metric.unit) if values else "-")
            for peer in others:
                ratio = self.ratio(metric.key, peer)
                cells.append("-" if ratio is None else f"{ratio:.2f}x")
            met, note = self.goal(metric.key)
            verdict = {True: "yes", False: "NO", None: "n/a"}[met]
            cells += [GOALS[metric.key].text, verdict + (f" ({note})" if note else "")]
            table.add_row(*cells)
        out = io.StringIO()
        Console(file=out, width=260, force_terminal=False).print(table)
        lines = [out.getvalue().rstrip()]
        for peer, why in self.skipped.items():
            lines.append(f"{peer}: skipped ({why})")
        if not self.page_cache_dropped:
            lines.append("the page cache could not be dropped (not root): cold figures are not cold")
        for peer in self.peers:
            match = self.digests_match(peer)
            if match is False:
                lines.append(f"{peer}: the long tracks read through it differ from the files")
        if any(self.remount_fills()):
            lines.append(f"musicfs: the read after a remount fetched from the origin again "
                         f"(fills per round {self.remount_fills()}): not all of it was cached")
        return "\n".join(lines)


def _cell(values: list[float], unit: str) -> str:
    def fmt(v: float) -> str:
        return f"{v:,.0f}" if unit == "MB/s" else f"{v:,.1f}" if unit == "MB" else f"{v:.4f}"
    text = fmt(median(values))
    if len(values) > 1:
        text += f" ({fmt(min(values))}-{fmt(max(values))})"
    return text


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


if __name__ == "__main__":
    sys.exit(main())
