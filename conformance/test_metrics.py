"""Prometheus metrics of a real mount, scraped through both doors during a workload (PH-4.2, MM-5.x).

The mount has an origin of its own (a copy of some sample tracks, so it can
be taken away), health probes every half second, and the TCP listener of
``[metrics] listen``. Every scrape is parsed with prometheus_client's own
text parser, and each step of the workload checks that the series moved by
what that step did: listings, a cold read (a miss, the origin's bytes), reads
of cached bytes (hits, timed by the daemon within the client's own time), an
open handle, the origin going away and coming back, a rescan.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.proxy import free_port
from conformance.expected import sha256_of
from conformance.measure import evict_files, walk_tree
from musicfs.control.client import ControlClient, ControlError
from tests.harness import NO_PREFETCH, mount_library, mounted_tracks

ORIGIN = "lib"
TRACKS = 12
BLOCK = 64 * 1024


@dataclass
class Scrape:
    """One scrape: every sample by (name, labels), and each family's type."""

    samples: dict[tuple[str, tuple], float]
    types: dict[str, str]

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[name, tuple(sorted(labels.items()))]

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def by(self, name: str, label: str) -> dict[str, float]:
        return {dict(labels)[label]: value for (sample, labels), value in self.samples.items()
                if sample == name and label in dict(labels)}


def parse(text: str) -> Scrape:
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return Scrape(samples, types)


@dataclass
class Metered:
    mounted: object
    origin: Path
    port: int

    def socket(self) -> Scrape:
        with ControlClient.for_mount(self.mounted.state_dir, self.mounted.mountpoint) as api:
            return parse(api.text("/metrics"))

    def tcp(self, path: str = "/metrics") -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)


@pytest.fixture(scope="module")
def metered(sample_library, good_files, tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics")
    origin = work / "library"
    for item in good_files[:TRACKS]:
        target = origin / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sample_library[0] / item["path"], target)
    port = free_port("127.0.0.1")
    config = work / "musicfs.toml"
    config.write_text(f'[health]\ninterval = 0.5\n\n[metrics]\nlisten = "127.0.0.1:{port}"\n\n'
                      f'[[origins]]\nid = "{ORIGIN}"\ntype = "local"\npath = "{origin}"\n')
    with mount_library(config=config, work=work, extra_args=NO_PREFETCH) as mounted:  # counts compared exactly
        yield Metered(mounted, origin, port)


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def fills_done(metered: Metered) -> bool:
    with ControlClient.for_mount(metered.mounted.state_dir, metered.mounted.mountpoint) as api:
        reader = api.get("/v1/status")["reader"]
    return reader["fills_started"] == reader["fills_completed"] + reader["fills_failed"] + reader["fills_stopped"]


