"""Sizes of the comparison's library, and its build: the folder every peer serves, written once
per size by the fixture generators, and the musicfs index scanned from it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conformance.expected import sha256_of
from fixtures.audio import AudioSpec, encode
from fixtures.bigfile import write_wav
from fixtures.tags import TagPlan, write_tags
from tests.harness import scan

ROOT = Path(__file__).resolve().parent.parent.parent
ALBUM_TRACKS = 20  # tracks per album in the spread-out part of the library
# what the library holds and how it is laid out; a change here rebuilds it
LIBRARY_VERSION = "compare-library-v1"
# a change to any of these makes the musicfs index be scanned again
_INDEX_SOURCES = ("musicfs/index/schema.py", "musicfs/index/scanner.py", "musicfs/index/template.py")


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
        large.append(LargeTrack(relpath, path.stat().st_size, sha256_of(path)))
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
