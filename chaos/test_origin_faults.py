"""The S3 and SFTP origins on a faulty wire: exact bytes or a clear error, in bounded time.

No mount here: each test calls ``read_range`` of a real origin (moto for S3,
OpenSSH's sshd for SFTP) reached only through the chaos proxy, injects one
fault, and checks three things: the call returns exactly the requested bytes
or raises :class:`OriginUnavailable` (never short or wrong bytes), it does so
within the origin's ``timeout`` plus some slack (a reader abandons a slow call,
but its thread and its connection stay taken until the call returns), and once the fault is gone the same origin object serves exact
bytes again (a broken connection is never reused).

The SFTP origin has a pool of one connection, so a connection left busy or
half-read by a fault shows up at once as the next read failing.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from musicfs.errors import OriginUnavailable
from musicfs.origins.base import Origin
from musicfs.origins.s3 import S3Origin
from musicfs.origins.sftp import SftpOrigin
from tests.s3server import aws_env, moto_server
from tests.sshserver import ssh_server

TIMEOUT = 2.0  # the origins' timeout option: what one whole read_range may take
SLACK = 1.0  # beyond TIMEOUT, for scheduling and the error's way back
BIG = "big.bin"
SMALL = "small.bin"
MiB = 1024 * 1024
KINDS = ("s3", "sftp")

kinds = pytest.mark.parametrize("kind", KINDS)
nfr_7_2 = pytest.mark.req("NFR-7.2")


@dataclass
class Lab:
    files: dict[str, bytes]
    proxies: dict  # kind -> toxiproxy-python Proxy in front of that kind's server
    origins: dict[str, Origin]  # kind -> origin reaching its server through the proxy

    def read(self, kind: str, path: str, offset: int, size: int) -> tuple[bytes | Exception, float]:
        """``read_range`` through the proxy: (the bytes or the OriginUnavailable raised, seconds taken)."""
        started = time.monotonic()
        try:
            result: bytes | Exception = self.origins[kind].read_range(path, offset, size)
        except OriginUnavailable as exc:
            result = exc
        return result, time.monotonic() - started

    def assert_exact(self, kind: str, path: str = BIG, offset: int = 12_345, size: int = MiB) -> float:
        result, elapsed = self.read(kind, path, offset, size)
        assert isinstance(result, bytes), f"{kind}: a fault-free read failed: {result}"
        assert result == self.files[path][offset:offset + size], f"{kind}: wrong bytes"
        return elapsed


@pytest.fixture(scope="module")
def lab(toxiproxy, tmp_path_factory):
    """moto and sshd, each holding the same files, each behind its own proxy; one origin per kind."""
    work = tmp_path_factory.mktemp("origin-faults")
    rng = random.Random(7)
    files = {BIG: rng.randbytes(3 * MiB), SMALL: rng.randbytes(10_000)}
    with ExitStack() as stack:
        env = stack.enter_context(pytest.MonkeyPatch.context())
        for name in [n for n in os.environ if n.startswith(("AWS_", "BOTO_"))]:
            env.delenv(name)  # only the dummy keys below; never ~/.aws or instance metadata
        for name, value in aws_env(work, base={}).items():
            env.setenv(name, value)
        s3 = stack.enter_context(moto_server())
        bucket = s3.create_bucket(files, prefix="music/")
        ssh = stack.enter_context(ssh_server())
        (ssh.root / "music").mkdir()
        for name, data in files.items():
            (ssh.root / "music" / name).write_bytes(data)
        proxies = {}
        for kind, port in (("s3", s3.port), ("sftp", ssh.port)):
            proxies[kind] = toxiproxy.create(upstream=f"127.0.0.1:{port}", listen="127.0.0.1:0",
                                             name=f"origin-faults-{kind}-{time.monotonic_ns()}")
            stack.callback(proxies[kind].destroy)
        s3_host, s3_port = proxies["s3"].listen.rsplit(":", 1)
        sftp_host, sftp_port = proxies["sftp"].listen.rsplit(":", 1)
        # sshd's host key is recorded for its own port: the proxy's port needs an entry of its own
        known_hosts = work / "known_hosts"
        key_type, key = (ssh.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        known_hosts.write_text(f"[{sftp_host}]:{sftp_port} {key_type} {key}\n")
        origins = {
            "s3": S3Origin.from_options("s3", {"bucket": bucket, "endpoint": f"http://{s3_host}:{s3_port}",
                                               "prefix": "music/", "region": "us-east-1",
                                               "timeout": TIMEOUT}),
            "sftp": SftpOrigin.from_options("sftp", ssh.options(
                host=sftp_host, port=int(sftp_port), path=str(ssh.root / "music"),
                known_hosts=str(known_hosts), timeout=TIMEOUT, pool_size=1)),
        }
        for origin in origins.values():
            stack.callback(origin.close)
        yield Lab(files, proxies, origins)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_in_thread(lab: Lab, kind: str, offset: int, size: int) -> tuple[threading.Thread, list]:
    """Start ``lab.read`` of BIG in a thread, as the store reader runs origin calls; its outcome lands in the list."""
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(lab.read(kind, BIG, offset, size)))
    worker.start()
    return worker, outcome


def finished(kind: str, worker: threading.Thread, outcome: list, within: float) -> tuple:
    """The (result, seconds) of a read started by :func:`read_in_thread`, once its thread has ended."""
    worker.join(within)
    assert not worker.is_alive(), f"{kind}: read_range still running after {within:.1f} s"
    assert outcome, f"{kind}: read_range raised something other than OriginUnavailable (traceback above)"
    return outcome[0]


def assert_unavailable(kind: str, result: bytes | Exception, elapsed: float, bound: float) -> str:
    assert isinstance(result, OriginUnavailable), (
        f"{kind}: expected OriginUnavailable, got {len(result)} bytes" if isinstance(result, bytes)
        else f"{kind}: expected OriginUnavailable, got {result!r}")
    assert elapsed <= bound, f"{kind}: the error took {elapsed:.2f} s (bound {bound:.1f} s)"
    return str(result)


@nfr_7_2
@kinds
def test_a_trickle_gives_up_within_the_timeout_and_frees_its_thread(lab, kind):
    """1 KB/s: every socket wait sees bytes, so only a budget for the whole call ends it.

    The whole 3 MiB file: over SFTP that is more requests than are sent at
    once, so some go out while the connection is already failing.
    """
    lab.assert_exact(kind)  # a connection is open before the fault
    threads = threading.active_count()
    lab.proxies[kind].add_toxic(type="bandwidth", name="trickle", attributes={"rate": 1})
    result, elapsed = finished(kind, *read_in_thread(lab, kind, 0, 3 * MiB), within=TIMEOUT + SLACK + 1)
    message = assert_unavailable(kind, result, elapsed, bound=TIMEOUT + SLACK)
    assert "too slow" in message and f"{TIMEOUT:g} s" in message, message
    assert elapsed >= TIMEOUT * 0.9, f"{kind}: gave up after {elapsed:.2f} s, before its time"
    lab.proxies[kind].destroy_toxic("trickle")
    lab.assert_exact(kind)  # with a pool of one, a connection still busy with the slow read would fail this
    assert wait_until(lambda: threading.active_count() <= threads, 2.0), (
        f"{kind}: {threading.active_count()} threads running, {threads} before the slow read")


@nfr_7_2
@kinds
def test_steady_but_slow_within_the_budget_is_exact(lab, kind):
    """1 MB/s for 1 MiB (about 1 s of a 2 s budget): slow is not too slow."""
    lab.assert_exact(kind)
    lab.proxies[kind].add_toxic(type="bandwidth", name="slow", attributes={"rate": 1000})
    elapsed = lab.assert_exact(kind, offset=777, size=MiB)
    assert 0.9 <= elapsed <= TIMEOUT, f"{kind}: 1 MiB at 1 MB/s took {elapsed:.2f} s"


@nfr_7_2
@kinds
def test_a_black_hole_fails_within_the_timeout(lab, kind):
    """Requests are swallowed and the connection held open: no answer ever comes.

    On the upstream stream: moto closes its connection after an answer, and a
    proxy closes both sides when one does, so a downstream hole would be a
    quick close rather than silence.
    """
    lab.assert_exact(kind)
    lab.proxies[kind].add_toxic(type="timeout", name="hole", stream="upstream", attributes={"timeout": 0})
    result, elapsed = lab.read(kind, BIG, 4096, 256 * 1024)
    assert_unavailable(kind, result, elapsed, bound=TIMEOUT + SLACK)
    lab.proxies[kind].destroy_toxic("hole")
    lab.assert_exact(kind)


@nfr_7_2
@kinds
@pytest.mark.parametrize("limit", [150, 300, 1_500, 300_000])
def test_a_body_cut_short_is_an_error_not_short_bytes(lab, kind, limit):
    """The connection closes after ``limit`` bytes: in the SSH handshake, or mid-body.

    For S3, 150 and 300 end inside the answer's headers (about 560 bytes from
    moto): before Content-Length, then between it and Content-Range. http.client
    takes such a stump for a whole answer with an empty body.
    """
    lab.assert_exact(kind)
    lab.proxies[kind].add_toxic(type="limit_data", name="cut", attributes={"bytes": limit})
    result, elapsed = lab.read(kind, BIG, 100, MiB)
    assert_unavailable(kind, result, elapsed, bound=TIMEOUT + SLACK)
    lab.proxies[kind].destroy_toxic("cut")
    lab.assert_exact(kind)


@nfr_7_2
@kinds
def test_a_reset_in_the_middle_of_a_body_is_an_error(lab, kind):
    """At 200 KB/s a 256 KiB read is under way when the peer resets the connection."""
    lab.assert_exact(kind)
    proxy = lab.proxies[kind]
    proxy.add_toxic(type="bandwidth", name="slow", attributes={"rate": 200})
    worker, outcome = read_in_thread(lab, kind, 1000, 256 * 1024)
    time.sleep(0.3)
    proxy.add_toxic(type="reset_peer", name="reset", attributes={"timeout": 0})
    result, elapsed = finished(kind, worker, outcome, within=TIMEOUT + SLACK)
    message = assert_unavailable(kind, result, elapsed, bound=TIMEOUT)
    assert "too slow" not in message, f"{kind}: the reset went unnoticed until the deadline: {message}"
    proxy.destroy_toxic("reset")
    proxy.destroy_toxic("slow")
    lab.assert_exact(kind)


@nfr_7_2
@kinds
def test_tiny_pieces_still_give_exact_bytes(lab, kind):
    """Every read on the socket is short (pieces of 100 to 1900 bytes)."""
    lab.assert_exact(kind)
    lab.proxies[kind].add_toxic(type="slicer", name="slices",
                                attributes={"average_size": 1000, "size_variation": 900, "delay": 20})
    lab.assert_exact(kind, offset=3, size=MiB - 7)
    lab.assert_exact(kind, path=SMALL, offset=9_000, size=5_000)  # short at the end of the file, rightly


@nfr_7_2
@kinds
def test_latency_still_gives_exact_bytes(lab, kind):
    """300 ms on every answer: a few round trips (SFTP: open, then the read), inside the budget.

    Reads are small: the proxy delays each 32 KiB it forwards by the latency,
    one after the other, so latency caps its throughput too.
    """
    lab.assert_exact(kind)
    lab.proxies[kind].add_toxic(type="latency", name="far", attributes={"latency": 300})
    elapsed = lab.assert_exact(kind, offset=MiB + 5, size=64 * 1024)
    assert 0.3 <= elapsed < TIMEOUT, f"{kind}: 64 KiB 300 ms away took {elapsed:.2f} s"
    elapsed = lab.assert_exact(kind, path=SMALL, offset=0, size=MiB)  # the whole small file
    assert 0.3 <= elapsed < TIMEOUT, f"{kind}: a small file 300 ms away took {elapsed:.2f} s"
