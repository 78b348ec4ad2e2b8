"""The header tier under a corrupting origin (FAULT-11, HDR-1).

A header is what the scanner read of a file: a part, which no whole-file
checksum can vouch for, so it is served as the origin sent it (the same
exposure as the first bytes of a first fill). What must hold: once the file
is read whole, the header goes when the file's bytes fail their check (the
origin that sent them is not trusted for the rest either), and a header that
differs from a file that passed is dropped too; a correct header stays.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.checks import assert_exact
from chaos.s3lab import S3Lab, wav_lab
from musicfs.store.reader import FAIL_FAST
from tests.harness import mount_library, mount_status, mounted_tracks, settled
from tests.s3server import aws_env

TAKES = [f"Recordings/take-{i}.wav" for i in range(3)]
TAKE_SIZE = 3 * 1024 * 1024  # three times the head a header keeps
READ_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[S3Lab]:
    with wav_lab(tmp_path_factory.mktemp("headerfaults"), TAKES, TAKE_SIZE, seed=900) as lab:
        yield lab


def mount(lab: S3Lab, work: Path):
    work.mkdir(parents=True, exist_ok=True)
    config = lab.config(work / "musicfs.toml", READ_TIMEOUT, headers=True, health_interval=0.5, timeout=2.0)
    return mount_library(config=config, work=work, env=aws_env(lab.work / "aws"))


def head(path: Path, size: int = 1024 * 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


@pytest.mark.req("FAULT-11", "HDR-1")
def test_a_header_scanned_from_a_corrupting_origin_goes_once_the_file_fails_its_check(lab, proxy, tmp_path):
    real = TAKES[0]
    right = lab.data[real]
    proxy.corrupt(path_prefix=lab.object_path(real))  # one bit flipped in every answer: the scan's too
    with mount(lab, tmp_path / "work") as mounted:
        assert mount_status(mounted.mountpoint)["headers"]["entries"] == len(TAKES)
        track = mounted_tracks(mounted.mountpoint)[real]
        assert head(track) != right[:1024 * 1024], "the corruption did not reach the scan"
        try:  # read whole: the fill's ETag check fails, and the header goes with the chunks
            with open(track, "rb") as f:
                f.read()
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
        status = settled(mounted.mountpoint)
        assert status["reader"]["checksum_mismatches"] >= 1
        assert status["headers"]["entries"] == len(TAKES) - 1 and status["headers"]["dropped"] >= 1
        proxy.clear()
        time.sleep(FAIL_FAST + 0.1)
        assert_exact(lab.expected, track, real)  # from the healthy origin now, checked whole
        assert head(track) == right[:1024 * 1024]


@pytest.mark.req("FAULT-11", "HDR-1")
def test_a_header_that_differs_from_its_file_read_whole_is_dropped(lab, proxy, tmp_path):
    """The origin corrupted only what the scan read. The file's map starts with the header's head
    (FS-11), so the file read whole fails its check: the chunks and the header go (the origin is
    suspect until it serves the file whole and right), and the next read is exact and checked."""
    real = TAKES[2]
    proxy.corrupt(path_prefix=lab.object_path(real))
    with mount(lab, tmp_path / "work") as mounted:
        proxy.clear()
        track = mounted_tracks(mounted.mountpoint)[real]
        try:
            with open(track, "rb") as f:
                f.seek(2 * 1024 * 1024)  # past the header: a fill from the healthy origin, to the end
                f.read()
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
        status = settled(mounted.mountpoint)
        assert status["reader"]["headers_dropped"] == 1 and status["reader"]["checksum_mismatches"] == 1
        assert status["headers"]["entries"] == len(TAKES) - 1
        time.sleep(FAIL_FAST + 0.1)
        assert_exact(lab.expected, track, real)
        assert settled(mounted.mountpoint)["reader"]["verified_files"] >= 1


@pytest.mark.req("HDR-1")
def test_a_right_header_stays_after_its_file_is_read_whole(lab, proxy, tmp_path):
    real = TAKES[1]
    with mount(lab, tmp_path / "work") as mounted:
        track = mounted_tracks(mounted.mountpoint)[real]
        assert head(track) == lab.data[real][:1024 * 1024]
        assert_exact(lab.expected, track, real)
        status = settled(mounted.mountpoint)
        assert status["reader"]["verified_files"] >= 1 and status["reader"]["headers_dropped"] == 0
        assert status["headers"]["entries"] == len(TAKES) and status["headers"]["hits"] >= 1
