"""Full-text search speed (FR-14, G7): a mix of realistic queries over a large synthetic index.

FR-14 is stated at a million tracks: ``make perf`` (``--perf-size full``) runs the mix over
a 1M-track index and records its p95; ``make test`` (CI size) runs the same mix over 200K
tracks and gates on the same maximum without recording the figure (``full_size_only`` in
the catalogue). The synthetic library's words follow a Zipf curve over a lexicon of ~6,700
words (``fixtures/synthetic.py``), so match counts range from a handful to a large share
of the library, as in a real collection.

The mix (about 240 queries) is built from the index's own vocabulary (words of tracks
sampled at random, so every query but the exclusions is known to match at least one
track): single words, 3-5 letter prefixes (type-ahead), two-word queries, quoted phrases,
field filters (artist:, album:, title:, genre:, format:), years and year ranges, non-ASCII
words typed with and without their accents, exclusions, and, with a limit of 100, the
commonest title word with the most matches ("the": 429K of 1M tracks at full size, asserted
100K+; at CI size as many as the 200K-track library allows, about 85K). Each query is timed once, through
:meth:`SearchEngine.search`, which counts every match as well as ranking the page.

Also reported (no gate): the time and bytes on disk of building the search table for the
whole library from scratch, and what keeping it costs a scan of a real audio library
(asserted within 15 %, the issue's bound). At full size only: listing ``/.search/<query>/``
on a real mount of the 1M index, cold, within a second.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from conformance.measure import Latencies, copy_index, drop_page_cache, median
from tests.harness import mount_library

MILLION = 1_000_000  # the library size FR-14 is stated at
BIG_MATCHES = 100_000  # the "query matching 100K+ tracks"
LIMIT = 100
SCAN_SHARE_MAX = 0.15  # adding the search table must not slow a scan by more than 15 %
SEARCH_LISTING_MAX_S = 1.0  # /.search/<query>/ with ~100 results, cold, over 1M tracks
_WORD = re.compile(r"\w+")
_BUILD: dict[str, float] = {}  # seconds the search library took to be ready (built or found)


def _fold(text: str) -> str:
    """``text`` without its accents (what a user types who has no ö key)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _words(text: str | None, min_len: int = 3) -> list[str]:
    return [w for w in _WORD.findall(text or "") if len(w) >= min_len]


def _sample_tracks(conn, rng: random.Random, count: int) -> list[dict]:
    top = conn.execute("SELECT MAX(id) FROM tracks").fetchone()[0]
    ids = rng.sample(range(1, top + 1), min(count, top))
    rows = conn.execute(
        f"SELECT id, title, artist, album, album_artist, genre, year, format FROM tracks"
        f" WHERE id IN ({','.join(map(str, ids))})").fetchall()
    rows = [dict(zip(("id", "title", "artist", "album", "album_artist", "genre", "year", "format"), r))
            for r in rows]
    rows.sort(key=lambda r: r["id"])
    rng.shuffle(rows)
    return rows


