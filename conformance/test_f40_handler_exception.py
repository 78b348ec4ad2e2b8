"""FAULT-40: an unexpected exception inside a request handler, on a real mount.

The daemon is the normal ``musicfs mount`` run through :mod:`tests.faulty_daemon`, which makes
the tree resolver raise ``ValueError`` for one file name (every LOOKUP of it) and the cached
reader raise it for one track (every READ of it). pyfuse3 itself only turns ``FUSEError`` into
an errno; anything else would end its main loop and the mount with it. musicfs must answer that
one request EIO, log it once with its traceback, and go on serving everything else, at the same
time and afterwards.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conformance.daemons import cleanup, launcher_cmd, wait_serving
from conformance.expected import sha256_of
from musicfs.index.library import LibraryIndex
from musicfs.vfs.resolver import Resolver
from tests.harness import errno_of, mount_status, scan

LOOKUPS = 5  # stats of the broken name, one at a time: each is exactly one LOOKUP request
RECORD = re.compile(r"^\S+ \S+ ERROR musicfs\.fuse\.operations: (\w+)\(.*failed unexpectedly: InjectedFault",
                    re.MULTILINE)



def read_whole(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.req("FAULT-40")
def test_f40_unexpected_exception_in_a_handler_answers_eio_once_logged_and_the_mount_serves_on(
        sample_library, good_files, tmp_path):
    origin = sample_library[0]
    state, index, mnt, log = tmp_path / "state", tmp_path / "state" / "index.db", tmp_path / "mnt", tmp_path / "log"
    mnt.mkdir()
    scan(origin, state, index)
    with LibraryIndex(index, readonly=True) as library:  # which names and tracks to break
        resolver = Resolver(library.conn)
        rows = library.conn.execute("SELECT n.id, t.real_path FROM nodes n JOIN tracks t ON t.id = n.track_id"
                                    " ORDER BY t.real_path").fetchall()
        presented = {real: resolver.path_of(node_id) for node_id, real in rows}
    (lookup_victim_real, lookup_victim), (read_victim_real, _) = sorted(presented.items())[:2]
    expected = {f["path"]: f["sha256"] for f in good_files}

    cmd = launcher_cmd([f"lookup={Path(lookup_victim).name}", f"read={read_victim_real}"],
                       ["--state-dir", str(state), "mount", "--foreground", "--index", str(index),
                        "--cache-dir", str(tmp_path / "cache"), "--origin", str(origin), str(mnt)])
    with cleanup(mnt) as spawned, open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        spawned.append(proc)
        wait_serving(mnt, proc)
        broken_path = mnt / lookup_victim

        # LOOKUP of the broken name: EIO each time (not cached as a negative entry), one record each
        for _ in range(LOOKUPS):
            assert errno_of(os.stat, broken_path) == errno.EIO
        text = log.read_text(errors="replace")
        assert [m.group(1) for m in RECORD.finditer(text)] == ["lookup"] * LOOKUPS, text[-3000:]

        read_victim = mnt / presented[read_victim_real]
        others = {real: mnt / path for real, path in presented.items()
                  if real not in (read_victim_real, lookup_victim_real)}
        errors_before = mount_status(mnt)["fuse"]["errors"].get("read", 0)

        # the broken READ fails again and again while every other track is read in parallel
        def hammer() -> list[int | None]:
            return [errno_of(read_whole, read_victim) for _ in range(20)]

        with ThreadPoolExecutor(max_workers=6) as pool:
            victim = pool.submit(hammer)
            digests = dict(zip(others, pool.map(lambda p: sha256_of(p), others.values())))
            victim_errnos = victim.result()
        assert set(victim_errnos) == {errno.EIO}, victim_errnos
        assert digests == {real: expected[real] for real in others}
        with open(read_victim, "rb") as f:  # open is not broken: only the read is
            assert errno_of(f.read, 4096) == errno.EIO

        text = log.read_text(errors="replace")
        records = [m.group(1) for m in RECORD.finditer(text)]
        read_errors = mount_status(mnt)["fuse"]["errors"].get("read", 0) - errors_before
        assert records.count("read") == read_errors >= 21, (records.count("read"), read_errors)
        assert text.count("Traceback (most recent call last)") == len(records), "a record without traceback"
        assert text.count("InjectedFault: injected fault") >= len(records)
        assert re.search(r"tests[./]faulty_daemon", text), "the traceback does not show where it came from"

        # still the same daemon, still answering, and it stops cleanly
        assert proc.poll() is None
        assert sha256_of(next(iter(others.values()))) == expected[next(iter(others))]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text(errors="replace")[-3000:]
