"""Inode numbers and listing order survive remounts, rescans and the kernel forgetting entries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.expected import walk_dirs, walk_files
from conformance.measure import drop_page_cache
from musicfs import daemon
from tests.harness import scan, unmount


def snapshot(mnt: Path) -> tuple[dict[str, int], dict[str, list[str]]]:
    """(path -> st_ino for every directory and file, directory -> listing in readdir order)."""
    dirs = walk_dirs(mnt)
    inodes = {rel: os.stat(mnt / rel).st_ino for rel in dirs + walk_files(mnt)}
    order = {rel: os.listdir(mnt / rel) for rel in dirs}
    order[""] = os.listdir(mnt)
    return inodes, order


def shows(mnt: Path) -> dict[str, str]:
    """Mounted path -> the origin file it shows, for every file."""
    return {rel: os.getxattr(mnt / rel, "user.musicfs.real_path").decode() for rel in walk_files(mnt)}


def inspect_tree(state: Path, index: Path) -> dict[str, int]:
    """path -> id for every node, as ``musicfs-inspect tree --json`` shows them."""
    out = subprocess.run([sys.executable, "-m", "musicfs.cli.inspect", "--state-dir", str(state), "tree",
                          "--index", str(index), "--json", "--depth", "64"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    ids: dict[str, int] = {}

    def visit(node: dict, path: str) -> None:
        ids[path] = node["id"]
        for child in node.get("children", []):
            visit(child, f"{path}/{child['name']}" if path else child["name"])

    visit(json.loads(out), "")
    return ids


@pytest.fixture
def library_copy(sample_library, tmp_path) -> Path:
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)  # copy2 keeps mtimes: the copy is "unchanged"
    return root


@pytest.mark.req("FAULT-30", "FS-6", "B2-8", "FS-10")
def test_f30_names_inodes_and_order_survive_remount_and_rescan(mount_factory, library_copy, tmp_path,
                                                               good_files, broken_files):
    """Every name (the colliding ones numbered), the file it shows, its inode and the listing order."""
    work = tmp_path / "lib"
    first = mount_factory(origin=library_copy, work=work)
    inodes, order = snapshot(first.mountpoint)
    shown = shows(first.mountpoint)
    assert inodes[""] == 1, "the root is inode 1"
    assert len(set(inodes.values())) == len(inodes), "two paths share an inode number"
    assert set(walk_files(first.mountpoint)) <= set(inodes) and len(walk_files(first.mountpoint)) == len(good_files)
    unmount(first)
    assert not daemon.is_mounted(first.mountpoint) and not first.alive()

    second = mount_factory(origin=library_copy, work=work)
    assert snapshot(second.mountpoint) == (inodes, order), "a remount changed inode numbers or order"
    assert shows(second.mountpoint) == shown, "a remount moved a file to another name"
    unmount(second)

    report = json.loads(scan(library_copy, first.state_dir, first.index, "--json").stdout)
    assert report["scans"][0]["unchanged"] == len(good_files) + len(broken_files)
    assert report["scans"][0]["added"] == report["scans"][0]["updated"] == 0
    assert inspect_tree(first.state_dir, first.index) == inodes, "musicfs-inspect shows other ids"

    third = mount_factory(origin=library_copy, work=work)
    assert snapshot(third.mountpoint) == (inodes, order), "a rescan changed inode numbers or order"
    assert shows(third.mountpoint) == shown, "a rescan moved a file to another name"


@pytest.mark.req("FS-6")
def test_inodes_survive_a_rescan_with_changes(mount_factory, library_copy, tmp_path, good_files):
    """Touched, added and removed origin files leave every other track's inode alone."""
    work = tmp_path / "lib"
    mounted = mount_factory(origin=library_copy, work=work)
    inodes, _ = snapshot(mounted.mountpoint)
    real = {p: os.getxattr(mounted.mountpoint / p, "user.musicfs.real_path").decode()
            for p in walk_files(mounted.mountpoint)}
    unmount(mounted)

    by_real = {v: k for k, v in real.items()}
    touched = "Quilt/Patchwork/03.ogg"          # same tags, new mtime: re-read, keeps its node
    removed = "Quilt/Patchwork/02.mp3"          # gone from the origin
    added_from = "Quilt/Patchwork/01.flac"      # a second copy: same tags, so a numbered twin
    os.utime(library_copy / touched, ns=(time.time_ns(), time.time_ns()))
    (library_copy / removed).unlink()
    shutil.copy2(library_copy / added_from, library_copy / "Quilt/Patchwork/01 again.flac")
    report = json.loads(scan(library_copy, mounted.state_dir, mounted.index, "--json").stdout)["scans"][0]
    assert (report["added"], report["updated"], report["removed"]) == (1, 1, 1)

    after, _ = snapshot(mount_factory(origin=library_copy, work=work).mountpoint)
    gone = by_real[removed]
    assert gone not in after
    for path, ino in inodes.items():
        if path != gone and path != os.path.dirname(gone):
            assert after.get(path) == ino, f"{path}: inode {ino} became {after.get(path)}"
    new = set(after) - set(inodes)
    assert len(new) == 1, new
    (twin,) = new
    assert twin.startswith(by_real[added_from][:-len(".flac")] + " (")
    assert after[twin] > max(inodes.values()), "a new track reused an old inode number"


