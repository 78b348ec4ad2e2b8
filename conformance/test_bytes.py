"""Reads through the mount return exactly the origin's bytes, at any offset and length."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.expected import assign

CHUNK = 128 * 1024  # the kernel's largest FUSE read; boundaries around it are interesting


@pytest.mark.req("FS-5")
def test_whole_files_read_sequentially_equal_the_origin(sample_mount, good_files):
    mnt = sample_mount.mountpoint
    for path, entry in assign(mnt, good_files).items():
        digest, total = hashlib.sha256(), 0
        with open(mnt / path, "rb", buffering=0) as f:
            while block := f.read(65536):
                digest.update(block)
                total += len(block)
        assert total == entry["size"], f"{path}: read {total} bytes, the origin has {entry['size']}"
        assert digest.hexdigest() == entry["sha256"], f"{path}: bytes differ from {entry['path']}"


@pytest.fixture(scope="module")
def open_tracks(sample_mount, sample_library, good_files):
    """(mounted path, open fd, origin bytes) for every track; closed at the end."""
    mnt, origin = sample_mount.mountpoint, sample_library[0]
    tracks = []
    try:
        for path, entry in sorted(assign(mnt, good_files).items()):
            tracks.append((path, os.open(mnt / path, os.O_RDONLY), (origin / entry["path"]).read_bytes()))
        yield tracks
    finally:
        for _, fd, _ in tracks:
            os.close(fd)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.req("FS-5")
def test_random_preads_equal_the_origin(open_tracks, data):
    path, fd, origin = data.draw(st.sampled_from(open_tracks), label="track")
    size = len(origin)
    # anywhere in the file, on page and chunk edges, at EOF, beyond it and far beyond it
    edges = sorted({0, 1, max(size - 1, 0), size, size + 1, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 1})
    offset = data.draw(st.one_of(st.integers(0, size + 2 * CHUNK), st.sampled_from(edges),
                                 st.just(2**40)), label="offset")
    length = data.draw(st.one_of(st.just(0), st.integers(1, 3 * CHUNK), st.sampled_from([1, 4096, CHUNK])),
                       label="size")
    got = os.pread(fd, length, offset)
    assert got == origin[offset:offset + length], f"{path}: pread({length}, {offset})"


@pytest.mark.req("FS-5")
def test_concurrent_handles_on_one_file_read_independently(sample_mount, good_files, sample_library):
    """Two handles on one track interleave reads without disturbing each other."""
    mnt = sample_mount.mountpoint
    path, entry = max(assign(mnt, good_files).items(), key=lambda item: item[1]["size"])
    origin = (sample_library[0] / entry["path"]).read_bytes()
    with open(mnt / path, "rb", buffering=0) as a, open(mnt / path, "rb", buffering=0) as b:
        b.seek(len(origin) // 2)
        first, second = [], []
        while True:
            x, y = a.read(7919), b.read(7919)
            first.append(x)
            second.append(y)
            if not x:
                break
        assert b"".join(first) == origin
        assert b"".join(second) == origin[len(origin) // 2:]
