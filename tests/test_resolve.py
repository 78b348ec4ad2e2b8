"""Bounded name lookups (FAULT-12): a silent or failing resolver costs a request seconds at most, once.

The C library's lookup is replaced by a stand-in here (no name is ever sent
to this machine's resolver); chaos/test_dns_faults.py runs a real mount
against real resolvers on loopback.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from musicfs.errors import OriginUnavailable
from musicfs.origins import resolve
from musicfs.origins.resolve import NameCheck, needs_lookup

pytestmark = pytest.mark.req("FAULT-12")


class Resolver:
    """Stands in for ``socket.getaddrinfo``: answers, fails or hangs until told to go on."""

    def __init__(self):
        self.calls = 0
        self.error: OSError | None = None
        self.go_on = threading.Event()
        self.go_on.set()

    def __call__(self, host, port, *args, **kwargs):
        self.calls += 1
        self.go_on.wait(10)
        if self.error is not None:
            raise self.error
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


@pytest.fixture
def resolver(monkeypatch):
    fake = Resolver()
    monkeypatch.setattr(resolve.socket, "getaddrinfo", fake)
    yield fake
    fake.go_on.set()  # a lookup thread still waiting ends now


def timed(check: NameCheck) -> tuple[float, OriginUnavailable | None]:
    started = time.monotonic()
    try:
        check.check()
    except OriginUnavailable as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_a_silent_resolver_fails_requests_within_the_timeout_and_then_at_once(resolver):
    resolver.go_on.clear()  # the lookup hangs, as with a resolver that never answers
    check = NameCheck("s3.example.test", 443, "s3 origin 'b2'", timeout=0.3)
    took, error = timed(check)
    assert error is not None and "no answer" in str(error) and 0.25 <= took <= 1.0
    took, error = timed(check)  # the same lookup still hangs: no second wait, no second lookup
    assert error is not None and took < 0.05
    assert resolver.calls == 1
    resolver.go_on.set()  # the answer comes in the end: it serves the next request
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and timed(check)[1] is not None:
        time.sleep(0.01)
    assert timed(check) == (pytest.approx(0, abs=0.05), None)
    assert resolver.calls == 1  # and is kept for the ttl


def test_a_failing_lookup_is_fast_and_remembered_briefly(resolver):
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    check = NameCheck("gone.example.test", 443, "s3 origin 'b2'", retry_after=0.3)
    took, error = timed(check)
    assert error is not None and "cannot resolve 'gone.example.test'" in str(error) and took < 0.5
    assert "Name or service not known" in str(error)
    assert timed(check)[1] is not None and resolver.calls == 1  # remembered: no lookup per request
    time.sleep(0.35)
    resolver.error = None  # the name resolves again: the next request after retry_after sees it
    assert timed(check)[1] is None and resolver.calls == 2


def test_addresses_need_no_lookup():
    assert not needs_lookup("127.0.0.1") and not needs_lookup("[::1]") and not needs_lookup("::1")
    assert needs_lookup("localhost") and needs_lookup("s3.eu-central-003.backblazeb2.com")
