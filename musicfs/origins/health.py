"""Origin health: periodic probes plus what reads observe, as healthy / degraded / unhealthy.

A probe is the origin's own ``health()`` run in a worker thread with a time
limit. A probe that fails, or a read that fails after its retries, makes the
origin *unhealthy*; a slow probe (over ``slow_ms``) or a recent read failure
on an otherwise answering origin makes it *degraded*. A success clears it.
Readers ask :meth:`HealthMonitor.ranked` for the order to try replicas in;
status.json and metrics read :meth:`statistics`. Nothing here blocks the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ..errors import MusicFSError
from .base import Health, Origin

log = logging.getLogger(__name__)

_RANK = {"healthy": 0, "unknown": 1, "degraded": 2, "unhealthy": 3}


class HealthMonitor:
    def __init__(self, origins: dict[str, Origin], priorities: dict[str, int], *, interval: float = 30.0,
                 timeout: float = 5.0, slow_ms: float = 1000.0,
                 on_change: Callable[[str, str, str], None] | None = None):
        self.origins = origins
        self.priorities = priorities
        self.interval = interval
        self.timeout = timeout
        self.slow_ms = slow_ms
        self.on_change = on_change
        self.health = {origin_id: Health() for origin_id in origins}
        self.limiter = trio.CapacityLimiter(max(1, len(origins)))

    def _set(self, origin_id: str, state: str, error: str | None = None,
             latency_ms: float | None = None) -> None:
        health = self.health[origin_id]
        before = health.state
        health.state, health.error, health.checked_at = state, error, time.time()
        if latency_ms is not None:
            health.latency_ms = round(latency_ms, 2)
        health.failures = 0 if state == "healthy" else health.failures + 1
        if state != before:
            health.history = (health.history + [f"{time.strftime('%H:%M:%S')} {state}"])[-10:]
            log.log(logging.INFO if state == "healthy" else logging.WARNING,
                    "origin %s is %s%s", origin_id, state, f": {error}" if error else "")
            if self.on_change:
                self.on_change(origin_id, before, state)

    async def probe(self, origin_id: str) -> str:
        origin = self.origins[origin_id]
        started = time.monotonic()
        try:
            with trio.fail_after(self.timeout):
                await trio.to_thread.run_sync(origin.health, limiter=self.limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            self._set(origin_id, "unhealthy", f"no answer within {self.timeout:g} s")
        except (MusicFSError, OSError) as exc:
            self._set(origin_id, "unhealthy", str(exc))
        else:
            latency = (time.monotonic() - started) * 1000
            self._set(origin_id, "degraded" if latency > self.slow_ms else "healthy", None, latency)
        return self.health[origin_id].state

    async def run(self) -> None:
        """Probe every origin now and then every ``interval`` seconds, until cancelled."""
        while True:
            async with trio.open_nursery() as nursery:
                for origin_id in self.origins:
                    nursery.start_soon(self.probe, origin_id)
            await trio.sleep(self.interval)

    def read_failed(self, origin_id: str, error: str) -> None:
        if origin_id in self.health:
            self._set(origin_id, "unhealthy", error)

    def read_succeeded(self, origin_id: str) -> None:
        health = self.health.get(origin_id)
        if health is not None and health.state != "healthy":
            self._set(origin_id, "healthy")

    def ranked(self, origin_ids: list[str]) -> list[str]:
        """``origin_ids`` best first: healthier, then higher priority (lower number)."""
        return sorted(origin_ids, key=lambda o: (_RANK.get(self.health[o].state, 1) if o in self.health
                                                 else 3, self.priorities.get(o, 99), o))

    def statistics(self) -> dict:
        return {origin_id: {"state": h.state, "latency_ms": h.latency_ms, "error": h.error,
                            "checked_at": h.checked_at, "priority": self.priorities.get(origin_id),
                            "kind": self.origins[origin_id].kind,
                            "location": self.origins[origin_id].location,
                            **self.origins[origin_id].statistics()}
                for origin_id, h in self.health.items()}
