"""PH-1.2: what the chunk cache holds outlives the mount that filled it.

The origin is an S3 bucket (moto) reached through the HTTP fault proxy, so
every request the daemons make is seen from outside. A first mount reads every
track whole (the proxy sees the bucket being read), then unmounts. The proxy
then closes every connection unanswered (an origin that is down), and a second
mount on the same state, index and cache directories reads the same tracks:
byte-exact, and the proxy sees no request for any object (what the second
daemon says of itself, ``reader.origin_requests``, agrees). A mount of a local
folder makes the same promise; conformance/test_cache.py checks it with the
folder moved away.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from chaos.s3lab import s3_lab
from tests.harness import mount_library, mount_status, mounted_tracks, settled
from tests.s3server import aws_env


@pytest.fixture
def lab(sample_library, tmp_path):
    """The sample library as objects in a bucket behind the fault proxy."""
    root = sample_library[0]
    data = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                data[os.path.relpath(full, root)] = f.read()
    with s3_lab(tmp_path / "lab", data) as running:
        yield running


def read_exact(tracks: dict, expected: dict[str, str]) -> int:
    """Read each track whole through the mount, compare it with the origin's bytes; bytes read."""
    total = 0
    for real, sha in sorted(expected.items()):
        with open(tracks[real], "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == sha, f"{real} differs from the origin's bytes"
        total += len(data)
    return total


@pytest.mark.req("PH-1.2")
def test_cached_tracks_are_served_after_a_remount_without_the_origin(lab, good_files, tmp_path):
    expected = {f["path"]: f["sha256"] for f in good_files}
    config = lab.config(tmp_path / "musicfs.toml", read_timeout=2.0, timeout=2.0)
    env = aws_env(tmp_path / "aws")
    work = tmp_path / "work"
    objects = lab.object_path()

    with mount_library(config=config, work=work, env=env) as first:
        tracks = mounted_tracks(first.mountpoint)
        assert set(tracks) == set(expected)
        logical = read_exact(tracks, expected)
        filled = settled(first.mountpoint)
        assert filled["reader"]["origin_requests"] > 0
    fetched = [s for s in lab.proxy.requests(method="GET", path_prefix=objects) if "?" not in s.path]
    assert len(fetched) >= len(expected), "the first mount did not read the tracks from the bucket"

    lab.proxy.reset()
    lab.proxy.drop()  # the origin is down: every connection is closed unanswered
    with mount_library(config=config, work=work, index=work / "state" / "index.db", env=env) as second:
        tracks = mounted_tracks(second.mountpoint)
        assert set(tracks) == set(expected)
        assert read_exact(tracks, expected) == logical
        status = mount_status(second.mountpoint)
    asked = [f"{s.method} {s.path}" for s in lab.proxy.requests(path_prefix=objects)
             if s.path.split("?")[0] != objects]  # listing the bucket (a health probe) reads no track
    assert asked == [], f"the remounted cache went to the origin for tracks: {asked[:5]}"
    assert status["reader"]["origin_requests"] == 0
    assert status["cache"]["misses"] == 0 and status["cache"]["hits"] > 0
