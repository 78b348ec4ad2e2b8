"""The composition root: builds every component, runs the FUSE loop, tears down in reverse.

Nothing else constructs components or wires them together; dependencies go in
through constructors. :func:`serve` returns once the filesystem is unmounted
(by ``musicfs umount``, ``fusermount3 -u``, SIGINT or SIGTERM).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from . import daemon
from .config import Config
from .control.exporter import MetricsListener
from .control.metrics import LatencyRecorder, MountMetrics
from .control.server import ControlServer
from .control.services import ControlServices
from .dirs import make_private
from .errors import MusicFSError
from .events import EventBus
from .fuse.attrs import AttrPolicy
from .fuse.inodes import InodeTable
from .fuse.invalidate import KernelInvalidator
from .fuse.namespaces import (
    CollectionsNamespace,
    CoverNamespace,
    HiddenNamespace,
    OfflineNamespace,
    RawNamespace,
    ResultDirs,
    Router,
    SearchNamespace,
    TreeNamespace,
)
from .fuse.operations import Operations
from .index.library import LibraryIndex
from .index.metacache import MetadataBudget
from .lifecycle import Lifecycle
from .looplag import LoopLag
from .origins.base import Origin, create
from .origins.health import HealthMonitor
from .origins.local import LocalOrigin
from .search.service import SearchService
from .status import StatusService
from .store.artwork import ArtShelf
from .store.cache import ContentCache
from .store.delta import DeltaSync, ScanKeeper
from .store.headers import HeaderTier
from .store.reader import CachedReader
from .systemd import Notifier
from .vfs.access import AccessTracker
from .vfs.hidden import HiddenFiles
from .vfs.listings import ListingCache
from .vfs.offline import OfflineService
from .vfs.pins import Pinner
from .vfs.prefetch import Prefetcher, PrefetchPolicy
from .vfs.rawview import RawView
from .vfs.reader import DirectReader
from .vfs.resolver import Node, Resolver
from .vfs.sync import SyncService

log = logging.getLogger(__name__)

MAX_TASKS = 1024  # requests in flight; pyfuse3's default (99) would serialise a busy mount
MAX_BACKGROUND = 128  # kernel read-ahead requests in flight to the daemon (the kernel's default: 12)
READ_AHEAD_KIB = 512  # the kernel's read-ahead for the mount (its default: 128 KiB per request)
MAX_SEARCH_RESULTS = 1000  # entries listed in a /.search or /.collections folder


@dataclass(frozen=True)
class MountSettings:
    mountpoint: Path
    index_path: Path
    entry_timeout: float = 300.0
    attr_timeout: float = 300.0
    cache_dir: Path = Path("cache")
    read_timeout: float = 5.0  # an uncached read of an unreachable origin fails (EIO) after this
    health_interval: float = 30.0  # seconds between origin health probes
    max_tasks: int = MAX_TASKS
    allow_other: bool = False  # other users may enter the mount; the kernel enforces the modes shown
    control_socket: Path | None = None  # where the control API listens (none: no API)
    debug_fuse: bool = False


def fuse_options(settings: MountSettings) -> set[str]:
    """The mount options: read-only, a constant fsname (never an origin's address, let alone its
    credentials: /proc/mounts is world-readable), and the kernel checking permissions.

    ``default_permissions`` is always on: the kernel decides access from the modes
    shown (files 0444, folders 0555), so a request from another user never
    reaches code that would have to decide it. Without ``allow_other`` the
    kernel refuses every other user (EACCES) before looking at modes at all.
    """
    options = set(pyfuse3.default_options) | {"fsname=musicfs", "subtype=musicfs", "ro",
                                               "default_permissions"}
    if settings.allow_other:
        options.add("allow_other")
    if settings.debug_fuse:
        options.add("debug")
    return options


def _origins(config: Config) -> dict[str, Origin]:
    """Every configured origin, built by its kind; none is contacted here (offline start)."""
    return {o.id: create(o.id, o.type, o.options) for o in config.origins}


def _replicas(index: LibraryIndex) -> Callable[[str, str, int], list[str]]:
    """Origins holding the same relative path with the same size: replicas of one file."""
    def replicas(origin_id: str, real_path: str, size: int) -> list[str]:
        rows = index.conn.execute("SELECT origin_id FROM tracks WHERE real_path = ? AND size = ?",
                                  (real_path, size)).fetchall()
        return sorted({origin_id, *(r[0] for r in rows)})
    return replicas


async def _stop_on_signal(lifecycle: Lifecycle) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            lifecycle.request_shutdown(force=True, reason=signal.Signals(signum).name)
            return


async def _stop_when_asked(lifecycle: Lifecycle, ops: Operations) -> None:
    """Unmount once asked (API, signal): reads under way finish first (requests in flight, files
    open: a read() is many requests), within the drain time."""
    request = await lifecycle.wait_shutdown()
    if not request.force:
        with trio.move_on_after(request.drain_timeout):
            while ops.busy():
                await trio.sleep(0.02)
    log.info("unmounting (asked by %s)", request.reason)
    pyfuse3.terminate()


def _catalog_refusal(config: Config) -> str | None:
    """Why a mount of a published catalog never rescans: its index is the publisher's."""
    if config.catalog is None or not config.catalog.mount:
        return None
    return (f"this library is mounted from the catalog published in origin {config.catalog.origin!r}: "
            "it is scanned where it is published (musicfs publish), and reaches this mount from there")


