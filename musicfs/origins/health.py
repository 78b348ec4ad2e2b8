"""Origin health: periodic probes plus what reads observe, as healthy / degraded / unhealthy.

A probe is the origin's own ``health()`` run in a worker thread with a time
limit. A probe that fails, or a read that fails after its retries, makes the
origin *unhealthy*; a slow probe (over ``slow_ms``) or a recent read failure
on an otherwise answering origin makes it *degraded*. A success clears it.
Readers ask :meth:`HealthMonitor.ranked` for the order to try replicas in;
status.json and metrics read :meth:`statistics`. Nothing here blocks the loop.

The monitor also keeps the log readable through an outage (a storm of
reads of an unreachable origin must not become a storm of log lines):

* going offline (unhealthy) and coming back (healthy or degraded) are
  logged once per transition, both at WARNING, so a log filtered at
  WARNING never shows an origin offline for good after it came back;
* a failed attempt that is retried is logged at INFO (:meth:`attempt_failed`);
* a read that gives up is logged at WARNING with the times of its attempts,
  at most once per ``quiet`` seconds per origin: the others are counted,
  and the next line (or the "recovered" line) says how many there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..errors import MusicFSError
from ..events import EventBus, OriginConnected, OriginDisconnected
from .base import Health, Origin
from .retry import Failure

log = logging.getLogger(__name__)

_RANK = {"healthy": 0, "unknown": 1, "degraded": 2, "unhealthy": 3}
QUIET = 60.0  # seconds: at most one WARNING per origin about reads that gave up in this long


@dataclass
class _Record:
    """What the monitor counts of one origin's reads, beyond its state."""

    failed_attempts: int = 0  # origin calls made for reads that failed (each retry counts)
    failed_reads: int = 0  # reads that gave up on this origin after their attempts
    offline_since: float | None = None  # time.time() it went offline; None while reachable
    outage_failures: int = 0  # reads that gave up since it went offline
    unlogged: int = 0  # reads that gave up and were only counted (not logged) so far
    unlogged_since: float = 0.0  # time.time() of the first of those
    logged_at: float = float("-inf")  # time.monotonic() of the last WARNING about a read giving up


class HealthMonitor:
    def __init__(self, origins: dict[str, Origin], priorities: dict[str, int], *, interval: float = 30.0,
                 timeout: float = 5.0, slow_ms: float = 1000.0,
                 on_change: Callable[[str, str, str], None] | None = None, bus: EventBus | None = None):
        """``bus`` gets an OriginDisconnected when an origin goes offline and an OriginConnected
        when it answers again (or first answers): once per transition, like the log lines."""
        self.origins = origins
        self.bus = bus
        self.priorities = priorities
        self.interval = interval
        self.timeout = timeout
        self.slow_ms = slow_ms
        self.on_change = on_change
        self.health = {origin_id: Health() for origin_id in origins}
        self.records = {origin_id: _Record() for origin_id in origins}
        self.quiet = QUIET
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
            self._log_transition(origin_id, before, state, error)
            probed = health.latency_ms if latency_ms is not None else None  # this probe's, not an old one
            self._publish_transition(origin_id, before, state, error, probed)
            if self.on_change:
                self.on_change(origin_id, before, state)

    def _log_transition(self, origin_id: str, before: str, state: str, error: str | None) -> None:
        """Offline and back are WARNINGs, once each per outage; other changes (degraded...) are INFO."""
        record = self.records[origin_id]
        if state == "unhealthy" and record.offline_since is None:
            record.offline_since, record.outage_failures = time.time(), 0
            log.warning("origin %s is offline: %s", origin_id, error or "no answer")
        elif state in ("healthy", "degraded") and record.offline_since is not None:
            lasted = time.time() - record.offline_since
            failed = record.outage_failures
            record.offline_since = None
            record.unlogged, record.logged_at = 0, float("-inf")  # counted here; a new outage logs anew
            log.warning("origin %s recovered (%s) after %.1f s offline; %d read%s failed meanwhile",
                        origin_id, state, lasted, failed, "" if failed == 1 else "s")
        else:
            log.info("origin %s is %s (was %s)%s", origin_id, state, before, f": {error}" if error else "")

    def _publish_transition(self, origin_id: str, before: str, state: str, error: str | None,
                            latency_ms: float | None) -> None:
        """Offline, and reachable again; healthy <-> degraded is no connection change."""
        if self.bus is None:
            return
        if state == "unhealthy":
            self.bus.publish(OriginDisconnected(origin_id, error or "no answer"))
        elif before in ("unhealthy", "unknown"):
            self.bus.publish(OriginConnected(origin_id, latency_ms))

    def attempt_failed(self, origin_id: str, what: str, failure: Failure) -> None:
        """A read's call to the origin failed (``what``: which read): count it, and log it quietly.

        Retried attempts are INFO. A read that gives up is a WARNING, with its
        attempts' times, unless one was logged for this origin in the last
        ``quiet`` seconds: then it is counted, and the next WARNING says so.
        """
        record = self.records.get(origin_id)
        if record is None:
            log.log(logging.WARNING if failure.final else logging.INFO, "origin %s: %s", origin_id,
                    failure.describe(what))
            return
        record.failed_attempts += 1
        if not failure.final:
            log.info("origin %s: %s", origin_id, failure.describe(what))
            return
        record.failed_reads += 1
        if record.offline_since is not None:
            record.outage_failures += 1
        now = time.monotonic()
        if now - record.logged_at < self.quiet:
            if not record.unlogged:
                record.unlogged_since = time.time()
            record.unlogged += 1
            log.info("origin %s: %s", origin_id, failure.describe(what))
            return
        record.logged_at = now
        more = self._unlogged_note(record)
        log.warning("origin %s: %s%s", origin_id, failure.describe(what), more)

    def _unlogged_note(self, record: _Record) -> str:
        if not record.unlogged:
            return ""
        note = (f" ({record.unlogged} more read{'s' if record.unlogged != 1 else ''} of it gave up since "
                f"{time.strftime('%H:%M:%S', time.localtime(record.unlogged_since))}, not logged one by one)")
        record.unlogged = 0
        return note

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
        except Exception as exc:  # a bug in an origin's client: the origin is not usable, the mount goes on
            log.error("origin %s: health probe failed unexpectedly", origin_id, exc_info=exc)
            self._set(origin_id, "unhealthy", f"{type(exc).__name__} in the probe")
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

    def any_unhealthy(self) -> bool:
        return any(h.state == "unhealthy" for h in self.health.values())

    def statistics(self) -> dict:
        return {origin_id: {"state": h.state, "latency_ms": h.latency_ms, "error": h.error,
                            "checked_at": h.checked_at, "priority": self.priorities.get(origin_id),
                            "kind": self.origins[origin_id].kind,
                            "location": self.origins[origin_id].location,
                            "offline_since": self.records[origin_id].offline_since,
                            "failed_attempts": self.records[origin_id].failed_attempts,
                            "failed_reads": self.records[origin_id].failed_reads,
                            **self.origins[origin_id].statistics()}
                for origin_id, h in self.health.items()}
