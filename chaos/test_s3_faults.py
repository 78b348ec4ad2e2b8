"""S3 answers that are not network faults: throttling and 5xx pages (FAULT-9), an origin that 404s or
serves a captive portal (FAULT-10), expired and rotated credentials (FAULT-13), a request storm while
the origin is down (FAULT-15).

The mount reaches moto through :mod:`chaos.httpfaults`, an HTTP proxy that
can answer in the server's place ("503 Slow Down", a login page, 404) or
park a request while the test rotates keys, and that counts the requests.
Every scenario checks the same three things as the other chaos scenarios:
the bytes served are the origin's (or the read fails with EIO within its
bound), the daemon stays up, and nothing wrong is left in the chunk cache.
"""

from __future__ import annotations

import errno
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.checks import assert_cache_sound, assert_eio_within, assert_exact
from chaos.httpfaults import BAD_GATEWAY_PAGE, LOGIN_PAGE, FaultProxy
from chaos.s3lab import S3Lab, s3_lab
from fixtures.bigfile import write_wav
from musicfs.origins.retry import BACKOFF
from musicfs.store.fill import FIRST_BLOCK
from tests.harness import MountedLibrary, mount_library, mount_status, mounted_tracks, settled
from tests.s3server import DUMMY_SECRET, MotoServer, aws_env, write_credentials

BIG_SIZE = 6 * 1024 * 1024  # several fill blocks: reads after a fault need bytes not fetched before it
TAKES = [f"Recordings/take-{i}.wav" for i in range(3)]  # no spaces: their URL paths are literal
SLACK = 1.0  # seconds allowed beyond read_timeout for an EIO to reach the reader
FIRST_PART = FIRST_BLOCK // 2  # read before a fault: the first fill block always yields this much


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[S3Lab]:
    """Three big WAVs (seeded noise: no dedup between them) in a bucket behind the fault proxy."""
    work = tmp_path_factory.mktemp("s3faults")
    data = {}
    for i, real in enumerate(TAKES):
        data[real] = write_wav(work / f"take-{i}.wav", BIG_SIZE, seed=300 + i).read_bytes()
    with s3_lab(work, data) as lab:
        yield lab


def reader_counters(mounted: MountedLibrary) -> dict:
    return mount_status(mounted.mountpoint)["reader"]


def origin_status(mounted: MountedLibrary, origin_id: str = "bucket") -> dict:
    return next(o for o in mount_status(mounted.mountpoint)["origins"] if o["id"] == origin_id)


def log_lines(mounted: MountedLibrary, *words: str) -> list[str]:
    """Lines of the daemon's log holding every one of ``words``."""
    return [line for line in mounted.log_text().splitlines() if all(word in line for word in words)]


