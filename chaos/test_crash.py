"""Processes killed with SIGKILL part-way: a daemon filling the cache, a scan writing the index.

Nothing a crash leaves behind (temp files, chunk rows without files, a stale
mountpoint) may ever turn into a wrong byte served. A scan killed part-way
leaves a sound index, and the next scan carries on from what was committed
instead of reading the library again (NFR-8.3).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conformance.daemons import integrity
from conformance.expected import sha256_of
from fixtures.bigfile import write_wav
from fixtures.copies import library_of_copies
from musicfs import daemon
from musicfs.index.library import TRACK_FIELDS
from musicfs.vfs.resolver import Resolver
from tests.cachefiles import pack_files
from tests.harness import mount_library, musicfs_cmd, settled, start_mount, unmount


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-origin")
    for i in range(3):
        write_wav(root / f"take {i}.wav", 24 * 1024 * 1024, seed=10 + i)
    return root


@pytest.mark.req("FAULT-24", "NFR-8.2", "NFR-8.1")
def test_f24_sigkill_during_fills_leaves_no_partial_chunk_and_recovers(origin, tmp_path):
    work = tmp_path / "work"
    expected = {p.name: sha256_of(p) for p in origin.iterdir()}
    mounted = start_mount(origin=origin, work=work)
    try:
        files = [p for p in mounted.mountpoint.rglob("*.wav")]
        assert len(files) == 3

        def drain(path):
            try:
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:  # the daemon dies under us: ENOTCONN
                pass

        readers = [threading.Thread(target=drain, args=(p,)) for p in files]
        for t in readers:
            t.start()
        chunks = work / "cache" / "chunks"
        deadline = time.monotonic() + 20
        while len(pack_files(work / "cache")) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until fills are under way and packs of chunks are landing
        os.kill(mounted.pid, signal.SIGKILL)
        mounted.proc.wait(10)
        for t in readers:
            t.join(30)
        assert daemon.is_stale(mounted.mountpoint)
    finally:
        unmount(mounted) if mounted.alive() else None

    # a torn write the crash could have left, and a pack cut short
    stored = pack_files(work / "cache")
    (stored[0].parent / f".tmp-{stored[0].name}-dead").write_bytes(b"half a pack")
    with open(stored[1], "r+b") as f:
        f.truncate(100)

    with mount_library(origin=origin, work=work, index=work / "state" / "index.db") as again:
        log = again.log_text()
        assert "recovered a stale mount" in log
        for path in again.mountpoint.rglob("*.wav"):
            real = os.getxattr(path, "user.musicfs.real_path").decode()
            assert sha256_of(path) == expected[real]
        settled(again.mountpoint, timeout=60)  # every fill of this mount has written its chunks
        assert not list(chunks.rglob(".tmp-*"))  # reconciliation (in the background) removed them
    verify = subprocess.run([sys.executable, "-m", "musicfs.cli.inspect", "chunks", "--verify", "--json",
                             "--cache-dir", str(work / "cache")], capture_output=True, text=True)
    report = json.loads(verify.stdout)["verify"]
    assert report["corrupt"] == 0, f"damaged chunks left on disk: {report['corrupt_chunks']}"


# --- a scan killed part-way (NFR-8.3) ---------------------------------------------------------------

SCAN_COPIES = 20  # ~2,500 audio files: `musicfs scan` takes several seconds here, long enough to kill
KILL_AT = 700  # files committed (tracks and skipped) when the scan is killed: about a quarter


def _committed(index) -> int:
    """Files the index holds (tracks plus skipped files), read without disturbing the writer."""
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT (SELECT COUNT(*) FROM tracks) + (SELECT COUNT(*) FROM skipped)").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


def _scan_cmd(library, index, state) -> list[str]:
    return musicfs_cmd("--state-dir", str(state), "scan", "--origin", str(library), "--index", str(index),
                       "--json", "--batch-size", "50")


def _scan(library, index, state) -> dict:
    """Run ``musicfs scan --json`` to the end; its one origin's report."""
    done = subprocess.run(_scan_cmd(library, index, state), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = json.loads(done.stdout)["scans"]
    return report


def _index_contents(index) -> tuple[list, list, list]:
    """Everything a scan decides, in a form two indexes can be compared by: each track's fields and
    its path in the virtual tree, each skipped file and its reason, and the tree's folders."""
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        resolver = Resolver(conn)
        tracks = sorted(
            (row[0], row[1], row[2], resolver.path_of(row[3]), *row[4:])
            for row in conn.execute(
                f"SELECT t.real_path, t.size, t.mtime_ns, n.id, {', '.join('t.' + f for f in TRACK_FIELDS)}"
                " FROM tracks t JOIN nodes n ON n.track_id = t.id"))
        skipped = sorted(conn.execute("SELECT real_path, size, reason FROM skipped").fetchall())
        folders = sorted(resolver.path_of(row[0]) for row in conn.execute("SELECT id FROM nodes WHERE kind = 'dir'"))
        return tracks, skipped, folders
    finally:
        conn.close()


def _consistency(index) -> list[str]:
    """SQLite's own check plus the index's invariants: one file node per track, none dangling,
    no folder left empty."""
    problems = [p for p in integrity(index) if p != "ok"]
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        for what, query in (
            ("tracks without a file node",
             "SELECT COUNT(*) FROM tracks t WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.track_id = t.id)"),
            ("file nodes without a track",
             "SELECT COUNT(*) FROM nodes n WHERE n.kind = 'file' AND NOT EXISTS"
             " (SELECT 1 FROM tracks t WHERE t.id = n.track_id)"),
            ("nodes whose parent is gone",
             "SELECT COUNT(*) FROM nodes n WHERE n.parent != 0 AND NOT EXISTS (SELECT 1 FROM nodes p WHERE p.id = n.parent)"),
            ("empty folders",
             "SELECT COUNT(*) FROM nodes d WHERE d.kind = 'dir' AND d.parent != 0 AND NOT EXISTS"
             " (SELECT 1 FROM nodes c WHERE c.parent = d.id)"),
            ("files both indexed and skipped",
             "SELECT COUNT(*) FROM tracks t JOIN skipped s USING (origin_id, real_path)"),
        ):
            count = conn.execute(query).fetchone()[0]
            if count:
                problems.append(f"{count} {what}")
    finally:
        conn.close()
    return problems


@pytest.fixture(scope="module")
def scan_library(sample_library, tmp_path_factory):
    root = tmp_path_factory.mktemp("scan-copies") / "library"
    library_of_copies(sample_library[0], root, SCAN_COPIES)
    return root


@pytest.mark.req("NFR-8.3")
def test_a_scan_killed_part_way_resumes_where_it_stopped_and_ends_as_a_full_scan(scan_library, tmp_path):
    """``musicfs scan`` SIGKILLed with about a quarter of the library committed: the index it leaves
    is sound; the next scan opens only the files the first had not committed (its report's
    ``parsed``), takes the committed ones as they are (``unchanged``), and the index it ends
    with equals, track by track and path by path, the index of a scan never interrupted."""
    index = tmp_path / "resumed" / "index.db"
    killed = subprocess.Popen(_scan_cmd(scan_library, index, tmp_path / "state1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not index.exists() or _committed(index) < KILL_AT:
            assert killed.poll() is None, "the scan ended before it could be killed: make the library bigger"
            assert time.monotonic() < deadline, "the scan committed nothing within 120 s"
            time.sleep(0.005)
        killed.send_signal(signal.SIGKILL)
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.wait(10)
    assert killed.returncode == -signal.SIGKILL
    committed = _committed(index)
    assert _consistency(index) == [], "the killed scan left an inconsistent index"

    resumed = _scan(scan_library, index, tmp_path / "state2")
    total = resumed["seen"]
    assert KILL_AT <= committed < total, f"killed after {committed} of {total} files: not part-way"
    assert resumed["complete"]
    assert resumed["unchanged"] == committed, "files the killed scan had committed were read again"
    assert resumed["parsed"] == total - committed, (
        f"the second scan read {resumed['parsed']} files; {total - committed} were left to read")
    assert _consistency(index) == []

    fresh_index = tmp_path / "fresh" / "index.db"
    fresh = _scan(scan_library, fresh_index, tmp_path / "state3")
    assert fresh["parsed"] == fresh["seen"] == total
    resumed_tracks, resumed_skipped, resumed_folders = _index_contents(index)
    fresh_tracks, fresh_skipped, fresh_folders = _index_contents(fresh_index)
    assert len(resumed_tracks) == len(fresh_tracks) == fresh["added"]
    assert resumed_tracks == fresh_tracks, "the resumed index holds other tracks, tags or paths than a full scan"
    assert resumed_skipped == fresh_skipped
    assert resumed_folders == fresh_folders
