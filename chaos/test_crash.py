"""The daemon killed with SIGKILL in the middle of filling the cache: the next mount recovers.

Nothing a crash leaves behind (temp files, chunk rows without files, a stale
mountpoint) may ever turn into a wrong byte served.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conformance.expected import sha256_of
from fixtures.bigfile import write_wav
from musicfs import daemon
from tests.harness import mount_library, settled, start_mount, unmount


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
        while sum(1 for _ in chunks.rglob("*")) < 256 + 40 and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until fills are under way and chunks are landing
        os.kill(mounted.pid, signal.SIGKILL)
        mounted.proc.wait(10)
        for t in readers:
            t.join(30)
        assert daemon.is_stale(mounted.mountpoint)
    finally:
        unmount(mounted) if mounted.alive() else None

    # a torn write the crash could have left, and a chunk file cut short
    stored = [p for p in chunks.rglob("*") if p.is_file() and not p.name.startswith(".tmp")]
    (stored[0].parent / f".tmp-{stored[0].name}-dead").write_bytes(b"half a chunk")
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
