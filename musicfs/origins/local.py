"""The local origin: a folder on this machine, or an NFS/SMB share mounted as one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import NotFound, OriginUnavailable
from .base import Entry, Origin, Page, register

__all__ = ["Entry", "LocalOrigin"]


@register
class LocalOrigin(Origin):
    """Files under ``root``; paths are relative and '/'-separated."""

    kind = "local"
    required = frozenset({"path"})

    def __init__(self, origin_id: str, root: Path | str):
        super().__init__(origin_id)
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def from_options(cls, origin_id: str, options: dict[str, Any]) -> LocalOrigin:
        return cls(origin_id, options["path"])

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
            self.health()  # the whole folder gone is the origin offline, not a missing file
            raise NotFound(path) from None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def stat(self, path: str) -> Entry:
        try:
            st = os.stat(self.local_path(path))
        except FileNotFoundError:
            self.health()
            raise NotFound(path) from None
        return Entry(path, st.st_size, st.st_mtime_ns)

    def list_page(self, prefix: str = "", token: str | None = None) -> Page:
        """The whole folder is one page: a local listing is cheap."""
        files, dirs = [], []
        try:
            entries = list(os.scandir(self.local_path(prefix)))
        except FileNotFoundError:
            self.health()
            raise NotFound(prefix) from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
            elif entry.is_file():
                st = entry.stat()
                files.append(Entry(f"{prefix}{entry.name}", st.st_size, st.st_mtime_ns))
        return Page(sorted(files, key=lambda e: e.path), sorted(dirs))

    def health(self) -> None:
        """Reachable: the root is a readable directory."""
        if not (self.root.is_dir() and os.access(self.root, os.R_OK | os.X_OK)):
            raise OriginUnavailable(f"origin {self.id}: {self.root} is not reachable")

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