@pytest.mark.req("PH-4.2")
def test_metrics_move_with_a_workload_on_both_doors(metered):
    mnt = metered.mounted.mountpoint
    tracks = mounted_tracks(mnt)
    before = metered.socket()
    assert before.types["musicfs_fuse_ops"] == "counter" and before.types["musicfs_cache_size_bytes"] == "gauge"
    assert before.types["musicfs_fuse_latency_seconds"] == "histogram"
    assert before("musicfs_origin_health", origin=ORIGIN) == 1.0
    assert before("musicfs_state", musicfs_state="ready") == 1.0
    assert before("musicfs_cache_limit_bytes") == 10 * 10**9

    # listings: one opendir per folder listed, and at least one readdir each (the listings the
    # kernel kept from earlier walks dropped first: else it would answer them itself)
    evict_files(walk_tree(mnt).dirs)
    unlisted = metered.socket()
    tree = walk_tree(mnt)
    listed = metered.socket()
    opendirs = (listed.get("musicfs_fuse_ops_total", op="opendir")
                - unlisted.get("musicfs_fuse_ops_total", op="opendir"))
    assert opendirs == len(tree.dirs)
    assert listed.get("musicfs_fuse_ops_total", op="readdir") - unlisted.get("musicfs_fuse_ops_total",
                                                                                op="readdir") >= len(tree.dirs)

    # a cold read: misses, the origin's bytes (exactly the file, once), the cache grows by it
    real_path, path = max(tracks.items(), key=lambda item: item[1].stat().st_size)
    size = path.stat().st_size
    data = path.read_bytes()
    assert len(data) == size and sha256_of(path) == sha256_of(metered.origin / real_path)
    until(lambda: fills_done(metered), 20, "the fill of the read file ends")
    cold = metered.socket()
    assert cold("musicfs_cache_misses_total") > listed("musicfs_cache_misses_total")
    assert cold("musicfs_origin_bytes_total", origin=ORIGIN) - listed("musicfs_origin_bytes_total",
                                                                       origin=ORIGIN) == size
    assert cold("musicfs_cache_size_bytes") - listed("musicfs_cache_size_bytes") == size
    assert cold("musicfs_open_file_handles") == 0
    assert cold("musicfs_cache_pending_write_bytes") == 0  # the fill's chunks are all written
    # the file closed, the idle daemon gives what the read freed back to the system (5 s later)
    until(lambda: metered.socket()("musicfs_memory_trims_total") > listed("musicfs_memory_trims_total"), 15,
          "the idle daemon gives freed memory back")

    # cached bytes, read by the daemon (O_DIRECT: each pread is one request): hits, no origin bytes
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        opened = metered.socket()
        assert opened("musicfs_open_file_handles") == 1
        preads, started = 0, time.perf_counter()
        for offset in range(0, size, BLOCK):
            assert os.pread(fd, BLOCK, offset) == data[offset:offset + BLOCK]
            preads += 1
        client_seconds = time.perf_counter() - started
        warm = metered.socket()
    finally:
        os.close(fd)
    reads = warm("musicfs_fuse_ops_total", op="read") - opened("musicfs_fuse_ops_total", op="read")
    assert reads == preads
    assert warm("musicfs_cache_hits_total") - opened("musicfs_cache_hits_total") >= preads
    assert warm("musicfs_cache_misses_total") == opened("musicfs_cache_misses_total")
    assert warm("musicfs_origin_bytes_total", origin=ORIGIN) == opened("musicfs_origin_bytes_total", origin=ORIGIN)
    # the histogram timed exactly those reads, and inside the daemon: within the client's own time
    timed = (warm("musicfs_fuse_latency_seconds_count", op="read")
             - opened("musicfs_fuse_latency_seconds_count", op="read"))
    spent = (warm("musicfs_fuse_latency_seconds_sum", op="read")
             - opened("musicfs_fuse_latency_seconds_sum", op="read"))
    assert timed == preads and 0 < spent <= client_seconds

    # every timed operation: a count per request, cumulative buckets ending at the count
    def histogram_matches_ops() -> bool:
        now = metered.socket()
        for op, count in now.by("musicfs_fuse_latency_seconds_count", "op").items():
            buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in now.samples.items()
                             if name == "musicfs_fuse_latency_seconds_bucket" and dict(labels)["op"] == op)
            values = [value for _, value in buckets]
            if values != sorted(values) or values[-1] != count or count != now("musicfs_fuse_ops_total", op=op):
                return False
        return True
    until(histogram_matches_ops, 10, "histogram counts equal FUSE op counts")

    # the TCP door shows the same numbers
    over_tcp = metered.tcp()
    assert over_tcp.status_code == 200 and over_tcp.headers["content-type"].startswith("text/plain")
    tcp = parse(over_tcp.text)
    socket_now = metered.socket()
    for name in ("musicfs_cache_hits_total", "musicfs_cache_misses_total", "musicfs_cache_size_bytes"):
        assert tcp(name) == socket_now(name) == warm(name)
    assert tcp("musicfs_origin_bytes_total", origin=ORIGIN) == warm("musicfs_origin_bytes_total", origin=ORIGIN)
    assert tcp("musicfs_fuse_ops_total", op="opendir") == socket_now("musicfs_fuse_ops_total", op="opendir")

    # the origin goes away: unhealthy (0) and the mount degraded, on both doors; back: healthy (1)
    away = metered.origin.with_name("library-away")
    os.rename(metered.origin, away)
    try:
        until(lambda: metered.socket()("musicfs_origin_health", origin=ORIGIN) == 0.0, 15,
              "the origin is reported unhealthy")
        down = parse(metered.tcp().text)
        assert down("musicfs_origin_health", origin=ORIGIN) == 0.0
        assert down("musicfs_state", musicfs_state="degraded") == 1.0
        assert down("musicfs_state", musicfs_state="ready") == 0.0
        assert sha256_of(path) == sha256_of(away / real_path)  # cached: still served
    finally:
        os.rename(away, metered.origin)
    until(lambda: metered.socket()("musicfs_origin_health", origin=ORIGIN) == 1.0, 15,
          "the origin is reported healthy again")
    assert metered.socket()("musicfs_state", musicfs_state="ready") == 1.0
    assert metered.mounted.alive()


