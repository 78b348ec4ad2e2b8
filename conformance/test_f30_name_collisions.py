"""FAULT-30: names that collide after sanitizing get deterministic, unique names that stay put.

A library of collisions: "AC/DC" and "AC_DC" (and "AC\\DC"), the same title
composed and decomposed, case-only differences, identical tags on several
files, a real title that looks like a collision number ("Twin (2)"), and one
album of 600 identical tracks, so that its listing takes many readdir pages.
Mounted for real: every directory lists each name once, every file is there;
a second library with the same files written in another order, scanned into a
fresh index, gets the same names; a remount, a rescan, and a rescan after
touching every colliding file keep every name and inode number.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from pathlib import Path

import pytest

from conformance.expected import walk_dirs
from conformance.hostile import assert_tree_is_legal, judge, tagged_bytes
from tests.harness import mount_library, mounted_tracks, scan

ALBUM = {"album": "Back in Black", "year": 1980}
BIG_ALBUM = 600  # several readdir pages (the kernel asks for about 4 KiB of entries at a time)


def _library(root: Path, *, reverse: bool = False) -> list[str]:
    """Write the collision library; ``reverse`` writes the same files in the opposite order."""
    plan = []
    for n, artist in enumerate(("AC/DC", "AC_DC", "AC\\DC"), start=1):  # '/' and '_' collide; '\\' stays
        plan.append((f"acdc/{n}.flac", {**ALBUM, "artist": artist, "title": "Hells Bells", "track": 1}))
    for n, title in enumerate(("Café", "Cafe\u0301"), start=1):  # NFC and NFD: one name
        plan.append((f"nfc/{n}.flac", {**ALBUM, "artist": "Unicode", "title": title, "track": 2}))
    for n, title in enumerate(("Hello", "HELLO", "hello"), start=1):  # case only: three names
        plan.append((f"case/{n}.flac", {**ALBUM, "artist": "Case", "title": title, "track": 3}))
    for n, artist in enumerate(("Lowercase Heroes", "lowercase heroes"), start=1):
        plan.append((f"case/artist {n}.flac", {**ALBUM, "artist": artist, "title": "Shout", "track": 4}))
    for n in range(1, 4):  # identical tags on three files, and a title that looks numbered
        plan.append((f"dupes/{n}.flac", {**ALBUM, "artist": "Twins", "title": "Twin", "track": 5}))
    plan.append(("dupes/numbered.flac", {**ALBUM, "artist": "Twins", "title": "Twin (2)", "track": 5}))
    for n in range(BIG_ALBUM):
        plan.append((f"big/{n:03d}.flac", {"artist": "Many", "album": "Same", "title": "Same", "track": 1}))
    made: dict[str, bytes] = {}
    for rel, values in (reversed(plan) if reverse else plan):
        tags = json.dumps(values, sort_keys=True)  # same tags, same audio: byte-identical twins
        if tags not in made:
            made[tags] = tagged_bytes("flac", "vorbis", values, key=zlib.crc32(tags.encode()))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(made[tags])
        os.utime(root / rel, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    return sorted(rel for rel, _ in plan)


def _snapshot(mountpoint: Path) -> tuple[dict[str, str], dict[str, int], dict[str, list[str]]]:
    """(mounted path -> origin path, mounted path -> inode, directory -> listing in readdir order)."""
    tracks = {str(p.relative_to(mountpoint)): real for real, p in mounted_tracks(mountpoint).items()}
    inodes = {rel: os.stat(mountpoint / rel).st_ino for rel in list(tracks) + walk_dirs(mountpoint)}
    order = {rel: os.listdir(mountpoint / rel) for rel in walk_dirs(mountpoint)}
    return tracks, inodes, order


@pytest.mark.req("FAULT-30", "FS-3", "FS-6")
def test_f30_colliding_names_are_unique_deterministic_and_stable(tmp_path):
    root = tmp_path / "library"
    files = _library(root)
    with mount_library(origin=root, work=tmp_path / "w") as mounted:
        judge(mounted, root, files, file_seconds=10)
        shown = assert_tree_is_legal(mounted.mountpoint)  # each directory lists each name once
        assert len(shown) == len(files)
        first = _snapshot(mounted.mountpoint)
        mnt = mounted.mountpoint
        acdc = [p for p in shown if "Hells Bells" in p]
        assert sorted(p.split("/")[0] for p in acdc) == sorted(["AC_DC", "AC_DC", "AC\\DC"]), acdc
        assert {p.rsplit("/", 1)[1] for p in acdc if p.startswith("AC_DC/")} == {
            "01 - Hells Bells.flac", "01 - Hells Bells (2).flac"}
        assert len([p for p in shown if p.startswith("Unicode/")]) == 2  # Café twice: one name, numbered
        assert {p.rsplit("/", 1)[1] for p in shown if p.startswith("Case/")} == {
            "03 - Hello.flac", "03 - HELLO.flac", "03 - hello.flac"}
        assert {"Lowercase Heroes", "lowercase heroes"} <= set(os.listdir(mnt))
        twins = sorted(os.listdir(mnt / "Twins" / "Back in Black (1980) [FLAC]"))
        assert twins == ["05 - Twin (2) (2).flac", "05 - Twin (2).flac", "05 - Twin (3).flac",
                         "05 - Twin.flac"], twins
        big = mnt / "Many" / "Same [FLAC]"
        listing = os.listdir(big)
        assert len(listing) == len(set(listing)) == BIG_ALBUM
        assert set(listing) == {"01 - Same.flac"} | {f"01 - Same ({n}).flac" for n in range(2, BIG_ALBUM + 1)}
        index = mounted.index

    # deterministic: the same files written in the opposite order, scanned into a fresh index
    other = tmp_path / "again"
    _library(other, reverse=True)
    with mount_library(origin=other, work=tmp_path / "w2") as mounted:
        assert _snapshot(mounted.mountpoint)[0] == first[0], "a fresh scan of the same files named them otherwise"

    # stable across a remount, a rescan, and a rescan that re-reads every colliding file
    with mount_library(origin=root, work=tmp_path / "w") as mounted:
        assert _snapshot(mounted.mountpoint) == first, "a remount changed names, inodes or order"
    report = json.loads(scan(root, tmp_path / "w" / "state", index, "--json").stdout)["scans"][0]
    assert report["unchanged"] == len(files)
    with mount_library(origin=root, work=tmp_path / "w") as mounted:
        assert _snapshot(mounted.mountpoint) == first, "a rescan changed names, inodes or order"
    now = time.time_ns()
    touched = [f for f in files if not f.startswith("big/")] + [f"big/{n:03d}.flac" for n in (0, 1, 299)]
    for rel in touched:
        os.utime(root / rel, ns=(now, now))
    report = json.loads(scan(root, tmp_path / "w" / "state", index, "--json").stdout)["scans"][0]
    assert report["updated"] == len(touched) and report["added"] == report["removed"] == 0, report
    with mount_library(origin=root, work=tmp_path / "w") as mounted:
        assert _snapshot(mounted.mountpoint) == first, "re-reading colliding files renamed them"
    shutil.rmtree(other)
