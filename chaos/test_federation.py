"""Two origins holding the same library: one tree, reads fail over, health is reported (G3).

FAULT-2 (the primary goes away) and FAULT-10 (the primary answers, but its
folder is empty) with local origins, the NFS or SMB shares of a household.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import time

import pytest

from chaos.checks import assert_cache_sound, assert_exact
from tests.harness import mount_library
from tests.harness import mount_status as status
from tests.harness import mounted_tracks as mounted_files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def two_origins(sample_library, tmp_path):
    primary, backup = tmp_path / "nas", tmp_path / "backup"
    shutil.copytree(sample_library[0], primary)
    shutil.copytree(sample_library[0], backup)
    config = tmp_path / "musicfs.toml"
    config.write_text(
        '[cache]\nread_timeout = 3.0\n\n[health]\ninterval = 0.5\n\n'
        f'[[origins]]\nid = "nas"\ntype = "local"\npath = "{primary}"\npriority = 1\n\n'
        f'[[origins]]\nid = "backup"\ntype = "local"\npath = "{backup}"\npriority = 2\n')
    return primary, backup, config


@pytest.mark.req("FAULT-2", "G3", "NFR-7.1", "NFR-7.2")
def test_f02_local_replicas_show_once_and_reads_fail_over(two_origins, good_files, tmp_path):
    primary, backup, config = two_origins
    expected = {f["path"]: f["sha256"] for f in good_files}
    with mount_library(config=config, work=tmp_path / "work") as mounted:
        files = mounted_files(mounted.mountpoint)
        assert len(files) == len(expected)  # the same file on two origins is one file
        first = list(files.items())[: len(files) // 2]
        for real, path in first:
            with open(path, "rb") as f:
                assert sha256(f.read()) == expected[real]
        assert status(mounted.mountpoint)["reader"]["failovers"] == 0
        primary.rename(primary.with_name("nas-down"))  # the primary goes away mid-session
        for real, path in list(files.items())[len(files) // 2:]:
            with open(path, "rb") as f:
                assert sha256(f.read()) == expected[real], f"{real} not served by the backup"
        current = status(mounted.mountpoint)
        assert current["reader"]["failovers"] > 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = {o["id"]: o["state"] for o in status(mounted.mountpoint)["origins"]}
            if states == {"nas": "unhealthy", "backup": "healthy"}:
                break
            time.sleep(0.1)
        assert states == {"nas": "unhealthy", "backup": "healthy"}
        primary.with_name("nas-down").rename(primary)  # back again: probes notice
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if {o["id"]: o["state"] for o in status(mounted.mountpoint)["origins"]}["nas"] == "healthy":
                break
            time.sleep(0.1)
        assert {o["id"]: o["state"] for o in status(mounted.mountpoint)["origins"]}["nas"] == "healthy"
        assert mounted.alive()


@pytest.mark.req("FAULT-10", "G3", "NFR-7.2")
def test_f10_an_emptied_primary_folder_is_no_enoent_while_the_backup_holds_the_files(
        two_origins, good_files, tmp_path):
    """The primary share is still there and answers, but empty (remounted wrong, wiped): every file is
    missing from it. That is the primary's failure, not the file's: reads fail over and are exact."""
    primary, _backup, config = two_origins
    expected = {f["path"]: f["sha256"] for f in good_files}
    with mount_library(config=config, work=tmp_path / "work") as mounted:
        files = mounted_files(mounted.mountpoint)
        primary.rename(primary.with_name("nas-full"))
        primary.mkdir()  # the same folder, empty
        for real, path in files.items():
            try:
                assert_exact(expected, path, real)
            except OSError as exc:
                assert exc.errno != errno.ENOENT, f"{real}: ENOENT though the backup holds it"
                raise
        assert status(mounted.mountpoint)["reader"]["failovers"] >= len(files)
        assert mounted.alive()
    assert assert_cache_sound(mounted.cache_dir, expected) == len(files)
