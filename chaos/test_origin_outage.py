"""A local origin that vanishes and comes back while mounted (an NFS share dropping out)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
import time

import pytest

from tests.harness import mount_library

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
        paths = {}
        for dirpath, _dirnames, filenames in os.walk(mounted.mountpoint):
            for name in filenames:
                path = os.path.join(dirpath, name)
                paths[os.getxattr(path, "user.musicfs.real_path").decode()] = path
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
    log = mounted.log_text()
    assert "attempt 1" in log and "failed" in log
