"""Reading a range of a file from the best of its replicas, with failover and retries (G3, NFR-7.3).

Used by fills and by the reads that bypass them (seeks far ahead, chunks
fetched again). Replicas are tried healthier first, then by priority, and
replicas that served this file wrong bytes before go last; every failure is
logged and published, and the health monitor hears of each outcome.

Bytes whose checksum is known in advance (a chunk of a file mapped before:
its address is its hash) are checked as they arrive: wrong bytes are a
failure of that replica, retried and failed over like any other, never
returned. A file the index lists but an origin no longer holds is an origin
failure too (EIO, "rescan"), not ENOENT: the tree still shows the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ..digest import digest
from ..errors import NotFound, OriginUnavailable
from ..events import ChecksumMismatch, EventBus, OriginError
from ..origins.retry import call_with_retry
from .filestate import FileState, ReaderCounters

log = logging.getLogger(__name__)


class ReplicaDiffers(OriginUnavailable):
    """Two replicas of a file hold different bytes where they should be the same."""


class WrongBytes(OriginUnavailable):
    """An origin answered with bytes that fail a checksum known in advance."""

    MARK = "served wrong bytes"  # kept in the message when retries wrap it


class ReplicaFetcher:
    def __init__(self, origins: dict, bus: EventBus, counters: ReaderCounters, *, read_timeout: float,
                 limiter: trio.CapacityLimiter, health: Any = None):
        """``limiter`` bounds the origin calls in flight (they mostly wait on a network);
        ``health`` (a HealthMonitor) ranks the replicas and hears how reads went."""
        self.origins = origins
        self.bus = bus
        self.counters = counters
        self.read_timeout = read_timeout
        self.limiter = limiter
        self.health = health

    async def fetch(self, state: FileState, offset: int, size: int, *,
                    accept: Callable[[bytes], bool] | None = None) -> tuple[bytes, str]:
        """Bytes from the best replica, and which origin served them: healthier first, then by priority (federation, G3).

        With several replicas, each but the last gets one attempt within a share of
        the deadline, so a failing or too slow origin fails over at once; the last
        gets the whole retry schedule (NFR-7.3) in what time is left. ``accept``
        checks the bytes (a known chunk's hash): rejected bytes count as a failed
        attempt of that replica.
        """
        replicas = [o for o in state.replicas if o in self.origins] or [state.origin_id]
        if self.health is not None:
            replicas = self.health.ranked(replicas)
        replicas.sort(key=lambda o: o in state.suspects)  # stable: suspects last, order kept otherwise
        deadline = trio.current_time() + self.read_timeout
        share = self.read_timeout / len(replicas)
        failures = []
        missing = 0
        for i, origin_id in enumerate(replicas):
            last = i == len(replicas) - 1
            origin = self.origins.get(origin_id)
            if origin is None:
                failures.append(f"{origin_id}: not configured")
                continue
            self.counters.origin_requests += 1
            read = origin.read_range if accept is None else self._checked(origin, origin_id, accept)
            try:
                data = await call_with_retry(
                    read, state.real_path, offset, size, limiter=self.limiter,
                    deadline=deadline if last else min(deadline, trio.current_time() + share),
                    attempts=4 if last else 1, on_error=self.on_error(origin_id, state, offset))
            except NotFound:
                failures.append(f"{origin_id}: missing")
                missing += 1
                continue
            except OriginUnavailable as exc:
                failures.append(f"{origin_id}: {exc}")
                if WrongBytes.MARK in str(exc):  # it answers, with the wrong bytes: not a health matter
                    self.counters.checksum_mismatches += 1
                    self.bus.publish(ChecksumMismatch(origin_id, state.real_path, str(exc)))
                    log.error("origin %s served wrong bytes for %s at %d (not the file's known chunk "
                              "map): not kept; trying the other replicas", origin_id, state.real_path, offset)
                elif self.health is not None:
                    self.health.read_failed(origin_id, str(exc))
                continue
            if self.health is not None:
                self.health.read_succeeded(origin_id)
            if origin_id != state.origin_id:
                self.counters.failovers += 1
            self.counters.origin_bytes += len(data)
            by_origin = self.counters.bytes_by_origin
            by_origin[origin_id] = by_origin.get(origin_id, 0) + len(data)
            return data, origin_id
        if missing == len(replicas):
            raise OriginUnavailable(f"{state.real_path} is listed but no origin holds it any more "
                                    f"({', '.join(replicas)}): rescan the library")
        raise OriginUnavailable(f"{state.real_path}: no replica could be read ({'; '.join(failures)})")

    @staticmethod
    def _checked(origin, origin_id: str, accept: Callable[[bytes], bool]):
        """``origin.read_range`` raising :class:`WrongBytes` for bytes ``accept`` rejects (in the thread)."""
        def read(path: str, offset: int, size: int) -> bytes:
            data = origin.read_range(path, offset, size)
            if not accept(data):
                raise WrongBytes(f"origin {origin_id} {WrongBytes.MARK} for {path} at {offset} "
                                 f"(they do not match the file's known chunk map)")
            return data
        return read

    async def check_replica(self, state: FileState, origin_id: str, before: str) -> None:
        """A fill moved to another replica: it must hold the bytes already cut, or the file would mix two.

        The same path and size on two origins is taken for one file; this proves
        it on the last chunk cut so far (its hash is its address) before any of
        the new replica's bytes are kept.
        """
        ref = state.chunks[-1]
        data = await call_with_retry(
            self.origins[origin_id].read_range, state.real_path, ref.offset, ref.size,
            limiter=self.limiter, deadline=trio.current_time() + self.read_timeout,
            on_error=self.on_error(origin_id, state, ref.offset))
        if len(data) == ref.size and digest(data) == ref.address:
            return
        self.counters.replica_mismatches += 1
        log.error("%s: origins %s and %s hold different bytes at %d; not mixing them (the fill goes on "
                  "from %s if it can; rescan or fix the copies)", state.real_path, before, origin_id,
                  ref.offset, before)
        raise ReplicaDiffers(f"{state.real_path}: replica {origin_id} differs from {before}")

    def on_error(self, origin_id: str, state: FileState, offset: int):
        """What ``call_with_retry`` calls with each failed attempt (a :class:`~musicfs.origins.retry.Failure`).

        Every attempt is published. An attempt that is retried is logged at
        INFO, the one that gives up at WARNING with the times of all of them:
        a retry that works is routine, not news. The health monitor, when
        there is one, does the logging, so that an outage stays a few lines.
        """
        what = f"reading {state.real_path} at {offset}"

        def on_error(failure) -> None:
            self.bus.publish(OriginError(origin_id, state.real_path, str(failure.error), failure.attempt))
            if self.health is not None:
                self.health.attempt_failed(origin_id, what, failure)
            else:
                log.log(logging.WARNING if failure.final else logging.INFO, "origin %s: %s", origin_id,
                        failure.describe(what))
        return on_error
