"""Typed configuration from TOML, validated; every error names the file, line and reason.

Example::

    [library]
    template = "$artist/$album ($year) [$format_upper]/$track - $title.$format"

    [mount]
    allow_other = false   # true: other users may read it too (modes are then enforced)

    [scan]
    interval = 3600       # rescan every origin hourly while mounted (off when left out)

    [metrics]
    listen = "127.0.0.1:9877"   # Prometheus scrapes /metrics here (off when left out)

    [raw]
    ttl = 300             # seconds /.origins keeps an origin's listing (idle = 60: dropped sooner if unused)

    [[origins]]
    id = "nas"
    type = "local"
    path = "/mnt/nas/music"
    priority = 1

    [[collections]]       # a saved search, shown as /.collections/<name>/ (README, "Search")
    name = "Nineties metal"
    query = "genre:metal year:1990..1999 -live"

``tomllib`` parses; this module checks types and values and, because tomllib
keeps no positions, finds the line of an offending key by reading the text the
way TOML lays it out (table headers, then ``key =`` lines).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the default locations, named here too for the code that reads them with a config
from .dirs import cache_home, state_home
from .dirs import config_home as config_home
from .dirs import libraries_dir as libraries_dir
from .errors import ConfigError, TemplateError
from .index.template import DEFAULT_TEMPLATE, PathTemplate

_ORIGIN_COMMON = {"id", "type", "priority", "cache"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_size(value: Any) -> int:
    """``10GB``, ``512 MiB``, ``1e9`` or an int: a byte count."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 10GB or 512MiB)")
    unit = (match.group(2) or "").upper().rstrip("B")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class OriginConfig:
    id: str
    type: str
    priority: int = 1
    cache: str = "always"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.options["path"]).expanduser()


@dataclass(frozen=True)
class CatalogSettings:
    """``[catalog]``: where this library's published index lives (musicfs.catalog), and how it is used."""

    origin: str  # the id of the origin it is published into and read from
    prefix: str = ".musicfs-catalog"  # the folder of that origin holding the pointer and snapshots
    poll: float = 300.0  # seconds between a mount's looks at the pointer
    key_file: Path | None = None  # a file holding the shared key that signs the pointer
    publish: bool = False  # publish after each rescan of a mount that scans (the publishing machine)
    keep: int = 3  # snapshots kept (the newest ones; the one in use is always among them)
    mount: bool = True  # a mount takes its index from the catalog instead of scanning

    def key(self) -> bytes | None:
        """The signing key (the file's content, whitespace stripped), or None without a key file."""
        if self.key_file is None:
            return None
        try:
            key = self.key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"[catalog] key_file {self.key_file}: {exc.strerror or exc}") from None
        if len(key) < 16:
            raise ConfigError(f"[catalog] key_file {self.key_file}: a key of at least 16 bytes is needed")
        return key


