"""The daemon's resident memory: idle (NFR-4.1), with 1,000 distinct files open and being read
(NFR-4.2), and its peak over scan, browse and reads (NFR-4.3).

Figures are the kernel's own: VmRSS for "now", VmHWM for "the most it ever held". A peak is
never a sample taken now and then (a sample misses what happens between two of them): the
high-water mark is reset (``/proc/<pid>/clear_refs``, 5) where a phase begins and read where it
ends, and the whole-life peak is the larger of the marks read before each reset and at the end.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conformance.measure import copy_index, proc_status_mb, raise_fd_limit, read_whole, settle, walk_tree
from fixtures.bigfile import write_wav
from fixtures.copies import library_of_copies
from musicfs.control.client import ControlClient
from tests.harness import mount_status

# the daemon's RSS: run alone
pytestmark = pytest.mark.alone

OPEN_FILES = 1_000  # NFR-4.2: one handle on each of this many distinct files
COPIES = 9  # the sample library nine times over: ~1,070 distinct tracks
BLOCK = 64 * 1024


def reset_peak(pid: int) -> float:
    """Reset the process's VmHWM to its current RSS (Linux ``clear_refs`` 5); return the old peak."""
    peak = proc_status_mb(pid, "VmHWM")
    with open(f"/proc/{pid}/clear_refs", "w") as knob:
        knob.write("5\n")
    assert proc_status_mb(pid, "VmHWM") <= peak
    return peak


@pytest.fixture(scope="module")
def big_library(sample_library, tmp_path_factory) -> Path:
    """A library of more than OPEN_FILES distinct real tracks (hard links: no bytes written)."""
    root = tmp_path_factory.mktemp("memory") / "library"
    library_of_copies(sample_library[0], root, COPIES)
    return root


@pytest.mark.req("NFR-4.1")
def test_idle_memory(sample_library, sample_mount, mount_factory, tmp_path, record_requirement,
                     requirement_catalogue, capsys):
    """Idle is judged for both ways a daemon comes to be: mounting an indexed library, and a
    ``--foreground`` first mount of a library without an index, which scans before it serves
    (whatever that scan leaves behind in the daemon counts: the daemon then idles for days).

    The control API's cost once a client has used it is printed, not judged here (its
    libraries are loaded on first use; see test_control_api)."""
    indexed = mount_factory(origin=sample_library[0], work=tmp_path / "indexed",
                            index=copy_index(sample_mount.index, tmp_path / "index" / "index.db"))
    idle = settle(indexed.pid)
    files = walk_tree(indexed.mountpoint).files  # browse everything, open nothing
    for path in files:
        os.stat(path)
    browsed = settle(indexed.pid)
    first = mount_factory(origin=sample_library[0], work=tmp_path / "first")  # no index: scans first
    assert mount_status(first.mountpoint)["fuse"]["open_handles"] == 0
    after_scan = settle(first.pid)
    after_reads, read_mb = idle_after_parallel_reads(mount_factory, tmp_path)
    with ControlClient.for_mount(indexed.state_dir, indexed.mountpoint) as api:
        api.get("/v1/status")
    with_api = settle(indexed.pid)
    worst = max(idle, browsed, after_scan, after_reads)
    with capsys.disabled():
        print(f"\nNFR-4.1 idle RSS {idle:.1f} MB after mounting, {browsed:.1f} MB after browsing "
              f"{len(files)} files; a --foreground first mount that scanned before serving: "
              f"{after_scan:.1f} MB; after {READERS} cold readers of {read_mb:.0f} MB: {after_reads:.1f} MB; "
              f"(once the control API has answered: {with_api:.1f} MB)")
    record_requirement("NFR-4.1", worst, samples=3,
                       detail=f"VmRSS of an idle daemon, nothing open, nothing in flight, the worst of: "
                              f"{idle:.1f} MB after mounting an indexed library, {browsed:.1f} MB after "
                              f"listing and stating its {len(files)} files, {after_scan:.1f} MB for a "
                              f"--foreground first mount that scanned the library before serving, "
                              f"{after_reads:.1f} MB once {READERS} cold readers of {read_mb:.0f} MB in all "
                              f"had closed their files (not "
                              f"judged: the same daemon once its control API answered, {with_api:.1f} MB)")
    limit = requirement_catalogue["NFR-4.1"].maximum
    assert idle <= limit and browsed <= limit, f"idle daemon over {limit} MB: {idle:.1f} / {browsed:.1f}"
    assert after_scan <= limit, (f"a daemon that scanned before serving idles at {after_scan:.1f} MB, over "
                                 f"{limit} MB: the scan's imports and allocations stay in the daemon")
    assert after_reads <= limit, (f"a daemon that served {READERS} cold readers idles at {after_reads:.1f} MB, "
                                  f"over {limit} MB: what the reads freed is not given back")


READERS = 8  # cold readers side by side: the daemon's busiest use of memory for file content
READ_FILE = 24 * 1024 * 1024


