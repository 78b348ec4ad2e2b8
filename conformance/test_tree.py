"""The mounted tree is exactly what the default template predicts from the tags."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter

import pytest

from conformance.expected import assign, expected_tree, numbered_pattern, walk_dirs, walk_files
from musicfs.index.names import is_legal


@pytest.mark.req("FS-1", "FS-3")
def test_every_track_is_at_its_template_path(sample_mount, good_files):
    mnt = sample_mount.mountpoint
    files = walk_files(mnt)
    expected = expected_tree(good_files)

    assert len(files) == len(good_files), "the mount shows a different number of tracks than the library has"
    missing = [p for p in expected if not (mnt / p).is_file()]
    assert not missing, f"predicted paths missing from the mount: {missing}"

    # every file is a predicted path, or a numbered twin of one whose tags collide
    unexplained = []
    for path in set(files) - set(expected):
        bases = [p for p, entries in expected.items() if len(entries) > 1 and numbered_pattern(p).fullmatch(path)]
        if not bases:
            unexplained.append(path)
    assert not unexplained, f"files the template does not predict: {unexplained}"
    for path, entries in expected.items():
        if len(entries) > 1:
            twins = [p for p in files if numbered_pattern(path).fullmatch(p)]
            assert len(twins) == len(entries) - 1, f"{path!r}: {len(entries)} tracks, numbered {twins}"


@pytest.mark.req("FAULT-30", "FAULT-29", "FS-3")
def test_f30_sample_library_names_are_legal_and_listed_once(sample_mount):
    """The sample library's collision groups (Either/Or vs Either_Or, Hello vs HELLO, twins) and
    hostile tags (NUL, '..', 300-byte values) give legal names, each listed once.

    conformance/test_f30_name_collisions.py and test_f29_hostile_tags.py go further."""
    mnt = sample_mount.mountpoint
    names = [p for p in walk_files(mnt) + walk_dirs(mnt) if p]
    illegal = [p for p in names if not all(is_legal(part) for part in p.split("/"))]
    assert not illegal, f"illegal names in the mount: {illegal!r}"
    for directory in walk_dirs(mnt):
        listing = os.listdir(mnt / directory)
        assert len(listing) == len(set(listing)), f"duplicate names in {directory!r}"


@pytest.mark.req("FS-5", "FS-1")
def test_sizes_and_kinds_match_the_origin(sample_mount, good_files, sample_library):
    mnt = sample_mount.mountpoint
    origin = sample_library[0]
    for path, entry in assign(mnt, good_files).items():
        st = os.stat(mnt / path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444, path
        assert st.st_size == entry["size"] == os.stat(origin / entry["path"]).st_size, path
        assert st.st_mtime_ns == entry["mtime_ns"], f"{path}: mtime is not the origin file's"
    for directory in walk_dirs(mnt):
        st = os.stat(mnt / directory)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555, directory
    # the format shown in the directory name is the codec, whatever the origin's extension says
    shown = Counter(p.rsplit(".", 1)[1] for p in walk_files(mnt))
    assert shown == Counter(e["format"] for e in good_files)


@pytest.mark.req("NFR-7.4", "FS-10")
def test_broken_files_are_skipped_and_reported(sample_mount, good_files, broken_files):
    mnt = sample_mount.mountpoint
    assert broken_files, "the fixture library should contain broken files"

    # absent from the tree: every mounted file shows a good origin file
    shown = {os.getxattr(mnt / p, "user.musicfs.real_path").decode() for p in walk_files(mnt)}
    assert shown == {f["path"] for f in good_files}
    assert not shown & {f["path"] for f in broken_files}

    errors = json.loads((mnt / ".musicfs" / "errors.json").read_bytes())
    reported = {item["real_path"]: item for item in errors["skipped"]}
    assert errors["count"] == len(broken_files) == len(reported)
    for entry in broken_files:
        item = reported.get(entry["path"])
        assert item is not None, f"{entry['path']} is not listed in errors.json"
        assert item["reason"].strip() and item["detail"].strip(), item
        assert item["size"] == entry["size"]
        if entry["broken"] == "zero-length":
            assert item["reason"] == "empty file"

    status = json.loads((mnt / ".musicfs" / "status.json").read_bytes())
    assert status["index"]["tracks"] == len(good_files)
    assert status["index"]["files"] == len(good_files)
    assert status["index"]["skipped"] == len(broken_files)
    assert status["pid"] == sample_mount.pid and status["mountpoint"] == str(mnt)
    assert all(origin["reachable"] for origin in status["origins"])

    # the scan logged each one with its reason, and the daemon is still serving
    log = sample_mount.log_text()
    for entry in broken_files:
        line = next((ln for ln in log.splitlines() if entry["path"] in ln and "skipped" in ln), None)
        assert line is not None, f"no log line names {entry['path']}"
        assert reported[entry["path"]]["reason"] in line
    assert sample_mount.alive()