@dataclass(frozen=True)
class Config:
    origins: tuple[OriginConfig, ...]
    template: str = DEFAULT_TEMPLATE
    name: str | None = None
    index_path: Path | None = None
    cache_dir: Path | None = None  # default: <XDG cache home>/musicfs/<library name>
    cache_size: int = 10 * 10**9  # NFR-5.2 default
    # NFR-5.1: what the daemon may spend on metadata kept in memory (SQLite's page cache of the
    # index and the nodes kept for the kernel's entries), `[cache] metadata_size`
    metadata_cache_size: int = 100 * 10**6
    # the header tier's share of the cache, `[cache] headers_size` (musicfs.store.headers); None: a
    # tenth of cache_size. 0 keeps no headers.
    headers_size: int | None = None
    # album artwork's share, `[cache] artwork_size` (musicfs.store.artwork); None: a twentieth of
    # cache_size. 0 keeps none (covers are then read from the origin when opened).
    artwork_size: int | None = None
    # what pinned files may hold, `[cache] pins_size`; None: the cache less the header and artwork
    # tiers and a tenth kept for whatever is played unpinned
    pins_size: int | None = None
    scan_workers: int = 4
    scan_interval: float | None = None  # seconds between rescans of a running mount; None: off
    read_timeout: float = 5.0
    health_interval: float = 30.0
    # the raw view (/.origins) keeps an origin's listing this long, and drops it after this long unused
    # [prefetch] (musicfs.vfs.prefetch): on, seconds a track plays before the next is fetched whole,
    # bytes prefetched and not opened yet at most, prefetches at once
    prefetch: bool = True
    prefetch_whole_after: float = 20.0
    prefetch_budget: int = 1_000_000_000
    prefetch_concurrent: int = 1
    raw_ttl: float = 300.0  # seconds; seed 000: 5 minutes (B2-5)
    raw_idle: float = 60.0  # seconds; seed 000: 1 minute
    # let other users in (FUSE allow_other); the kernel then checks the modes shown (default_permissions)
    allow_other: bool = False
    metrics_listen: tuple[str, int] | None = None  # (IP address, port) Prometheus scrapes; None: no listener
    # [[collections]]: (name, query) pairs, checked as `musicfs collection add` checks them; a mount makes
    # the index's config collections exactly these (musicfs.search.service.SearchService.sync_config)
    collections: list[tuple[str, str]] = field(default_factory=list)
    # [metadata]: a metadata plugin's name and options (musicfs.index.metadata); None: the files' tags
    metadata: tuple[str, dict[str, Any]] | None = None
    mountpoint: Path | None = None  # [library] mountpoint: where `musicfs mount --all` mounts it
    # [library] restart: a mount the manager started is started again when its daemon dies
    restart: bool = False
    catalog: CatalogSettings | None = None  # [catalog]: a published index (musicfs.catalog)
    source: str | None = None

    def metadata_source(self):
        """A new instance of the configured metadata source, or None (imports its plugin)."""
        if self.metadata is None:
            return None
        from .index.metadata import source_class

        name, options = self.metadata
        try:
            return source_class(name).from_options(dict(options))
        except (TypeError, ValueError) as exc:  # options of the wrong type: said, not a traceback
            raise ConfigError(f"metadata source {name!r}: {exc}") from None

    def library_name(self) -> str:
        """A stable name for this library: the configured one, or one derived from its origins."""
        if self.name:
            return self.name
        first = self.origins[0]
        where = str(first.path.resolve()) if first.type == "local" else repr(sorted(first.options))
        digest = hashlib.sha1(where.encode()).hexdigest()[:10]
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(where).name or first.id)
        return f"{base}-{digest}"

    def resolved_index_path(self, state_dir: Path | None = None) -> Path:
        if self.index_path is not None:
            return self.index_path
        return (state_dir or state_home()) / "libraries" / f"{self.library_name()}.db"

    def resolved_cache_dir(self) -> Path:
        """Chunks are shared by content, but manifests name origin paths: one cache per library."""
        return self.cache_dir if self.cache_dir is not None else cache_home() / self.library_name()

    @property
    def header_limit(self) -> int:
        """Bytes the header tier may hold: ``[cache] headers_size``, by default a tenth of the cache."""
        return self.cache_size // 10 if self.headers_size is None else self.headers_size

    @property
    def artwork_limit(self) -> int:
        """Bytes album artwork may hold: ``[cache] artwork_size``, by default a twentieth of the cache."""
        return self.cache_size // 20 if self.artwork_size is None else self.artwork_size

    @property
    def pin_limit(self) -> int:
        """Bytes pinned files may hold: ``[cache] pins_size``, by default what the header tier,
        artwork and a tenth of the cache (room for what is played unpinned) leave."""
        if self.pins_size is not None:
            return self.pins_size
        return max(0, self.cache_size - self.header_limit - self.artwork_limit - self.cache_size // 10)

    def header_origins(self) -> list[str]:
        """Origins whose scans keep what they read for tags in the header tier: those cached, and
        remote (a local folder's tags are read from it directly, at no cost worth sparing)."""
        if self.header_limit <= 0:
            return []
        return [o.id for o in self.origins if o.cache != "never" and o.type != "local"]

    def path_template(self) -> PathTemplate:
        return PathTemplate(self.template)


class _Locator:
    """Finds the line of ``key`` in table ``[table]`` or the n-th ``[[table]]``."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def line_of(self, table: str | None, key: str | None, index: int | None = None) -> int | None:
        current, seen, header_line = None, -1, None
        for number, line in enumerate(self.lines, start=1):
            match = self._HEADER.match(line)
            if match:
                current = match.group(2)
                if current == table:
                    seen += 1
                    if index is None or seen == index:
                        header_line = number
                continue
            in_table = current == table and (index is None or seen == index)
            if in_table and key and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
                return number
        return header_line


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raises :class:`ConfigError` naming the line."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config: {exc}", source=str(path)) from None
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> Config:
    import tomllib  # here: a mount from --origin, and most commands, read no TOML

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError(f"not valid TOML: {exc}", source=source, line=line) from None
    where = _Locator(text)

    def fail(message: str, table: str | None = None, key: str | None = None,
             index: int | None = None) -> ConfigError:
        return ConfigError(message, source=source, line=where.line_of(table, key, index))

    unknown = set(data) - {"library", "cache", "scan", "health", "mount", "metrics", "origins", "raw",
                           "collections", "prefetch", "metadata", "catalog"}
    if unknown:
        name = sorted(unknown)[0]
        raise fail(f"unknown section or key {name!r}", None, name) if not isinstance(
            data[name], dict) else fail(f"unknown section [{name}]", name, None)
    library = _table(data, "library", fail)
    cache = _table(data, "cache", fail)
    scan = _table(data, "scan", fail)
    health = _table(data, "health", fail)
    mount = _table(data, "mount", fail)
    _only(health, {"interval"}, "health", fail)
    _only(mount, {"allow_other"}, "mount", fail)
    metrics = _table(data, "metrics", fail)
    _only(metrics, {"listen"}, "metrics", fail)
    if "interval" in health:
        interval = health["interval"]
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.1 <= interval <= 86400:
            raise fail("interval must be a number of seconds between 0.1 and 86400", "health", "interval")
        kwargs_health = float(interval)
    else:
        kwargs_health = None
    _only(library, {"name", "template", "index", "mountpoint", "restart"}, "library", fail)
    if "mountpoint" in library:  # where `musicfs mount --all` mounts a library file's library
        kwargs_mountpoint = Path(_typed(library, "mountpoint", str, "library", fail)).expanduser()
    else:
        kwargs_mountpoint = None
    _only(cache, {"dir", "size", "read_timeout", "metadata_size", "headers_size",
                  "artwork_size", "pins_size"}, "cache", fail)
    _only(scan, {"workers", "interval"}, "scan", fail)
    kwargs: dict[str, Any] = {"source": source, "mountpoint": kwargs_mountpoint}
    if "restart" in library:
        kwargs["restart"] = _typed(library, "restart", bool, "library", fail)
    if "allow_other" in mount:
        kwargs["allow_other"] = _typed(mount, "allow_other", bool, "mount", fail)
    if kwargs_health is not None:
        kwargs["health_interval"] = kwargs_health
    if "template" in library:
        template = _typed(library, "template", str, "library", fail)
        try:
            PathTemplate(template)
        except TemplateError as exc:
            raise fail(str(exc), "library", "template") from None
        kwargs["template"] = template
    if "name" in library:
        name = _typed(library, "name", str, "library", fail)
        if not _ID.match(name):
            raise fail(f"library name {name!r} may hold only letters, digits, '_', '.', '-'",
                       "library", "name")
        kwargs["name"] = name
    if "index" in library:
        kwargs["index_path"] = Path(_typed(library, "index", str, "library", fail)).expanduser()
    if "dir" in cache:
        kwargs["cache_dir"] = Path(_typed(cache, "dir", str, "cache", fail)).expanduser()
    if "size" in cache:
        try:
            kwargs["cache_size"] = parse_size(cache["size"])
        except ValueError as exc:
            raise fail(str(exc), "cache", "size") from None
    if "metadata_size" in cache:
        kwargs["metadata_cache_size"] = _metadata_size(cache["metadata_size"], fail)
    for share in ("headers_size", "artwork_size", "pins_size"):  # tiers within the cache
        if share not in cache:
            continue
        try:
            kwargs[share] = parse_size(cache[share])
        except ValueError as exc:
            raise fail(str(exc), "cache", share) from None
        if kwargs[share] > kwargs.get("cache_size", Config.cache_size):
            raise fail(f"{share} {cache[share]!r} is more than the cache's size", "cache", share)
    if "read_timeout" in cache:
        timeout = cache["read_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 300:
            raise fail("read_timeout must be a number of seconds between 0.1 and 300", "cache",
                       "read_timeout")
        kwargs["read_timeout"] = float(timeout)
    if "workers" in scan:
        workers = _typed(scan, "workers", int, "scan", fail)
        if not 1 <= workers <= 64:
            raise fail("workers must be between 1 and 64", "scan", "workers")
        kwargs["scan_workers"] = workers
    if "interval" in scan:
        interval = scan["interval"]
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 1 <= interval <= 2592000:
            raise fail("interval must be a number of seconds between 1 and 2592000 (30 days); leave it "
                       "out for no scheduled rescans", "scan", "interval")
        kwargs["scan_interval"] = float(interval)
    if "listen" in metrics:
        try:
            kwargs["metrics_listen"] = parse_listen(metrics["listen"])
        except ValueError as exc:
            raise fail(str(exc), "metrics", "listen") from None
    kwargs.update(_raw_view(_table(data, "raw", fail), fail))
    kwargs.update(_prefetch(_table(data, "prefetch", fail), fail))
    kwargs["origins"] = _origins(data.get("origins", []), fail)
    kwargs["collections"] = _collections(data.get("collections", []), fail)
    kwargs["metadata"] = _metadata(_table(data, "metadata", fail), fail)
    kwargs["catalog"] = _catalog(_table(data, "catalog", fail), kwargs["origins"], fail)
    return Config(**kwargs)


def _catalog(table: dict, origins: tuple[OriginConfig, ...], fail) -> CatalogSettings | None:
    """``[catalog] origin, prefix, poll, key_file, publish, keep, mount``: the origin must be one of
    the library's own; the key lives in a file of its own, never in the config."""
    if not table:
        return None
    _only(table, {"origin", "prefix", "poll", "key_file", "publish", "keep", "mount"}, "catalog", fail)
    if "origin" not in table:
        raise fail("[catalog] needs 'origin' (the id of the origin the catalog is published into)", "catalog")
    origin = _typed(table, "origin", str, "catalog", fail)
    if origin not in {o.id for o in origins}:
        raise fail(f"[catalog] origin {origin!r} is not one of this library's origins", "catalog", "origin")
    settings: dict[str, Any] = {"origin": origin}
    if "prefix" in table:
        prefix = _typed(table, "prefix", str, "catalog", fail).strip("/")
        if not prefix or any(part in ("", ".", "..") for part in prefix.split("/")):
            raise fail(f"[catalog] prefix {table['prefix']!r} must be a folder path inside the origin",
                       "catalog", "prefix")
        settings["prefix"] = prefix
    if "poll" in table:
        settings["poll"] = _seconds(table, "poll", "catalog", fail)
        if settings["poll"] < 1:
            raise fail("poll must be at least 1 second", "catalog", "poll")
    if "key_file" in table:
        settings["key_file"] = Path(_typed(table, "key_file", str, "catalog", fail)).expanduser()
    for flag in ("publish", "mount"):
        if flag in table:
            settings[flag] = _typed(table, flag, bool, "catalog", fail)
    if "keep" in table:
        keep = _typed(table, "keep", int, "catalog", fail)
        if not 1 <= keep <= 100:
            raise fail("keep must be between 1 and 100 snapshots", "catalog", "keep")
        settings["keep"] = keep
    return CatalogSettings(**settings)


def _metadata(table: dict, fail) -> tuple[str, dict[str, Any]] | None:
    """``[metadata]``: ``source`` names a metadata plugin, the other keys are its options, checked
    against what it declares (its package is imported here: a broken one is named now)."""
    if not table:
        return None
    from .index.metadata import source_class

    if "source" not in table:
        raise fail("[metadata] needs 'source' (the name of a metadata plugin)", "metadata", None)
    name = _typed(table, "source", str, "metadata", fail)
    try:
        cls = source_class(name)
    except ConfigError as exc:
        raise fail(str(exc), "metadata", "source") from None
    options = {k: v for k, v in table.items() if k != "source"}
    _only(options, cls.required | cls.optional, "metadata", fail)
    for key in sorted(cls.required - set(options)):
        raise fail(f"metadata source {name!r} needs {key!r}", "metadata", None)
    return name, options


def _collections(items: Any, fail) -> list[tuple[str, str]]:
    """``[[collections]]``: each a ``name`` and a ``query``, refused here (file, line, the parser's
    reason) rather than when the mount starts: a saved search that cannot run is a config error."""
    if items == []:
        return []
    # imported only for a config that has collections: the query language is not needed to read the rest
    from .errors import QueryError
    from .search.collections import check_name
    from .search.query import parse

    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise fail("collections must be [[collections]] tables, each with a name and a query", "collections")
    collections, names = [], set()
    for i, item in enumerate(items):
        _only(item, {"name", "query"}, "collections", fail, i)
        for key in ("name", "query"):
            if key not in item:
                raise fail(f"collection #{i + 1} needs {key!r}", "collections", None, i)
        name = _typed(item, "name", str, "collections", fail, i)
        query = _typed(item, "query", str, "collections", fail, i)
        try:
            name = check_name(name)
        except QueryError as exc:
            raise fail(str(exc), "collections", "name", i) from None
        if name in names:
            raise fail(f"collection name {name!r} is used twice", "collections", "name", i)
        names.add(name)
        try:
            parse(query)
        except QueryError as exc:
            raise fail(f"collection {name!r}: {exc}", "collections", "query", i) from None
        collections.append((name, query))
    return collections


def _seconds(table: dict, key: str, section: str, fail, high: float = 86400) -> float:
    """A number of seconds from 0 to ``high`` (not a bool, not text), or the error naming its line."""
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise fail(f"{key} must be a number of seconds between 0 and {high:g}", section, key)
    return float(value)


def _raw_view(raw: dict, fail) -> dict[str, float]:
    """``[raw] ttl, idle``: how long a listing of /.origins is kept, and kept unused (0: not kept)."""
    _only(raw, {"ttl", "idle"}, "raw", fail)
    return {f"raw_{key}": _seconds(raw, key, "raw", fail) for key in ("ttl", "idle") if key in raw}


def _prefetch(table: dict, fail) -> dict[str, Any]:
    """``[prefetch] enabled, whole_after, budget, concurrent`` (musicfs.vfs.prefetch)."""
    _only(table, {"enabled", "whole_after", "budget", "concurrent"}, "prefetch", fail)
    settings: dict[str, Any] = {}
    if "enabled" in table:
        settings["prefetch"] = _typed(table, "enabled", bool, "prefetch", fail)
    if "whole_after" in table:
        settings["prefetch_whole_after"] = _seconds(table, "whole_after", "prefetch", fail)
    if "budget" in table:
        try:
            settings["prefetch_budget"] = parse_size(table["budget"])
        except ValueError as exc:
            raise fail(str(exc), "prefetch", "budget") from None
    if "concurrent" in table:
        value = table["concurrent"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
            raise fail("concurrent must be a whole number from 1 to 16", "prefetch", "concurrent")
        settings["prefetch_concurrent"] = value
    return settings


METADATA_SIZE_RANGE = (4 * 10**6, 64 * 10**9)  # below 4 MB SQLite alone would not fit its tree's pages


def _metadata_size(value: Any, fail) -> int:
    """``[cache] metadata_size``: a size (``"100MB"``, ``"1GiB"``, bytes) within METADATA_SIZE_RANGE."""
    low, high = METADATA_SIZE_RANGE
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise fail(str(exc), "cache", "metadata_size") from None
    if not low <= size <= high:
        raise fail(f"metadata_size must be between 4MB and 64GB, not {value!r}", "cache", "metadata_size")
    return size


def parse_listen(value: Any) -> tuple[str, int]:
    """``"127.0.0.1:9877"`` or ``"[::1]:9877"``: an IP address (never a name: nothing is resolved) and a port."""
    text = value if isinstance(value, str) else ""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text.strip())
    try:
        host = str(ipaddress.ip_address(match.group(1) or match.group(3))) if match else ""
    except ValueError:
        host = ""
    port = int(match.group(2) or match.group(4)) if match else 0
    if not host or not 1 <= port <= 65535:
        raise ValueError(f"listen must be IP:PORT, e.g. \"127.0.0.1:9877\" (or \"[::1]:9877\"; \"0.0.0.0:9877\" "
                         f"for every interface), not {value!r}")
    return host, port


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _table(data: dict, name: str, fail) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise fail(f"[{name}] must be a table", None, name)
    return value


def _only(table: dict, allowed: set[str], name: str, fail, index: int | None = None) -> None:
    for key in table:
        if key not in allowed:
            raise fail(f"unknown key {key!r} in [{name}] (allowed: {', '.join(sorted(allowed))})",
                       name, key, index)


def _typed(table: dict, key: str, kind: type, name: str, fail, index: int | None = None):
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise fail(f"{key} must be {kind.__name__}, not {type(value).__name__}", name, key, index)
    return value


def _origins(items: Any, fail) -> tuple[OriginConfig, ...]:
    from .origins.base import kind_class

    if not isinstance(items, list) or not items:
        raise fail("at least one [[origins]] table is required", "origins", None)
    origins, ids = [], set()
    for i, item in enumerate(items):
        if "type" not in item or "id" not in item:
            missing = "id" if "id" not in item else "type"
            raise fail(f"origin #{i + 1} needs {missing!r}", "origins", None, i)
        kind = _typed(item, "type", str, "origins", fail, i)
        try:  # an unknown kind is refused here too, with the known ones
            cls = kind_class(kind)
        except ConfigError as exc:
            raise fail(str(exc), "origins", "type", i) from None
        required, optional = cls.required, cls.optional
        _only(item, _ORIGIN_COMMON | required | optional, "origins", fail, i)
        origin_id = _typed(item, "id", str, "origins", fail, i)
        if not _ID.match(origin_id):
            raise fail(f"origin id {origin_id!r} may hold only letters, digits, '_', '.', '-'",
                       "origins", "id", i)
        if origin_id in ids:
            raise fail(f"origin id {origin_id!r} is used twice", "origins", "id", i)
        ids.add(origin_id)
        for key in sorted(required):
            if key not in item:
                raise fail(f"{kind} origin {origin_id!r} needs {key!r}", "origins", None, i)
            _typed(item, key, str, "origins", fail, i)  # required settings are text: paths, names
        priority = _typed(item, "priority", int, "origins", fail, i) if "priority" in item else 1
        cache = _typed(item, "cache", str, "origins", fail, i) if "cache" in item else "always"
        if cache not in ("always", "never"):
            raise fail(f"cache must be 'always' or 'never', not {cache!r}", "origins", "cache", i)
        options = {k: v for k, v in item.items() if k not in _ORIGIN_COMMON}
        origins.append(OriginConfig(origin_id, kind, priority, cache, options))
    return tuple(origins)


def config_for_folder(folder: Path | str, **overrides: Any) -> Config:
    """The config ``musicfs mount --origin PATH`` implies: one local origin."""
    folder = Path(folder).expanduser()
    origin = OriginConfig("local", "local", 1, "always", {"path": str(folder)})
    return Config(origins=(origin,), **overrides)
