"""A musicfs origin over a folder of album archives (.zip): each archive a folder of its tracks.

Paths are the folder's own, with each archive ``X.zip`` standing for a folder ``X`` (or ``X.zip``
when a real folder ``X`` sits beside it), and the members' paths inside it. An archive's table of
contents is read once per version of the archive (size and mtime) and kept for the next calls;
a stored member is read in place by range, a compressed one by decompressing it from its start.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mode
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from musicfs.errors import NotFound, OriginUnavailable
from musicfs.origins.base import Entry, Origin, Page

log = logging.getLogger(__name__)

KEPT_ARCHIVES = 64  # tables of contents kept in memory, least recently used out first
LOCAL_HEADER = 30  # bytes of a member's local header before its name and extra field


@dataclass
class _Archive:
    """One version of an archive: its members by path, and the folders they make."""

    path: Path
    size: int
    mtime_ns: int
    members: dict[str, zipfile.ZipInfo] = field(default_factory=dict)
    folders: dict[str, tuple[set[str], list[str]]] = field(default_factory=dict)  # "a/b/" -> (dirs, files)
    data_at: dict[str, int] = field(default_factory=dict)  # member -> where its bytes start (stored ones)

    def folder(self, prefix: str) -> tuple[set[str], list[str]]:
        return self.folders.setdefault(prefix, (set(), []))


def _safe(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)


class ZipOrigin(Origin):
    kind = "zip"
    required = frozenset({"path"})

    def __init__(self, origin_id: str, path: str | Path):
        super().__init__(origin_id)
        self.root = Path(path).expanduser().resolve()
        self._kept: OrderedDict[Path, _Archive] = OrderedDict()
        self._lock = threading.Lock()
        self.archives_read = 0  # tables of contents read (statistics)

    @property
    def location(self) -> str:
        return str(self.root)

    # -- where a path leads ----------------------------------------------------------------------
    def _real(self, relative: str) -> Path:
        """A path of the folder itself, links resolved, refused when it leads out of the root."""
        full = Path(os.path.realpath(self.root / relative))
        if full != self.root and self.root not in full.parents:
            raise NotFound(relative)
        return full

    def _locate(self, path: str) -> tuple[Path, _Archive | None, str]:
        """(the file or folder on disk, its archive if the path leads into one, the member path)."""
        parts = path.strip("/").split("/") if path.strip("/") else []
        if any(p in ("", ".", "..") for p in parts):
            raise NotFound(path)
        here = ""
        for i, part in enumerate(parts):
            candidate = f"{here}{part}"
            real = self._real(candidate)
            if real.is_dir():
                here = candidate + "/"
                continue
            if i < len(parts) - 1 or not real.exists():  # into an archive standing for a folder
                for name in (f"{candidate}.zip", candidate if candidate.endswith(".zip") else None):
                    if name is not None and self._real(name).is_file():
                        return self._real(name), self._archive(self._real(name)), "/".join(parts[i + 1:])
            return real, None, ""
        return self._real(here), None, ""

    def _archive(self, path: Path) -> _Archive:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(str(path)) from None
        with self._lock:
            kept = self._kept.get(path)
            if kept is not None and (kept.size, kept.mtime_ns) == (st.st_size, st.st_mtime_ns):
                self._kept.move_to_end(path)
                return kept
        archive = self._read_archive(path, st)
        with self._lock:
            self._kept[path] = archive
            while len(self._kept) > KEPT_ARCHIVES:
                self._kept.popitem(last=False)
        return archive

    def _read_archive(self, path: Path, st: os.stat_result) -> _Archive:
        archive = _Archive(path, st.st_size, st.st_mtime_ns)
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            log.warning("origin %s: %s is not a readable zip archive (%s): left out", self.id, path, exc)
            return archive
        self.archives_read += 1
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            if not _safe(name) or info.flag_bits & 0x1:
                log.warning("origin %s: %s: member %r left out (%s)", self.id, path, name,
                            "encrypted" if info.flag_bits & 0x1 else "its name leads out of the archive")
                continue
            archive.members[name] = info
            parent, _, leaf = name.rpartition("/")
            archive.folder(f"{parent}/" if parent else "")[1].append(leaf)
            while parent:  # every folder above it
                above, _, folder = parent.rpartition("/")
                archive.folder(f"{above}/" if above else "")[0].add(folder)
                parent = above
        return archive

    def _member(self, path: str) -> tuple[_Archive, zipfile.ZipInfo]:
        _, archive, member = self._locate(path)
        info = archive.members.get(member) if archive is not None else None
        if info is None:
            raise NotFound(path)
        return archive, info

    # -- the origin ------------------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        self.health()
        real, archive, member = self._locate(path)
        if archive is None:
            try:
                st = real.stat()
            except FileNotFoundError:
                raise NotFound(path) from None
            if not stat_mode.S_ISREG(st.st_mode):
                raise NotFound(path)
            return Entry(path, st.st_size, st.st_mtime_ns)
        info = archive.members.get(member)
        if info is None:
            raise NotFound(path)
        return Entry(path, info.file_size, archive.mtime_ns)  # a new archive is a new version of each

    def list_page(self, prefix: str = "", token: str | None = None) -> Page:
        self.health()
        real, archive, member = self._locate(prefix)
        if archive is not None:
            dirs, files = archive.folders.get(f"{member}/" if member else "", (set(), []))
            base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
            return Page([Entry(f"{base}{name}", archive.members[f"{member}/{name}" if member else name].file_size,
                               archive.mtime_ns) for name in sorted(files)], sorted(dirs))
        if not real.is_dir():
            raise NotFound(prefix)
        files, dirs = [], []
        names = {entry.name: entry for entry in os.scandir(real)}
        for name, entry in sorted(names.items()):
            if entry.is_dir():
                dirs.append(name)
            elif entry.is_file() and name.endswith(".zip"):
                dirs.append(name if name[:-4] in names else name[:-4])  # an archive is a folder
            elif entry.is_file():
                st = entry.stat()
                files.append(Entry(f"{prefix}{name}", st.st_size, st.st_mtime_ns))
        return Page(files, dirs)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        real, archive, member = self._locate(path)
        if archive is None:
            try:
                fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.health()
                raise NotFound(path) from None
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        info = archive.members.get(member)
        if info is None:
            raise NotFound(path)
        size = max(0, min(size, info.file_size - offset))
        if size == 0:
            return b""
        if info.compress_type == zipfile.ZIP_STORED:
            return self._read_stored(archive, info, offset, size)
        with zipfile.ZipFile(archive.path) as zf, zf.open(info) as entry:
            entry.seek(offset)  # decompresses from the start of the entry up to here
            return entry.read(size)

    def _read_stored(self, archive: _Archive, info: zipfile.ZipInfo, offset: int, size: int) -> bytes:
        fd = os.open(archive.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            start = archive.data_at.get(info.filename)
            if start is None:
                header = os.pread(fd, LOCAL_HEADER, info.header_offset)
                if len(header) < LOCAL_HEADER or header[:4] != b"PK\x03\x04":
                    raise OriginUnavailable(f"{archive.path}: no local header for {info.filename!r}")
                start = info.header_offset + LOCAL_HEADER + int.from_bytes(header[26:28], "little") + \
                    int.from_bytes(header[28:30], "little")
                archive.data_at[info.filename] = start
            return os.pread(fd, size, start + offset)
        finally:
            os.close(fd)

    def health(self) -> None:
        if not self.root.is_dir():
            raise OriginUnavailable(f"{self.root} is not reachable (not a folder now)")

    def statistics(self) -> dict:
        return {"archives_read": self.archives_read, "archives_kept": len(self._kept)}