@pytest.mark.req("FAULT-9", "NFR-7.3", "NFR-7.2")
def test_f09_throttling_and_5xx_pages_are_retried_quietly_and_retry_after_is_honoured(lab, proxy, tmp_path):
    """A throttling server is given the time it asks for, but never more than the read's deadline.

    Asking again before Retry-After only earns another refusal (and on B2 or
    S3 a longer penalty); waiting past read_timeout would hang a player. A
    load balancer's "502 Bad Gateway" page is retried like any server error.
    Retries that work are routine: not one line at WARNING (the daemon's
    level) about them; the read that gives up is one WARNING.
    """
    read_timeout = 5.0  # room for three 1 s waits, and short enough to be below a 30 s Retry-After
    first, second, third = TAKES
    config = lab.config(tmp_path / "musicfs.toml", read_timeout)
    with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)

        # three "slow down, retry after 1 s": the read waits them out instead of hammering
        proxy.busy(3, retry_after=1, method="GET", path_prefix=lab.object_path())
        started = time.monotonic()
        assert_exact(lab.expected, tracks[first], first)
        elapsed = time.monotonic() - started
        waits = proxy.waits_after_refusals("GET", lab.object_path(first))
        assert len(waits) == 3, f"expected 3 refused GETs of {first}, then a retry: {waits}"
        assert min(waits) >= 0.9, f"asked again {min(waits):.2f} s after a Retry-After of 1 s"
        assert elapsed >= 2.7, f"read in {elapsed:.2f} s: the Retry-After waits did not happen"

        # a 502 with an HTML body (a proxy's error page, not S3's XML), twice: retried, then exact
        earlier = len(proxy.requests("GET", lab.object_path(third)))  # the scan read its tags
        proxy.page(2, 502, BAD_GATEWAY_PAGE, method="GET", path_prefix=lab.object_path())
        assert_exact(lab.expected, tracks[third], third)
        statuses = [s.status for s in proxy.requests("GET", lab.object_path(third))[earlier:]]
        assert statuses[:3] == [502, 502, 206], statuses
        assert origin_status(mounted)["failed_attempts"] == 5  # 3 throttled, 2 bad gateways
        assert not log_lines(mounted, first) and not log_lines(mounted, third), (
            f"retries that worked were logged at WARNING:\n{mounted.log_text()}")

        # retry after 30 s, read_timeout 4 s: the deadline wins, EIO in bounded time
        proxy.busy(None, retry_after=30, method="GET", path_prefix=lab.object_path())
        assert_eio_within(tracks[second], read_timeout + SLACK)
        refused = [s for s in proxy.requests("GET", lab.object_path(second)) if s.refused]
        assert 1 <= len(refused) <= 2, f"{len(refused)} GETs while told to wait 30 s: hammering"
        gave_up = log_lines(mounted, "WARNING", f"reading {second} at 0 failed after")
        assert len(gave_up) == 1, f"the read that gave up is not one WARNING:\n{mounted.log_text()}"
        assert "503 SlowDown" in gave_up[0], gave_up[0]
        assert not log_lines(mounted, "retrying")
        assert mounted.alive()

        proxy.clear()  # the server takes requests again: the same mount reads the same file
        settled(mounted.mountpoint)  # the failed fill has ended (its state is not reused)
        assert_exact(lab.expected, tracks[second], second)
        assert mounted.alive()
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == 3  # every read was kept, exact


BACKOFF_TOLERANCE = 0.3  # seconds a wait may run over its step (+10 % jitter): threads, a loaded machine


def assert_backoff_schedule(waits: list[float], what: str) -> None:
    """Three refusals then a success: asked again after 100 ms, 500 ms, 2 s (NFR-7.3), each at least
    its step and at most its step plus the jitter (10 %) and scheduling slack: growing, never a tight loop."""
    assert len(waits) == 3, f"{what}: expected 3 refused GETs, then the retry that worked: {waits}"
    for wait, step in zip(waits, BACKOFF):
        assert step <= wait <= step * 1.1 + BACKOFF_TOLERANCE, (
            f"{what}: asked again after {[round(w, 3) for w in waits]} s, not {list(BACKOFF)} s")
    assert waits[0] < waits[1] < waits[2], f"{what}: the delays do not grow: {waits}"
    print(f"{what}: asked again after {', '.join(f'{w * 1000:.0f}' for w in waits)} ms")


@pytest.mark.req("B2-3", "NFR-7.3")
def test_429_and_503_through_the_mount_are_retried_on_the_backoff_schedule(lab, proxy, tmp_path):
    """A throttling server (429 Too Many Requests; 503 SlowDown, the S3 and B2 form) under a mount.

    Each scenario refuses a file's first three GETs. Without ``Retry-After`` the
    mount asks again after 100 ms, 500 ms and 2 s, measured between the
    requests' arrivals at the proxy; with ``Retry-After: 1.5`` it waits at least
    that long instead of the 100 ms step. Every read is byte-exact, no read
    fails, and retries that worked are not WARNINGs.
    """
    config = lab.config(tmp_path / "musicfs.toml", read_timeout=8.0)  # room for 0.1 + 0.5 + 2 s of waits
    first, second, third = TAKES
    with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        for real, status, code in ((first, 429, "TooManyRequests"), (second, 503, "SlowDown")):
            proxy.busy(3, retry_after=None, status=status, code=code, method="GET",
                       path_prefix=lab.object_path())
            assert_exact(lab.expected, tracks[real], real)
            refused = [s.status for s in proxy.requests("GET", lab.object_path(real)) if s.refused]
            assert refused == [status] * 3, refused
            assert_backoff_schedule(proxy.waits_after_refusals("GET", lab.object_path(real)), f"{status} {code}")

        proxy.busy(2, retry_after=1.5, status=503, code="SlowDown", method="GET", path_prefix=lab.object_path())
        assert_exact(lab.expected, tracks[third], third)
        waits = proxy.waits_after_refusals("GET", lab.object_path(third))
        assert len(waits) == 2 and min(waits) >= 1.5, f"Retry-After 1.5 s, asked again after {waits} s"
        assert max(waits) <= 2.0 * 1.1 + BACKOFF_TOLERANCE, f"waited longer than asked: {waits}"

        assert origin_status(mounted)["failed_attempts"] == 8  # 3 + 3 + 2, every one retried
        assert settled(mounted.mountpoint)["reader"]["fills_failed"] == 0
        assert not log_lines(mounted, "WARNING"), f"retries that worked were WARNINGs:\n{mounted.log_text()}"
        assert mounted.alive()
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == len(TAKES)


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
        assert "retrying" not in log  # the refused attempt was retried and worked: routine, not a WARNING
        for secret in (old[1], new[1]):
            assert secret not in log
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == len(TAKES)


