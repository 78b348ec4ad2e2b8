"""A synthetic index (no audio) builds its tree within a budget; 1M tracks live in perf/."""

from __future__ import annotations

import re
import time
from collections import Counter

from fixtures.synthetic import synthetic_tracks
from musicfs.index.bulk import load_tracks
from musicfs.index.library import LibraryIndex
from musicfs.index.names import is_legal
from musicfs.index.template import PathTemplate

N = 50_000
BUDGET_S = 60.0  # generous on a shared 2-core machine; measured ~3 s


def test_synthetic_index_builds_its_tree_within_budget(tmp_path, capsys):
    index = LibraryIndex(tmp_path / "synthetic.db")
    started = time.perf_counter()
    count = load_tracks(index, "synthetic", synthetic_tracks(N, seed=7), PathTemplate())
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nsynthetic index: {count} tracks with their tree in {seconds:.2f} s "
              f"({count / seconds:,.0f} tracks/s; budget {BUDGET_S:.0f} s)")
    assert count == N and seconds < BUDGET_S
    stats = index.statistics()
    assert stats["tracks"] == stats["files"] == N
    assert index.is_complete()
    orphans = index.conn.execute(
        "SELECT COUNT(*) FROM tracks t WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.track_id = t.id)"
    ).fetchone()[0]
    assert orphans == 0
    names = [r[0] for r in index.conn.execute("SELECT name FROM nodes WHERE id != 1")]
    assert all(is_legal(n) for n in names)


def test_single_album_directory(tmp_path):
    index = LibraryIndex(tmp_path / "big-dir.db")
    load_tracks(index, "synthetic", synthetic_tracks(5000, seed=3, single_album=5000), PathTemplate())
    biggest = index.conn.execute(
        "SELECT parent, COUNT(*) c FROM nodes WHERE kind = 'file' GROUP BY parent ORDER BY c DESC LIMIT 1"
    ).fetchone()
    assert biggest[1] == 5000


def test_synthetic_vocabulary_is_realistic():
    """Search figures (FR-14) mean something only over realistic words: thousands of distinct
    words with a Zipf-like frequency (a few in a large share of the titles, most in a handful),
    1-4 words per title, many distinct artists with ~10% non-ASCII names."""
    tracks = list(synthetic_tracks(50_000, seed=7))
    word = re.compile(r"\w+")
    counts = Counter(w.lower() for t in tracks for w in word.findall(t["title"]))
    tokens = sum(counts.values())
    assert len(counts) > 5_000, f"only {len(counts)} distinct title words in 50K tracks"
    top_word, top = counts.most_common(1)[0]
    assert 0.04 < top / tokens < 0.15, (top_word, top / tokens)       # a head ...
    assert sum(v for _, v in counts.most_common(10)) / tokens < 0.4   # ... but not all head
    assert sum(1 for v in counts.values() if v <= 5) > 0.4 * len(counts)  # and a long tail
    lengths = Counter(len(t["title"].split()) for t in tracks)
    assert {1, 2, 3, 4} <= set(lengths) and max(lengths) <= 5   # a two-word non-ASCII pick: 5
    albums = {t["album"] for t in tracks}
    assert len({w.lower() for a in albums for w in word.findall(a)}) > 1_000
    assert 0.01 < sum(1 for t in tracks if not t["title"].isascii()) / len(tracks) < 0.05
    by_id: dict[str, set[str]] = {}   # artist id (in the path) -> names: one name per artist
    for t in tracks:
        if t["albumartist"] != "Various Artists":
            by_id.setdefault(t["real_path"].split("/")[1], set()).add(t["artist"])
    names = [name for names in by_id.values() for name in names]
    assert len(names) == len(by_id) == len(set(names)) > 300
    assert 0.05 < sum(1 for a in names if not a.isascii()) / len(names) < 0.2
