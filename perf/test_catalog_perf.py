"""Publishing and fetching a large library's catalog (issue 17): time and bytes, and the mount
from a fetched catalog as fast as from the index it was published from.

The synthetic library of the mount-time benchmark (50K tracks in CI, a million with
``--perf-size full``) is published into a local origin folder (the transfer itself is the
origin's: a bucket adds its bandwidth), fetched into another machine's state, and mounted.
"""

from __future__ import annotations

import sqlite3
import time

from conformance.measure import median, mount_seconds
from musicfs.catalog.fetch import bring_up_to_date
from musicfs.catalog.publish import publish
from musicfs.config import CatalogSettings
from musicfs.origins.local import LocalOrigin

MOUNTS = 3  # each index mounted this many times, interleaved (after one warm-up)


def test_publish_fetch_and_mount_a_large_catalog(synthetic_index, empty_origin, tmp_path, perf_size, results,
                                                 capsys):
    n = perf_size.library
    index = synthetic_index(n)
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    origin, settings = LocalOrigin("synthetic", bucket), CatalogSettings("synthetic")

    started = time.perf_counter()
    report = publish(index, origin, settings, "synthetic")
    published = time.perf_counter() - started
    fetched_index = tmp_path / "b" / "index.db"
    started = time.perf_counter()
    outcome = bring_up_to_date(origin, settings, fetched_index)
    fetched = time.perf_counter() - started
    assert outcome.installed and report.pointer.tracks == n
    with sqlite3.connect(f"file:{fetched_index}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0] == n

    times: dict[str, list[float]] = {"published": [], "fetched": []}
    for round_no in range(MOUNTS + 1):
        for name, path in (("published", index), ("fetched", fetched_index)):
            seconds = mount_seconds(tmp_path / f"mount-{name}", index=path, origin=empty_origin)
            if round_no:
                times[name].append(seconds)
    mine, theirs = median(times["fetched"]) * 1000, median(times["published"]) * 1000
    assert mine < 1.5 * theirs + 50, f"a mount from a fetched catalog took {mine:.0f} ms, from its source {theirs:.0f}"

    label = f"{n // 1000:,}K" if n < 1_000_000 else f"{n // 1_000_000:,}M"
    section = f"catalog of a {label}-track library"
    results.add(section, "publish (snapshot, zstd, upload, pointer)", published, unit="s", fmt=",.2f", req="CAT-1")
    results.add(section, "snapshot published (compressed)", report.pointer.size / 1e6, unit="MB", fmt=",.1f")
    results.add(section, "index it holds (uncompressed)", report.pointer.db_size / 1e6, unit="MB", fmt=",.1f")
    results.add(section, "fetch and install (download, check, replace)", fetched, unit="s", fmt=",.2f",
                req="CAT-2")
    results.add(section, "mount from the fetched catalog (median)", mine, theirs, unit="ms", fmt=",.0f",
                higher_is_better=False)
    with capsys.disabled():
        print(f"\ncatalog {label}: publish {published:.2f} s, {report.pointer.size / 1e6:.1f} MB "
              f"({report.pointer.db_size / 1e6:.1f} MB uncompressed); fetch {fetched:.2f} s; mounts "
              f"{[round(t * 1000) for t in times['fetched']]} ms vs {[round(t * 1000) for t in times['published']]}")
