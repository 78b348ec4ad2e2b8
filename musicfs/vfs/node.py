"""A node of the virtual tree as the index holds it: what every reader of the tree passes around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    parent: int
    name: str
    kind: str  # 'dir' | 'file'
    track_id: int | None
    size: int  # bytes for files, 0 for directories
    mtime_ns: int  # the file's mtime at scan time; 0 for directories

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"
