"""Raw views: /.origins/<id>/ shows an origin as it is, read-only (B2-6)."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest


@pytest.mark.req("B2-6", "FS-4")
def test_raw_view_mirrors_the_origin(sample_mount, sample_library):
    root, manifest = sample_library
    raw = sample_mount.mountpoint / ".origins" / "local"
    assert ".origins" not in os.listdir(sample_mount.mountpoint)  # hidden, like /.musicfs
    assert os.listdir(sample_mount.mountpoint / ".origins") == ["local"]
    listed = {}
    for dirpath, _dirnames, filenames in os.walk(raw):
        for name in filenames:
            listed[os.path.relpath(os.path.join(dirpath, name), raw)] = os.path.join(dirpath, name)
    on_disk = {os.path.relpath(os.path.join(d, n), root) for d, _, fs in os.walk(root) for n in fs}
    assert set(listed) == on_disk  # every file, audio or not, broken or not
    for entry in manifest["files"][:40]:
        with open(listed[entry["path"]], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"]
        assert os.stat(listed[entry["path"]]).st_size == entry["size"]
        assert os.getxattr(listed[entry["path"]], "user.musicfs.real_path").decode() == entry["path"]
    with pytest.raises(OSError) as failure:
        open(raw / "new.flac", "wb")
    assert failure.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        os.stat(sample_mount.mountpoint / ".origins" / "nope")
