"""Benchmarks: musicfs against the same files read natively, and libraries at full scale.

``make test`` runs them at CI size (``--perf-size ci``, the default: about a minute and
a half, inputs included); ``make perf`` at full size (``pytest perf --perf-size full -s``,
a quarter of an hour the first time, while the large inputs are built). The sizes are in
``perf/conftest.py``; a figure defined at a scale is recorded only at that scale. Each
benchmark runs one workload against a musicfs mount and, where there is one, against
the same files read directly from the origin folder, and adds rows to the table printed at
the end (see ``perf/conftest.py``). Figures the catalogue holds are recorded in its units.

Workloads:
* sequential reads of long tracks (4 x 128 MiB; CI: 4 x 16 MiB) and of a 1 GiB mix (CI:
  128 MiB): cold (empty chunk cache, kernel page cache dropped), warm (second read), and
  from the chunk cache alone (page cache dropped again, so every read goes through the
  daemon);
* random 4 KiB reads with fio (psync, buffered), warm and with the page cache dropped;
* stat and readdir rates on the sample library, and listing a 10K-entry directory;
* mount time of a 1M-track synthetic index against a 1K-track one, and latencies on it
  (CI: 50K against 500);
* daemon memory per indexed and browsed track, and its peak over the run.

Concurrent clients (NFR-3.6) are in ``test_clients.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from conformance.measure import (
    DAEMON_ENV,
    drop_page_cache,
    evict_files,
    interleaved_mount_times,
    median,
    proc_status_mb,
    rate,
    scan_count,
    settle,
    time_each,
    walk_tree,
)
from tests.harness import mount_library, running_manager

MB = 1_000_000
BLOCK = 1 << 20
GIB = 1 << 30
DISK_SHARE = 0.9  # MM-4 from disk at CI size, where the disk itself is below the bound: of its native rate
MILLION = 1_000_000  # the library size NFR-3.1 is stated at


def _record_peak(record_requirement, mounted, what: str) -> None:
    peak = proc_status_mb(mounted.pid, "VmHWM")
    record_requirement("NFR-4.3", peak, detail=f"VmHWM of the daemon after {what}")


def _read_all(paths: list[Path]) -> tuple[int, float]:
    """Read every file front to back in 1 MiB reads; (bytes, seconds)."""
    buf = bytearray(BLOCK)
    total = 0
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total, time.perf_counter() - started


def _mbps(paths: list[Path]) -> float:
    total, seconds = _read_all(paths)
    return total / MB / seconds


def _native(mounted_paths: list[Path], origin: Path) -> list[Path]:
    return [origin / os.getxattr(p, "user.musicfs.real_path").decode() for p in mounted_paths]


@pytest.fixture(scope="module")
def big_mount(big_origin, tmp_path_factory):
    with mount_library(origin=big_origin, work=tmp_path_factory.mktemp("big")) as mounted:
        yield mounted


@pytest.fixture(scope="module")
def big_files(big_mount, big_origin):
    files = sorted(walk_tree(big_mount.mountpoint).files, key=lambda p: p.stat().st_size)
    mix, tracks = files[-1], files[:-1]
    assert len(tracks) >= 2
    return {"tracks": tracks, "mix": mix, "native_tracks": _native(tracks, big_origin),
            "native_mix": _native([mix], big_origin)[0]}


# -- sequential reads ----------------------------------------------------------------------
def _cached_passes(files: list[Path]) -> tuple[float, float]:
    """MB/s of one read of cached ``files`` through the daemon (the mount's pages evicted), then one
    from the chunk files on disk (every cache dropped)."""
    evict_files(files)
    daemon = _mbps(files)
    drop_page_cache()
    return daemon, _mbps(files)


def _passes(files: list[Path]) -> dict[str, float]:
    """MB/s of reading ``files`` front to back: cold (empty chunk cache, page cache dropped),
    warm (read again: the kernel's page cache), through the daemon from the chunk cache (the
    mount's pages evicted, the chunk files still in the OS cache) and from the chunk cache on
    disk (every cache dropped)."""
    drop_page_cache()
    figures = {"cold": _mbps(files), "warm": _mbps(files)}
    figures["daemon"], figures["disk"] = _cached_passes(files)
    return figures


@pytest.mark.req("NFR-2.1", "NFR-2.2", "MM-4", "NFR-4.3")
def test_sequential_reads(big_mount, big_files, results, record_requirement, requirement_catalogue,
                          capsys):
    if not drop_page_cache():
        pytest.skip("dropping the page cache needs root")
    tracks, mix = big_files["tracks"], big_files["mix"]
    size_mb = sum(p.stat().st_size for p in tracks) / MB
    mix_mb = mix.stat().st_size / MB
    native = {}
    for name, paths in (("tracks", big_files["native_tracks"]), ("mix", [big_files["native_mix"]])):
        drop_page_cache()
        native[name] = {"cold": _mbps(paths), "warm": _mbps(paths)}
    m = {"tracks": _passes(tracks), "mix": _passes([mix])}

    labels = (("cold", "cold: empty chunk cache, page cache dropped", "cold"),
              ("warm", "warm: read again (kernel page cache)", "warm"),
              ("daemon", "cached, through the daemon (mount's pages evicted)", "warm"),
              ("disk", "cached, chunk files on disk (all caches dropped)", "cold"))
    titles = {"tracks": f"sequential read, {len(tracks)} tracks of {size_mb / len(tracks):.0f} MB",
              "mix": f"sequential read, one {mix_mb / 1000:.2f} GB mix"}
    for name, title in titles.items():
        for key, label, native_key in labels:
            req = {"tracks": {"cold": "NFR-2.2", "daemon": "NFR-2.1", "disk": "NFR-2.1"},
                   "mix": {"daemon": "MM-4", "disk": "MM-4"}}[name].get(key, "")
            results.add(title, label, m[name][key], native[name][native_key], unit="MB/s", req=req)
    with capsys.disabled():
        for name, figures in m.items():
            print(f"\nsequential MB/s, {name}: musicfs " +
                  ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()) +
                  " | native " + ", ".join(f"{k} {v:,.0f}" for k, v in native[name].items()))
    t, x = m["tracks"], m["mix"]
    record_requirement("NFR-2.2", t["cold"],
                       detail=f"{len(tracks)} tracks, {size_mb:.0f} MB, 1 MiB reads, empty chunk cache, "
                              f"page cache dropped; native cold {native['tracks']['cold']:,.0f} MB/s")
    # the daemon's own cache path (the mount's pages gone, so every read is a request to it), not
    # the kernel's page cache: the page-cache figure is put beside it
    record_requirement("NFR-2.1", min(t["daemon"], t["disk"]),
                       detail=f"{size_mb:.0f} MB of cached tracks through the daemon: {t['daemon']:,.0f} MB/s "
                              f"with the chunk files in the OS cache, {t['disk']:,.0f} MB/s with every "
                              f"cache dropped (the lower is recorded); {t['warm']:,.0f} MB/s read again "
                              "from the kernel's page cache")
    large_file = min(x["daemon"], x["disk"])
    if mix.stat().st_size >= GIB:  # MM-4 is stated for a file of 1 GiB or more
        record_requirement("MM-4", large_file,
                           detail=f"{mix_mb:,.0f} MB cached file through the daemon: {x['daemon']:,.0f} MB/s "
                                  f"with the chunk files in the OS cache, {x['disk']:,.0f} MB/s with every "
                                  f"cache dropped (the lower is recorded); {x['warm']:,.0f} MB/s read again "
                                  "from the kernel's page cache")
    # a smaller run shows the same path in the table without claiming MM-4 (stated for 1 GiB). One
    # read of CI's 128 MiB file takes ~150 ms, not far above the machine's noise: the gate takes the
    # median of five more passes of each cached read
    if mix.stat().st_size < GIB:
        _mix_at_ci_size(mix, big_files["native_mix"], requirement_catalogue["MM-4"], capsys)
    _record_peak(record_requirement, big_mount,
                 f"reading {size_mb + mix_mb:,.0f} MB through it four times")


def _mix_at_ci_size(mix: Path, native: Path, requirement, capsys) -> None:
    """MM-4's path at CI size: the median of five passes of each cached read, beside five reads of
    the same file straight from the origin's disk (every cache dropped); judged while MM-4 is
    gated, printed either way.

    Through the daemon with the chunk files in the OS cache, the bound is the daemon's own. From
    disk the daemon cannot beat the disk itself: where the disk reads the file natively below the
    bound, this machine cannot show the figure; the test says so and then holds the daemon to
    :data:`DISK_SHARE` of the disk's own rate, so a slow path still fails."""
    bound = requirement.maximum
    passes = []
    for _ in range(5):
        # the origin's copy from disk, then the cached file from the chunk files on disk, then
        # again with the chunk files in the OS's memory (the disk read put them there): the
        # daemon's own path. (Reading the origin's copy last dropped the chunk files before the
        # next pass, and four of five "daemon" passes were disk reads.)
        drop_page_cache()
        plain = _mbps([native])
        drop_page_cache()
        disk = _mbps([mix])
        evict_files([mix])
        passes.append((_mbps([mix]), disk, plain))
    daemon, disk, plain = (statistics.median(p[i] for p in passes) for i in (0, 1, 2))
    figures = (f"a {mix.stat().st_size / MB:,.0f} MB cached file read at {daemon:,.0f} MB/s through the daemon, "
               f"{disk:,.0f} MB/s from disk; the origin's copy read natively from disk at {plain:,.0f} MB/s "
               f"(medians of 5 passes: {[tuple(round(x) for x in p) for p in passes]})")
    if not requirement.gate:  # the catalogue says why; the report shows MM-4 unmet
        with capsys.disabled():
            print(f"\nMM-4 at CI size (not gated, bound {bound:,.0f} MB/s): {figures}")
        return
    assert daemon >= bound, figures
    if plain >= bound:
        assert disk >= bound, figures
        return
    with capsys.disabled():
        print(f"\nMM-4 this machine cannot show {bound:,.0f} MB/s from disk (its disk reads the file at "
              f"{plain:,.0f} MB/s natively): the from-disk read is held to {DISK_SHARE:.0%} of that; {figures}")
    assert disk >= DISK_SHARE * plain, figures


# -- random reads with fio ----------------------------------------------------------------
def _fio_randread(files: list[Path], work: Path, *, invalidate: bool, seconds: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    names = []
    for i, path in enumerate(files):  # fio splits names at ':'; plain links avoid quoting
        (work / f"f{i}").symlink_to(path)
        names.append(f"f{i}")
    cmd = ["fio", "--name=randread", f"--directory={work}", "--filename=" + ":".join(names),
           "--ioengine=psync", "--direct=0", "--rw=randread", "--bs=4k", "--time_based",
           f"--runtime={seconds:g}", f"--invalidate={int(invalidate)}", "--thread",
           "--percentile_list=50:99", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    read = json.loads(out.stdout)["jobs"][0]["read"]
    pct = read["clat_ns"]["percentile"]
    return {"iops": read["iops"], "p50": pct["50.000000"] / 1000, "p99": pct["99.000000"] / 1000}


@pytest.mark.req("NFR-1.4", "NFR-4.3")
def test_random_reads_fio(big_mount, big_files, tmp_path, perf_size, results, record_requirement,
                          capsys):
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed (make setup installs it)")
    tracks, native = big_files["tracks"], big_files["native_tracks"]
    seconds = perf_size.fio_seconds
    _read_all(tracks)  # cached in musicfs and in the page cache
    _read_all(native)
    rows = {}
    rows["warm"] = (_fio_randread(tracks, tmp_path / "m", invalidate=False, seconds=seconds),
                    _fio_randread(native, tmp_path / "n", invalidate=False, seconds=seconds))
    drop_page_cache()
    musicfs_cold = _fio_randread(tracks, tmp_path / "m", invalidate=True, seconds=seconds)
    drop_page_cache()
    rows["page cache dropped"] = (musicfs_cold, _fio_randread(native, tmp_path / "n", invalidate=True,
                                                              seconds=seconds))
    for label, (m, n) in rows.items():
        section = f"random 4 KiB reads (fio, psync, {seconds:g} s), {label}"
        results.add(section, "IOPS", m["iops"], n["iops"], unit="", fmt=",.0f")
        results.add(section, "latency p50", m["p50"], n["p50"], unit="us", fmt=",.1f",
                    req="NFR-1.4" if label == "warm" else "")
        results.add(section, "latency p99", m["p99"], n["p99"], unit="us", fmt=",.1f",
                    req="NFR-1.4" if label == "warm" else "")
    with capsys.disabled():
        for label, (m, n) in rows.items():
            print(f"\nfio randread {label}: musicfs {m['iops']:,.0f} IOPS p50 {m['p50']:.1f} us "
                  f"p99 {m['p99']:.1f} us | native {n['iops']:,.0f} IOPS p50 {n['p50']:.1f} us "
                  f"p99 {n['p99']:.1f} us")
    warm = rows["warm"][0]
    record_requirement("NFR-1.4", warm["p99"] / 1000,
                       detail=f"fio randread 4 KiB over {len(tracks)} cached tracks of "
                              f"{tracks[0].stat().st_size >> 20} MiB for {seconds:g} s: "
                              f"{warm['iops']:,.0f} IOPS, p50 {warm['p50']:.1f} us")
    _record_peak(record_requirement, big_mount, "random reads")


# -- metadata -----------------------------------------------------------------------------
@pytest.mark.req("NFR-1.1", "NFR-1.2", "NFR-2.3")
def test_metadata_rates(sample_mount, sample_library, synthetic_index, empty_origin, perf_dir,
                        tmp_path, results, record_requirement, capsys):
    native_root = sample_library[0]
    mounted = walk_tree(sample_mount.mountpoint)
    native = walk_tree(native_root, skip_hidden=False)
    def stat_all(paths: list[Path]) -> int:
        for path in paths:
            os.stat(path)
        return len(paths)

    def list_fully(directory: Path) -> int:
        with os.scandir(directory) as entries:
            return sum(1 for _ in entries)

    stats = {}
    for label, tree in (("musicfs", mounted), ("native", native)):
        lat = time_each("stat", os.stat, tree.files, count=20_000)
        per_second, _, _ = rate(lambda t=tree: stat_all(t.files), min_seconds=1.0)
        lat_dirs = time_each("readdir", list_fully, tree.album_dirs, count=3000)
        stats[label] = (lat, per_second, lat_dirs)
    m, n = stats["musicfs"], stats["native"]
    section = "metadata, sample library (warm)"
    results.add(section, "stat p50", m[0].p(50) * 1000, n[0].p(50) * 1000, unit="us", fmt=",.2f",
                req="NFR-1.1")
    results.add(section, "stat p99", m[0].p(99) * 1000, n[0].p(99) * 1000, unit="us", fmt=",.2f",
                req="NFR-1.1")
    results.add(section, "stats per second", m[1], n[1], unit="/s", fmt=",.0f")
    results.add(section, "readdir of an album p50", m[2].p(50) * 1000, n[2].p(50) * 1000,
                unit="us", fmt=",.1f", req="NFR-1.2")
    results.add(section, "readdir of an album p99", m[2].p(99) * 1000, n[2].p(99) * 1000,
                unit="us", fmt=",.1f", req="NFR-1.2")

    # a 10K-entry directory, listed completely: musicfs (synthetic album) against a native one
    index = synthetic_index(10_000, single_album=10_000)
    native_dir = perf_dir / "native-10k"
    if not (native_dir / "done").exists():
        native_dir.mkdir(exist_ok=True)
        for i in range(10_000):
            (native_dir / f"{i:05d} - track {i}.flac").touch()
        (native_dir / "done").touch()
    with mount_library(origin=empty_origin, index=index, work=tmp_path / "10k") as big:
        artist = big.mountpoint / "Single Album Artist"
        album = artist / os.listdir(artist)[0]
        listing = time_each("list 10K", os.listdir, [album], count=10, warmup=1)
        native_listing = time_each("list 10K", os.listdir, [native_dir], count=10, warmup=1)
        assert len(os.listdir(album)) == 10_000
        # the same browse mix as the conformance check, on this tree
        root = big.mountpoint

        def browse() -> int:
            ops = 0
            for entry in os.listdir(root):
                if entry.startswith("."):
                    continue
                albums = os.listdir(root / entry)
                ops += 1
                for name in albums:
                    os.stat(root / entry / name)
                    ops += 1
            return ops

        browse()
        mix_rate, ops, seconds = rate(browse, min_seconds=2.0)
        _record_peak(record_requirement, big, "listing a 10K-entry directory")
    results.add("directory of 10K entries", "list it completely (median)",
                median(listing.ms), median(native_listing.ms), unit="ms", fmt=",.1f")
    results.add("directory of 10K entries", "readdir + stat mix", mix_rate, "", unit="ops/s",
                fmt=",.0f", req="NFR-2.3")
    with capsys.disabled():
        print(f"\nmetadata: {m[0].summary()} | native {n[0].summary()}\n  {m[2].summary()} | "
              f"native {n[2].summary()}\n  list 10K entries {median(listing.ms):.1f} ms "
              f"(native {median(native_listing.ms):.1f} ms); browse mix {mix_rate:,.0f} ops/s")
    record_requirement("NFR-1.1", m[0].p(99), samples=m[0].count, detail="perf: warm stat, sample library")
    record_requirement("NFR-1.2", m[2].p(99), samples=m[2].count, detail="perf: warm album readdir")
    record_requirement("NFR-2.3", mix_rate, samples=ops,
                       detail=f"perf: artist readdir + album stat over a 10K-track tree, {seconds:.1f} s")


# -- a million tracks ---------------------------------------------------------------------
def _count_served(root: Path) -> tuple[int, int]:
    """(tracks, directories) the mount serves, found by listing every directory below ``root``
    (hidden ones left out) without a stat: what a walk of the whole library sees."""
    tracks = dirs = 0
    pending = [root]
    while pending:
        directory = pending.pop()
        dirs += 1
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(".musicfs"):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    tracks += 1
    return tracks, dirs


@pytest.mark.req("NFR-1.7", "NFR-3.3", "NFR-3.1", "NFR-1.1", "NFR-1.2", "NFR-2.3", "NFR-4.3")
def test_million_track_library(synthetic_index, empty_origin, tmp_path, perf_size, results,
                               record_requirement, requirement_catalogue, capsys):
    """A synthetic library of a million tracks (CI: 50K): mounted as fast as one a hundred times
    smaller (NFR-3.3), every track served (counted by listing the whole tree), and lookups,
    stats and listings on it within their maxima. NFR-3.1 is recorded only at a million: the
    number of tracks the mount served, when every latency met its maximum."""
    n_small, n_large = perf_size.small_library, perf_size.library
    assert n_large >= 100 * n_small, "NFR-3.3 compares with a library at least 100 times smaller"
    started = time.perf_counter()
    small, large = synthetic_index(n_small), synthetic_index(n_large)
    built = time.perf_counter() - started
    scans = scan_count(large)
    repeats = 7  # interleaved mounts of each library, after one untimed warm-up each
    # NFR-1.7 from the command line, as a user mounts: `musicfs mount` handed to the manager; and a
    # foreground daemon started as a new process (no manager), shown beside it
    manager_state = tmp_path / "manager-state"
    with running_manager(manager_state, DAEMON_ENV):
        times = interleaved_mount_times({"small": small, "large": large}, tmp_path, empty_origin,
                                        repeats=repeats, manager=manager_state)
    alone = interleaved_mount_times({"large": large}, tmp_path / "alone", empty_origin, repeats=3)["large"]
    assert scan_count(large) == scans, "mounting the large index rescanned it"
    small_ms, large_ms = median(times["small"]) * 1000, median(times["large"]) * 1000
    ratio = large_ms / small_ms

    # served: every track, by listing the whole tree; then latencies: lookups (cold), stat
    # (warm), readdir of albums (warm)
    with mount_library(origin=empty_origin, index=large, work=tmp_path / "serve") as mounted:
        root = mounted.mountpoint
        walk_started = time.perf_counter()
        served, listed = _count_served(root)
        walked = time.perf_counter() - walk_started
        artists = [root / a for a in os.listdir(root) if not a.startswith(".")]
        rng = random.Random(5)
        albums = [a / b for a in rng.sample(artists, 100) for b in os.listdir(a)]
        files = [d / f for d in albums for f in os.listdir(d)]
        drop_page_cache(level=2)  # the kernel forgets names: lookups go to the daemon
        lookups = time_each("lookup", os.stat, files, count=len(files), warmup=0)
        stat = time_each("stat", os.stat, files, count=max(5000, len(files)))
        readdir = time_each("readdir", os.listdir, albums, count=max(2000, len(albums)))

        def browse() -> int:
            for album in albums:
                os.listdir(album)
                os.stat(album)
            return 2 * len(albums)

        mix_rate, ops, _ = rate(browse, min_seconds=2.0)
        rss = settle(mounted.pid)
        _record_peak(record_requirement, mounted, f"serving a {n_large:,}-track index")
    cat = requirement_catalogue
    latencies = ((lookups, "NFR-1.1"), (stat, "NFR-1.1"), (readdir, "NFR-1.2"))
    misses = [f"{lat.name} p99 {lat.p(99):.3f} ms > {cat[req].maximum:g} ms ({req})"
              for lat, req in latencies if lat.p(99) > cat[req].maximum]
    label = f"{n_large // 1000:,}K" if n_large < MILLION else f"{n_large // MILLION:,}M"
    section = f"{label}-track synthetic library"
    results.add(section, "index build (cached in build/perf)", built, unit="s", fmt=",.1f")
    results.add(section, f"mount, {n_small:,} tracks (median of {repeats})", small_ms, unit="ms",
                req="NFR-1.7")
    results.add(section, f"mount, {n_large:,} tracks (median of {repeats})", large_ms, unit="ms",
                req="NFR-1.7")
    results.add(section, f"mount, {n_large:,} tracks, no manager (median of 3)", median(alone) * 1000, unit="ms")
    results.add(section, "mount large / mount small", f"{ratio:.2f}", req="NFR-3.3")
    results.add(section, "tracks served (every directory listed)", served, unit="", fmt=",.0f",
                req="NFR-3.1" if n_large >= MILLION else "")
    results.add(section, "listing the whole tree", walked, unit="s", fmt=",.1f")
    results.add(section, "lookup p99 (uncached names)", lookups.p(99) * 1000, unit="us", fmt=",.0f")
    results.add(section, "stat p99 (warm)", stat.p(99) * 1000, unit="us", fmt=",.1f", req="NFR-1.1")
    results.add(section, "readdir of an album p99", readdir.p(99) * 1000, unit="us", fmt=",.0f",
                req="NFR-1.2")
    results.add(section, "readdir + stat mix", mix_rate, unit="ops/s", fmt=",.0f", req="NFR-2.3")
    results.add(section, "daemon RSS after browsing", rss, unit="MB")
    with capsys.disabled():
        print(f"\n{label}: mounts {n_small:,} {[round(t * 1000) for t in times['small']]} ms, "
              f"{n_large:,} {[round(t * 1000) for t in times['large']]} ms; ratio {ratio:.2f}; "
              f"served {served:,} tracks in {listed:,} directories ({walked:.1f} s); "
              f"{lookups.summary()}; {stat.summary()}; {readdir.summary()}; "
              f"mix {mix_rate:,.0f} ops/s; RSS {rss:.1f} MB")
    for tracks, value in ((n_small, small_ms), (n_large, large_ms)):
        record_requirement("NFR-1.7", value, samples=repeats,
                           detail=f"perf: median of {repeats} `musicfs mount` commands through the manager, "
                                  f"{tracks:,} tracks (without it: {median(alone) * 1000:.0f} ms for {n_large:,})")
    record_requirement("NFR-3.3", ratio, samples=2 * repeats,
                       detail=f"median of {repeats} interleaved mounts each: {n_large:,} tracks "
                              f"{large_ms:.0f} ms / {n_small:,} tracks {small_ms:.0f} ms")
    if n_large >= MILLION and served == n_large and not misses:
        # the size NFR-3.1 is stated at, served whole and within every latency maximum
        record_requirement("NFR-3.1", served, samples=served,
                           detail=f"{served:,} tracks served (every one of {listed:,} directories "
                                  f"listed, {walked:.0f} s): lookup p99 {lookups.p(99):.3f} ms, "
                                  f"stat p99 {stat.p(99):.4f} ms, album readdir p99 "
                                  f"{readdir.p(99):.3f} ms")
    record_requirement("NFR-1.1", stat.p(99), samples=stat.count,
                       detail=f"perf: warm stat, {n_large:,}-track tree")
    record_requirement("NFR-1.2", readdir.p(99), samples=readdir.count,
                       detail=f"perf: album readdir, {n_large:,}-track tree")
    record_requirement("NFR-2.3", mix_rate, samples=ops,
                       detail=f"perf: album readdir + stat, {n_large:,}-track tree")
    assert served == n_large, f"the mount served {served:,} of {n_large:,} tracks"
    assert not misses, f"on {n_large:,} tracks: " + "; ".join(misses)
    assert ratio <= cat["NFR-3.3"].maximum, (
        f"mounting {n_large:,} tracks took {ratio:.2f}x as long as {n_small:,}")


# -- memory per track -----------------------------------------------------------------------
@pytest.mark.req("NFR-4.4", "NFR-4.3")
def test_memory_per_track(synthetic_index, empty_origin, tmp_path, perf_size, results,
                          record_requirement, capsys):
    """RSS after browsing every directory and file of a 10K- and a 100K-track library (CI: 5K
    and 50K); the difference divided by the difference in tracks."""
    sizes = perf_size.memory_sizes
    rss = {}
    for n in sizes:
        with mount_library(origin=empty_origin, index=synthetic_index(n), work=tmp_path / f"m{n}") as mounted:
            before = settle(mounted.pid)
            tree = walk_tree(mounted.mountpoint)
            for path in tree.files:
                os.stat(path)
            assert len(tree.files) == n
            rss[n] = (before, settle(mounted.pid))
            _record_peak(record_requirement, mounted, f"browsing {n:,} tracks")
    per_track_kb = (rss[sizes[1]][1] - rss[sizes[0]][1]) * 1024 / (sizes[1] - sizes[0])
    for n in sizes:
        results.add("memory", f"daemon RSS, {n:,} tracks: mounted / browsed",
                    f"{rss[n][0]:.1f} / {rss[n][1]:.1f} MB", req="NFR-4.1")
    results.add("memory", "per indexed and browsed track", per_track_kb, unit="KB", fmt=",.2f",
                req="NFR-4.4")
    with capsys.disabled():
        print(f"\nmemory: {rss}; per track {per_track_kb:.3f} KB")
    record_requirement("NFR-4.4", per_track_kb,
                       detail=f"RSS after browsing {sizes[1]:,} tracks {rss[sizes[1]][1]:.1f} MB, "
                              f"{sizes[0]:,} tracks {rss[sizes[0]][1]:.1f} MB")
    record_requirement("NFR-4.1", max(v[0] for v in rss.values()),
                       detail="perf: idle after mounting a synthetic index")
