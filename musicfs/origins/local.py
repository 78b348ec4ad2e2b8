"""The local origin: a folder on this machine, or an NFS/SMB share mounted as one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import OriginUnavailable


@dataclass(frozen=True)
class Entry:
    """One file an origin lists: its path inside the origin, size and mtime."""

    path: str  # '/'-separated, relative to the origin root
    size: int
    mtime_ns: int


class LocalOrigin:
    """Files under ``root``; paths are relative and '/'-separated."""

    kind = "local"

    def __init__(self, origin_id: str, root: Path | str):
        self.id = origin_id
        self.root = Path(root).expanduser().resolve()

    @property
    def location(self) -> str:
        return str(self.root)

    def local_path(self, path: str) -> Path:
        """Where ``path`` lives on disk; refuses paths that climb out of the root."""
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            raise ValueError(f"path escapes the origin: {path!r}")
        return full

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file). Blocking."""
        try:
            fd = os.open(self.local_path(path), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self.root.is_dir():  # the whole folder is gone: offline, not a missing file
                raise OriginUnavailable(f"origin {self.id}: {self.root} is not reachable") from None
            raise
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def stat(self, path: str) -> Entry:
        st = os.stat(self.local_path(path))
        return Entry(path, st.st_size, st.st_mtime_ns)

    def health(self) -> bool:
        """Reachable: the root is a readable directory."""
        return os.access(self.root, os.R_OK | os.X_OK) and self.root.is_dir()

    def close(self) -> None:
        return None

    def walk(self, on_error=None) -> Iterator[Entry]:
        """Every regular file below the root, in sorted order (a stable scan order).

        Unreadable directories are reported to ``on_error(path, exc)`` and skipped;
        symlinks are followed for files, not for directories (no loops).
        """
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(self.root / rel) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if on_error:
                    on_error(rel or ".", exc)
                continue
            subdirs = []
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(child)
                    elif entry.is_file():
                        st = entry.stat()
                        yield Entry(child, st.st_size, st.st_mtime_ns)
                except OSError as exc:
                    if on_error:
                        on_error(child, exc)
            stack.extend(reversed(subdirs))
