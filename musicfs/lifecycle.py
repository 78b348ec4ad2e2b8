"""The mount's life: what state it is in, and how it is asked to stop.

One object the composition root owns and passes to whoever reports or
changes the state: the status (file and API), the control API's shutdown
route, the signal handler and live rescans. ``state`` is what a user sees:

* ``mounting`` until the filesystem answers, ``ready`` then;
* ``syncing`` while a rescan runs, ``degraded`` while an origin is unhealthy;
* ``unmounting`` once a shutdown was asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

STATES = ("mounting", "ready", "syncing", "degraded", "unmounting")


@dataclass(frozen=True)
class ShutdownRequest:
    force: bool  # True: unmount now; False: requests in flight finish first
    drain_timeout: float  # seconds they get at most
    reason: str  # "api", "SIGTERM", ...
    at: float  # unix time


class Lifecycle:
    def __init__(self, degraded: Callable[[], bool] = lambda: False):
        """``degraded()`` says whether an origin is unhealthy now (the health monitor's view)."""
        self._degraded = degraded
        self._mounted = False
        self._syncing = 0
        self.shutdown: ShutdownRequest | None = None
        self._asked = trio.Event()
        self.answering = trio.Event()  # set once the mount was seen answering a request

    @property
    def state(self) -> str:
        if self.shutdown is not None:
            return "unmounting"
        if not self._mounted:
            return "mounting"
        if self._syncing:
            return "syncing"
        return "degraded" if self._degraded() else "ready"

    def mounted(self) -> None:
        self._mounted = True

    def sync_started(self) -> None:
        self._syncing += 1

    def sync_ended(self) -> None:
        self._syncing = max(0, self._syncing - 1)

    def request_shutdown(self, *, force: bool = False, drain_timeout: float = 5.0,
                         reason: str = "api") -> ShutdownRequest:
        """Ask the mount to stop (the first request wins; later ones get it back)."""
        if self.shutdown is None:
            self.shutdown = ShutdownRequest(force, max(0.0, drain_timeout), reason, time.time())
            self._asked.set()
        return self.shutdown

    async def wait_shutdown(self) -> ShutdownRequest:
        await self._asked.wait()
        assert self.shutdown is not None
        return self.shutdown
