"""Published catalogs in process, on a real local origin and real SQLite files (issue 17).

The pointer (format, signature), publishing (snapshot, content address, pointer last, pruning)
and installing (every check before anything is replaced; an outage or a refusal leaves the
index in use). The real-mount behaviour is in conformance/test_catalog.py.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from fixtures.media import short_track
from musicfs.catalog.fetch import CatalogReader, InUse, bring_up_to_date
from musicfs.catalog.pointer import FORMAT, POINTER_NAME, Pointer
from musicfs.catalog.publish import publish
from musicfs.config import CatalogSettings
from musicfs.errors import CatalogRefused
from musicfs.origins.local import LocalOrigin
from tests.harness import scan

KEY = b"0123456789abcdef0123456789abcdef"


def pointer(**change) -> Pointer:
    base = Pointer(FORMAT, "a" * 64, 10, 20, "lib", "$title", 3, 1.5)
    return dataclasses.replace(base, **change)


@pytest.mark.req("CAT-6")
def test_a_signed_pointer_verifies_and_any_change_to_it_does_not():
    signed = pointer().signed(KEY)
    assert Pointer.decode(signed.encode(), KEY) == signed
    forged = json.loads(signed.encode())
    forged["tracks"] = 4  # someone who can write the bucket, without the key
    with pytest.raises(CatalogRefused, match="signature does not verify"):
        Pointer.decode(json.dumps(forged).encode(), KEY)
    with pytest.raises(CatalogRefused, match="signature does not verify"):
        Pointer.decode(signed.encode(), b"another key of sixteen bytes")
    with pytest.raises(CatalogRefused, match="not signed"):
        Pointer.decode(pointer().encode(), KEY)
    assert Pointer.decode(signed.encode(), None) == signed  # a client without a key reads it as it is


@pytest.mark.req("CAT-5")
@pytest.mark.parametrize("data, words", [
    (b"{nope", "not JSON"),
    (b"[1]", "not a JSON object"),
    (json.dumps({**json.loads(pointer().encode()), "format": 2}).encode(), "format 2"),
    (json.dumps({k: v for k, v in json.loads(pointer().encode()).items() if k != "hash"}).encode(), "missing: hash"),
    (json.dumps({**json.loads(pointer().encode()), "tracks": "3"}).encode(), "wrong type: tracks"),
    (json.dumps({**json.loads(pointer().encode()), "hash": "../../etc"}).encode(), "its hash"),
    (b" " * 70000, "not a pointer"),
])
def test_a_pointer_that_is_not_one_is_refused_with_why(data, words):
    with pytest.raises(CatalogRefused, match=words):
        Pointer.decode(data, None)


@pytest.fixture
def library(tmp_path) -> tuple[Path, Path]:
    """A scanned library of two tracks: (its folder, its index)."""
    music = tmp_path / "music"
    for n in (1, 2):
        short_track(music, f"A/Album/{n:02}.flac", "flac", n, album="Album", cover=None)
    index = tmp_path / "a" / "index.db"
    scan(music, tmp_path / "a", index)
    return music, index


def published(music: Path) -> list[str]:
    return sorted(str(p.relative_to(music)) for p in (music / ".musicfs-catalog").rglob("*") if p.is_file())


def tracks_in(index: Path) -> int:
    with sqlite3.connect(index) as conn:
        return conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]


@pytest.mark.req("CAT-1", "CAT-2")
def test_publish_then_install_elsewhere_and_nothing_twice(library, tmp_path):
    music, index = library
    origin, settings = LocalOrigin("o", music), CatalogSettings("o")
    dry = publish(index, origin, settings, "lib", dry_run=True)
    assert dry.dry_run and published(music) == []  # nothing written
    report = publish(index, origin, settings, "lib")
    assert report.uploaded and report.pointer.tracks == 2 and report.pointer.hash == dry.pointer.hash
    assert published(music) == [f".musicfs-catalog/{POINTER_NAME}",
                                f".musicfs-catalog/snapshots/{report.pointer.hash}.db.zst"]
    assert not publish(index, origin, settings, "lib").uploaded  # the same content: no upload

    other = tmp_path / "b" / "index.db"  # another machine's index
    outcome = bring_up_to_date(origin, settings, other)
    assert outcome.installed and outcome.problem is None and tracks_in(other) == 2
    assert InUse.load(other).pointer.hash == report.pointer.hash
    again = bring_up_to_date(origin, settings, other)
    assert not again.installed and again.in_use.pointer.hash == report.pointer.hash
    assert not list(other.parent.glob(".*catalog-*"))  # no temporary download left


@pytest.mark.req("CAT-1")
def test_old_snapshots_beyond_keep_are_removed_never_the_current(library, tmp_path):
    music, index = library
    origin, settings = LocalOrigin("o", music), CatalogSettings("o", keep=2)
    hashes = []
    for n in range(3, 6):  # each publish of a changed library makes a new snapshot
        short_track(music, f"A/Album/{n:02}.flac", "flac", n, album="Album", cover=None)
        scan(music, tmp_path / "a", index)
        report = publish(index, origin, settings, "lib")
        hashes.append(report.pointer.hash)
    snapshots = [p for p in published(music) if p.startswith(".musicfs-catalog/snapshots/")]
    assert len(snapshots) == 2 and f".musicfs-catalog/snapshots/{hashes[-1]}.db.zst" in snapshots
    assert report.removed and report.pointer.tracks == 5


@pytest.mark.req("CAT-5")
def test_a_damaged_snapshot_is_refused_and_the_index_in_use_stays(library, tmp_path):
    music, index = library
    origin, settings = LocalOrigin("o", music), CatalogSettings("o")
    first = publish(index, origin, settings, "lib")
    other = tmp_path / "b" / "index.db"
    bring_up_to_date(origin, settings, other)
    short_track(music, "A/Album/03.flac", "flac", 3, album="Album", cover=None)
    scan(music, tmp_path / "a", index)
    second = publish(index, origin, settings, "lib")
    snapshot = music / ".musicfs-catalog" / second.pointer.snapshot_name
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, as a disk or a network might
    snapshot.write_bytes(bytes(data))
    before = other.read_bytes()
    outcome = bring_up_to_date(origin, settings, other)
    assert not outcome.installed and "refused" in outcome.problem
    assert outcome.in_use.pointer.hash == first.pointer.hash and other.read_bytes() == before
    with pytest.raises(CatalogRefused):  # and a machine with no catalog yet has nothing to mount
        bring_up_to_date(origin, settings, tmp_path / "c" / "index.db")
    snapshot.write_bytes(snapshot.read_bytes()[: len(data) // 3])  # cut short
    with pytest.raises(CatalogRefused, match="bytes, its pointer says"):
        CatalogReader(origin, settings).install(CatalogReader(origin, settings).latest(), tmp_path / "d.db")


@pytest.mark.req("CAT-4")
def test_an_unreachable_origin_mounts_the_catalog_this_machine_has(library, tmp_path):
    music, index = library
    origin, settings = LocalOrigin("o", music), CatalogSettings("o")
    report = publish(index, origin, settings, "lib")
    other = tmp_path / "b" / "index.db"
    bring_up_to_date(origin, settings, other)
    music.rename(tmp_path / "gone")  # the origin vanishes
    outcome = bring_up_to_date(LocalOrigin("o", music), settings, other)
    assert not outcome.installed and "not reachable" in outcome.problem
    assert outcome.in_use.pointer.hash == report.pointer.hash and tracks_in(other) == 2
    with pytest.raises(CatalogRefused, match="not reachable"):
        bring_up_to_date(LocalOrigin("o", music), settings, tmp_path / "c" / "index.db")


@pytest.mark.req("CAT-6")
def test_a_library_with_a_key_takes_only_pointers_signed_with_it(library, tmp_path):
    music, index = library
    key_file = tmp_path / "catalog.key"
    key_file.write_bytes(KEY + b"\n")
    origin = LocalOrigin("o", music)
    signed = CatalogSettings("o", key_file=key_file)
    publish(index, origin, CatalogSettings("o"), "lib")  # published without the key
    with pytest.raises(CatalogRefused, match="not signed"):
        bring_up_to_date(origin, signed, tmp_path / "b" / "index.db")
    report = publish(index, origin, signed, "lib")
    assert report.pointer.signature
    assert bring_up_to_date(origin, signed, tmp_path / "b" / "index.db").installed


@pytest.mark.req("CAT-3")
def test_the_difference_of_two_catalogs_is_what_the_kernel_must_forget(library, tmp_path):
    """Node ids are the publisher's: unchanged tracks keep theirs, so the difference is exactly the
    tracks (and folders) new, gone or changed; this machine's own rows go with it to the new one."""
    from musicfs.catalog.publish import snapshot
    from musicfs.catalog.swap import carry_local, differences, replace_content

    music, index = library
    live = tmp_path / "b" / "live.db"
    live.parent.mkdir()
    snapshot(index, live)
    with sqlite3.connect(live) as conn:
        conn.execute("INSERT INTO collections (name, query, source, created_at) VALUES ('mine', 'a', 'user', 1)")
        before = dict(conn.execute("SELECT name, id FROM nodes WHERE kind = 'file'").fetchall())
    (music / "A/Album/01.flac").unlink()
    short_track(music, "A/Album/03.flac", "flac", 3, album="Album", cover=None)
    scan(music, tmp_path / "a", index)
    new = tmp_path / "new.db"
    snapshot(index, new)
    carry_local(new, live)
    conn = sqlite3.connect(live)
    try:
        changes = differences(conn, new)
        assert [n.name for n in changes.removed if n.kind == "file"] == [
            name for name in before if name.startswith("01")]
        assert [n.name for n in changes.added if n.kind == "file"] == ["03 - Song 3.flac"]
        assert changes.modified == []
        replace_content(new, conn)
        after = dict(conn.execute("SELECT name, id FROM nodes WHERE kind = 'file'").fetchall())
        kept = {name: ident for name, ident in before.items() if not name.startswith("01")}
        assert {name: after[name] for name in kept} == kept  # the same inode numbers
        assert conn.execute("SELECT name FROM collections").fetchall() == [("mine",)]  # this machine's own
    finally:
        conn.close()