@pytest.mark.req("B2-8", "CAS-2")
@pytest.mark.alone
def test_inodes_stable_after_the_kernel_forgets(mount_factory, sample_library):
    """Dropping the kernel's dentry and inode caches sends FORGETs; lookups again give the same numbers."""
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        pytest.skip("needs root to make the kernel forget entries (/proc/sys/vm/drop_caches)")
    mounted = mount_factory(origin=sample_library[0])
    inodes, order = snapshot(mounted.mountpoint)
    status = mounted.mountpoint / ".musicfs" / "status.json"
    before = json.loads(status.read_bytes())["fuse"]
    assert before["known_inodes"] >= len(inodes) - 1

    assert drop_page_cache(2)  # reclaim dentries and inodes only, not the page cache
    deadline = time.monotonic() + 10
    while True:
        after = json.loads(status.read_bytes())["fuse"]
        if after["forgotten"] > before["forgotten"] + len(inodes) // 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after["forgotten"] > before["forgotten"] + len(inodes) // 2, "the kernel did not forget entries"
    assert after["known_inodes"] < before["known_inodes"]

    assert snapshot(mounted.mountpoint) == (inodes, order)
    assert os.stat(mounted.mountpoint).st_ino == 1


def wait_for_table(status: Path, done, timeout: float = 10.0) -> dict:
    """The daemon's FUSE statistics once ``done(fuse)`` holds (FORGETs arrive after the drop returns)."""
    deadline = time.monotonic() + timeout
    while True:
        fuse = json.loads(status.read_bytes())["fuse"]
        if done(fuse) or time.monotonic() > deadline:
            return fuse
        time.sleep(0.05)


@pytest.mark.req("CAS-2")
@pytest.mark.alone
def test_open_files_outlive_the_kernel_forgetting_and_nothing_leaks(mount_factory, sample_library):
    """Files held open through a drop of every kernel cache keep reading exact bytes and fstat
    answers; closed and dropped again (their RELEASEs and FORGETs racing, as the kernel sends them
    on separate queues), the daemon's node table returns to what it held before: empty."""
    if not drop_page_cache(2):
        pytest.skip("needs root to make the kernel forget entries (/proc/sys/vm/drop_caches)")
    mounted = mount_factory(origin=sample_library[0])
    mnt = mounted.mountpoint
    status = mnt / ".musicfs" / "status.json"  # generated files hold no node of the table
    files = sorted(walk_files(mnt))
    inodes = {rel: os.stat(mnt / rel).st_ino for rel in files}
    origin = {rel: sample_library[0] / os.getxattr(mnt / rel, "user.musicfs.real_path").decode() for rel in files}

    drop_page_cache(2)
    empty = wait_for_table(status, lambda f: f["known_inodes"] == 0)
    assert empty["known_inodes"] == 0, f"nodes kept with nothing looked up or open: {empty}"

    chosen = files[:: max(1, len(files) // 8)]  # files in several albums
    ancestors = {str(Path(rel).parents[i]) for rel in chosen for i in range(len(Path(rel).parts) - 1)}
    for rounds in range(3):
        fds = {rel: os.open(mnt / rel, os.O_RDONLY) for rel in chosen}
        try:
            for fd in fds.values():
                assert os.pread(fd, 4096, 0)
            drop_page_cache(3)  # names, inodes and pages: reads below go to the daemon again
            held = wait_for_table(status, lambda f: f["known_inodes"] == len(chosen) + len(ancestors))
            # the kernel forgot everything but the open files and the folders above them
            assert held["known_inodes"] == len(chosen) + len(ancestors), held
            assert held["open_handles"] == held["open_inodes"] == len(chosen), held
            for rel, fd in fds.items():
                expected = origin[rel].read_bytes()
                assert os.fstat(fd).st_ino == inodes[rel] and os.fstat(fd).st_size == len(expected)
                data, offset = b"", 0
                while chunk := os.pread(fd, 1 << 17, offset):
                    data += chunk
                    offset += len(chunk)
                assert data == expected, f"{rel}: the open file read other bytes after the drop"
        finally:
            for fd in fds.values():
                os.close(fd)
        drop_page_cache(2)  # at once: the FORGETs race the RELEASEs still on their way
        after = wait_for_table(status, lambda f: f["known_inodes"] == 0 and f["open_handles"] == 0)
        assert after["known_inodes"] == 0 and after["open_inodes"] == 0 and after["open_handles"] == 0, \
            f"round {rounds}: nodes or handles left behind after close and forget: {after}"
    assert {rel: os.stat(mnt / rel).st_ino for rel in files} == inodes, "looked up again: other numbers"