@pytest.mark.req("PH-4.2")
def test_metrics_listener_serves_nothing_but_metrics(metered):
    for path in ("/", "/v1/status", "/v1/origins", "/openapi.json", "/docs", "/metrics/", "/metrics/x"):
        answer = metered.tcp(path)
        assert answer.status_code == 404, path
        assert "musicfs_" not in answer.text and ORIGIN not in answer.text
    refused = httpx.post(f"http://127.0.0.1:{metered.port}/v1/shutdown", json={"force": True}, timeout=10)
    assert refused.status_code == 404
    posted = httpx.post(f"http://127.0.0.1:{metered.port}/metrics", timeout=10)
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
    assert metered.mounted.alive()
    with ControlClient.for_mount(metered.mounted.state_dir, metered.mounted.mountpoint) as api:
        status = api.get("/v1/status")
    assert status["state"] in ("ready", "degraded") and status["metrics"]["scrapes"] > 0
    assert status["metrics_listener"] == {"listen": f"127.0.0.1:{metered.port}", "http_loaded": True}


@pytest.mark.req("PH-4.2")
def test_rescan_changes_show_in_metrics(metered):
    """A rescan that finds one new track: ``musicfs_sync_files_changed`` says 1 (from SyncCompleted)."""
    tracks = mounted_tracks(metered.mounted.mountpoint)
    real_path = sorted(tracks)[0]
    copy = metered.origin / "added" / Path(real_path).name
    copy.parent.mkdir(exist_ok=True)
    shutil.copy2(metered.origin / real_path, copy)
    try:
        with ControlClient.for_mount(metered.mounted.state_dir, metered.mounted.mountpoint) as api:
            try:
                progress = list(api.stream("POST", f"/v1/origins/{ORIGIN}/rescan"))
            except ControlError as exc:
                if "503" in str(exc):
                    pytest.skip(f"this mount cannot rescan: {exc}")
                raise
        assert progress[-1]["phase"] == "complete", progress[-1]
        after = metered.socket()
        assert after("musicfs_sync_files_changed", origin=ORIGIN) == 1.0
        assert after("musicfs_syncs_total", origin=ORIGIN) == 1.0
        assert abs(after("musicfs_sync_last_completed_timestamp_seconds", origin=ORIGIN) - time.time()) < 60
    finally:  # leave the library as it was for the other tests of this mount
        copy.unlink()
        copy.parent.rmdir()
        with ControlClient.for_mount(metered.mounted.state_dir, metered.mounted.mountpoint) as api:
            for _ in api.stream("POST", f"/v1/origins/{ORIGIN}/rescan"):
                pass