@pytest.mark.req("FAULT-13", "NFR-7.2")
def test_f13_an_expired_token_is_reloaded_once_and_the_read_goes_on(lab, proxy, tmp_path):
    """S3 answers an expired session token with 400 ExpiredToken, B2 with 401 expired_auth_token.

    Each is met once, in the middle of a file: one credential reload each,
    the retry is signed by the reloaded client and succeeds, the bytes are
    exact, and neither the secret nor the session token reaches the log.
    """
    token = f"musicfs-session-{uuid.uuid4().hex}"
    env = {**aws_env(tmp_path / "aws"), "AWS_SESSION_TOKEN": token}
    config = lab.config(tmp_path / "musicfs.toml", read_timeout=8.0)
    with mount_library(config=config, work=tmp_path / "work", env=env) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        for reloads, (real, status, code) in enumerate(
                [(TAKES[0], 400, "ExpiredToken"), (TAKES[1], 401, "expired_auth_token")], start=1):
            path = lab.object_path(real)
            with open(tracks[real], "rb") as f:
                start = f.read(FIRST_PART)  # the first block is in: the token expires under the fill
                proxy.error(1, status, code, "The provided token has expired.", method="GET",
                            path_prefix=path)
                assert start + f.read() == lab.data[real], f"{real}: wrong bytes after the reload"
            statuses = [s.status for s in proxy.requests("GET", path)]
            assert status in statuses, f"{code} was never answered: {statuses}"
            after = statuses[statuses.index(status) + 1:]
            assert after and set(after) == {206}, f"GETs after the expired token: {statuses}"
            assert origin_status(mounted)["credential_reloads"] == reloads
        assert settled(mounted.mountpoint)["reader"]["fills_failed"] == 0
        log = mounted.log_text()
        assert DUMMY_SECRET not in log and token not in log, "a secret reached the daemon log"
        assert "retrying" not in log
        assert mounted.alive()
    assert assert_cache_sound(mounted.cache_dir, lab.expected) >= 2


@pytest.mark.req("FAULT-10", "G3", "NFR-7.2")
def test_f10_an_origin_that_404s_or_serves_a_login_page_fails_over_and_nothing_of_it_is_cached(
        lab, proxy, tmp_path):
    """The bucket (first by priority) loses its objects, then sits behind a captive portal; a local
    replica holds the same files. Reads fail over and are exact, never ENOENT, and nothing the bad
    origin served (the login page) is in the cache."""
    backup = lab.local_copy(tmp_path / "backup")
    config = lab.config(tmp_path / "musicfs.toml", read_timeout=6.0, backup=backup, health_interval=0.5)
    with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == set(TAKES)  # two origins, one tree

        proxy.reset()  # forget the scan's requests (it read every file's tags)
        proxy.missing(path_prefix=lab.object_path())  # an empty bucket: 404 NoSuchKey for every object
        first = TAKES[0]
        try:
            assert_exact(lab.expected, tracks[first], first)
        except OSError as exc:
            assert exc.errno != errno.ENOENT, "404 from one origin became ENOENT though another has it"
            raise
        assert {s.status for s in proxy.requests("GET", lab.object_path(first))} == {404}
        assert reader_counters(mounted)["failovers"] > 0

        proxy.clear()
        proxy.page(None, 200, LOGIN_PAGE, method="GET", path_prefix=lab.object_path())  # captive portal
        second = TAKES[1]
        assert_exact(lab.expected, tracks[second], second)
        portal = [s for s in proxy.requests("GET", lab.object_path(second)) if s.refused]
        assert portal and {s.status for s in portal} == {200}, "the login page was never served"
        assert origin_status(mounted)["failed_reads"] >= 1
        assert mounted.alive()

        proxy.clear()  # the bucket is itself again: it serves (and its reads are exact)
        third = TAKES[2]
        os.stat(tracks[third])
        assert_exact(lab.expected, tracks[third], third)
        assert settled(mounted.mountpoint)["reader"]["fills_failed"] == 0
    assert assert_cache_sound(mounted.cache_dir, lab.expected) == len(TAKES)


