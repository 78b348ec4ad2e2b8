"""Reading a range of a file from the best of its replicas, with failover and retries (G3, NFR-7.3).

Used by fills and by the reads that bypass them (seeks far ahead, chunks
fetched again). Replicas are tried healthier first, then by priority; every
failure is logged and published, and the health monitor hears of each
outcome.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..errors import NotFound, OriginUnavailable
from ..events import EventBus, OriginError
from ..origins.retry import call_with_retry
from .digest import digest
from .filestate import FileState, ReaderCounters

log = logging.getLogger(__name__)


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

    async def fetch(self, state: FileState, offset: int, size: int) -> tuple[bytes, str]:
        """Bytes from the best replica, and which origin served them: healthier first, then by priority (federation, G3).

        With several replicas, each but the last gets one attempt within a share of
        the deadline, so a failing or too slow origin fails over at once; the last
        gets the whole retry schedule (NFR-7.3) in what time is left.
        """
        replicas = [o for o in state.replicas if o in self.origins] or [state.origin_id]
        if self.health is not None:
            replicas = self.health.ranked(replicas)
        deadline = trio.current_time() + self.read_timeout
        share = self.read_timeout / len(replicas)
        failures = []
        for i, origin_id in enumerate(replicas):
            last = i == len(replicas) - 1
            origin = self.origins.get(origin_id)
            if origin is None:
                failures.append(f"{origin_id}: not configured")
                continue
            self.counters.origin_requests += 1
            try:
                data = await call_with_retry(
                    origin.read_range, state.real_path, offset, size, limiter=self.limiter,
                    deadline=deadline if last else min(deadline, trio.current_time() + share),
                    attempts=4 if last else 1, on_error=self.on_error(origin_id, state, offset))
            except NotFound:
                failures.append(f"{origin_id}: missing")
                if len(replicas) == 1:
                    raise
                continue
            except OriginUnavailable as exc:
                failures.append(f"{origin_id}: {exc}")
                if self.health is not None:
                    self.health.read_failed(origin_id, str(exc))
                continue
            if self.health is not None:
                self.health.read_succeeded(origin_id)
            if origin_id != state.origin_id:
                self.counters.failovers += 1
            self.counters.origin_bytes += len(data)
            return data, origin_id
        raise OriginUnavailable(f"{state.real_path}: no replica could be read ({'; '.join(failures)})")

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
        log.error("%s: origins %s and %s hold different bytes at %d; not mixing them (rescan or "
                  "fix the copies)", state.real_path, before, origin_id, ref.offset)
        raise OriginUnavailable(f"{state.real_path}: replica {origin_id} differs from {before}")

    def on_error(self, origin_id: str, state: FileState, offset: int):
        def on_error(exc: BaseException, attempt: int) -> None:
            log.warning("origin %s: reading %s at %d failed (attempt %d): %s", origin_id,
                        state.real_path, offset, attempt, exc)
            self.bus.publish(OriginError(origin_id, state.real_path, str(exc), attempt))
        return on_error