@pytest.mark.req("MM-5.1", "MM-5.2", "MM-5.3")
def test_kernel_caches_answer_repeated_stats(metered, record_requirement, requirement_catalogue, capsys):
    """Share of client stats (MM-5.1) and path components (MM-5.2) that never reached the daemon.

    The client counts its own calls; the daemon's getattr and lookup counts,
    read from /metrics, are the ones that reached it. Measured after one pass
    that brings every entry into the kernel's caches (the daemon gives them
    300 s). MM-5.3 is the share of repeated listings of every album, after one
    first pass, that needed no new index query: the kernel answers a listing it
    keeps (FOPEN_CACHE_DIR) without a readdir reaching the daemon, and a readdir
    page that does reach it comes from a listing the daemon kept or from an
    index query (a miss), by its own counters (/metrics). The opendir of every
    listing still reaches the daemon.
    """
    mnt = metered.mounted.mountpoint
    tree = walk_tree(mnt)
    for path in tree.files:
        os.stat(path)
    passes = 20
    before = metered.socket()
    for _ in range(passes):
        for path in tree.files:
            os.stat(path)
    after = metered.socket()
    stats = passes * len(tree.files)
    components = passes * sum(len(path.relative_to(mnt).parts) for path in tree.files)

    def reached(op: str, first: Scrape, second: Scrape) -> float:
        return second.get("musicfs_fuse_ops_total", op=op) - first.get("musicfs_fuse_ops_total", op=op)

    attr = 100 * (1 - reached("getattr", before, after) / stats)
    entry = 100 * (1 - reached("lookup", before, after) / components)
    listings = passes * len(tree.album_dirs)
    for directory in tree.album_dirs:  # the first listing of each builds what later ones reuse
        os.listdir(directory)
    listed_once = metered.socket()
    expected = [sorted(os.listdir(d)) for d in tree.album_dirs]
    for _ in range(passes):
        for directory, names in zip(tree.album_dirs, expected):
            assert sorted(os.listdir(directory)) == names, f"{directory} listed differently"
    listed = metered.socket()
    opened = reached("opendir", listed_once, listed)
    assert opened >= listings, f"only {opened:.0f} of {listings} listings reached the daemon"

    def delta(name: str) -> float:
        return listed.get(name) - listed_once.get(name)

    hits, misses = delta("musicfs_listing_cache_hits_total"), delta("musicfs_listing_cache_misses_total")
    pages = reached("readdir", listed_once, listed)
    dirs = 100 * (listings - min(misses, listings)) / listings  # each miss: one listing queried at most
    with capsys.disabled():
        print(f"\nMM-5.1 attribute cache {attr:.1f} % of {stats} stats; MM-5.2 entry cache {entry:.1f} % of "
              f"{components} path components; MM-5.3 listings with no index query {dirs:.1f} % of "
              f"{listings} ({pages:.0f} readdir pages reached the daemon: {hits:.0f} from its kept "
              f"listings, {misses:.0f} queried; the kernel answered the rest)")
    record_requirement("MM-5.1", attr, samples=stats,
                       detail=f"{passes} passes of os.stat over {len(tree.files)} files after one warm pass; "
                              f"getattr requests counted by the daemon (/metrics)")
    record_requirement("MM-5.2", entry, samples=components,
                       detail="path components of the same stats; lookup requests counted by the daemon")
    record_requirement("MM-5.3", dirs, samples=listings,
                       detail=f"{passes} passes of os.listdir over {len(tree.album_dirs)} albums after one "
                              f"first pass; {pages:.0f} readdir pages reached the daemon ({hits:.0f} from "
                              f"its kept listings, {misses:.0f} index queries), the kernel kept the rest")
    assert attr >= requirement_catalogue["MM-5.1"].maximum
    assert entry >= requirement_catalogue["MM-5.2"].maximum
    assert dirs >= requirement_catalogue["MM-5.3"].maximum
