"""The local origin: a folder on this machine, or an NFS/SMB share mounted as one.

Nothing outside the folder is ever served, whatever its entries are: the
folder may be shared with people who can plant a link to ``/etc`` or to the
mount owner's ``~/.ssh`` in it. So:

* a symlink is followed only when everything it resolves to lies inside the
  folder; a link leading out of it is neither listed nor read (a scan logs it
  once, the raw view does not show it);
* links to directories are never followed, so neither a loop of links nor a
  link to an ancestor makes a walk endless; a link loop on a file is an entry
  that cannot be read, logged by a scan and skipped;
* every read resolves its path and checks it again, then opens it without
  following a final link, so an entry swapped for a link since it was listed
  is refused too.

Writes (:meth:`LocalOrigin.put`) go through the same check, then work inside the
folder they resolve to by its descriptor: a hidden temporary file there, written,
fsynced and renamed over the target (``rename`` is atomic, and replaces a final
link rather than following it), then the folder fsynced, so a crash leaves the
old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mode
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import NotFound, OriginUnavailable
from .base import Entry, Origin, Page, register
from .writes import file_name, reading, temp_name

__all__ = ["Entry", "LocalOrigin"]

log = logging.getLogger(__name__)

_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # how a folder is opened to write in it


@register
class LocalOrigin(Origin):
    """Files under ``root``; paths are relative and '/'-separated."""

    kind = "local"
    required = frozenset({"path"})
    writable = True

    def __init__(self, origin_id: str, root: Path | str):
        super().__init__(origin_id)
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def from_options(cls, origin_id: str, options: dict[str, Any]) -> LocalOrigin:
        return cls(origin_id, options["path"])

    @property
    def location(self) -> str:
        return str(self.root)

    def _inside(self, resolved: str) -> bool:
        root = str(self.root)
        return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)

    def local_path(self, path: str) -> Path:
        """Where ``path`` lives on disk, links resolved; refuses paths that lead out of the root.

        Raises ``ValueError`` for those (``..`` parts, an absolute path, a link
        pointing outside): they are not files of this origin.
        """
        full = os.path.realpath(self.root / path)  # a link loop stays unresolved: opening it fails
        if not self._inside(full):
            raise ValueError(f"path escapes the origin: {path!r}")
        return Path(full)

    def _within(self, path: str) -> Path:
        """:meth:`local_path` for a read: a path leading out of the root is no file of this origin."""
        try:
            return self.local_path(path)
        except ValueError:
            log.warning("origin %s: not followed: %r leads outside %s", self.id, path, self.root)
            raise NotFound(path) from None

    def _listed(self, entry: os.DirEntry) -> tuple[str, os.stat_result | None] | None:
        """('dir', None) or ('file', its stat) for an entry of the origin; None for anything else.

        Links are followed to regular files inside the root only; raises
        ``OSError`` for a link that loops, dangles or leads outside the root.
        """
        if entry.is_dir(follow_symlinks=False):
            return "dir", None
        if entry.is_file(follow_symlinks=False):
            return "file", entry.stat(follow_symlinks=False)
        if not entry.is_symlink():
            return None  # sockets, fifos, devices: not music
        target = os.path.realpath(entry.path)
        if not self._inside(target):
            raise PermissionError(errno.EACCES, f"not followed: the link leads outside the origin (to {target})")
        st = os.stat(target)  # ELOOP for a loop, ENOENT for a dangling link
        return ("file", st) if stat_mode.S_ISREG(st.st_mode) else None  # links to folders: not followed

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file). Blocking."""
        try:
            # resolved and checked above; a final link swapped in since then is not followed
            fd = os.open(self._within(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self.health()  # the whole folder gone is the origin offline, not a missing file
            raise NotFound(path) from None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def stat(self, path: str) -> Entry:
        try:
            st = os.stat(self._within(path))
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
            try:
                listed = self._listed(entry)
            except OSError as exc:  # shown as it is: absent (a raw view lists this often; a scan logs it)
                log.debug("origin %s: %s%s not listed: %s", self.id, prefix, entry.name, exc)
                continue
            if listed is None:
                continue
            if listed[0] == "dir":
                dirs.append(entry.name)
            else:
                files.append(Entry(f"{prefix}{entry.name}", listed[1].st_size, listed[1].st_mtime_ns))
        return Page(sorted(files, key=lambda e: e.path), sorted(dirs))

    def health(self) -> None:
        """Reachable: the root is a readable directory."""
        if not (self.root.is_dir() and os.access(self.root, os.R_OK | os.X_OK)):
            raise OriginUnavailable(f"origin {self.id}: {self.root} is not reachable")

    def put(self, path: str, source: BinaryIO) -> None:
        """Write ``source`` to a hidden temporary file beside ``path``, fsync it, rename it over
        ``path`` and fsync the folder (see :meth:`Origin.put` for the guarantees)."""
        self.local_path(path)  # the reads' own check: ValueError for a path leading out of the root
        name = file_name(path)
        with reading(source, f"origin {self.id}: put {path!r}") as taken:
            folder = self._folder(path, "put", create=True)
            assert folder is not None  # made when missing
            temp, made = temp_name(name), False
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o666, dir_fd=folder)
                made = True
                try:
                    for chunk in taken.chunks():
                        _write_all(fd, chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
                made = False  # it is the file now
                os.fsync(folder)
            except BaseException as exc:
                if made:
                    with contextlib.suppress(OSError):  # the folder may be gone with it
                        os.unlink(temp, dir_fd=folder)
                if isinstance(exc, OSError):
                    raise self._write_error("put", path, exc, self.root / path.rpartition("/")[0]) from None
                raise
            finally:
                os.close(folder)

    def remove(self, path: str) -> None:
        """Unlink the entry at ``path`` (a link itself, not what it leads to); absent is fine."""
        self.local_path(path)
        name = file_name(path)
        folder = self._folder(path, "remove", create=False)
        if folder is None:
            return
        try:
            os.unlink(name, dir_fd=folder)
            os.fsync(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._write_error("remove", path, exc, self.root / path.rpartition("/")[0]) from None
        finally:
            os.close(folder)

    def _folder(self, path: str, operation: str, create: bool) -> int | None:
        """A descriptor of the folder ``path`` is in, opened part by part from the root without
        following links (it was resolved inside the root just before), its missing parts made
        when ``create``, else None when one is missing. The root itself is never made."""
        parent = self.local_path(path.rpartition("/")[0])
        here = self.root
        try:
            fd = os.open(here, _FOLDER)
        except OSError as exc:
            self.health()  # the whole folder gone (a share not mounted) is the origin offline
            raise self._write_error(operation, path, exc, here) from None
        try:
            for part in parent.relative_to(self.root).parts:
                if create:
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                        os.fsync(fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    if create:
                        raise
                    os.close(fd)
                    return None  # nothing there to remove
                os.close(fd)
                fd, here = inner, here / part
        except OSError as exc:
            os.close(fd)
            raise self._write_error(operation, path, exc, here) from None
        return fd

    def _write_error(self, operation: str, path: str, exc: OSError, folder: Path) -> OriginUnavailable:
        """The error of a write that failed in ``folder`` (where it was writing when refused)."""
        if isinstance(exc, PermissionError):
            detail = f"permission denied: this user may not write in {folder} ({exc.strerror})"
        elif exc.errno == errno.ELOOP:
            detail = "a folder on the way was replaced by a link"
        else:
            detail = exc.strerror or f"{type(exc).__name__}: {exc}"
        return OriginUnavailable(f"origin {self.id}: {operation} {path!r} in {self.root} failed: {detail}")

    def walk(self, on_error=None) -> Iterator[Entry]:
        """Every regular file below the root, in sorted order (a stable scan order).

        Unreadable directories, link loops and links out of the origin are
        reported to ``on_error(path, exc)`` and skipped; links are followed to
        files inside the origin, never to directories (no endless walks).
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
                    listed = self._listed(entry)
                except OSError as exc:
                    if on_error:
                        on_error(child, exc)
                    continue
                if listed is None:
                    continue
                if listed[0] == "dir":
                    subdirs.append(child)
                else:
                    yield Entry(child, listed[1].st_size, listed[1].st_mtime_ns)
            stack.extend(reversed(subdirs))


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