def idle_after_parallel_reads(mount_factory, tmp_path: Path) -> tuple[float, float]:
    """(RSS in MB, MB read): a mount whose READERS files were read cold side by side and closed,
    once the daemon has given back what the reads freed (it does so after 5 s with no file
    open) and has nothing in flight."""
    origin = tmp_path / "long-tracks"
    origin.mkdir()
    for i in range(READERS):
        write_wav(origin / f"take{i}.wav", READ_FILE, seed=40 + i)
    mounted = mount_factory(origin=origin, work=tmp_path / "reads")
    tracks = walk_tree(mounted.mountpoint).files
    assert len(tracks) == READERS
    with ThreadPoolExecutor(READERS) as readers:
        total = sum(readers.map(read_whole, tracks))
    deadline = time.monotonic() + 20
    while mount_status(mounted.mountpoint)["reader"]["memory_trims"] < 1:
        assert time.monotonic() < deadline, "the reader never went idle after its files were closed"
        time.sleep(0.2)
    return settle(mounted.pid), total / 1e6


@pytest.mark.req("NFR-4.2", "NFR-4.3")
def test_memory_with_a_thousand_open_files_and_peak(big_library, sample_library, mount_factory, tmp_path,
                                                     record_requirement, requirement_catalogue, capsys):
    """One handle on each of 1,000 distinct files, all open at once (the daemon counts them) and
    read through in turns, 64 KiB per handle per turn, from an empty chunk cache: the high-water
    mark over that phase is NFR-4.2. Then the whole library is read again file by file.
    NFR-4.3 is the daemon's high-water mark over its whole life: a live rescan that finds and
    reads the tags of ~240 new files (in the daemon, through its control API), browsing, the
    1,000 concurrent reads and the whole reads."""
    mounted = mount_factory(origin=big_library, work=tmp_path / "m")
    library_of_copies(sample_library[0], big_library / "later", 2)  # new files for a live rescan
    with ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        final = list(api.stream("POST", "/v1/origins/local/rescan"))[-1]
    assert final["added"] > 200, final
    raise_fd_limit(OPEN_FILES + 256)
    files = walk_tree(mounted.mountpoint).files
    before_rescan = len(files) - final["added"]
    assert len(files) > OPEN_FILES, f"only {len(files)} distinct files"
    chosen = files[:OPEN_FILES]
    settle(mounted.pid)
    before_open = reset_peak(mounted.pid)  # scan and browse
    fds = [os.open(path, os.O_RDONLY) for path in chosen]
    try:
        counted = mount_status(mounted.mountpoint)["fuse"]["open_handles"]
        offsets = [0] * len(fds)
        active = set(range(len(fds)))
        while active:
            for i in list(active):
                data = os.pread(fds[i], BLOCK, offsets[i])
                if not data:
                    active.discard(i)
                offsets[i] += len(data)
        sizes = [os.fstat(fd).st_size for fd in fds]
        assert offsets == sizes, "short reads"
        with_open = proc_status_mb(mounted.pid, "VmHWM")  # the most it held while they were open
        open_now = proc_status_mb(mounted.pid)
    finally:
        for fd in fds:
            os.close(fd)
    read_bytes = sum(read_whole(path) for path in files)  # and once more, front to back, file by file
    idle_after = settle(mounted.pid)
    peak = max(before_open, proc_status_mb(mounted.pid, "VmHWM"))
    with capsys.disabled():
        print(f"\nNFR-4.2 with {OPEN_FILES} distinct files open and read (daemon counted {counted}): "
              f"peak {with_open:.1f} MB, {open_now:.1f} MB at the end; NFR-4.3 peak (VmHWM) {peak:.1f} MB "
              f"(scan and browse {before_open:.1f} MB); idle afterwards {idle_after:.1f} MB "
              f"({len(files)} files, {read_bytes / 1e6:.1f} MB)")
    record_requirement("NFR-4.2", with_open, samples=1,
                       detail=f"VmHWM over the phase (reset when it began) in which {OPEN_FILES} handles on "
                              f"{OPEN_FILES} distinct files were open at once (the daemon counted "
                              f"{counted}) and read through in turns, {BLOCK // 1024} KiB per handle per "
                              f"turn, {sum(sizes) / 1e6:.1f} MB from an empty chunk cache")
    record_requirement("NFR-4.3", peak, samples=1,
                       detail=f"VmHWM over the daemon's life: a live rescan that added "
                              f"{len(files) - before_rescan} files, browsing {len(files)} files, {OPEN_FILES} concurrent handles read through, then the whole "
                              f"library ({read_bytes / 1e6:.1f} MB) read again; idle afterwards "
                              f"{idle_after:.1f} MB")
    assert counted == OPEN_FILES, f"the daemon counted {counted} open handles, {OPEN_FILES} were open"
    assert with_open <= requirement_catalogue["NFR-4.2"].maximum
    assert peak <= requirement_catalogue["NFR-4.3"].maximum
