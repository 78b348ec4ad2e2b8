"""FAULT-37 and NFR-2.4: more than a thousand handles open at once, across processes, on more
than a thousand distinct files of a real mount, every one of them read whole and exact.

The library is the sample library copied :data:`COPIES` times (hard links: real tagged audio,
no bytes written), so the tree holds well over a thousand distinct files. The daemon is started
with a soft open-files limit of :data:`LOW_SOFT_LIMIT`, as a default shell would give it, and
must raise it to the hard limit itself. Handles are held by :data:`HOLDERS` processes at once;
only when all are open does any of them read.

* Cached reads (the default): the daemon's descriptors must not grow with the handles (chunk
  and origin files are opened per read, not per handle).
* ``cache = "never"`` (a local origin read straight through): one descriptor per distinct open
  file, shared by its handles; more than the low soft limit, so only a raised limit avoids EMFILE.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conformance.daemons import fd_count, open_files_limit
from conformance.measure import copy_index
from fixtures.copies import library_of_copies
from tests.harness import mount_status, scan

COPIES = 10  # about 1,200 distinct tracks in the tree
HANDLES = 1_200  # held at once across all holders
HOLDERS = 4
LOW_SOFT_LIMIT = 512  # what the daemon starts with; below the distinct files a pass-through reader holds
CACHED_FD_GROWTH = 64  # descriptors the daemon may add while the handles are open, cached reads

_HOLDER = r"""
import hashlib, json, os, resource, sys
paths = json.loads(sys.stdin.readline())
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, len(paths) + 256), hard))
fds, errors = [], {}
for path in paths:
    try:
        fds.append((path, os.open(path, os.O_RDONLY)))
    except OSError as exc:
        errors[path] = "open: " + os.strerror(exc.errno)
print(json.dumps({"open": len(fds), "errors": errors}), flush=True)
sys.stdin.readline()  # every holder has its handles open: read them all, still holding all
digests = {}
for path, fd in fds:
    digest, offset = hashlib.sha256(), 0
    try:
        while True:
            data = os.pread(fd, 1 << 17, offset)
            if not data:
                break
            digest.update(data)
            offset += len(data)
        digests.setdefault(path, []).append(digest.hexdigest())
    except OSError as exc:
        errors[path] = "read: " + os.strerror(exc.errno)
print(json.dumps({"digests": digests, "errors": errors}), flush=True)
sys.stdin.readline()  # closed only when the parent has counted
for _, fd in fds:
    os.close(fd)
"""


@pytest.fixture(scope="module")
def copied_library(sample_library, good_files, tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(library folder, its scanned index, real path -> sha256 of every good track)."""
    work = tmp_path_factory.mktemp("f37")
    root = work / "library"
    made = library_of_copies(sample_library[0], root, COPIES)
    index = work / "index.db"
    scan(root, work / "state", index)
    sha = {f["path"]: f["sha256"] for f in good_files}
    return root, index, {real: sha[source] for real, source in made.items() if source in sha}


@contextmanager
def soft_open_files_limit(limit: int):
    """Children started inside inherit this soft limit (the daemon must raise its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def presented(mountpoint: Path) -> dict[str, Path]:
    """real path -> mounted path, from the tree itself (xattrs)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(mountpoint):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            found[os.getxattr(path, "user.musicfs.real_path").decode()] = path
    return found


def hold_and_read(mounted, files: list[tuple[Path, str]]) -> dict:
    """Open ``HANDLES`` handles on ``files`` (distinct first, then again from the start) across
    ``HOLDERS`` processes; with all open, count the daemon's descriptors and handles, then read
    every handle whole. Returns the figures; fails on any error or wrong byte."""
    handles = [files[i % len(files)] for i in range(HANDLES)]
    shares = [handles[n::HOLDERS] for n in range(HOLDERS)]
    expected = {str(path): digest for path, digest in files}
    baseline = fd_count(mounted.pid)
    holders = [subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in shares]
    try:
        for holder, share in zip(holders, shares):
            holder.stdin.write(json.dumps([str(p) for p, _ in share]) + "\n")
            holder.stdin.flush()
        opened = [json.loads(h.stdout.readline()) for h in holders]
        errors = {p: e for o in opened for p, e in o["errors"].items()}
        assert not errors, f"{len(errors)} opens failed, e.g. {list(errors.items())[:3]}"
        assert sum(o["open"] for o in opened) == HANDLES
        held_fds = fd_count(mounted.pid)
        daemon_handles = mount_status(mounted.mountpoint)["fuse"]["open_handles"]
        for holder in holders:
            holder.stdin.write("read\n")
            holder.stdin.flush()
        results = [json.loads(h.stdout.readline()) for h in holders]
        peak_fds = max(held_fds, fd_count(mounted.pid))
        for holder in holders:
            holder.stdin.write("close\n")
            holder.stdin.flush()
            holder.wait(60)
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)
    errors = {p: e for r in results for p, e in r["errors"].items()}
    assert not errors, f"{len(errors)} reads failed, e.g. {list(errors.items())[:3]}"
    read = [(path, d) for r in results for path, digests in r["digests"].items() for d in digests]
    wrong = [path for path, digest in read if digest != expected[path]]
    assert not wrong, f"{len(wrong)} handles read wrong bytes, e.g. {wrong[:3]}"
    assert len(read) == HANDLES
    return {"baseline_fds": baseline, "held_fds": held_fds, "peak_fds": peak_fds,
            "daemon_handles": daemon_handles, "read": len(read), "distinct": len(files)}