def _control_app(services: ControlServices):
    """Build the control API (in a worker thread: FastAPI is imported now, on first use)."""
    from .control.api import build_app

    return build_app(services)


async def _serve_control(server: ControlServer) -> None:
    """The control API, supervised like the other services; its socket goes with the mount."""
    try:
        await _supervised("control API", server.run)
    finally:
        with trio.CancelScope(shield=True):
            await server.close()


def _bind_metrics(address: tuple[str, int], metrics: MountMetrics) -> MetricsListener | None:
    """The TCP listener Prometheus scrapes (``[metrics] listen``); a port in use costs only it."""
    listener = MetricsListener(*address, metrics.render)
    try:
        listener.bind()
    except OSError as exc:
        log.error("metrics listener unavailable: cannot listen on %s: %s", listener.address, exc)
        return None
    return listener


async def _serve_metrics(listener: MetricsListener) -> None:
    """Prometheus' door, supervised like the control API; its port closes with the mount."""
    try:
        await _supervised("metrics listener", listener.run)
    finally:
        with trio.CancelScope(shield=True):
            await listener.close()


async def _check_answering(mountpoint: Path, lifecycle: Lifecycle) -> None:
    """Stat the mount until it answers (the kernel's INIT handshake is done), then say so.

    The stat runs in a child process, never in a thread of ours: a thread blocked on
    this daemon's own mount would keep a SIGKILLed daemon from ever exiting (its FUSE
    connection cannot close while it waits), a child does not. It goes through the
    kernel to this same loop, so it answers once ``pyfuse3.main`` serves requests.
    """
    while True:
        with trio.move_on_after(10):
            done = await trio.run_process(["stat", "-c", "%i", str(mountpoint)], capture_stdout=True,
                                          capture_stderr=True, check=False)
            if done.returncode == 0:
                lifecycle.answering.set()
                return
        await trio.sleep(0.1)


async def _raise_background_limit(mountpoint: Path, lifecycle: Lifecycle) -> None:
    """Once the kernel's INIT handshake is done, allow more read-ahead requests in flight.

    Set earlier, the INIT reply would put the kernel's default back.
    """
    await lifecycle.answering.wait()
    if await trio.to_thread.run_sync(daemon.raise_background_limit, mountpoint, MAX_BACKGROUND):
        log.debug("FUSE background requests raised to %d", MAX_BACKGROUND)
    else:
        log.info("could not raise the FUSE background request limit (needs root and fusectl); "
                 "cold reads from slow origins will overlap at most 12 at a time")
    if not await trio.to_thread.run_sync(daemon.raise_read_ahead, mountpoint, READ_AHEAD_KIB):
        log.info("could not raise the kernel's read-ahead for the mount (needs root); "
                 "files are read in 128 KiB requests")


async def _supervised(name: str, task: Callable[..., Awaitable[None]], *args: object,
                      restart: bool = True) -> None:
    """Run a background service of the mount so that a bug in it cannot take the mount down.

    An exception escaping a task of the mount's nursery would cancel the nursery,
    and with it ``pyfuse3.main``: every file would vanish because, say, a health
    probe met an error nobody foresaw. Such an exception is logged once with its
    traceback, and the service is started again after a pause that doubles each
    time (1 s up to 5 min), so a bug that fails every time does not flood the log.
    """
    pause = 1.0
    while True:
        try:
            await task(*args)
            return
        except Exception:  # the point: anything a service did not foresee; logged with its traceback
            log.exception("%s failed unexpectedly; %s", name,
                          f"restarting it in {pause:g} s" if restart else "not restarting it")
        if not restart:
            return
        await trio.sleep(pause)
        pause = min(pause * 2, 300.0)