def build_mix(conn, seed: int = 14) -> tuple[list[tuple[str, str, bool]], str]:
    """(kind, query, known to match) for each query of the mix, and the big query.

    Words are taken from tracks sampled at random: a word of a sampled track's title is
    drawn as often as the title vocabulary uses it (common words come up often, as users
    type them), an artist's or album's words are mostly rare.
    """
    rng = random.Random(seed)
    tracks = _sample_tracks(conn, rng, 4000)
    pool = iter(tracks)

    def track_with(pred) -> dict:
        for t in pool:
            if pred(t):
                return t
        raise AssertionError("the sampled tracks ran out: the library is too small for the mix")

    mix: list[tuple[str, str, bool]] = []

    def add(kind: str, query: str, matches: bool = True) -> None:
        mix.append((kind, query, matches))

    for _ in range(20):  # a word of a title, as often as titles use it
        t = track_with(lambda t: _words(t["title"]))
        add("word (title)", rng.choice(_words(t["title"])))
    for _ in range(20):  # a word of an artist or album name
        t = track_with(lambda t: _words(t["artist"]) + _words(t["album"]))
        add("word (artist/album)", rng.choice(_words(t["artist"]) + _words(t["album"])))
    for _ in range(40):  # type-ahead: the first 3-5 letters of a word
        t = track_with(lambda t: _words(f"{t['title']} {t['artist']} {t['album']}", 4))
        word = rng.choice(_words(f"{t['title']} {t['artist']} {t['album']}", 4))
        add("prefix (3-5 letters)", word[:rng.randint(3, min(5, len(word) - 1))].lower())
    for _ in range(20):  # two words of one title
        t = track_with(lambda t: len(_words(t["title"])) >= 2)
        add("two words (title)", " ".join(rng.sample(_words(t["title"]), 2)))
    for _ in range(20):  # an artist's name, or an artist word and a title word
        t = track_with(lambda t: _words(t["artist"]) and _words(t["title"]))
        if rng.random() < 0.5:
            add("two words (artist + title)",
                f"{rng.choice(_words(t['artist']))} {rng.choice(_words(t['title']))}")
        else:
            add("two words (artist name)", t["artist"])
    for _ in range(10):
        t = track_with(lambda t: len(_words(t["title"])) >= 2)
        add("phrase", '"' + " ".join(_words(t["title"], 1)[:2]) + '"')
    for _ in range(12):
        t = track_with(lambda t: _words(t["artist"]))
        add("artist:", f"artist:{rng.choice(_words(t['artist'])).lower()}")
    for _ in range(5):
        t = track_with(lambda t: '"' not in t["artist"])
        add("artist:\"name\"", f'artist:"{t["artist"]}"')
    for _ in range(10):
        t = track_with(lambda t: _words(t["album"]))
        add("album:", f"album:{rng.choice(_words(t['album'])).lower()}")
    for _ in range(10):
        t = track_with(lambda t: _words(t["title"]))
        add("title:", f"title:{rng.choice(_words(t['title'])).lower()}")
    for _ in range(5):
        t = track_with(lambda t: t["genre"] and _words(t["title"]))
        add("genre: + word", f"genre:{t['genre'].lower()} {rng.choice(_words(t['title']))}")
    for _ in range(5):
        t = track_with(lambda t: _words(t["artist"]))
        add("format: + word", f"format:{t['format']} {rng.choice(_words(t['artist']))}")
    for _ in range(3):
        t = track_with(lambda t: t["genre"])
        add("genre: alone", f"genre:{t['genre'].lower()}")
    for _ in range(10):
        t = track_with(lambda t: t["year"] and _words(t["title"]))
        add("year + word", f"year:{t['year']} {rng.choice(_words(t['title']))}")
    for _ in range(10):
        t = track_with(lambda t: t["year"] and _words(t["artist"]) + _words(t["album"]))
        decade = t["year"] // 10 * 10
        add("year range + word",
            f"{rng.choice(_words(t['artist']) + _words(t['album']))} year:{decade}..{decade + 9}")
    for _ in range(5):
        t = track_with(lambda t: t["year"] and _words(t["artist"]))
        add("artist: + year range",
            f"artist:{rng.choice(_words(t['artist'])).lower()} year:{t['year'] - 5}..{t['year'] + 5}")
    add("year range alone", "year:1990..1999")
    add("year range + format", "format:flac year:1980..1989")
    # non-ASCII: words typed as the tags have them, and folded (Björk -> bjork)
    odd = [t for t in tracks if not f"{t['title']} {t['artist']}".isascii()]
    assert len(odd) >= 25, "the sampled tracks hold too few non-ASCII names"
    rng.shuffle(odd)
    for t in odd[:25]:
        word = rng.choice([w for w in _words(f"{t['title']} {t['artist']}", 1) if not w.isascii()])
        folded = _fold(word)
        if folded != word and folded.isascii() and rng.random() < 0.4:
            add("non-ASCII, typed without accents", folded.lower())
        else:
            add("non-ASCII word", word)
    for _ in range(10):  # exclusions: may legitimately match nothing
        a, b = (track_with(lambda t: _words(t["title"])) for _ in range(2))
        add("word -word", f"{rng.choice(_words(a['title']))} -{rng.choice(_words(b['title']))}", False)

    # the big one: the word (of the commonest in titles) that matches the most tracks
    counts = Counter(w.lower() for t in tracks for w in _WORD.findall(t["title"] or ""))
    from musicfs.search.engine import SearchEngine

    engine = SearchEngine(conn)
    candidates = [w for w, _ in counts.most_common(5)]
    big = max(candidates, key=lambda w: engine.search(w, limit=0).total)
    add("most matches, limit 100", big)
    return mix, big


