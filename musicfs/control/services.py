"""What the control API is given: the mount's services, built by the composition root.

The same objects serve the filesystem; the API holds no state of its own and
writes no SQL. This module imports nothing heavy: the daemon builds the
services at mount, and the API module (FastAPI and friends) is imported only
when a client first connects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..events import EventBus
from ..lifecycle import Lifecycle
from ..status import StatusService
from ..store.artwork import ArtShelf
from ..store.cache import ContentCache
from ..store.headers import HeaderTier
from ..vfs.pins import Pinner
from ..vfs.prefetch import Prefetcher

if TYPE_CHECKING:  # the search service imports the query engine; the API needs it only when asked
    from ..search.service import SearchService


class SyncService(Protocol):
    """Live rescans: ``rescan`` yields progress documents until the rescan has committed."""

    def origin_ids(self) -> list[str]: ...

    def rescan(self, origin_id: str) -> AsyncIterator[dict[str, Any]]: ...


class CatalogService(Protocol):
    """A mount from a published catalog (musicfs.catalog.follow): its state, and a poll now."""

    def statistics(self) -> dict[str, Any]: ...
    async def poll(self) -> str: ...


class MetricsSource(Protocol):
    """Prometheus exposition: (body, content type)."""

    def render(self) -> tuple[bytes, str]: ...


@dataclass(frozen=True)
class ControlServices:
    status: StatusService
    lifecycle: Lifecycle
    cache: ContentCache
    bus: EventBus
    limiter: trio.CapacityLimiter  # worker threads for blocking calls (SQLite, disk)
    sync: SyncService | None = None
    metrics: MetricsSource | None = None
    search: SearchService | None = None  # /v1/search and /v1/collections (None: this mount has no index to search)
    headers: HeaderTier | None = None  # the cache's header tier (/v1/cache's "headers")
    artwork: ArtShelf | None = None  # album covers kept in the cache (/v1/cache's "artwork")
    prefetch: Prefetcher | None = None  # /v1/prefetch: files fetched into the cache on request
    pins: Pinner | None = None  # /v1/pins: files kept whole in the cache
    catalog: CatalogService | None = None  # /v1/catalog: a mount from a published catalog
