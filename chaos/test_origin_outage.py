"""A local origin that vanishes and comes back while mounted (an NFS share dropping out)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
import time

import pytest

from conformance.expected import sha256_of
from tests.harness import mount_library, mount_status, mounted_tracks

READ_TIMEOUT = 2.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def outage(sample_library, good_files, tmp_path):
    origin = tmp_path / "share"
    shutil.copytree(sample_library[0], origin)
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[cache]\nread_timeout = {READ_TIMEOUT}\n\n[[origins]]\nid = "nas"\ntype = "local"\n'
                      f'path = "{origin}"\n')
    with mount_library(config=config, work=tmp_path / "work") as mounted:
        paths = {real: str(path) for real, path in mounted_tracks(mounted.mountpoint).items()}
        yield mounted, origin, paths, {f["path"]: f["sha256"] for f in good_files}


@pytest.mark.req("NFR-7.2", "NFR-7.3", "NFR-7.1")
def test_uncached_read_fails_in_bounded_time_then_recovers(outage):
    mounted, origin, paths, expected = outage
    real, path = next(iter(paths.items()))
    away = origin.with_name("share-offline")
    origin.rename(away)
    started = time.monotonic()
    with pytest.raises(OSError) as failure, open(path, "rb") as f:
        f.read()
    elapsed = time.monotonic() - started
    assert failure.value.errno == errno.EIO
    assert elapsed <= READ_TIMEOUT + 1.0, f"EIO took {elapsed:.2f} s"
    assert mounted.alive()
    away.rename(origin)
    with open(path, "rb") as f:  # the same mount, no remount: the origin is back
        assert sha256(f.read()) == expected[real]


@pytest.mark.req("NFR-7.3", "NFR-7.2")
def test_a_short_outage_is_ridden_out_by_retries(outage):
    mounted, origin, paths, expected = outage
    real, path = list(paths.items())[1]
    away = origin.with_name("share-offline")
    origin.rename(away)
    threading.Timer(0.3, away.rename, args=(origin,)).start()
    started = time.monotonic()
    with open(path, "rb") as f:
        data = f.read()
    assert sha256(data) == expected[real]
    assert time.monotonic() - started >= 0.3  # it waited for the origin instead of failing
    origin_status = mount_status(mounted.mountpoint)["origins"][0]
    assert origin_status["failed_attempts"] >= 1 and origin_status["failed_reads"] == 0  # retried, kept
    assert "retrying" not in mounted.log_text()  # a retry that worked is no WARNING


def wait_for_state(mountpoint, origin_id: str, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {o["id"]: o["state"] for o in mount_status(mountpoint)["origins"]}
        if states[origin_id] == state:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"origin {origin_id} stayed {states[origin_id]!r}, never {state!r}")
        time.sleep(0.05)


@pytest.mark.req("FAULT-14", "NFR-7.2", "NFR-7.1")
def test_f14_what_failed_during_an_outage_works_after_it_and_each_transition_is_logged_once(
        sample_library, good_files, tmp_path):
    """Two outages of the only origin. During each, a read and a lookup under /.origins fail; once the
    origin is back, the very same read and lookup succeed (no failure is remembered), and the log
    says "offline" and "recovered" once per outage, however many reads failed and probes ran."""
    origin = tmp_path / "share"
    shutil.copytree(sample_library[0], origin)
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[cache]\nread_timeout = {READ_TIMEOUT}\n\n[health]\ninterval = 0.2\n\n'
                      f'[[origins]]\nid = "nas"\ntype = "local"\npath = "{origin}"\n')
    expected = {f["path"]: f["sha256"] for f in good_files}
    away = origin.with_name("share-offline")
    with mount_library(config=config, work=tmp_path / "work") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        wait_for_state(mounted.mountpoint, "nas", "healthy")
        first = sorted(tracks)[0]  # two tracks in different folders: the raw view keeps listings it got
        second = next(real for real in sorted(tracks) if real.split("/")[0] != first.split("/")[0])
        for outage, real in enumerate((first, second)):
            raw = mounted.mountpoint / ".origins" / "nas" / real  # looked up from the origin itself
            origin.rename(away)
            for _ in range(3):  # several failed reads in one outage: still one transition
                with pytest.raises(OSError) as failure:
                    sha256_of(tracks[real])
                assert failure.value.errno == errno.EIO
            with pytest.raises(OSError):
                os.stat(raw)
            wait_for_state(mounted.mountpoint, "nas", "unhealthy")
            time.sleep(0.5)  # probes go on failing: no more lines
            away.rename(origin)
            wait_for_state(mounted.mountpoint, "nas", "healthy")
            assert sha256_of(tracks[real]) == expected[real], f"outage {outage}: the failed read stays failed"
            assert os.stat(raw).st_size == (origin / real).stat().st_size  # the failed lookup too
            assert sha256_of(raw) == expected[real]
        log = mounted.log_text()
        offline = [line for line in log.splitlines() if "origin nas is offline" in line]
        recovered = [line for line in log.splitlines() if "origin nas recovered" in line]
        assert len(offline) == 2 and len(recovered) == 2, log
        assert "3 reads failed meanwhile" in recovered[0] or "2 reads failed meanwhile" in recovered[0], \
            recovered[0]
        assert mounted.alive()
