"""S3 answers that are not network faults: throttling (503 + Retry-After) and rotated credentials.

The mount reaches moto through :mod:`chaos.httpfaults`, an HTTP proxy that
can answer "503 Slow Down" or park a request while the test rotates keys.
Every scenario checks the same three things as the other chaos scenarios:
the bytes served are the origin's (or the read fails with EIO within its
bound), the daemon stays up, and nothing wrong is left in the chunk cache.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.checks import assert_cache_sound, assert_eio_within, assert_exact
from chaos.httpfaults import FaultProxy, http_fault_proxy
from fixtures.bigfile import write_wav
from musicfs.store.fill import FIRST_BLOCK
from tests.harness import MountedLibrary, mount_library, mount_status, mounted_tracks, settled
from tests.s3server import MotoServer, aws_env, moto_server, write_credentials

PREFIX = "music/"
BIG_SIZE = 6 * 1024 * 1024  # several fill blocks: reads after a fault need bytes not fetched before it
TAKES = [f"Recordings/take-{i}.wav" for i in range(3)]  # no spaces: their URL paths are literal
SLACK = 1.0  # seconds allowed beyond read_timeout for an EIO to reach the reader
FIRST_PART = FIRST_BLOCK // 2  # read before a fault: the first fill block always yields this much


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



@dataclass
class S3Lab:
    """A moto server with the library in a bucket, and the fault proxy the mounts go through."""

    work: Path
    server: MotoServer
    proxy: FaultProxy
    bucket: str
    data: dict[str, bytes]  # real path -> the object's bytes

    @property
    def expected(self) -> dict[str, str]:
        return {real: sha256(data) for real, data in self.data.items()}

    def object_path(self, real: str = "") -> str:
        """The URL path of an object (or, with no name, of every object) as the proxy sees it."""
        return f"/{self.bucket}/{PREFIX}{real}"

    def config(self, path: Path, read_timeout: float, **options) -> Path:
        """A one-origin config reaching the bucket through the proxy."""
        origin = {"bucket": self.bucket, "endpoint": self.proxy.endpoint, "prefix": PREFIX,
                  "region": "us-east-1", **options}
        lines = ["[cache]", f"read_timeout = {read_timeout}", "", "[[origins]]", 'id = "bucket"',
                 'type = "s3"', *(f"{key} = {json.dumps(value)}" for key, value in origin.items())]
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[S3Lab]:
    """Three big WAVs (seeded noise: no dedup between them) in a bucket behind the fault proxy."""
    work = tmp_path_factory.mktemp("s3faults")
    data = {}
    for i, real in enumerate(TAKES):
        data[real] = write_wav(work / f"take-{i}.wav", BIG_SIZE, seed=300 + i).read_bytes()
    with moto_server() as server, http_fault_proxy(server.endpoint) as proxy:
        bucket = server.create_bucket(data, prefix=PREFIX)
        yield S3Lab(work, server, proxy, bucket, data)


@pytest.fixture
def proxy(lab) -> Iterator[FaultProxy]:
    """The lab's proxy, with no fault and nothing seen yet; whatever a test set is cleared after it."""
    lab.proxy.reset()
    yield lab.proxy
    lab.proxy.reset()




def reader_counters(mounted: MountedLibrary) -> dict:
    return mount_status(mounted.mountpoint)["reader"]


