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
def test_inodes_stable_after_the_kernel_forgets(mount_factory, sample_library):
    """Dropping the kernel's dentry and inode caches sends FORGETs; lookups again give the same numbers."""
    drop = Path("/proc/sys/vm/drop_caches")
    if not os.access(drop, os.W_OK):
        pytest.skip("needs root to make the kernel forget entries (/proc/sys/vm/drop_caches)")
    mounted = mount_factory(origin=sample_library[0])
    inodes, order = snapshot(mounted.mountpoint)
    status = mounted.mountpoint / ".musicfs" / "status.json"
    before = json.loads(status.read_bytes())["fuse"]
    assert before["known_inodes"] >= len(inodes) - 1

    drop.write_text("2")  # reclaim dentries and inodes only, not the page cache
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
