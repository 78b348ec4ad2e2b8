"""The hidden ``/.musicfs`` directory on a real mount: unlisted, found by name, generated, read-only."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess

import pytest

from conformance.expected import walk_dirs, walk_files

HIDDEN = ".musicfs"
GENERATED = ["access.log", "errors.json", "heat.json", "status.json"]


@pytest.mark.req("CAS-3")
def test_hidden_dir_is_found_but_not_listed(sample_mount):
    mnt = sample_mount.mountpoint
    assert HIDDEN not in os.listdir(mnt), "readdir of the root lists /.musicfs"
    # nor any other special folder (/.origins, /.search, /.collections, /.offline): found by name only
    assert not [name for name in os.listdir(mnt) if name.startswith(".")]
    for special in (".origins", ".search", ".collections", ".offline"):
        assert stat.S_ISDIR(os.stat(mnt / special).st_mode), special
    ls = subprocess.run(["ls", "-A", str(mnt)], capture_output=True, text=True, check=True)
    assert HIDDEN not in ls.stdout.splitlines()

    st = os.stat(mnt / HIDDEN)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
    assert sorted(os.listdir(mnt / HIDDEN)) == GENERATED
    for name in GENERATED:
        info = os.stat(mnt / HIDDEN / name)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o444

    # only the root has one; no track directory answers the name
    album = next(d for d in walk_dirs(mnt) if d.count("/") == 1)
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / album / HIDDEN)
    # and `find` over the mount never wanders into it
    found = subprocess.run(["find", str(mnt)], capture_output=True, text=True, check=True).stdout
    assert f"/{HIDDEN}" not in found


@pytest.mark.req("CAS-3")
def test_hidden_files_are_generated_when_read(sample_mount, good_files):
    mnt = sample_mount.mountpoint
    first = json.loads((mnt / HIDDEN / "status.json").read_bytes())
    # read a track, then status.json shows the read: it was generated anew, not a stale copy
    track = mnt / walk_files(mnt)[0]
    data = track.read_bytes()
    assert data
    second = json.loads((mnt / HIDDEN / "status.json").read_bytes())
    assert second["uptime_seconds"] > first["uptime_seconds"]
    assert second["fuse"]["ops"]["open"] > first["fuse"]["ops"].get("open", 0)
    assert second["fuse"]["ops"]["read"] > first["fuse"]["ops"].get("read", 0)
    assert second["index"]["tracks"] == len(good_files)

    # the same through `cat`, which a health check script would use
    text = subprocess.run(["cat", str(mnt / HIDDEN / "status.json")], capture_output=True, check=True).stdout
    assert json.loads(text)["pid"] == sample_mount.pid
    errors = json.loads(subprocess.run(["cat", str(mnt / HIDDEN / "errors.json")], capture_output=True,
                                       check=True).stdout)
    assert errors["count"] == len(errors["skipped"])


@pytest.mark.req("CAS-3", "FS-4")
def test_hidden_files_are_read_only(sample_mount):
    mnt = sample_mount.mountpoint
    for name in ("status.json", "errors.json"):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
            with pytest.raises(OSError) as info:
                os.close(os.open(mnt / HIDDEN / name, flags))
            assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.close(os.open(mnt / HIDDEN / "new.json", os.O_CREAT | os.O_WRONLY, 0o644))
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.rmdir(mnt / HIDDEN)
    assert info.value.errno == errno.EROFS
    assert sorted(os.listdir(mnt / HIDDEN)) == GENERATED
