"""The mount's status: one document, read by ``/.musicfs/status.json``, the control API and tests.

It gathers the ``statistics()`` of every component the composition root
registers (reader, cache, FUSE, events, ...) with the index's counts, the
origins' health and the mount's state. Building it runs SQL on the index,
so callers on the trio loop run it in a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .index.library import LibraryIndex
from .lifecycle import Lifecycle
from .origins.health import HealthMonitor


def musicfs_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # 20 ms of imports: not at mount

    try:
        return version("musicfs")
    except PackageNotFoundError:
        return "unknown"


class StatusService:
    def __init__(self, *, mountpoint: Path, index: LibraryIndex, health: HealthMonitor, lifecycle: Lifecycle,
                 started: float):
        self.mountpoint = mountpoint
        self.index = index
        self.health = health
        self.lifecycle = lifecycle
        self.started = started
        self._version: str | None = None
        self._components: dict[str, Callable[[], dict]] = {}

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = musicfs_version()
        return self._version

    def register(self, name: str, statistics: Callable[[], dict]) -> None:
        """Add a component's ``statistics()`` under ``name`` (done by the composition root)."""
        self._components[name] = statistics

    def component(self, name: str) -> dict:
        return self._components[name]()

    def origins(self) -> list[dict[str, Any]]:
        """Every origin: health (state, probe latency, last error and check), files, bytes, last sync."""
        counts = self.index.origin_statistics()
        return [{"id": origin_id, **state, "reachable": state["state"] in ("healthy", "degraded"),
                 **{k: v for k, v in counts.get(origin_id, {}).items() if k not in ("kind", "location")}}
                for origin_id, state in self.health.statistics().items()]

    def status(self) -> dict[str, Any]:
        stats = self.index.statistics()
        finished = stats["last_scan_finished_at"]
        components = {name: statistics() for name, statistics in self._components.items()}
        fuse = components.get("fuse", {})
        return {
            "version": self.version,
            "state": self.lifecycle.state,
            "mountpoint": str(self.mountpoint),
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "open_handles": fuse.get("open_handles", 0),
            "fuse_ops_total": sum(fuse.get("ops", {}).values()),
            "index": {"path": stats["index_path"], "tracks": stats["tracks"],
                      "directories": stats["directories"], "files": stats["files"],
                      "bytes": stats["bytes"], "skipped": stats["skipped"],
                      "template": stats["template"],
                      "age_seconds": round(time.time() - finished, 3) if finished else None},
            "origins": self.origins(),
            **components,
        }

    def errors(self) -> dict[str, Any]:
        skipped = self.index.skipped()
        return {"skipped": [s.__dict__ for s in skipped], "count": len(skipped)}