@dataclass
class Storm:
    """What an application re-opening an uncached file in a tight loop met, and caused."""

    seconds: float
    opens: int
    errors: list[int]  # errno of each failed open-and-read
    gets: int  # GETs of the file that reached the server
    others: int  # other requests that reached it (health probes)
    first_lines: list[str]  # daemon log lines written up to the end of the first failed read
    later_lines: list[str]  # and after it


def request_storm(lab: S3Lab, proxy: FaultProxy, tmp_path: Path, seconds: float = 5.0) -> Storm:
    """Re-open TAKES[0] as fast as possible for ``seconds`` with the server down, then bring it back."""
    config = lab.config(tmp_path / "musicfs.toml", read_timeout=4.0, health_interval=0.5)
    with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
        path = mounted_tracks(mounted.mountpoint)[TAKES[0]]
        log_before = len(mounted.log_text().splitlines())
        first_end = None
        proxy.reset()
        proxy.drop()  # the server is down: every request's connection closes unanswered
        started, opens, errors = time.monotonic(), 0, []
        while time.monotonic() - started < seconds:
            opens += 1
            try:
                with open(path, "rb") as f:
                    f.read(128 * 1024)
            except OSError as exc:
                errors.append(exc.errno)
            else:
                raise AssertionError("a read of an uncached file succeeded with the origin down")
            if first_end is None:
                time.sleep(0.2)  # what the first failure logs has reached the log
                first_end = len(mounted.log_text().splitlines())
        elapsed = time.monotonic() - started
        gets = len(proxy.requests("GET", lab.object_path(TAKES[0])))
        lines = mounted.log_text().splitlines()
        storm = Storm(elapsed, opens, errors, gets, proxy.count - gets, lines[log_before:first_end],
                      lines[first_end:])
        assert mounted.alive()
        proxy.clear()
        settled(mounted.mountpoint)
        assert_exact(lab.expected, path, TAKES[0])  # the storm left nothing sticky behind
    assert_cache_sound(mounted.cache_dir, lab.expected)
    return storm


@pytest.fixture(scope="module")
def storm(lab, tmp_path_factory) -> Storm:
    """One storm, judged by the two tests below."""
    try:
        return request_storm(lab, lab.proxy, tmp_path_factory.mktemp("storm"))
    finally:
        lab.proxy.reset()


@pytest.mark.req("FAULT-15", "NFR-7.3", "NFR-7.2")
def test_f15_a_request_storm_during_an_outage_reaches_the_origin_at_the_pace_of_the_backoff(storm):
    """An application re-opens an uncached file as fast as it can for 5 s while the origin is down.

    The origin is asked at most at the pace of the retry schedule (4
    attempts per 2.6 s of backoff: about 1.5 a second, whatever the
    application does), and the daemon's own account of it is two lines (the
    origin offline, one read giving up with its attempts), not one per read.
    """
    assert set(storm.errors) == {errno.EIO}, storm.errors
    assert storm.gets / storm.seconds <= 2.0, (
        f"{storm.gets} GETs in {storm.seconds:.1f} s for {storm.opens} opens: the origin is hammered")
    assert storm.others / storm.seconds <= 3.0, f"{storm.others} other requests in {storm.seconds:.1f} s"
    lines = storm.first_lines + storm.later_lines
    assert len([line for line in lines if re.search(r"failed after \d+ attempts? in", line)]) == 1, lines
    assert len([line for line in lines if "origin bucket is offline" in line]) == 1, lines


@pytest.mark.req("FAULT-15")
def test_f15_a_request_storm_during_an_outage_adds_no_log_lines_after_the_first_failure(storm):
    """After the first failed read has been reported, the same failure again and again adds nothing."""
    assert len(storm.errors) >= 2
    assert storm.later_lines == [], (
        f"{len(storm.later_lines)} lines for {len(storm.errors) - 1} more failed reads:\n"
        + "\n".join(storm.later_lines))