def _search_columns(path: Path) -> tuple[str, ...]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return tuple(r[1] for r in conn.execute("PRAGMA table_info(search)"))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def search_index(synthetic_index, perf_size) -> Path:
    """The synthetic index the mix runs over, its search table as ``musicfs.index.fts`` makes
    it today (one cached before the table changed is built again)."""
    from musicfs.index import fts

    started = time.perf_counter()
    n = perf_size.search_library
    path = synthetic_index(n)
    if _search_columns(path) != fts.FTS_COLUMNS:
        path.with_name(path.name + ".done").unlink(missing_ok=True)
        path = synthetic_index(n)
    assert _search_columns(path) == fts.FTS_COLUMNS
    _BUILD["seconds"] = time.perf_counter() - started
    return path


def _label(n: int) -> str:
    return f"{n // 1000:,}K" if n < MILLION else f"{n // MILLION:,}M"


@pytest.mark.req("FR-14")
def test_search_query_mix(search_index, perf_size, results, record_requirement,
                          requirement_catalogue, capsys):
    """p95 of ~240 realistic queries (engine.search: the page of 100 and the total) within
    FR-14's maximum; recorded as FR-14 at a million tracks."""
    from musicfs.index.library import LibraryIndex
    from musicfs.search.engine import SearchEngine

    n = perf_size.search_library
    index = LibraryIndex(search_index, readonly=True)
    try:
        conn = index.conn
        assert conn.execute("SELECT COUNT(*) FROM search").fetchone()[0] == n
        mix, big = build_mix(conn)
        assert len(mix) >= 200
        engine = SearchEngine(conn)
        for warm in ("warm", "up", "query"):  # the first statements pay for opening the schema
            engine.search(warm, limit=LIMIT)
        lat = Latencies("search")
        by_kind: dict[str, list[float]] = {}
        slowest: list[tuple[float, str, int]] = []
        empty = []
        big_total = big_ms = 0
        for kind, query, must_match in mix:
            started = time.perf_counter()
            page = engine.search(query, limit=LIMIT)
            ms = (time.perf_counter() - started) * 1000
            lat.ms.append(ms)
            by_kind.setdefault(kind, []).append(ms)
            slowest.append((ms, query, page.total))
            assert len(page.hits) == min(LIMIT, page.total), (query, len(page.hits), page.total)
            if must_match and page.total == 0:
                empty.append(query)
            if query == big and kind.startswith("most"):
                big_total, big_ms = page.total, ms
    finally:
        index.close()
    slowest.sort(reverse=True)
    p95 = lat.p(95)
    maximum = requirement_catalogue["FR-14"].maximum
    label = _label(n)
    section = f"search, {label}-track synthetic library"
    results.add(section, f"index build (cached in build/perf), {n:,} tracks",
                _BUILD.get("seconds", 0.0), unit="s", fmt=",.1f")
    results.add(section, f"query mix of {lat.count}: p50", lat.p(50), unit="ms", fmt=",.1f")
    results.add(section, f"query mix of {lat.count}: p95", p95, unit="ms", fmt=",.1f",
                req="FR-14" if n >= MILLION else "")
    results.add(section, f"query mix of {lat.count}: max", max(lat.ms), unit="ms", fmt=",.1f")
    results.add(section, f"'{big}' ({big_total:,} matches), limit {LIMIT}", big_ms, unit="ms",
                fmt=",.1f")
    with capsys.disabled():
        print(f"\nsearch over {n:,} tracks: {len(mix)} queries, p50 {lat.p(50):.1f} ms, "
              f"p95 {p95:.1f} ms, p99 {lat.p(99):.1f} ms, max {max(lat.ms):.1f} ms "
              f"(index ready in {_BUILD.get('seconds', 0.0):.1f} s)")
        print(f"  most matches: {big!r} {big_total:,} tracks in {big_ms:.1f} ms"
              + ("" if n >= MILLION else f" (the most any common word matches in {n:,} tracks; "
                                         f"100K+ at {MILLION:,})"))
        for kind, values in by_kind.items():
            print(f"  {kind:34} n={len(values):3} median {median(values):7.1f} ms  "
                  f"max {max(values):7.1f} ms")
        print("  slowest: " + "; ".join(f"{q!r} {ms:.0f} ms ({total:,})" for ms, q, total in slowest[:8]))
    assert not empty, f"queries made of a track's own words found nothing: {empty}"
    if n >= MILLION:
        assert big_total >= BIG_MATCHES, f"{big!r} matched only {big_total:,} of {n:,} tracks"
        record_requirement("FR-14", p95, samples=lat.count,
                           detail=f"p95 of {lat.count} queries (words, prefixes, two words, phrases, "
                                  f"fields, years, non-ASCII, exclusions; {big!r}: {big_total:,} "
                                  f"matches in {big_ms:.0f} ms), limit {LIMIT}, over {n:,} tracks; "
                                  f"p50 {lat.p(50):.1f} ms, max {max(lat.ms):.0f} ms")
    assert p95 <= maximum, (
        f"search p95 {p95:.0f} ms over {n:,} tracks > {maximum:g} ms; slowest: "
        + "; ".join(f"{q!r} {ms:.0f} ms" for ms, q, _ in slowest[:5]))


