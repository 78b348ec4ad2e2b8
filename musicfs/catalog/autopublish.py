"""``[catalog] publish = true``: the publishing machine's mount publishes after each rescan.

The machine that scans keeps the other machines current without anyone running
``musicfs publish``: each rescan that changed something (a schedule's, or one asked for)
is followed by a publish, in a worker thread. Rescans that found nothing new publish
nothing (the snapshot would be the same content anyway, and is not uploaded twice). A
publish that fails is logged and counted; the next rescan tries again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from ..config import CatalogSettings
from ..errors import MusicFSError
from ..events import EventBus, SyncCompleted
from ..origins.base import Origin
from .publish import publish

log = logging.getLogger(__name__)


class AutoPublisher:
    def __init__(self, index: Path, origin: Origin, settings: CatalogSettings, library: str):
        self.index, self.origin, self.settings, self.library = index, origin, settings, library
        self.published = self.failed = 0
        self.last_hash: str | None = None
        self.last_error: str | None = None

    async def run(self, bus: EventBus) -> None:
        with bus.subscribe(queue=16, wants=lambda event: isinstance(event, SyncCompleted)) as feed:
            async for event in feed:
                if isinstance(event, SyncCompleted) and (event.added or event.removed or event.modified):
                    await self.publish_now()

    async def publish_now(self) -> None:
        try:
            report = await trio.to_thread.run_sync(publish, self.index, self.origin, self.settings, self.library)
        except (MusicFSError, OSError) as exc:
            self.failed += 1
            self.last_error = str(exc)
            log.warning("publishing the catalog after a rescan failed: %s", exc)
            return
        self.published += 1
        self.last_hash, self.last_error = report.pointer.hash, None
        log.info("published the catalog after a rescan: %d tracks (%s)", report.pointer.tracks,
                 "uploaded" if report.uploaded else "the same snapshot")

    def statistics(self) -> dict[str, Any]:
        return {"origin": self.settings.origin, "published": self.published, "failed": self.failed,
                "last_hash": self.last_hash, "last_error": self.last_error}
