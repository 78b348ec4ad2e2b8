"""Mounting from a published catalog: read the pointer, fetch its snapshot, check it, install it.

A machine that mounts from a catalog never scans: its index is the publisher's, taken
whole. What it trusts is checked before it replaces anything: the pointer's format
(and signature, with a key), then the snapshot's size and SHA-256 as it streams in,
its decompressed size, SQLite's ``quick_check``, its schema version, its template and
its track count. Anything wrong is a :class:`~musicfs.errors.CatalogRefused` and the
index in use stays as it was. The snapshot is written beside the index and moved over
it in one rename, so a crash or an outage mid-download leaves the old one.

What is in use is recorded beside the index (``<index>.catalog.json``): the pointer, the
pointer object's version as the origin reported it, and when it was installed. A poll
that finds the same version fetches nothing more (a conditional request: one stat).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import zstandard

from ..config import CatalogSettings
from ..errors import CatalogRefused
from ..index.db import remember, schema_version
from ..index.schema import LATEST
from ..origins.base import Origin
from .pointer import POINTER_NAME, Pointer

log = logging.getLogger(__name__)

CHUNK = 4 << 20  # bytes of a snapshot read from the origin at a time


@dataclass(frozen=True)
class InUse:
    """The catalog an index was installed from."""

    pointer: Pointer
    version: str  # the pointer object's version when it was read (ETag, or size and mtime)
    installed_at: float

    @staticmethod
    def path_for(index: Path) -> Path:
        return index.with_name(index.name + ".catalog.json")

    @classmethod
    def load(cls, index: Path) -> InUse | None:
        try:
            raw = json.loads(cls.path_for(index).read_text())
            return cls(Pointer(**raw["pointer"]), raw["version"], raw["installed_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, index: Path) -> None:
        target = self.path_for(index)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, target)


@dataclass(frozen=True)
class Latest:
    """The pointer an origin holds now, and its object's version."""

    pointer: Pointer
    version: str


class CatalogReader:
    """One library's catalog in one origin, as a mounting machine reads it."""

    def __init__(self, origin: Origin, settings: CatalogSettings):
        self.origin, self.settings = origin, settings
        self.key = settings.key()

    @property
    def pointer_path(self) -> str:
        return f"{self.settings.prefix}/{POINTER_NAME}"

    def version(self) -> str:
        """The pointer object's version now (one stat: what a poll costs when nothing changed)."""
        return self.origin.stat(self.pointer_path).version_key

    def latest(self) -> Latest:
        """The pointer as published now, checked (format, signature)."""
        entry = self.origin.stat(self.pointer_path)
        data = self.origin.read_range(self.pointer_path, 0, entry.size)
        return Latest(Pointer.decode(data, self.key), entry.version_key)

    def download(self, latest: Latest, folder: Path) -> Path:
        """Fetch ``latest``'s snapshot into a new file in ``folder``, checked whole; its path.

        Nothing is left behind when it fails: the file is removed, and the reason raised.
        """
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".catalog-", suffix=".db", dir=folder)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                self._fetch(latest.pointer, out)
            _verify(tmp, latest.pointer)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def install(self, latest: Latest, index: Path) -> InUse:
        """Fetch ``latest``'s snapshot, check it whole, and put it in place of the index at ``index``
        (which no daemon serves now), keeping this machine's own rows (:func:`carry_local`)."""
        from .swap import carry_local

        tmp = self.download(latest, index.parent)
        try:
            if index.exists():
                carry_local(tmp, index)
            for suffix in ("-wal", "-shm"):  # the old index's, which must not be applied to the new one
                Path(f"{index}{suffix}").unlink(missing_ok=True)
            os.replace(tmp, index)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        remember(index)  # it passed its check just now, as it is
        return self.record(latest, index)

    def record(self, latest: Latest, index: Path) -> InUse:
        """Say, beside the index, that it now holds ``latest``."""
        in_use = InUse(latest.pointer, latest.version, time.time())
        in_use.save(index)
        pointer = latest.pointer
        log.info("installed catalog %s (%d tracks, published %s)", pointer.hash[:12], pointer.tracks,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pointer.created)))
        return in_use

    def _fetch(self, pointer: Pointer, out) -> None:
        """Stream the snapshot through zstd into ``out``, hashing what the origin sent."""
        path = f"{self.settings.prefix}/{pointer.snapshot_name}"
        size = self.origin.stat(path).size
        if size != pointer.size:
            raise CatalogRefused(f"the catalog snapshot is {size} bytes, its pointer says {pointer.size}")
        sha = hashlib.sha256()
        writer = zstandard.ZstdDecompressor().stream_writer(out, closefd=False)
        offset = 0
        try:
            while offset < size:
                data = self.origin.read_range(path, offset, min(CHUNK, size - offset))
                if not data:
                    raise CatalogRefused(f"the catalog snapshot ended at byte {offset} of {size}")
                sha.update(data)
                writer.write(data)
                offset += len(data)
            writer.flush()
        except zstandard.ZstdError as exc:
            raise CatalogRefused(f"the catalog snapshot does not decompress: {exc}") from None
        if sha.hexdigest() != pointer.hash:
            raise CatalogRefused(f"the catalog snapshot's SHA-256 is {sha.hexdigest()[:16]}..., its pointer "
                                 f"says {pointer.hash[:16]}...")