def test_search_table_build(synthetic_index, perf_size, tmp_path, results, capsys):
    """Building the search table for the whole library from scratch, as the migration does for
    an existing index (created, then filled from the tree in one transaction): time and bytes
    on disk, reported. At full size also the cost of emptying a full one (``fts.clear``, what
    a rebuild of the tree after a template change starts with). The library is NFR-3.1's: the
    million tracks at full size; at CI size its 50K (already built for the mount figures), as
    the build is reported, not gated, and a copy of the 200K one would cost ``make test`` ~10 s."""
    from musicfs.index import fts
    from musicfs.index.library import LibraryIndex

    n = perf_size.library
    copy = copy_index(synthetic_index(n), tmp_path / "fts-build.db")
    index = LibraryIndex(copy)
    clear_s = None
    try:
        conn = index.conn
        if fts.size_bytes(conn) is None:
            pytest.skip("this SQLite has no dbstat: the table's size cannot be measured")
        if n >= MILLION:
            started = time.perf_counter()
            with index.transaction():
                fts.clear(conn)
            clear_s = time.perf_counter() - started
        with index.transaction():
            conn.execute(f"DROP TABLE {fts.FTS_TABLE}")
        started = time.perf_counter()
        with index.transaction():
            fts.create(conn)
            fts.fill_from_tree(conn)  # its return value is not used: see the count below
        build_s = time.perf_counter() - started
        size = fts.size_bytes(conn)
        rows = conn.execute(f"SELECT COUNT(*) FROM {fts.FTS_TABLE}").fetchone()[0]
        tracks = conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    finally:
        index.close()
        copy.unlink(missing_ok=True)
    section = f"search, {_label(n)}-track synthetic library"
    results.add(section, "search table built from scratch (create, fill, commit)", build_s, unit="s",
                fmt=",.1f")
    results.add(section, "search table on disk", size / 1e6, unit="MB", fmt=",.1f")
    results.add(section, "search table on disk per track", size / max(rows, 1), unit="B", fmt=",.0f")
    if clear_s is not None:
        results.add(section, "emptying the full table (fts.clear)", clear_s, unit="s", fmt=",.1f")
    with capsys.disabled():
        print(f"\nsearch table for {rows:,} tracks: built and committed in {build_s:.1f} s, "
              f"{size / 1e6:,.1f} MB on disk ({size / max(rows, 1):,.0f} B per track)"
              + (f"; emptying the full one took {clear_s:.1f} s" if clear_s is not None else ""))
    assert rows == tracks == n
    assert size > 0


@pytest.fixture(scope="module")
def scan_library(perf_size, sample_library, perf_dir) -> Path:
    """A real audio library to scan: the sample library at CI size, 400 tracks at full size
    (made once, kept in build/perf/)."""
    if perf_size.search_library < MILLION:
        return sample_library[0]
    from fixtures.generate import generate_library

    out = perf_dir / "scan-library-400"
    marker = perf_dir / "scan-library-400.done"
    if not marker.exists():
        shutil.rmtree(out, ignore_errors=True)
        generate_library(out, size="ci", seed=77, tracks=400)
        marker.write_text("400\n")
    return out / "library"