def _forget_entry(node: Node) -> None:
    """Ask the kernel to drop an entry whose node the inode table let go (NFR-5.1); queued on
    pyfuse3's own thread, as a handler must never wait for the kernel."""
    pyfuse3.invalidate_entry_async(node.parent, os.fsencode(node.name), ignore_enoent=True)


async def _sync_collections(search: SearchService, wanted: list[tuple[str, str]]) -> None:
    """Make the index's config collections exactly the config's ``[[collections]]``. Run once the
    mount serves, so a mount never waits for the index's write lock (a scan may hold it); their
    folders appear a moment later. A failure (the index locked past its timeout) costs those
    collections only, never the mount."""
    try:
        await trio.to_thread.run_sync(search.sync_config, wanted)
    except (MusicFSError, sqlite3.Error) as exc:
        log.error("collections from the config were not saved in the index: %s", exc)


async def _reconcile(cache: ContentCache) -> None:
    """Align the chunk index with the packs and chunk files after an unclean stop, off the mount's path."""
    await trio.to_thread.run_sync(cache.reconcile)


def serve(config: Config, settings: MountSettings, *, on_mounted: Callable[[], None] | None = None) -> None:
    """Mount the library described by ``config`` and serve it until unmounted."""
    trio.run(_serve, config, settings, on_mounted)