def _verify(path: Path, pointer: Pointer) -> None:
    """The decompressed database is what the pointer describes, whole and of a schema read here."""
    if path.stat().st_size != pointer.db_size:
        raise CatalogRefused(f"the catalog database is {path.stat().st_size} bytes, its pointer says "
                             f"{pointer.db_size}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise CatalogRefused(f"the catalog database does not open: {exc}") from None
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise CatalogRefused(f"the catalog database fails its check: {' '.join(problems)[:200]}")
        version = schema_version(conn)
        if version > LATEST:
            raise CatalogRefused(f"the catalog's index is of schema {version}, newer than this musicfs reads "
                                 f"({LATEST}): update musicfs on this machine")
        tracks = conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
        row = conn.execute("SELECT value FROM meta WHERE key = 'template'").fetchone()
    except sqlite3.Error as exc:
        raise CatalogRefused(f"the catalog database is not a musicfs index: {exc}") from None
    finally:
        conn.close()
    if tracks != pointer.tracks or (row[0] if row else "") != pointer.template:
        raise CatalogRefused("the catalog database does not hold what its pointer says (tracks or template)")


@dataclass(frozen=True)
class Outcome:
    """What a mount's look at the catalog came to, said in the log and by ``catalog status``."""

    in_use: InUse | None  # the catalog the index now holds (None: there is none)
    installed: bool  # a new one was fetched just now
    problem: str | None = None  # why the latest was not taken (unreachable, refused)


def bring_up_to_date(origin: Origin, settings: CatalogSettings, index: Path) -> Outcome:
    """Install the latest catalog unless the index already holds it.

    An origin that cannot be reached, or a catalog refused, leaves the index as it is: a
    machine that mounted a catalog once starts offline from it. With no index at all there
    is nothing to mount, and the reason is raised.
    """
    from ..errors import NotFound, OriginUnavailable

    in_use = InUse.load(index) if index.exists() else None
    reader = CatalogReader(origin, settings)
    try:
        latest = reader.latest()
        if in_use is not None and in_use.pointer.hash == latest.pointer.hash:
            return Outcome(in_use, installed=False)
        return Outcome(reader.install(latest, index), installed=True)
    except NotFound:
        problem = f"no catalog is published in origin {origin.id!r} under {settings.prefix}/ yet"
    except OriginUnavailable as exc:
        problem = f"origin {origin.id!r} is not reachable ({exc})"
    except CatalogRefused as exc:
        problem = f"the latest catalog was refused: {exc}"
    if in_use is None:
        raise CatalogRefused(f"{problem}; and this machine has no catalog of this library to mount yet"
                             " (publish one from a machine that scans it: musicfs publish)")
    log.warning("%s: mounting the catalog installed %s (published %s)", problem,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(in_use.installed_at)),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(in_use.pointer.created)))
    return Outcome(in_use, installed=False, problem=problem)
