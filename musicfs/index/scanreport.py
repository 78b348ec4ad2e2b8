"""What a scan reports: its counts, each committed change, and how it stops.

Apart from :mod:`musicfs.index.scanner` so that the mount can speak of scans
without importing the tag readers (mutagen and friends): every import is
paid by a mount's start-up time; the scanner itself is imported when a
rescan first runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .tree import TreeChanges


@dataclass
class ScanReport:
    """What one scan did; printed by ``musicfs scan`` and stored in ``scans.stats``."""

    origin_id: str
    seen: int = 0  # audio files found by the walk
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0  # malformed files (new or still broken)
    parsed: int = 0  # files actually opened to read tags
    ignored: int = 0  # files that are not audio by extension
    images: int = 0  # image files beside the tracks read for covers (cover.jpg, folder.png...)
    unreadable: int = 0  # files the origin failed to deliver (tried again next scan)
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    slowest_seconds: float = 0.0  # the longest time one file's tags took to read
    slowest_path: str = ""
    complete: bool = False
    bytes_fetched: int = 0  # read from a remote origin for tags (and kept in the header tier)


class Progress(Protocol):
    def __call__(self, report: ScanReport, current: str | None) -> None: ...


@dataclass
class Commit:
    """What one committed transaction of a scan changed.

    ``tree`` is for the mount's kernel caches (nodes by id); the track lists,
    by origin path, are for the events a user watches.
    """

    tree: TreeChanges
    added: list[tuple[str, int]] = field(default_factory=list)  # (real_path, size)
    modified: list[tuple[str, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tree or self.added or self.modified or self.removed)


class ScanStopped(Exception):
    """The scan was asked to stop (``stop`` set); every batch committed before stays."""


__all__ = ["Commit", "Progress", "ScanReport", "ScanStopped"]