def test_search_upkeep_share_of_a_scan(scan_library, perf_size, tmp_path, results, capsys):
    """What keeping the search table costs a scan of real audio files: the scan's wall time
    (tags read, tracks, tree and search rows written), then on the same index every track's
    search row written again with ``fts.put`` in one transaction. The share is that time over
    the scan without it; three scans, median share within 15 %."""
    from musicfs.index import fts
    from musicfs.index.library import LibraryIndex
    from musicfs.index.scanner import Scanner
    from musicfs.index.template import PathTemplate
    from musicfs.origins.local import LocalOrigin

    rounds = []
    for attempt in range(3):
        index = LibraryIndex(tmp_path / f"scan-{attempt}.db")
        try:
            conn = index.conn
            started = time.perf_counter()
            Scanner(index, LocalOrigin("local", scan_library), PathTemplate()).run()
            scan_s = time.perf_counter() - started
            rows = conn.execute(
                "WITH RECURSIVE p(id, path) AS ("
                "  SELECT id, '' FROM nodes WHERE parent = 0"
                "  UNION ALL SELECT n.id, CASE WHEN p.path = '' THEN n.name ELSE p.path || '/' || n.name END"
                "  FROM nodes n JOIN p ON n.parent = p.id)"
                " SELECT t.*, p.path FROM p JOIN nodes n ON n.id = p.id JOIN tracks t ON t.id = n.track_id"
            ).fetchall()
            tracks = [(r["id"], dict(r), r["path"].split("/")) for r in rows]
            started = time.perf_counter()
            with index.transaction():
                for track_id, track, parts in tracks:
                    fts.put(conn, track_id, track, parts)
            fts_s = time.perf_counter() - started
            indexed = conn.execute("SELECT COUNT(*) FROM search").fetchone()[0]
        finally:
            index.close()
        assert indexed == len(tracks) > 0
        rounds.append((fts_s / (scan_s - fts_s), scan_s, fts_s, len(tracks)))
    share, scan_s, fts_s, count = sorted(rounds)[1]
    section = "search table upkeep in a scan of real audio files"
    results.add(section, f"scan of {count} tracks (median round)", scan_s * 1000, unit="ms", fmt=",.0f")
    results.add(section, "their search rows written again, one transaction", fts_s * 1000, unit="ms",
                fmt=",.1f")
    results.add(section, "share of a scan without it (<= 15 %)", share * 100, unit="%", fmt=",.2f")
    with capsys.disabled():
        print(f"\nscan of {count} real tracks: " + ", ".join(
            f"{s * 1000:.0f} ms scan / {f * 1000:.1f} ms search rows = {r * 100:.2f} %"
            for r, s, f, _ in rounds))
    assert share <= SCAN_SHARE_MAX, (
        f"writing {count} search rows took {fts_s * 1000:.0f} ms, {share:.1%} of a {scan_s * 1000:.0f} ms scan")


def test_search_directory_listing_cold(search_index, perf_size, empty_origin, tmp_path, results,
                                       capsys):
    """``/.search/<query>/`` for a query with about 100 results, listed on a real mount of the
    1M-track index right after mounting (page cache dropped): within a second."""
    n = perf_size.search_library
    if n < MILLION:
        pytest.skip(f"full size only (--perf-size full): the listing bound is stated over {MILLION:,} "
                    f"tracks; CI runs the query mix over {n:,}")
    from musicfs.index.library import LibraryIndex
    from musicfs.search.engine import SearchEngine

    index = LibraryIndex(search_index, readonly=True)
    try:
        mix, _ = build_mix(index.conn)
        engine = SearchEngine(index.conn)
        totals = {q: engine.search(q, limit=0).total for kind, q, _ in mix
                  if kind.startswith(("two words", "word (artist", "year range +"))}
    finally:
        index.close()
    query = min(totals, key=lambda q: abs(totals[q] - 100))
    assert 50 <= totals[query] <= 200, f"no query of the mix has about 100 results: {totals}"
    with mount_library(origin=empty_origin, index=search_index, work=tmp_path / "search") as mounted:
        root = mounted.mountpoint / ".search"
        if not root.is_dir():
            pytest.skip("the mount has no /.search directory yet (issue 13, being built)")
        drop_page_cache()
        started = time.perf_counter()
        names = os.listdir(root / query)
        seconds = time.perf_counter() - started
    results.add(f"search, {_label(n)}-track synthetic library",
                f"list /.search/{query}/ ({len(names)} entries), cold", seconds * 1000, unit="ms",
                fmt=",.0f")
    with capsys.disabled():
        print(f"\n/.search/{query}/: {len(names)} entries in {seconds * 1000:.0f} ms (cold)")
    assert len(names) == totals[query]
    assert seconds <= SEARCH_LISTING_MAX_S, f"listing /.search/{query}/ took {seconds:.2f} s"