def start(mount_factory, copied_library, tmp_path, config: str | None = None):
    library, index, _ = copied_library
    kwargs = {"origin": library}
    if config is not None:
        path = tmp_path / "musicfs.toml"
        path.write_text(config.format(path=json.dumps(str(library))))
        kwargs = {"config": path}
    with soft_open_files_limit(LOW_SOFT_LIMIT):
        mounted = mount_factory(index=copy_index(index, tmp_path / "index" / "index.db"), **kwargs)
    soft, hard = open_files_limit(mounted.pid)
    assert soft == hard > LOW_SOFT_LIMIT, f"the daemon kept its open files limit at {soft} (hard {hard})"
    return mounted


@pytest.mark.req("FAULT-37", "NFR-2.4")
def test_f37_more_than_a_thousand_handles_across_processes_cached(mount_factory, copied_library, tmp_path,
                                                                   record_requirement, capsys):
    mounted = start(mount_factory, copied_library, tmp_path)
    tracks = presented(mounted.mountpoint)
    expected = copied_library[2]
    assert set(tracks) == set(expected)
    files = [(tracks[real], expected[real]) for real in sorted(tracks)]
    assert len(files) > 1000
    figures = hold_and_read(mounted, files)
    growth = figures["peak_fds"] - figures["baseline_fds"]
    with capsys.disabled():
        print(f"\nFAULT-37 cached: {HANDLES} handles on {len(files)} files in {HOLDERS} processes, daemon "
              f"counted {figures['daemon_handles']}; daemon fds {figures['baseline_fds']} -> "
              f"{figures['held_fds']} held, peak {figures['peak_fds']}; open files limit "
              f"{open_files_limit(mounted.pid)}")
    record_requirement("NFR-2.4", figures["read"], samples=figures["read"],
                       detail=f"{HANDLES} handles open at once on {len(files)} distinct files across "
                              f"{HOLDERS} processes, each read whole and exact (daemon counted "
                              f"{figures['daemon_handles']}; its descriptors grew by {growth})")
    assert figures["daemon_handles"] >= HANDLES
    assert growth <= CACHED_FD_GROWTH, f"the daemon's descriptors grew by {growth} for {HANDLES} handles"
    assert mounted.alive()


NEVER_CACHE = """[[origins]]
id = "local"
type = "local"
path = {path}
cache = "never"
"""


@pytest.mark.req("FAULT-37")
def test_f37_more_than_a_thousand_handles_read_straight_through(mount_factory, copied_library, tmp_path,
                                                                capsys):
    mounted = start(mount_factory, copied_library, tmp_path, config=NEVER_CACHE)
    tracks = presented(mounted.mountpoint)
    expected = copied_library[2]
    files = [(tracks[real], expected[real]) for real in sorted(tracks)]
    figures = hold_and_read(mounted, files)
    growth = figures["held_fds"] - figures["baseline_fds"]
    with capsys.disabled():
        print(f"\nFAULT-37 pass-through: {HANDLES} handles on {len(files)} files, daemon fds "
              f"{figures['baseline_fds']} -> {figures['held_fds']} (one per distinct open file)")
    assert figures["daemon_handles"] >= HANDLES
    # shared by the handles of one file: no more than one per distinct file, never one per handle
    assert LOW_SOFT_LIMIT < growth <= len(files) + 16, growth
    assert mounted.alive()
