"""FAULT-37 and NFR-2.4: more than a thousand handles open at once, across processes, on more
than a thousand distinct files of a real mount, every one of them read whole and exact.

The library is the sample library copied :data:`COPIES` times (hard links: real tagged audio,
no bytes written), so the tree holds well over a thousand distinct files. The daemon is started
with a soft open-files limit of :data:`LOW_SOFT_LIMIT`, as a default shell would give it, and
must raise it to the hard limit itself. Handles are held by :data:`HOLDERS` processes at once;
only when all are open does any of them read.

* Cached reads (the default): the daemon's descriptors must not grow with the handles (chunk
  and origin files are opened per read, not per handle). NFR-2.4's figure is the number of
  handles the daemon itself counts open (its status), and "no extra latency" is judged within
  the same mount: stat and 128 KiB read p99 on cached files with every handle held against the
  same figures with every one closed, in alternating rounds (:func:`judge_latency`).
* ``cache = "never"`` (a local origin read straight through): one descriptor per distinct open
  file, shared by its handles; more than the low soft limit, so only a raised limit avoids EMFILE.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conformance.daemons import fd_count, open_files_limit
from conformance.measure import Latencies, copy_index, median, read_whole, settle, time_each
from fixtures.copies import library_of_copies
from tests.harness import mount_status, mounted_tracks, scan, settled

COPIES = 10  # about 1,200 distinct tracks in the tree
HANDLES = 1_200  # held at once across all holders
HOLDERS = 4
LOW_SOFT_LIMIT = 512  # what the daemon starts with; below the distinct files a pass-through reader holds
CACHED_FD_GROWTH = 64  # descriptors the daemon may add while the handles are open, cached reads
PROBE_FILES = 64  # cached files whose stat and read latency is measured with and without the handles
ROUNDS = 6  # latency rounds with the handles held; as many without, alternating with them
STAT_OPS = 1_000  # per round
READ_OPS = 1_500
READ_SIZE = 128 * 1024  # NFR-1.4: a read of up to 128 KiB from the content cache
LATENCY_RATIO = 1.5  # p99 with the handles held may be at most this many times the p99 without
LATENCY_FLOOR_MS = 0.05  # ...or this much slower: below it a p99 ratio is scheduler noise

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
for command in sys.stdin:  # "close" / "open": every handle at once, for the rounds without / with them
    if command.strip() == "open" and not fds:
        fds = [(path, os.open(path, os.O_RDONLY)) for path in paths]
    elif command.strip() == "close":
        for _, fd in fds:
            os.close(fd)
        fds = []
    else:
        break
    print(len(fds), flush=True)
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


class Holders:
    """The holder processes, once every handle was read: all of them closed or opened again."""

    def __init__(self, mounted, holders: list[subprocess.Popen]) -> None:
        self.mounted, self.holders = mounted, holders

    def hold(self, held: bool) -> None:
        for holder in self.holders:
            holder.stdin.write("open\n" if held else "close\n")
            holder.stdin.flush()
        counts = [int(holder.stdout.readline()) for holder in self.holders]
        assert sum(counts) == (HANDLES if held else 0), counts
        wanted = HANDLES if held else 0  # the kernel releases closed handles asynchronously
        deadline = time.monotonic() + 10
        while mount_status(self.mounted.mountpoint)["fuse"]["open_handles"] != wanted:
            assert time.monotonic() < deadline, f"the daemon never counted {wanted} open handles"
            time.sleep(0.02)


def hold_and_read(mounted, files: list[tuple[Path, str]], while_held=None) -> dict:
    """Open ``HANDLES`` handles on ``files`` (distinct first, then again from the start) across
    ``HOLDERS`` processes; with all open, count the daemon's descriptors and handles, then read
    every handle whole, then call ``while_held(holders)`` (still holding them all; it may close
    and open them again with :meth:`Holders.hold`). Returns the figures (``while_held``'s result
    as ``"held"``); fails on any error or wrong byte."""
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
        still_held = mount_status(mounted.mountpoint)["fuse"]["open_handles"]
        held = while_held(Holders(mounted, holders)) if while_held is not None else None
        for holder in holders:
            holder.stdin.write("exit\n")
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
            "daemon_handles": daemon_handles, "still_held": still_held, "read": len(read),
            "distinct": len(files), "held": held}


def probe_latency(paths: list[Path]) -> tuple[Latencies, Latencies]:
    """One round of stat and 128 KiB read latencies on ``paths`` (whose chunks are cached).

    Before each timed read the page cache of the file is dropped (fadvise, untimed), so the
    read reaches the daemon and is served from the content cache, as NFR-1.4 measures it; a
    stat is timed as a user sees it. The probe's own handles are closed before it returns.
    """
    stat = time_each("stat", os.stat, paths, count=STAT_OPS)
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    read_ms: list[float] = []
    try:
        spots = [(fd, (i * 7919 * READ_SIZE) % max(1, os.fstat(fd).st_size - READ_SIZE))
                 for i, fd in enumerate(fds)]

        def read(spot: tuple[int, int]) -> None:
            fd, offset = spot
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            started = time.perf_counter_ns()
            data = os.pread(fd, READ_SIZE, offset)
            read_ms.append((time.perf_counter_ns() - started) / 1e6)
            assert data, "a probe read returned nothing"

        for spot in spots:  # warm-up: every probe range once, untimed
            read(spot)
        read_ms.clear()
        for i in range(READ_OPS):
            read(spots[i % len(spots)])
    finally:
        for fd in fds:
            os.close(fd)
    return stat, Latencies("read 128 KiB", read_ms)


def alternating_rounds(paths: list[Path], holders: Holders, rounds: int
                       ) -> tuple[list[tuple[Latencies, Latencies]], list[tuple[Latencies, Latencies]]]:
    """``rounds`` latency rounds without the handles and as many with them, alternating (so a
    burst of load from elsewhere on a shared machine lands on both sides, not on one): the
    rounds (without, held). The holders end holding every handle."""
    without, held = [], []
    for i in range(2 * rounds):
        holding = i % 2 == 1
        holders.hold(holding)
        (held if holding else without).append(probe_latency(paths))
    return without, held


def judge_latency(name: str, which: int, without: list[tuple[Latencies, Latencies]],
                  held: list[tuple[Latencies, Latencies]], maximum_ms: float) -> str:
    """The p99 with the handles held against the p99 without, in one mount.

    Each side's figure is the median of its rounds' p99s (the rounds alternate, without and
    with), so that a burst of load from elsewhere on a shared machine moves a round or two on
    both sides, not the verdict. It must
    be at most :data:`LATENCY_RATIO` times the figure without (or :data:`LATENCY_FLOOR_MS`
    more, for figures so small that a ratio is scheduler noise), and within the latency
    requirement's own maximum. Returns a line for the detail.
    """
    base = median([r[which].p(99) for r in without])
    loaded = median([r[which].p(99) for r in held])
    p50 = median([r[which].p(50) for r in without]), median([r[which].p(50) for r in held])
    ops = sum(r[which].count for r in held)
    ratio = loaded / base if base > 0 else 1.0
    line = (f"{name} p99 {base:.3f} -> {loaded:.3f} ms (x{ratio:.2f}; p50 {p50[0]:.3f} -> {p50[1]:.3f}; "
            f"{ops} ops held)")
    allowed = max(LATENCY_RATIO * base, base + LATENCY_FLOOR_MS)
    assert loaded <= allowed, f"{line}: {HANDLES} open handles slow {name} down (allowed {allowed:.3f} ms)"
    assert loaded <= maximum_ms, f"{line}: over the {maximum_ms} ms maximum"
    return line


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
@pytest.mark.alone
def test_f37_more_than_a_thousand_handles_across_processes_cached(mount_factory, copied_library, tmp_path,
                                                                   record_requirement, requirement_catalogue,
                                                                   capsys):
    """The daemon counts every handle open at once (status.json is rendered before its own
    handle is added), every handle reads whole and exact, and stat and cached reads are no
    slower with all of them held than before any was opened."""
    mounted = start(mount_factory, copied_library, tmp_path)
    tracks = mounted_tracks(mounted.mountpoint)
    expected = copied_library[2]
    assert set(tracks) == set(expected)
    files = [(tracks[real], expected[real]) for real in sorted(tracks)]
    assert len(files) > 1000
    probes = [path for path, _ in files[::len(files) // PROBE_FILES]][:PROBE_FILES]
    for path in probes:  # their chunks into the content cache
        read_whole(path)
    assert mount_status(mounted.mountpoint)["fuse"]["open_handles"] == 0, "handles left open before the test"
    settled(mounted.mountpoint)  # their fills written: the probes read from the content cache

    def while_held(holders: Holders):
        settled(mounted.mountpoint, timeout=60)  # the holders' cold reads filled chunks: let them land,
        os.sync()  # reach the disk (the kernel's writeback of them is not what is measured),
        settle(mounted.pid)  # and the daemon go quiet (no index write, no eviction left in flight)
        probe_latency(probes)  # once untimed: the first pass pays for warming what the probe touches
        return alternating_rounds(probes, holders, ROUNDS)

    figures = hold_and_read(mounted, files, while_held=while_held)
    without, held = figures["held"]
    growth = figures["peak_fds"] - figures["baseline_fds"]
    counted = figures["daemon_handles"]
    stat_line = judge_latency("stat", 0, without, held, requirement_catalogue["NFR-1.1"].maximum)
    read_line = judge_latency("read", 1, without, held, requirement_catalogue["NFR-1.4"].maximum)
    with capsys.disabled():
        print(f"\nFAULT-37 cached: {HANDLES} handles on {len(files)} files in {HOLDERS} processes, daemon "
              f"counted {counted} (still {figures['still_held']} after reading); daemon fds "
              f"{figures['baseline_fds']} -> {figures['held_fds']} held, peak {figures['peak_fds']}; "
              f"open files limit {open_files_limit(mounted.pid)}\nNFR-2.4 with vs without the handles: "
              f"{stat_line}; {read_line}")
    record_requirement("NFR-2.4", counted, samples=figures["read"],
                       detail=f"handles the daemon counted open at once ({HANDLES} opened on "
                              f"{len(files)} distinct files across {HOLDERS} processes), each read whole "
                              f"and exact; its descriptors grew by {growth}. Latency with them all held "
                              f"vs none, same mount, median of {ROUNDS} rounds' p99 each side: "
                              f"{stat_line}; {read_line} (allowed x{LATENCY_RATIO} or "
                              f"+{LATENCY_FLOOR_MS} ms, and within NFR-1.1/1.4's maximum)")
    assert counted == HANDLES, f"the daemon counted {counted} open handles, {HANDLES} were open"
    assert figures["still_held"] == HANDLES, "handles were lost while they were read"
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
    tracks = mounted_tracks(mounted.mountpoint)
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
