"""A media server's scan of a remote library through the mount, served by the header tier (HDR-1, HDR-2).

The library is on an SFTP server (OpenSSH on loopback). The mount scans it,
keeping what the scan read for tags; it is then mounted again, so nothing is
in the kernel's page cache and nothing but the scan is in the chunk cache.
Every track's tags are then read through the mount as Jellyfin's TagLib-style
reader would (mutagen), then every track is probed with ffprobe, and the bytes
the daemon fetched from the origin are counted over each. The same scan is
made through a mount whose header tier is off, to show what it spares.
"""

from __future__ import annotations

import subprocess

import mutagen
import pytest

from chaos.remote import write_origin
from conformance.test_cache import cached_map
from conformance.test_control_cli import ok_json, ok_text
from fixtures.media import write_media_library
from musicfs.index.scanner import HEADER_HEAD
from tests.harness import mount_library, mount_status, mounted_tracks
from tests.sshserver import ssh_server


def fetched(mountpoint) -> int:
    """Bytes the daemon has fetched from its origins (the reader's own count)."""
    status = mount_status(mountpoint)
    return sum(status["reader"]["bytes_by_origin"].values()) + sum(
        status["direct"].get("bytes_by_origin", {}).values())


def tag_scan(tracks: dict, originals) -> None:
    """mutagen over every track, as a media server reads tags; the tags equal the origin's."""
    for real, path in tracks.items():
        through = mutagen.File(path)
        direct = mutagen.File(originals / real)
        assert through is not None, real
        assert dict(through.tags or {}) == dict(direct.tags or {}), real
        assert through.info.length == direct.info.length, real


def probe_scan(tracks: dict) -> None:
    for path in tracks.values():
        subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", str(path)],
                       check=True, capture_output=True, timeout=60)


@pytest.fixture
def sftp_origin():
    """Real tracks of a collection's size (FLAC, MP3, Ogg with covers) on an SFTP server."""
    with ssh_server() as server:
        root = server.root / "music"
        written = write_media_library(root, per_album=3, seconds=120)
        yield server, root, written


def config_for(tmp_path, server, root, headers: bool):
    return write_origin(tmp_path / f"musicfs-{headers}.toml", "nas", "sftp", server.options(path=str(root)),
                        headers=headers)


@pytest.mark.req("HDR-1", "HDR-2", "FS-11")
def test_a_tag_scan_through_a_fresh_mount_costs_the_origin_nothing(sftp_origin, tmp_path, record_requirement):
    server, root, written = sftp_origin
    library_bytes = sum((root / t.path).stat().st_size for t in written)
    config = config_for(tmp_path, server, root, True)
    work = tmp_path / "tier"
    with mount_library(config=config, work=work) as mounted:  # scans, keeping headers
        kept = mount_status(mounted.mountpoint)["headers"]
        assert kept["entries"] == len(written), kept
        assert fetched(mounted.mountpoint) == 0
    with mount_library(config=config, work=work) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == {t.path for t in written}
        for real, path in tracks.items():  # musicfs-inspect shows what the tier holds of each file
            shown = cached_map(mounted, path)
            size = (root / real).stat().st_size
            assert shown["chunks"] is None and shown["header"]["version"].startswith(f"{size}:")
            assert shown["header"]["pieces"][0]["offset"] == 0 and all(p["cached"] for p in shown["header"]["pieces"])
            assert min(size, HEADER_HEAD) <= shown["header"]["bytes"] <= size
        tag_scan(tracks, root)
        tags_fetched = fetched(mounted.mountpoint)
        hits = mount_status(mounted.mountpoint)["headers"]["hits"]
        probe_scan(tracks)
        probe_fetched = fetched(mounted.mountpoint) - tags_fetched
        # what the header answered is the origin's bytes: head and end of every track
        for real, path in tracks.items():
            size = (root / real).stat().st_size
            with open(path, "rb") as f, open(root / real, "rb") as original:
                for offset, length in ((0, 256 * 1024), (max(0, size - 4096), 4096)):
                    f.seek(offset)
                    original.seek(offset)
                    assert f.read(length) == original.read(length), f"{real} at {offset}"
        # a track played after the scan: its map starts with the head the header holds, and the fill
        # fetches from where that head's last final chunk ends, not from byte 0 again (FS-11)
        real, path = max(tracks.items(), key=lambda item: (root / item[0]).stat().st_size)
        size = (root / real).stat().st_size
        header = cached_map(mounted, path)["header"]["pieces"]
        head = [p for i, p in enumerate(header) if p["offset"] == sum(q["size"] for q in header[:i])][:-1]
        before = fetched(mounted.mountpoint)
        with open(path, "rb") as f, open(root / real, "rb") as original:
            assert f.read() == original.read()
        played = fetched(mounted.mountpoint) - before
        seeded = head[-1]["offset"] + head[-1]["size"]
        assert seeded >= 512 * 1024 and played <= size - seeded, (played, size, seeded)
        shown = cached_map(mounted, path)
        assert [c["address"] for c in shown["chunks"][:len(head)]] == [p["address"] for p in head]
        assert mount_status(mounted.mountpoint)["reader"]["seeded_bytes"] >= seeded
        # the CLI shows the tier beside the chunks; clearing it gives its pieces back to the LRU
        stats = ok_json(mounted.state_dir, "cache", "stats")["tiers"]["headers"]
        assert stats["entries"] == len(written) and stats["hits"] >= hits
        assert "headers" in ok_text(mounted.state_dir, "cache", "stats")
        cleared = ok_json(mounted.state_dir, "cache", "clear", "--tier", "headers", "--origin", "nas")
        assert cleared["manifests"] == len(written) and cleared["bytes_freed"] == stats["bytes"]
        assert ok_json(mounted.state_dir, "cache", "stats")["tiers"]["headers"]["entries"] == 0
    assert hits > 0
    record_requirement("HDR-1", 100 * tags_fetched / library_bytes, samples=len(tracks),
                       detail=f"mutagen over {len(tracks)} tracks ({library_bytes / 1e6:.1f} MB) from SFTP "
                              f"through a fresh mount: {tags_fetched} bytes fetched, {hits} reads answered "
                              f"by the header tier")
    record_requirement("HDR-2", 100 * probe_fetched / library_bytes, samples=len(tracks),
                       detail=f"ffprobe -show_format -show_streams over {len(tracks)} tracks through the "
                              f"same mount: {probe_fetched / 1e6:.2f} MB fetched of {library_bytes / 1e6:.1f} MB")

    # the same scan without the header tier: the origin is asked for every track
    config = config_for(tmp_path, server, root, False)
    work = tmp_path / "off"
    with mount_library(config=config, work=work):
        pass
    with mount_library(config=config, work=work) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        tag_scan(tracks, root)
        without = fetched(mounted.mountpoint)
        assert mount_status(mounted.mountpoint)["headers"]["entries"] == 0
    print(f"\nHDR-1 tag scan of {len(tracks)} tracks: {tags_fetched} bytes fetched with the header tier, "
          f"{without} without ({100 * without / library_bytes:.1f} % of {library_bytes} bytes); ffprobe "
          f"after it: {probe_fetched} bytes ({100 * probe_fetched / library_bytes:.1f} %)")
    assert without > 0, "without the header tier the scan fetched nothing: the count is not working"
