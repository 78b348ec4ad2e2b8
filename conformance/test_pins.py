"""Pinning on a real mount over SFTP: `musicfs pin`, `pin list`, `unpin`, with the origin taken away
(PIN-1, PIN-2, PIN-3; NFR-7.1: what was pinned plays offline).

The library: three albums of three tracks. The cache is small enough that
reading the unpinned album evicts, and the room for pins holds two albums.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mutagen.flac import FLAC

from chaos.remote import cache_lines, origin_lines
from conformance.expected import sha256_of
from conformance.test_control_cli import cli, ok_json, ok_text
from conformance.test_metrics import parse
from fixtures.media import short_track
from musicfs.control.client import ControlClient
from tests.harness import mount_library, mount_status, mounted_tracks, settled
from tests.sshserver import ssh_server

ALBUMS = ("Morning", "Evening", "Night")


def library(root: Path) -> None:
    for a, album in enumerate(ALBUMS):
        for n in range(1, 4):
            short_track(root, f"A/{album}/{n:02d}.flac", "flac", a * 10 + n, album=album, cover=None, seconds=8.0)


def album_size(root: Path, album: str) -> int:
    return sum(p.stat().st_size for p in (root / "A" / album).iterdir())


def config(path: Path, options: dict, *, size: int, pins: int) -> Path:
    lines = cache_lines()  # header tier and prefetch off: only pins fetch ahead
    lines[1:1] = [f'size = "{size}"', f'pins_size = "{pins}"']
    path.write_text("\n".join([*lines, *origin_lines("nas", "sftp", options)]))
    return path


def read_all(paths) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def pins_of(state: Path) -> dict[str, dict]:
    return {pin["real_path"]: pin for pin in ok_json(state, "pin", "list")["pins"]}


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.req("PIN-1", "PIN-2", "NFR-7.1")
def test_pinned_albums_stay_whole_through_eviction_and_play_with_the_origin_gone(tmp_path):
    with ssh_server() as server:
        root = server.root / "music"
        library(root)
        album = album_size(root, ALBUMS[0])
        room = 2 * album + album // 2  # two albums; not a third
        conf = config(tmp_path / "musicfs.toml", server.options(path=str(root)), size=room + album // 2, pins=room)
        with mount_library(config=conf, work=tmp_path / "work") as mounted:
            mnt, state = mounted.mountpoint, mounted.state_dir
            tracks = mounted_tracks(mnt)
            expected = {real: sha256_of(root / real) for real in tracks}
            by_album = {name: sorted(real for real in tracks if f"/{name}/" in real) for name in ALBUMS}

            # a search's hits and a folder: fetched whole, with progress, then listed as cached
            first = cli(state, "pin", "--query", f'album:"{ALBUMS[0]}"', "--json")
            assert first.returncode == 0, first.stderr
            documents = lines(first.stdout)
            summary = documents[-1]
            assert summary["done"] and summary["complete"] == 3 and summary["pinned"] == 3, summary
            assert summary["pinned_bytes"] == album and summary["fetched"] == album
            said = ok_text(state, "pin", str(tracks[by_album[ALBUMS[1]][0]].parent))
            assert "pinned 3 of 3 files (full)" in said and "3 newly pinned" in said, said
            pins = pins_of(state)
            assert set(pins) == set(by_album[ALBUMS[0]] + by_album[ALBUMS[1]])
            assert all(p["state"] == "cached" and p["cached"] == p["size"] for p in pins.values()), pins
            assert all(pins[real]["path"] == str(tracks[real].relative_to(mnt)) for real in pins)
            table = ok_text(state, "pin", "list")
            assert "6 pinned, holding" in table and "cached" in table, table

            # a third album does not fit: refused whole, before anything is fetched or dropped
            read_all([tracks[by_album[ALBUMS[2]][0]]])  # one unpinned track cached meanwhile
            before = settled(mnt)
            refused = cli(state, "pin", "--query", f'album:"{ALBUMS[2]}"')
            assert refused.returncode == 2, (refused.stdout, refused.stderr)
            assert "cannot pin 3 more files" in refused.stderr and "nothing was fetched or dropped" in refused.stderr
            after = settled(mnt)
            for key in ("bytes", "chunks", "evictions", "pins", "manifests"):
                assert after["cache"][key] == before["cache"][key], key
            assert after["reader"]["fills_started"] == before["reader"]["fills_started"]
            assert len(pins_of(state)) == 6

            # reading the rest evicts, but never a pinned chunk
            pinned_chunks = after["cache"]["pinned"]
            for _ in range(2):
                read_all(tracks[real] for real in by_album[ALBUMS[2]])
            cache = settled(mnt)["cache"]
            assert cache["evictions"] > before["cache"]["evictions"], cache
            assert cache["pinned"] == pinned_chunks and cache["pinned_bytes"] >= 2 * album
            assert all(p["state"] == "cached" for p in pins_of(state).values())

            # unpinned, an album is evicted like any other
            gone = ok_json(state, "unpin", str(tracks[by_album[ALBUMS[1]][0]].parent))
            assert gone == {"files": 3, "unpinned": 3}
            assert set(pins_of(state)) == set(by_album[ALBUMS[0]])
            read_all(tracks[real] for real in by_album[ALBUMS[2]])
            cache = settled(mnt)["cache"]
            assert cache["pins"] == 3 and cache["pins_size"] == album and cache["pinned_bytes"] < 2 * album
            with ControlClient.for_mount(state, mnt) as api:  # /metrics reads the same statistics
                scrape = parse(api.text("/metrics"))
            assert scrape("musicfs_pins") == 3 and scrape("musicfs_pins_size_bytes") == album
            assert scrape("musicfs_pins_room_bytes") == room

            server.stop()  # the origin is gone: the pinned album plays, byte for byte
            for real in by_album[ALBUMS[0]]:
                assert sha256_of(tracks[real]) == expected[real], real
            assert mounted.alive()


def wait_pinned_whole(state: Path, real: str, version_size: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pin = pins_of(state)[real]
        if pin["state"] == "cached" and pin["size"] == version_size:
            return pin
        assert time.monotonic() < deadline, pin
        time.sleep(0.1)


@pytest.mark.req("PIN-3", "NFR-7.1")
def test_a_retagged_pinned_track_stays_pinned_across_rescans_and_restarts(tmp_path):
    with ssh_server() as server:
        root = server.root / "music"
        library(root)
        conf = config(tmp_path / "musicfs.toml", server.options(path=str(root)), size=50_000_000, pins=40_000_000)
        work = tmp_path / "work"
        with mount_library(config=conf, work=work) as mounted:
            mnt, state = mounted.mountpoint, mounted.state_dir
            tracks = mounted_tracks(mnt)
            real = next(r for r in tracks if f"/{ALBUMS[0]}/" in r)
            ok_text(state, "pin", str(tracks[real]))
            assert pins_of(state)[real]["state"] == "cached"

            # retagged at the origin: a new version, pinned and fetched whole after the rescan
            tags = FLAC(root / real)
            tags["title"] = "Retagged " + "x" * 3000  # past the padding: the file grows
            tags.save()
            retagged = sha256_of(root / real)
            ok_text(state, "origin", "rescan", "nas")
            pin = wait_pinned_whole(state, real, (root / real).stat().st_size)
            assert pin["path"].endswith(".flac")
            assert mount_status(mnt)["pins"]["made_whole"] >= 1
        with mount_library(config=conf, work=work) as mounted:  # a restart: the pin is still there
            mnt, state = mounted.mountpoint, mounted.state_dir
            assert wait_pinned_whole(state, real, (root / real).stat().st_size)["cached"] > 0
            server.stop()
            assert sha256_of(mnt / pins_of(state)[real]["path"]) == retagged