async def _serve(config: Config, settings: MountSettings, on_mounted: Callable[[], None] | None) -> None:
    started = time.time()
    budget = MetadataBudget(config.metadata_cache_size)  # NFR-5.1: SQLite's page cache and kept nodes
    index = LibraryIndex(settings.index_path, budget=budget)
    make_private(settings.cache_dir)  # before the store creates anything in it
    bus = EventBus()
    cache = ContentCache(settings.cache_dir, config.cache_size, bus.publish)
    headers = HeaderTier(cache, config.header_limit)
    delta = DeltaSync(cache)  # retag-tolerant resync, run by the scans' keeper
    origins = _origins(config)
    metadata = config.metadata_source()  # tags from a metadata plugin for rescans (None: the files')
    artwork = ArtShelf(cache, config.artwork_limit, origins)  # covers, kept by scans, shown by albums
    direct = DirectReader({k: o for k, o in origins.items() if isinstance(o, LocalOrigin)}, bus=bus)
    health = HealthMonitor(origins, {o.id: o.priority for o in config.origins},
                           interval=settings.health_interval, timeout=settings.read_timeout, bus=bus)
    lifecycle = Lifecycle(degraded=health.any_unhealthy)
    status = StatusService(mountpoint=settings.mountpoint, index=index, health=health, lifecycle=lifecycle,
                           started=started)
    notifier = Notifier.from_environment()  # systemd's socket and watchdog, when systemd runs this daemon
    search = SearchService(settings.index_path)  # shared by /.search, /.collections and the control API
    access: AccessTracker | None = None
    offline: OfflineService | None = None
    mounted = False
    try:
        async with trio.open_nursery() as nursery:
            reader = CachedReader(origins, cache, bus, nursery, direct=direct,
                                  read_timeout=settings.read_timeout, health=health,
                                  replicas=_replicas(index), headers=headers,
                                  policies={o.id: o.cache for o in config.origins})
            finished = (index.last_scan() or {}).get("finished_at") or started
            policy = AttrPolicy(entry_timeout=settings.entry_timeout, attr_timeout=settings.attr_timeout,
                                dir_mtime_ns=int(finished * 10**9))
            access = AccessTracker(settings.index_path)  # opens, heat, transitions (CAS-4), for prefetch too
            hidden = HiddenFiles({"status.json": status.status, "errors.json": status.errors,
                                  "heat.json": access.heat, "access.log": access.access_log})
            raw = RawView(origins, ttl=config.raw_ttl, idle=config.raw_idle)
            # the kernel's lookup counts: shared with the rescans' invalidation; nodes kept within the bound
            inodes = InodeTable(budget.max_nodes, _forget_entry)
            recorder = LatencyRecorder()  # each FUSE handler's time, for /metrics
            listings = ListingCache(budget.listed_nodes)  # repeated listings from memory (MM-5.3), emptied by rescans
            resolver = Resolver(index.conn, listings)
            covers = CoverNamespace(index.conn, artwork, policy, read_timeout=settings.read_timeout)
            prefetch = Prefetcher(index.conn, reader, access, PrefetchPolicy(
                enabled=config.prefetch, whole_after=config.prefetch_whole_after, budget=config.prefetch_budget,
                concurrent=config.prefetch_concurrent), nursery, resolver)
            # pinned files: kept whole, never evicted
            pins = Pinner(index.conn, cache, reader, prefetch, config.pin_limit, resolver,
                          uncached=frozenset(o.id for o in config.origins if o.cache == "never"))
            tree = TreeNamespace(index, resolver, reader, inodes, policy, covers, access, prefetch)
            # /.search and /.collections list hits as the tree's own files; searches run in the
            # service's worker threads on connections of their own
            results = ResultDirs(search.search, tree, max_results=MAX_SEARCH_RESULTS)
            searches = SearchNamespace(search, results, policy)
            # /.offline: the tree's tracks held whole in the cache, worked out in worker threads on a
            # connection of its own when asked for, after the bus said the cache or the tree changed
            offline = OfflineService(settings.index_path, cache)
            router = Router(tree, [HiddenNamespace(hidden, policy), RawNamespace(raw, reader, policy), searches,
                                   CollectionsNamespace(search, results, policy),
                                   OfflineNamespace(offline, tree, policy)], entered=[covers])
            ops = Operations(router, inodes, recorder=recorder)
            invalidator = KernelInvalidator(inodes, resolver)
            sync = SyncService(index, origins, config.path_template(), bus=bus, lifecycle=lifecycle,
                               tree_changed=invalidator, workers=config.scan_workers,
                               headers=ScanKeeper(headers, delta).sinks(config.header_origins()),
                               artwork=artwork, metadata=metadata, refusal=_catalog_refusal(config))
            status.register("sync", sync.statistics)
            follower = None
            if _catalog_refusal(config) is not None:  # the index is the publisher's: follow its catalog
                from .catalog.follow import CatalogFollower

                follower = CatalogFollower(index, origins[config.catalog.origin], config.catalog, bus=bus,
                                           tree_changed=invalidator)
                status.register("catalog", follower.statistics)
            publisher = None
            if config.catalog is not None and config.catalog.publish and follower is None:
                from .catalog.autopublish import AutoPublisher  # the machine that scans, publishing

                publisher = AutoPublisher(settings.index_path, origins[config.catalog.origin], config.catalog,
                                          config.library_name())
                status.register("catalog_publisher", publisher.statistics)
            status.register("invalidation", invalidator.statistics)
            # how long the loop is held: CPU per task step (ASYNC-3), and a probe's wake-up lag
            # 10 wake-ups a second: the lag seen by a waiting request is sampled often enough, and an
            # idle mount (for days) costs next to no CPU (100 a second kept ~5 % of a core busy)
            loop_lag = LoopLag(interval=0.1)
            status.register("loop", loop_lag.statistics)
            status.register("metadata_cache", budget.statistics)
            status.register("listings", listings.statistics)
            status.register("search", search.statistics)
            status.register("search_folders", searches.statistics)
            status.register("offline", offline.statistics)
            for name, statistics in (("reader", reader.statistics), ("direct", direct.statistics),
                                     ("cache", cache.statistics), ("headers", headers.statistics),
                                     ("artwork", artwork.statistics),
                                     ("delta_sync", delta.statistics),
                                     ("events", bus.statistics),
                                     ("raw_views", raw.statistics), ("access", access.statistics),
                                     ("prefetch", prefetch.statistics), ("pins", pins.statistics),
                                     ("fuse", ops.statistics)):
                status.register(name, statistics)
            metrics = MountMetrics(status, recorder)  # /metrics: the same statistics, plus FUSE latencies
            status.register("metrics", metrics.statistics)
            exporter = _bind_metrics(config.metrics_listen, metrics) if config.metrics_listen else None
            if exporter is not None:
                status.register("metrics_listener", exporter.statistics)
            control = None
            if settings.control_socket is not None:
                services = ControlServices(status=status, lifecycle=lifecycle, cache=cache, bus=bus,
                                           limiter=trio.CapacityLimiter(4), sync=sync, metrics=metrics,
                                           search=search, headers=headers, artwork=artwork,
                                           prefetch=prefetch, pins=pins, catalog=follower)
                control = ControlServer(settings.control_socket, functools.partial(_control_app, services))
                try:
                    control.bind()
                except OSError as exc:  # the mount serves on; only the API is missing
                    log.error("control API unavailable: cannot listen on %s: %s", settings.control_socket, exc)
                    control = None
                else:
                    status.register("control", control.statistics)
            try:
                pyfuse3.init(ops, str(settings.mountpoint), fuse_options(settings))
            except RuntimeError as exc:  # fusermount3 printed why (on stderr, in the log)
                hint = (" (allow_other needs user_allow_other in /etc/fuse.conf for users other than root)"
                        if settings.allow_other and os.getuid() != 0 else "")
                raise daemon.DaemonError(f"mounting {settings.mountpoint} failed: {exc}{hint}") from None
            mounted = True
            log.info("mounted %s at %s", settings.index_path, settings.mountpoint)
            if on_mounted:
                on_mounted()
            lifecycle.mounted()
            # start-up objects live as long as the mount: out of the collector's sight, full
            # collections no longer walk them (they stalled the loop 50-100 ms, ASYNC-3). No
            # collection first: it walked ~35K objects for ~9 ms, before the mount's first
            # answer (NFR-1.7), to free ~50 (start-up leaves almost no garbage)
            gc.freeze()
            nursery.start_soon(_stop_on_signal, lifecycle)
            nursery.start_soon(_stop_when_asked, lifecycle, ops)
            nursery.start_soon(_check_answering, settings.mountpoint, lifecycle)
            nursery.start_soon(_raise_background_limit, settings.mountpoint, lifecycle)
            nursery.start_soon(_supervised, "cache access-time flush", reader.flush_periodically)
            nursery.start_soon(_supervised, "memory given back when idle", reader.give_back_memory_when_idle)
            nursery.start_soon(functools.partial(_supervised, "cache reconciliation", _reconcile, cache,
                                                 restart=False))
            nursery.start_soon(_supervised, "origin health probes", health.run)
            nursery.start_soon(_supervised, "event loop lag probe", loop_lag.run)
            nursery.start_soon(_sync_collections, search, config.collections)
            nursery.start_soon(_supervised, "systemd notifications", notifier.run, lifecycle, settings.mountpoint)
            nursery.start_soon(_supervised, "rescan metrics", metrics.follow, bus)
            nursery.start_soon(_supervised, "listening activity", access.run)
            nursery.start_soon(_supervised, "pin keeper", pins.run, bus)
            nursery.start_soon(_supervised, "offline view", offline.follow, bus)
            if exporter is not None:
                nursery.start_soon(_serve_metrics, exporter)
            nursery.start_soon(_supervised, "live rescans", sync.run)
            if follower is not None:
                nursery.start_soon(_supervised, "catalog poll", follower.run)
            if publisher is not None:
                nursery.start_soon(_supervised, "catalog publishing", publisher.run, bus)
            if config.scan_interval is not None and _catalog_refusal(config) is None:
                nursery.start_soon(_supervised, "scheduled rescans", sync.run_schedule, config.scan_interval)
            if control is not None:
                nursery.start_soon(_serve_control, control)
            await pyfuse3.main(min_tasks=4, max_tasks=settings.max_tasks)
            bus.close()  # event feeds end: their clients see the stream finish, not a cut
            with trio.move_on_after(1.0):  # one whose client stopped reading is cut below
                await bus.drained()
            lifecycle.request_shutdown(force=True, reason="unmount")  # fusermount -u, umount: state says so
            await reader.drain(timeout=settings.read_timeout)
            nursery.cancel_scope.cancel()
    finally:
        notifier.stopping()  # once: also when the loop ended before the notifier saw the request
        if mounted:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", settings.mountpoint)
        direct.close()
        for origin in origins.values():
            origin.close()
        if metadata is not None:
            metadata.close()
        cache.close()
        search.close()
        if access is not None:
            access.close()
        if offline is not None:
            offline.close()
        index.close()
        notifier.close()
