"""Credentials that expire are renewed before they do, in the background (B2-4).

Temporary credentials (an assumed role, ``credential_process``, SSO, an
instance role; on B2 an authorization token valid 24 h) come with an expiry.
Waiting for the server to refuse them would fail, or at least delay, the
reads in flight at that moment; renewing on the request path (what botocore
does by itself within 15 minutes of the expiry) would, for credentials that
live less than that, run the credential process before every request.
So the S3 origin freezes the credentials it signs with and a
:class:`CredentialRenewer` thread renews them when a sixth of their lifetime
is left (24 h tokens after 20 h, as seed 000 recommends; an hour's STS
credentials 10 minutes early), but at least a minute early, since a
credential process may take seconds (credentials that live under two minutes:
half-way through). Renewal builds a new client, which replaces
the old one for the next request; requests in flight finish on the old one.
A renewal that fails is retried (every quarter of the time left, between 1 s
and 60 s) until the credentials expire and after; the refusal path of
:mod:`musicfs.origins.s3` stays as the last resort (a laptop that slept
through the expiry).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

REFRESH_FRACTION = 1 / 6  # renewed when this much of the lifetime is left (24 h -> after 20 h)
MIN_MARGIN = 60.0  # seconds: but never later than this before the expiry (or half-way, if sooner)
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds between attempts after a failed renewal


def session_credentials(session) -> tuple[object | None, float | None]:
    """The credentials a botocore session finds, frozen, and when they expire (epoch seconds, or None).

    Freezing stops botocore from refreshing them by itself on the request path;
    the expiry (botocore keeps it in ``_expiry_time``; no public accessor) is
    what :class:`CredentialRenewer` schedules the renewal from.
    """
    credentials = session.get_credentials()
    if credentials is None:
        return None, None
    expiry = getattr(credentials, "_expiry_time", None)
    if expiry is not None:  # no refresh when reading them now: they were fetched a moment ago
        credentials._advisory_refresh_timeout = credentials._mandatory_refresh_timeout = 0
    return credentials.get_frozen_credentials(), (expiry.timestamp() if expiry is not None else None)


def renewal_time(issued: float, expires: float) -> float:
    """When credentials fetched at ``issued`` that expire at ``expires`` are due for renewal."""
    lifetime = max(0.0, expires - issued)
    return expires - min(max(lifetime * REFRESH_FRACTION, MIN_MARGIN), lifetime / 2)


class CredentialRenewer:
    """Calls ``renew()`` in a daemon thread when the credentials last :meth:`schedule`\\ d are due.

    ``renew`` fetches new credentials and calls :meth:`schedule` with them; it
    raises when it cannot. Nothing runs (no thread is started) while the
    credentials have no expiry.
    """

    def __init__(self, what: str, renew: Callable[[], None]):
        self._what, self._renew = what, renew
        self._cond = threading.Condition()
        self._issued: float | None = None
        self._expires: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.renewals = 0  # successful renewals
        self.failures = 0  # failed attempts
        self.last_margin: float | None = None  # seconds before the expiry the last renewal was made

    @property
    def expires(self) -> float | None:
        with self._cond:
            return self._expires

    def schedule(self, issued: float, expires: float | None) -> None:
        """The credentials now in use were fetched at ``issued`` and expire at ``expires`` (None: never)."""
        with self._cond:
            self._issued, self._expires = issued, expires
            if expires is not None and self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=f"renew {self._what}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _next_attempt(self, not_before: float) -> float | None:
        """Under the lock: wait until a renewal is due; its expiry, or None once closed."""
        while not self._closed:
            if self._expires is None or self._issued is None:
                self._cond.wait()  # static keys for now (a reload may bring expiring ones)
                continue
            left = max(renewal_time(self._issued, self._expires), not_before) - time.time()
            if left <= 0:
                return self._expires
            self._cond.wait(left)
        return None

    def _run(self) -> None:
        not_before = 0.0  # no attempt before this (after a failure, or credentials born nearly expired)
        while True:
            with self._cond:
                expires = self._next_attempt(not_before)
            if expires is None:
                return
            started = time.time()
            try:
                self._renew()
            except Exception as exc:  # the source failed: keep the old credentials, try again
                self.failures += 1
                wait = min(RETRY_MAX, max(RETRY_MIN, (expires - started) / 4))
                not_before = time.time() + wait
                log.warning("%s: renewing credentials that expire in %.0f s failed (%s); trying again in "
                            "%.0f s", self._what, expires - started, type(exc).__name__, wait)
                continue
            self.renewals += 1
            self.last_margin = expires - started
            not_before = time.time() + RETRY_MIN  # never a busy loop, whatever the source hands out
            log.info("%s: renewed credentials %.1f s before they expired", self._what, self.last_margin)
