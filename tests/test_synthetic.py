"""A synthetic index (no audio) builds its tree within a budget; 1M tracks live in perf/."""

from __future__ import annotations

import time

from fixtures.synthetic import synthetic_tracks
from musicfs.index.bulk import load_tracks
from musicfs.index.library import LibraryIndex
from musicfs.vfs.names import is_legal
from musicfs.vfs.template import PathTemplate

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