@pytest.mark.req("NFR-7.3", "NFR-7.2")
def test_503_with_retry_after_is_waited_out_within_the_deadline(lab, proxy, tmp_path):
    """A throttling server is given the time it asks for, but never more than the read's deadline.

    Asking again before Retry-After only earns another refusal (and on B2 or
    S3 a longer penalty); waiting past read_timeout would hang a player.
    """
    read_timeout = 4.0  # room for two 1 s waits, and short enough to be below a 30 s Retry-After
    first, second = TAKES[0], TAKES[1]
    config = lab.config(tmp_path / "musicfs.toml", read_timeout)
    with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)

        # two "slow down, retry after 1 s": the read waits them out instead of hammering
        proxy.busy(2, retry_after=1, method="GET", path_prefix=lab.object_path())
        started = time.monotonic()
        assert_exact(lab.expected, tracks[first], first)
        elapsed = time.monotonic() - started
        waits = proxy.waits_after_refusals("GET", lab.object_path(first))
        assert len(waits) == 2, f"expected 2 refused GETs of {first}, then a retry: {waits}"
        assert min(waits) >= 0.9, f"asked again {min(waits):.2f} s after a Retry-After of 1 s"
        assert elapsed >= 1.8, f"read in {elapsed:.2f} s: the Retry-After waits did not happen"
        log = mounted.log_text()
        assert "503" in log and "SlowDown" in log, "the daemon log does not name the throttling"

        # retry after 30 s, read_timeout 4 s: the deadline wins, EIO in bounded time
        proxy.busy(None, retry_after=30, method="GET", path_prefix=lab.object_path())
        assert_eio_within(tracks[second], read_timeout + SLACK)
        refused = [s for s in proxy.requests("GET", lab.object_path(second)) if s.refused]
        assert 1 <= len(refused) <= 2, f"{len(refused)} GETs while told to wait 30 s: hammering"
        assert mounted.alive()

        proxy.clear()  # the server takes requests again: the same mount reads the same file
        settled(mounted.mountpoint)  # the failed fill has ended (its state is not reused)
        assert_exact(lab.expected, tracks[second], second)
        assert mounted.alive()
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == 2  # both reads were kept, exact


def rotate_key(server: MotoServer, user: str, credentials: Path, old_key_id: str) -> tuple[str, str]:
    """What a rotation tool does: a new key, written to the credentials file, then the old one deleted."""
    with server.auth_paused():  # as an admin: the IAM calls are not signed by the user
        new = server.new_key(user)
        write_credentials(credentials, *new)
        server.delete_key(user, old_key_id)
    return new


@pytest.mark.req("NFR-7.2")
def test_rotated_credentials_are_reloaded_while_files_are_open(lab, proxy, tmp_path):
    """Keys change under an open file: the next request is refused once, then signed with the new keys.

    A GET of the open file is parked in the proxy while the key is rotated, so
    it reaches the server signed with the deleted key: the rotation really
    meets a request in flight, and every byte read afterwards comes from the
    origin (the fill had fetched only its first block), not from the cache.
    """
    held, others = TAKES[0], TAKES[1:]
    user = f"musicfs-{uuid.uuid4().hex[:8]}"
    old = lab.server.add_user(user)
    credentials = write_credentials(tmp_path / "credentials", *old)
    config = lab.config(tmp_path / "musicfs.toml", read_timeout=10.0, credentials_file=str(credentials))
    env = aws_env(tmp_path / "aws", key_id=None, secret=None)  # the file is the only source of keys
    with lab.server.enforce_auth(), \
            mount_library(config=config, work=tmp_path / "work", env=env) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert reader_counters(mounted)["origin_bytes"] == 0, "nothing may be cached before the reads"
        held_path = lab.object_path(held)
        proxy.hold(method="GET", path_prefix=held_path, skip=1)  # the first block passes
        with open(tracks[held], "rb") as f:
            start = f.read(FIRST_PART)
            assert start == lab.data[held][:FIRST_PART]
            proxy.wait_held(1)  # the fill's next GET is in flight, signed with the old key
            before = reader_counters(mounted)
            earlier = len(proxy.requests("GET", held_path))
            new = rotate_key(lab.server, user, credentials, old[0])
            proxy.release()
            assert start + f.read() == lab.data[held], f"{held}: wrong bytes after the rotation"
        for real in others:
            assert_exact(lab.expected, tracks[real], real)
        after = settled(mounted.mountpoint)["reader"]
        assert mounted.alive()

        statuses = [s.status for s in proxy.requests("GET", held_path)[earlier:]]
        assert statuses[0] == 403, f"the parked GET was not refused (statuses {statuses})"
        assert set(statuses[1:]) == {206}, f"GETs after the reload: {statuses}"
        for real in others:
            assert {s.status for s in proxy.requests("GET", lab.object_path(real))} == {206}
        fetched = after["origin_bytes"] - before["origin_bytes"]
        remaining = sum(len(data) for data in lab.data.values()) - before["origin_bytes"]
        assert fetched >= remaining, f"{fetched} bytes from the origin after the rotation, not {remaining}"
        assert after["fills_failed"] == 0, f"fills failed: {after}"
        assert mount_status(mounted.mountpoint)["origins"][0]["credential_reloads"] == 1
        log = mounted.log_text()
        assert "InvalidAccessKeyId" in log and "reloaded" in log, "the log does not show the reload"
        for secret in (old[1], new[1]):
            assert secret not in log
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == len(TAKES)
