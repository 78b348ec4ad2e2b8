"""Name lookups of an origin's host, bounded in time, so an origin whose name does not resolve fails fast.

Why: the C library's resolver, which every HTTP and SSH client uses through
``getaddrinfo``, cannot be given a timeout. With a resolver that does not
answer, one lookup blocks for ``timeout`` x ``attempts`` x name servers of
``resolv.conf`` (10 s and more with the defaults), which a client's connect
timeout does not include: every request to such an origin would hold a
worker thread, and a reader, that long before failing over. A failed lookup
(NXDOMAIN, SERVFAIL) is fast, but would be asked again for every request.

So an origin asks :class:`NameCheck` before each request. A name that
resolved within ``ttl`` passes at once. Otherwise one lookup runs in a
daemon thread (never more than one per name), and callers wait for it at
most ``timeout`` seconds from its start; a lookup still running after that
fails every caller at once until it ends. A failed lookup is remembered for
``retry_after`` seconds. The lookup that was given up on goes on in its
thread, and its answer, when it comes, serves the next request.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

from ..errors import OriginUnavailable

RESOLVE_TIMEOUT = 1.5  # seconds a request waits for a name to resolve (healthy resolvers take ms)
RESOLVED_TTL = 60.0  # seconds a name that resolved is taken to resolve still
RETRY_AFTER = 1.0  # seconds a failed lookup is remembered before a request asks again


def needs_lookup(host: str) -> bool:
    """False for an IP address literal, which no resolver is asked about."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


class NameCheck:
    """Whether ``host`` resolves now, answered within ``timeout`` seconds (thread-safe)."""

    def __init__(self, host: str, port: int, what: str, *, timeout: float = RESOLVE_TIMEOUT,
                 ttl: float = RESOLVED_TTL, retry_after: float = RETRY_AFTER):
        self.host, self.port, self.what = host, port, what
        self.timeout, self.ttl, self.retry_after = timeout, ttl, retry_after
        self._lock = threading.Lock()
        self._good_until = float("-inf")  # time.monotonic() until which the name is taken to resolve
        self._failure: str | None = None  # why the last lookup failed
        self._failed_until = float("-inf")
        self._running: threading.Event | None = None  # set when the lookup under way ends
        self._started = 0.0  # time.monotonic() the lookup under way started
        self.lookups = 0  # lookups started (for statistics and tests)

    def check(self) -> None:
        """Return if the name resolves; raise :class:`OriginUnavailable` (within ``timeout``) if not."""
        now = time.monotonic()
        with self._lock:
            if now < self._good_until:
                return
            if self._running is None:
                if self._failure is not None and now < self._failed_until:
                    raise OriginUnavailable(self._failure)
                self._start()
            done, waited_from = self._running, self._started
        if not done.wait(max(0.0, waited_from + self.timeout - time.monotonic())):
            raise OriginUnavailable(f"{self.what}: the resolver gave no answer for {self.host!r} within "
                                    f"{self.timeout:g} s")
        with self._lock:
            if time.monotonic() < self._good_until:
                return
            raise OriginUnavailable(self._failure or f"{self.what}: cannot resolve {self.host!r}")

    def _start(self) -> None:
        """Start a lookup in a daemon thread (the lock is held)."""
        self._running, self._started = threading.Event(), time.monotonic()
        self.lookups += 1
        threading.Thread(target=self._lookup, args=(self._running,), name=f"resolve {self.host}",
                         daemon=True).start()

    def _lookup(self, done: threading.Event) -> None:
        failure = None
        try:
            socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            failure = f"{self.what}: cannot resolve {self.host!r}: {getattr(exc, 'strerror', None) or exc}"
        with self._lock:
            now = time.monotonic()
            if failure is None:
                self._good_until, self._failure = now + self.ttl, None
            else:
                self._failure, self._failed_until = failure, now + self.retry_after
            self._running = None
        done.set()
