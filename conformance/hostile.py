"""Shared pieces of the bad-input checks (FAULT-28..31): hostile libraries and what a mount must show.

Each check writes its own library into its temporary folder (real audio from
:mod:`fixtures.audio`, real tags written by mutagen through :mod:`fixtures.tags`,
then the bytes a hostile source would hold), mounts it for real (the daemon
scans it first, in its own process), and judges the mount: every file either
shows as a track whose bytes are the origin's, or is listed as skipped with
one log line; the tree holds only legal, unique names; the daemon still serves.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

from conformance.expected import sha256_of, walk_dirs, walk_files
from fixtures.audio import AudioSpec, encode, encode_aiff, sample_rates, unavailable_formats
from fixtures.tags import TagPlan, write_tags
from musicfs.index.names import NAME_MAX, is_legal
from tests.harness import MountedLibrary, mount_status, mounted_tracks

ORIGIN_ID = "local"  # the id of a library mounted with --origin

# every container musicfs reads, each with the tag style real files of it carry
CONTAINERS = (("flac", "vorbis"), ("mp3", "id3v2.3"), ("mp3", "id3v2.4"), ("ogg", "vorbis"),
              ("opus", "vorbis"), ("wav", "id3v2.4"), ("aiff", "id3v2.3"), ("m4a", "mp4"))


def containers() -> list[tuple[str, str]]:
    """:data:`CONTAINERS` this machine can write (M4A needs ffmpeg)."""
    missing = unavailable_formats()
    return [(fmt, style) for fmt, style in CONTAINERS if fmt not in missing]


def audio(fmt: str, key: int, seconds: float = 0.4) -> bytes:
    """A short real stream of ``fmt``, no tags."""
    spec = AudioSpec(key, seconds, sample_rates("flac" if fmt == "aiff" else fmt, 1)[-1], 1)
    return encode_aiff(spec) if fmt == "aiff" else encode(spec, fmt)


def tagged(path: Path, fmt: str, style: str, values: dict, *, key: int = 1, cover: str | None = None) -> Path:
    """Write a real ``fmt`` file at ``path`` carrying exactly ``values`` as ``style`` tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(audio(fmt, key))
    write_tags(path, fmt, TagPlan(style, values, cover=cover, cover_key=key))
    return path


def tagged_bytes(fmt: str, style: str, values: dict, *, key: int = 1, cover: str | None = None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="musicfs-hostile-") as scratch:
        return tagged(Path(scratch) / f"seed.{fmt}", fmt, style, values, key=key, cover=cover).read_bytes()


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def last_scan(index: Path) -> dict:
    """The newest scan recorded in an index: whether it finished, and its report."""
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        finished, stats = conn.execute("SELECT finished_at, stats FROM scans ORDER BY id DESC LIMIT 1").fetchone()
    return {"finished": finished is not None, **json.loads(stats)}


def skip_lines(log: str, path: str) -> list[str]:
    """The log lines that report ``path`` (relative to the origin) as skipped."""
    return [line for line in log.splitlines() if f"skipped {ORIGIN_ID}:{path}: " in line]


def errors_json(mounted: MountedLibrary) -> dict[str, dict]:
    """real path -> its entry in the mount's /.musicfs/errors.json."""
    errors = json.loads((mounted.mountpoint / ".musicfs" / "errors.json").read_bytes())
    return {item["real_path"]: item for item in errors["skipped"]}


def judge(mounted: MountedLibrary, root: Path, files: list[str], *, file_seconds: float
          ) -> tuple[dict[str, Path], dict[str, dict]]:
    """Assert that each of ``files`` (paths under ``root``) was indexed or skipped, exactly one of them.

    Indexed: shown in the tree, its bytes through the mount equal the origin's,
    and no log line calls it skipped. Skipped: listed in errors.json with a
    reason and a detail, and logged exactly once, reason included. The scan
    finished, no file took longer than ``file_seconds`` to read, and the
    daemon still answers. Returns (indexed: real path -> mounted path,
    skipped: real path -> errors.json entry).
    """
    tracks = mounted_tracks(mounted.mountpoint)
    skipped = errors_json(mounted)
    log = mounted.log_text()
    assert not set(tracks) & set(skipped), f"both shown and skipped: {sorted(set(tracks) & set(skipped))}"
    unaccounted = [f for f in files if f not in tracks and f not in skipped]
    assert not unaccounted, f"neither indexed nor reported as skipped: {unaccounted}"
    assert set(tracks) | set(skipped) == set(files), "the mount shows files that are not in the library"
    for path in files:
        lines = skip_lines(log, path)
        if path in skipped:
            item = skipped[path]
            assert item["reason"].strip() and item["detail"].strip(), item
            assert len(lines) == 1, f"{path}: {len(lines)} log lines say it was skipped: {lines}"
            assert item["reason"] in lines[0], (item, lines[0])
        else:
            assert not lines, f"{path} is indexed, yet logged as skipped: {lines}"
            assert sha256_of(tracks[path]) == sha256_of(root / path), f"{path}: bytes differ through the mount"
    scan = last_scan(mounted.index)
    assert scan["finished"] and scan["complete"], f"the scan did not complete: {scan}"
    assert scan["seen"] == len(files) and scan["skipped"] == len(skipped), scan
    assert scan["slowest_seconds"] <= file_seconds, (
        f"{scan['slowest_path']} took {scan['slowest_seconds']:.1f} s to read (bound {file_seconds} s)")
    assert mounted.alive() and mount_status(mounted.mountpoint)["index"]["tracks"] == len(tracks)
    return tracks, skipped


def assert_tree_is_legal(mountpoint: Path) -> list[str]:
    """Every name in the mount is one legal component, listed once, resolving inside the mount.

    Legal: not '.' or '..', no '/' or NUL, at most 255 bytes, NFC, no leading
    dot (:func:`musicfs.index.names.is_legal`). Returns every file path.
    """
    mnt = os.path.realpath(mountpoint)
    files = walk_files(mountpoint)
    for directory in walk_dirs(mountpoint):
        raw = os.listdir(os.fsencode(mountpoint / directory))  # the bytes the kernel hands out
        duplicates = [name for name, count in Counter(raw).items() if count > 1]
        assert not duplicates, f"{directory!r} lists {duplicates} more than once"
        for name in raw:
            assert len(name) <= NAME_MAX and b"/" not in name and b"\0" not in name, name
            text = name.decode("utf-8")  # strict: a name is valid UTF-8
            if directory == "" and text in (".musicfs", ".origins"):
                continue
            assert is_legal(text), f"illegal name {text!r} in {directory!r}"
            full = os.path.realpath(mountpoint / directory / text)
            assert full.startswith(mnt + os.sep), f"{directory}/{text!r} resolves to {full}, outside the mount"
        if directory:
            parent = os.path.dirname(directory)
            assert os.stat(mountpoint / directory / "..").st_ino == os.stat(mountpoint / parent).st_ino
    return files
