"""FAULT-22: the library index after a SIGKILL in the middle of a scan, and an index with damaged
pages, on real mounts.

* A ``musicfs scan`` killed with SIGKILL while it writes leaves a WAL behind. The next
  ``musicfs mount`` opens it with no manual step (SQLite replays the WAL; musicfs notices the
  leftover and checks the file), finishes the scan, and serves the whole library; SQLite's
  ``integrity_check`` says ok.
* Pages overwritten with garbage (or the whole file replaced) while nothing runs: the mount
  detects it, moves the file aside with one log line, rebuilds the index by scanning the
  origin, and serves the library; a second start finds a sound index (no crash loop).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conformance.daemons import integrity
from conformance.expected import sha256_of
from fixtures.copies import library_of_copies
from tests.harness import mounted_tracks, musicfs_cmd

COPIES = 30  # ~3,800 files: a scan of several seconds, long enough to be killed in the middle
KILL_AFTER_TRACKS = 400  # committed before the kill, so there is a WAL with real content
DAMAGE_WORDS = "is damaged"


def tracks_in(index: Path) -> int:
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    except sqlite3.OperationalError:  # the scan has not created the table yet
        return 0
    finally:
        conn.close()


def finished_scans(index: Path) -> int:
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM scans WHERE finished_at IS NOT NULL").fetchone()[0]
    finally:
        conn.close()


def check_some_tracks(mountpoint: Path, expected: dict[str, str], count: int = 40) -> dict[str, Path]:
    """Every track is in the tree; a spread of them reads exact."""
    tracks = mounted_tracks(mountpoint)
    assert set(tracks) == set(expected), (
        f"{len(set(expected) - set(tracks))} tracks missing, {len(set(tracks) - set(expected))} unexpected")
    for real in sorted(tracks)[:: max(1, len(tracks) // count)]:
        assert sha256_of(tracks[real]) == expected[real], real
    return tracks


@pytest.fixture(scope="module")
def big_library(sample_library, good_files, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``COPIES`` copies of the sample library: (folder, real path -> sha256 of each good track)."""
    root = tmp_path_factory.mktemp("copies") / "library"
    made = library_of_copies(sample_library[0], root, COPIES)
    sha = {f["path"]: f["sha256"] for f in good_files}
    return root, {real: sha[source] for real, source in made.items() if source in sha}


@pytest.mark.req("FAULT-22", "NFR-8.3")
def test_f22_index_of_a_scan_killed_mid_write_opens_and_the_mount_completes_it(big_library, mount_factory,
                                                                              tmp_path):
    library, expected = big_library
    index = tmp_path / "index" / "library.db"
    scan = subprocess.Popen(musicfs_cmd("--state-dir", str(tmp_path / "scan-state"), "scan", "--origin",
                                        str(library), "--index", str(index), "--batch-size", "50"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not index.exists() or tracks_in(index) < KILL_AFTER_TRACKS:
            assert scan.poll() is None, "the scan ended before it could be killed: make the library bigger"
            assert time.monotonic() < deadline, "the scan committed nothing within 60 s"
            time.sleep(0.01)
        scan.send_signal(signal.SIGKILL)
    finally:
        if scan.poll() is None:
            scan.kill()
        scan.wait(10)
    assert scan.returncode == -signal.SIGKILL
    wal = Path(f"{index}-wal")
    assert wal.exists() and wal.stat().st_size > 0, "the killed scan left no WAL: the scenario did not happen"

    mounted = mount_factory(origin=library, index=index, extra_args=("-v",))
    log = mounted.log_text()
    assert "checking library index" in log, "the leftover WAL went unnoticed"
    assert DAMAGE_WORDS not in log, log  # a killed writer is not damage: nothing set aside
    assert not list(index.parent.glob("*.damaged-*"))
    assert integrity(index) == ["ok"]
    assert finished_scans(index) >= 1, "the mount did not finish the interrupted scan"
    check_some_tracks(mounted.mountpoint, expected)
    assert "Traceback" not in mounted.log_text()


def set_aside_files(index: Path) -> list[Path]:
    return sorted(p for p in index.parent.glob(f"{index.name}.damaged-*") if not p.name.endswith(("-wal", "-shm")))


def garble_pages(index: Path, seed: int = 22) -> list[int]:
    """Overwrite a few whole pages past the header with random bytes; return their numbers."""
    page = 4096
    pages = index.stat().st_size // page
    rng = random.Random(seed)
    chosen = sorted({1, 2, pages // 3, pages // 2, 2 * pages // 3} - {0})
    with open(index, "r+b") as f:
        for number in chosen:
            f.seek(number * page)
            f.write(rng.randbytes(page))
    return chosen


@pytest.mark.req("FAULT-22")
@pytest.mark.parametrize("damage", ["pages", "whole file"])
def test_f22_damaged_index_is_set_aside_and_rebuilt_by_a_rescan(sample_library, good_files, mount_factory,
                                                                tmp_path, damage):
    library = sample_library[0]
    expected = {f["path"]: f["sha256"] for f in good_files}
    index = tmp_path / "index" / "library.db"
    subprocess.run(musicfs_cmd("--state-dir", str(tmp_path / "scan-state"), "scan", "--origin", str(library),
                               "--index", str(index)), check=True, capture_output=True)
    wal = Path(f"{index}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the scan's clean exit left a WAL"
    if damage == "pages":
        garble_pages(index)
    else:
        index.write_bytes(b"bla\n")

    work = tmp_path / "m"
    first = mount_factory(origin=library, index=index, work=work, extra_args=("-v",))
    first_log = first.log_text()
    damaged_lines = [line for line in first_log.splitlines() if DAMAGE_WORDS in line]
    assert len(damaged_lines) == 1, first_log
    aside = set_aside_files(index)
    assert len(aside) == 1 and aside[0].name in damaged_lines[0], (aside, damaged_lines)
    assert "scanned local:" in first_log, "the index was not rebuilt by scanning the origin"
    assert integrity(index) == ["ok"]
    check_some_tracks(first.mountpoint, expected, count=len(expected))
    assert first.proc.pid and first.alive()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(15) == 0, first.log_text()

    # no crash loop: the next start finds a sound index and neither sets it aside nor rescans
    second = mount_factory(origin=library, index=index, work=work, extra_args=("-v",))
    second_log = second.log_text()[len(first.log_text()):]
    assert DAMAGE_WORDS not in second_log and "scanned local:" not in second_log, second_log
    assert set_aside_files(index) == aside
    check_some_tracks(second.mountpoint, expected)
    assert os.path.getsize(index) > 0
