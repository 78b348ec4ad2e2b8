"""Prometheus metrics of a mount: the numbers status shows, as series, plus FUSE latencies.

One source of truth: at each scrape the collector builds the mount's status
document (the same ``statistics()`` of every component that ``/v1/status``
and ``/.musicfs/status.json`` show) and translates it; nothing here counts
a second time what a component already counts. Two things status does not
hold are kept here:

* the time each FUSE handler took, by operation (``musicfs_fuse_latency_seconds``):
  :class:`LatencyRecorder` is handed to ``Operations`` by the composition root
  and told each handler's duration, measured inside the daemon (from the
  handler's start to its answer; the kernel's share of a request is not in it);
* what live rescans changed, by origin, read from the ``SyncCompleted`` events
  of the mount's bus (:meth:`MountMetrics.follow`).

Kernel caches (MM-5.x): the kernel answers a stat, a path lookup or a
listing from its attribute, entry and page caches without asking the
daemon, so the daemon never sees a hit, only the misses, which are the
``getattr``, ``lookup`` and ``opendir``/``readdir`` counts of
``musicfs_fuse_ops_total``. A hit *rate* needs the number of calls the
clients made, which only they know; no rate is exported. A client that
counts its own calls gets the rate as ``1 - (requests that reached the
daemon) / (calls it made)``, which is how the conformance tests measure it.

Cost: the recorder is a few list slots per operation, updated on the loop
without a lock (about a microsecond per request). ``prometheus_client``
(some 2 MB and 50 ms to import) is imported by the first scrape, in the
worker thread that renders it, so a mount nobody scrapes does not pay
for it. A scrape runs SQL (index and chunk counts), hence off the loop.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..events import SyncCompleted
from ..lifecycle import STATES
from ..status import StatusService

# seconds; the NFR-1.x targets and maxima (1, 5, 10, 20, 50, 200 ms, 1 s) fall on bounds
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                   1.0, 2.5, 5.0, 10.0)
HEALTH_VALUES = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}  # "unknown" (not probed yet): NaN


class LatencyRecorder:
    """Per-operation latency buckets, filled by the FUSE loop, read by scrapes in another thread.

    Each operation has one list: a count per bucket, one for over the last
    bound, and the sum. A scrape copies the lists (each copy is atomic under
    the GIL); a request finishing during the copy may be in its count and
    not yet in its sum, a difference Prometheus' rate() cannot see.
    """

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self._series: dict[str, list[float]] = {}

    def observe(self, op: str, seconds: float) -> None:
        series = self._series.get(op)
        if series is None:
            series = self._series[op] = [0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds: Prometheus' "le"
        series[-1] += seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """op -> (count in each bucket, the last one over every bound; sum of seconds)."""
        copies = {op: list(series) for op, series in dict(self._series).items()}
        return {op: (series[:-1], series[-1]) for op, series in copies.items()}


@dataclass(frozen=True)
class SyncRecord:
    """What this daemon's rescans of one origin did (from ``SyncCompleted`` events).

    Replaced whole on each rescan, so a scrape in another thread never sees half of one.
    """

    syncs: int = 0
    last_changed: int = 0  # added + removed + modified in the last one
    last_completed_at: float = 0.0


class MountMetrics:
    """The mount's :class:`~musicfs.control.services.MetricsSource` and its Prometheus collector."""

    def __init__(self, status: StatusService, recorder: LatencyRecorder):
        self.status = status
        self.recorder = recorder
        self.syncs: dict[str, SyncRecord] = {}
        self.scrapes = 0
        self._registry: Any = None
        self._lock = threading.Lock()

    async def follow(self, bus: Any) -> None:
        """Count completed rescans by origin, from the bus, until its feed ends or the mount stops."""
        with bus.subscribe() as feed:
            async for event in feed:
                if isinstance(event, SyncCompleted):
                    before = self.syncs.get(event.origin_id, SyncRecord())
                    self.syncs[event.origin_id] = SyncRecord(
                        before.syncs + 1, event.added + event.removed + event.modified, event.at)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (blocking: call it in a worker thread)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        with self._lock:
            if self._registry is None:
                self._registry = CollectorRegistry(auto_describe=False)
                self._registry.register(self)
            self.scrapes += 1
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def statistics(self) -> dict[str, Any]:
        return {"scrapes": self.scrapes, "operations_timed": len(self.recorder.snapshot()),
                "origins_synced": sorted(self.syncs)}

    # -- the collector (prometheus_client calls it, from render) ---------------------------------
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
            StateSetMetricFamily,
        )

        doc = self.status.status()
        fuse, cache = doc.get("fuse", {}), doc.get("cache", {})

        def gauge(name: str, help_text: str, value: float | None) -> Iterator[Any]:
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)

        def counter(name: str, help_text: str, value: float | None) -> Iterator[Any]:
            if value is not None:
                yield CounterMetricFamily(name, help_text, value=value)

        info = InfoMetricFamily("musicfs_mount", "The mount: version and mountpoint.")
        info.add_metric([], {"version": doc["version"], "mountpoint": doc["mountpoint"]})
        yield info
        yield StateSetMetricFamily("musicfs_state", "The mount's state (ready, syncing, degraded, ...).",
                                   value={s: s == doc["state"] for s in STATES})
        yield from gauge("musicfs_uptime_seconds", "Seconds since the daemon started.", doc["uptime_seconds"])

        # FUSE
        yield _by_label(CounterMetricFamily, "musicfs_fuse_ops", "FUSE requests answered, by operation.",
                        "op", fuse.get("ops", {}))
        yield _by_label(CounterMetricFamily, "musicfs_fuse_errors", "FUSE requests answered with an error.",
                        "op", fuse.get("errors", {}))
        latency = HistogramMetricFamily("musicfs_fuse_latency_seconds",
                                        "Time the daemon took to answer a FUSE request, by operation "
                                        "(measured inside the daemon).", labels=["op"])
        for op, (counts, total) in sorted(self.recorder.snapshot().items()):
            latency.add_metric([op], _cumulative(self.recorder.bounds, counts), sum_value=total)
        yield latency
        yield from gauge("musicfs_fuse_requests_in_flight", "FUSE requests being answered now.",
                         fuse.get("in_flight"))
        yield from gauge("musicfs_open_file_handles", "Files open through the mount now.",
                         doc.get("open_handles"))
        yield from gauge("musicfs_kernel_held_inodes", "Inodes the kernel holds (looked up, not yet forgotten).",
                         fuse.get("known_inodes"))

        # metadata kept in memory
        listings = doc.get("listings", {})
        yield from counter("musicfs_listing_cache_hits", "Directory listings (readdir pages) answered from "
                                                         "a kept listing.", listings.get("hits"))
        yield from counter("musicfs_listing_cache_misses", "Directory listings (readdir pages) that "
                                                           "queried the index.", listings.get("misses"))
        loop = doc.get("loop")
        if loop:
            bounds = tuple(b / 1000 for b in loop["bounds_ms"])
            for key, name, help_text in (
                    ("steps", "musicfs_event_loop_step_cpu_seconds",
                     "CPU time of each step of the daemon's event loop (work that holds the loop)."),
                    ("lag", "musicfs_event_loop_lag_seconds",
                     "How late a sleeping probe on the event loop wakes.")):
                family = HistogramMetricFamily(name, help_text)
                family.add_metric([], _cumulative(bounds, loop[key]["counts"]),
                                  sum_value=loop[key]["sum_ms"] / 1000)
                yield family

        # content cache
        yield from counter("musicfs_cache_hits", "Chunk reads served from the content cache.",
                           cache.get("hits"))
        yield from counter("musicfs_cache_misses", "Chunk reads that had to go to an origin.",
                           cache.get("misses"))
        yield from gauge("musicfs_cache_size_bytes", "Bytes of chunks stored in the content cache.",
                         cache.get("bytes"))
        yield from gauge("musicfs_cache_limit_bytes", "The content cache's size limit.",
                         cache.get("limit_bytes"))
        yield from gauge("musicfs_cache_chunks", "Chunks stored in the content cache.", cache.get("chunks"))
        yield from gauge("musicfs_cache_dedup_ratio", "Share of mapped bytes saved by shared chunks.",
                         cache.get("dedup_ratio"))
        yield from counter("musicfs_cache_evictions", "Chunks evicted to stay under the limit.",
                           cache.get("evictions"))
        yield from counter("musicfs_cache_evicted_bytes", "Bytes evicted to stay under the limit.",
                           cache.get("evicted_bytes"))
        yield from counter("musicfs_cache_corruptions", "Stored chunks that failed their check (refetched).",
                           cache.get("corruptions"))
        reader = doc.get("reader", {})
        yield from gauge("musicfs_cache_pending_write_bytes", "Bytes of fetched chunks waiting to be written "
                                                              "to the cache (readers wait at the bound).",
                         reader.get("pending_chunk_bytes"))
        yield from counter("musicfs_cache_write_waits", "Blocks whose fill waited for cache writes to "
                                                        "finish (the cache's disk slower than the readers).",
                           reader.get("pending_waits"))
        yield from counter("musicfs_memory_trims", "Times the daemon gave freed memory back to the system "
                                                   "after a busy spell (5 s with no file open).",
                           reader.get("memory_trims"))
        headers = doc.get("headers", {})  # the header tier: what tag scans read, kept apart
        yield from gauge("musicfs_header_tier_entries", "File versions whose header (the bytes a tag scan "
                                                        "read) is kept.", headers.get("entries"))
        yield from gauge("musicfs_header_tier_bytes", "Bytes of files the kept headers hold.", headers.get("bytes"))
        yield from gauge("musicfs_header_tier_limit_bytes", "The header tier's size limit.",
                         headers.get("limit_bytes"))
        yield from counter("musicfs_header_tier_hits", "Reads answered from a kept header, without the origin.",
                           headers.get("hits"))
        yield from counter("musicfs_header_tier_seeded_bytes", "Bytes of played files' heads taken from their "
                                                              "headers instead of the origin.",
                           reader.get("seeded_bytes"))
        yield from counter("musicfs_header_tier_evictions", "Headers evicted to stay under the tier's limit.",
                           headers.get("evictions"))
        ahead = doc.get("prefetch", {})  # what was fetched before a listener opened it
        yield from counter("musicfs_prefetch_bytes", "Bytes fetched ahead of a listener (next tracks' heads, "
                                                     "whole next tracks).", ahead.get("bytes"))
        yield from counter("musicfs_prefetch_hits", "Opens of a track that was prefetched.", ahead.get("hits"))
        yield from gauge("musicfs_prefetch_unused_bytes", "Bytes prefetched that nobody has opened yet.",
                         ahead.get("unused_bytes"))
        yield from counter("musicfs_prefetch_wasted_bytes", "Bytes prefetched and not opened within an hour.",
                           ahead.get("wasted_bytes"))
        pins = doc.get("pins", {})  # files kept whole, never evicted
        yield from gauge("musicfs_pins", "Files pinned.", cache.get("pins"))
        yield from gauge("musicfs_pins_size_bytes", "Sizes of the pinned files: what pins hold of their room.",
                         cache.get("pins_size"))
        yield from gauge("musicfs_pins_room_bytes", "Room pins may use ([cache] pins_size).", pins.get("room"))
        yield from gauge("musicfs_pinned_bytes", "Bytes of the chunks pinned files keep in the cache.",
                         cache.get("pinned_bytes"))
        yield from counter("musicfs_pins_made_whole", "Pinned files the daemon fetched whole on its own (after "
                                                      "a rescan, an origin back).", pins.get("made_whole"))
        listening = doc.get("access", {})  # each open of a track (CAS-4)
        yield from counter("musicfs_track_opens", "Opens of tracks through the mount.", listening.get("opens"))
        art = doc.get("artwork", {})  # album covers, kept while the index shows them
        yield from gauge("musicfs_artwork_images", "Cover images kept in the cache (each once, however many "
                                                   "tracks show it).", art.get("images"))
        yield from gauge("musicfs_artwork_bytes", "Bytes of the cover images kept.", art.get("bytes"))
        yield from gauge("musicfs_artwork_limit_bytes", "The limit on cover images kept.", art.get("limit_bytes"))
        yield from counter("musicfs_artwork_hits", "Covers opened from the cache.", art.get("hits"))
        yield from counter("musicfs_artwork_fetched", "Covers read from an origin (not kept, or lost).",
                           art.get("fetched"))
        yield from counter("musicfs_artwork_over_limit", "Cover images not kept: the limit was reached.",
                           art.get("over_limit"))
        if "writable" in cache:
            yield from gauge("musicfs_cache_writable", "1 while the cache can store chunks, 0 when its disk "
                                                      "refuses (reads go on, uncached).",
                             1.0 if cache["writable"] else 0.0)

        # origins
        origins = doc.get("origins", [])
        health = GaugeMetricFamily("musicfs_origin_health", "1 healthy, 0.5 degraded, 0 unhealthy, NaN not "
                                                            "probed yet.", labels=["origin"])
        probe = GaugeMetricFamily("musicfs_origin_probe_latency_seconds", "The last health probe's time.",
                                  labels=["origin"])
        failed = CounterMetricFamily("musicfs_origin_failed_reads", "Reads that gave up on the origin.",
                                     labels=["origin"])
        tracks = GaugeMetricFamily("musicfs_origin_tracks", "Tracks of the origin in the index.",
                                   labels=["origin"])
        for origin in origins:
            health.add_metric([origin["id"]], HEALTH_VALUES.get(origin["state"], math.nan))
            if origin.get("latency_ms") is not None:
                probe.add_metric([origin["id"]], origin["latency_ms"] / 1000)
            failed.add_metric([origin["id"]], origin.get("failed_reads", 0))
            tracks.add_metric([origin["id"]], origin.get("tracks", 0))
        yield from (health, probe, failed, tracks)
        read = CounterMetricFamily("musicfs_origin_bytes", "Bytes read from the origin to serve reads "
                                                           "(scans not included).", labels=["origin"])
        for origin_id, value in sorted(_origin_bytes(doc, [o["id"] for o in origins]).items()):
            read.add_metric([origin_id], value)
        yield read

        # rescans (counted from the bus: a daemon that did none has no sample)
        changed = GaugeMetricFamily("musicfs_sync_files_changed", "Files added, removed or modified by the "
                                                                  "origin's last rescan.", labels=["origin"])
        syncs = CounterMetricFamily("musicfs_syncs", "Rescans of the origin completed by this daemon.",
                                    labels=["origin"])
        last = GaugeMetricFamily("musicfs_sync_last_completed_timestamp_seconds",
                                 "When the origin's last rescan completed (unix time).", labels=["origin"])
        for origin_id, record in sorted(dict(self.syncs).items()):
            changed.add_metric([origin_id], record.last_changed)
            syncs.add_metric([origin_id], record.syncs)
            last.add_metric([origin_id], record.last_completed_at)
        yield from (changed, syncs, last)

        # index and events
        index = doc.get("index", {})
        yield from gauge("musicfs_index_tracks", "Tracks in the index.", index.get("tracks"))
        yield from gauge("musicfs_index_skipped_files", "Files the scans skipped (see /.musicfs/errors.json).",
                         index.get("skipped"))
        events = doc.get("events", {})
        yield _by_label(CounterMetricFamily, "musicfs_events_published", "Events published on the mount's bus.",
                        "kind", events.get("published", {}))
        yield from counter("musicfs_events_dropped", "Events a slow subscriber lost.", events.get("dropped"))


def _by_label(family: Any, name: str, help_text: str, label: str, values: dict[str, float]) -> Any:
    metric = family(name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    return metric


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    buckets, running = [], 0
    for bound, count in zip((*bounds, math.inf), counts):
        running += count
        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
    return buckets


def _origin_bytes(doc: dict, origin_ids: list[str]) -> dict[str, int]:
    """Bytes read from each origin: what the reader fetched plus what the pass-through reader read.

    The components count these bytes per origin where they say so
    (``bytes_by_origin``); otherwise only their totals are known, which
    belong to the one origin of a single-origin mount and cannot be split
    between several (no sample then, rather than a guess).
    """
    reader, direct = doc.get("reader", {}), doc.get("direct", {})
    fetched, passed = reader.get("bytes_by_origin"), direct.get("bytes_by_origin")
    if fetched is not None and passed is not None:
        return {o: fetched.get(o, 0) + passed.get(o, 0) for o in origin_ids}
    if len(origin_ids) == 1:
        return {origin_ids[0]: reader.get("origin_bytes", 0) + direct.get("bytes_read", 0)}
    return {}
