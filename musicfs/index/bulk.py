"""Loading many tracks at once without audio files: synthetic libraries for scale tests.

Real libraries come in through the scanner; this path exists so that a
million-track index (NFR-3.1, NFR-3.3, FR-14) can be built in seconds, with the
same schema and the same tree rules, to prove that mounting and searching do
not depend on library size.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from .library import TRACK_FIELDS, LibraryIndex
from .template import PathTemplate
from .tree import TreeWriter

_COLUMNS = ("origin_id", "real_path", "size", "mtime_ns", *TRACK_FIELDS, "scan_id", "indexed_at")


def load_tracks(index: LibraryIndex, origin_id: str, tracks: Iterable[Mapping[str, Any]],
                template: PathTemplate, *, batch_size: int = 20000, location: str = "synthetic") -> int:
    """Insert ``tracks`` (dicts with the FR-6 fields plus real_path, size, mtime_ns) and their nodes.

    Records a finished scan so the index counts as complete. Returns the count.
    """
    conn = index.conn
    now = time.time()
    with index.transaction():
        index.ensure_origin(origin_id, "local", location)
        index.set_meta("template", template.source)
        scan_id = conn.execute("INSERT INTO scans (origin_id, started_at) VALUES (?, ?)",
                               (origin_id, now)).lastrowid
    tree = TreeWriter(conn, template)
    # replicas are one path on several origins: with no other origin's tracks there are none
    others = conn.execute("SELECT 1 FROM tracks WHERE origin_id != ? LIMIT 1", (origin_id,)).fetchone()
    marks = ", ".join("?" for _ in _COLUMNS)
    insert = f"INSERT INTO tracks ({', '.join(_COLUMNS)}) VALUES ({marks})"
    total = 0
    source = iter(tracks)
    while batch := list(islice(source, batch_size)):
        with index.transaction():
            for track in batch:
                row = {**track, "origin_id": origin_id, "scan_id": scan_id, "indexed_at": now}
                if "album_artist" not in row:
                    row["album_artist"] = row.get("albumartist")
                track_id = conn.execute(insert, [row.get(c) for c in _COLUMNS]).lastrowid
                tree.place_new(track_id, row, replicas=others is not None)
        total += len(batch)
    with index.transaction():
        conn.execute("UPDATE scans SET finished_at = ?, stats = ? WHERE id = ?",
                     (time.time(), f'{{"added": {total}}}', scan_id))
    return total
