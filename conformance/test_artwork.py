"""Album covers on a real mount: shown by every album directory, stored once, readable offline (ART-1, ART-2).

The expected covers are worked out from the generated library's manifest alone
(:func:`conformance.expected.expected_covers`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from chaos.remote import write_origin
from conformance.expected import COVER_NAMES, expected_covers, walk_dirs
from conformance.test_control_cli import ok_json, ok_text
from fixtures import images
from fixtures.media import short_track
from tests.harness import mount_library, mount_status
from tests.sshserver import ssh_server


@pytest.mark.req("ART-2")
def test_every_album_directory_shows_its_cover(sample_mount, sample_library):
    expected = expected_covers(sample_library[1])
    assert len(expected) >= 10, "the sample library should have albums with covers"
    root = sample_mount.mountpoint
    shown = 0
    for directory in walk_dirs(root):
        covers = sorted(set(os.listdir(root / directory)) & COVER_NAMES)
        if directory not in expected:
            assert covers == [], f"{directory!r} shows {covers} but its tracks have no cover"
            with pytest.raises(FileNotFoundError):
                os.stat(root / directory / "cover.jpg")
            continue
        name, winners = expected[directory]
        assert covers == [name], f"{directory!r}: {covers}, expected {name}"
        path = root / directory / name
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() in winners, f"{directory!r} shows another image"
        assert path.stat().st_size == len(data)
        assert os.getxattr(path, "user.musicfs.mime").decode() == f"image/{'jpeg' if name.endswith('jpg') else 'png'}"
        with pytest.raises(OSError) as refused:
            os.open(path, os.O_WRONLY)
        assert refused.value.errno in (errno.EROFS, errno.EACCES)
        shown += 1
    assert shown == len(expected)


def _library(root: Path, cover: bytes) -> None:
    """Twelve FLAC tracks embedding ``cover``; three MP3s without a picture and the same image as
    their folder's cover.jpg; two Ogg tracks with no cover at all."""
    for n in range(1, 13):
        short_track(root, f"A/Twelve/{n:02d}.flac", "flac", n, album="Twelve")
    for n in range(1, 4):
        short_track(root, f"A/Folder/{n:02d}.mp3", "mp3", 20 + n, album="Folder", cover=None)
    (root / "A/Folder/cover.jpg").write_bytes(cover)
    for n in range(1, 3):
        short_track(root, f"A/Bare/{n:02d}.ogg", "ogg", 30 + n, album="Bare", cover=None)


def album(mountpoint: Path, name: str) -> Path:
    found = [p for p in (mountpoint / "A").iterdir() if p.name.startswith(name)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.req("ART-1", "ART-2")
@pytest.mark.alone
def test_a_cover_is_stored_once_and_read_offline(tmp_path, record_requirement):
    cover = images.jpeg(5, blocks=384)  # 338 KB, as the fixture's tracks embed it
    new = images.png(12, size=64)
    work = tmp_path / "work"
    with ssh_server() as server:
        root = server.root / "music"
        _library(root, cover)
        config = write_origin(tmp_path / "musicfs.toml", "nas", "sftp", server.options(path=str(root)))
        with mount_library(config=config, work=work) as mounted:  # scans over SFTP
            art = mount_status(mounted.mountpoint)["artwork"]
            assert art["images"] == 1 and art["bytes"] == len(cover), art  # kept by the scan before the mount
            ratio = art["stored_bytes"] / len(cover)
            twelve, folder = album(mounted.mountpoint, "Twelve"), album(mounted.mountpoint, "Folder")
            assert (twelve / "cover.jpg").read_bytes() == cover
            assert (folder / "cover.jpg").read_bytes() == cover
            assert os.stat(twelve / "cover.jpg").st_ino == os.stat(folder / "cover.jpg").st_ino  # one image
            assert not set(os.listdir(album(mounted.mountpoint, "Bare"))) & COVER_NAMES
            stats = ok_json(mounted.state_dir, "cache", "stats")["tiers"]["artwork"]
            assert stats["images"] == 1 and stats["hits"] >= 2
            assert "artwork" in ok_text(mounted.state_dir, "cache", "stats")

            # the folder's image replaced on the origin: a rescan shows the new one (a PNG) at once
            (root / "A/Folder/cover.jpg").unlink()
            (root / "A/Folder/cover.png").write_bytes(new)
            ok_text(mounted.state_dir, "origin", "rescan", "nas")
            time.sleep(1.2)  # the kernel keeps a cover's name for a second
            listed = set(os.listdir(folder)) & COVER_NAMES
            assert listed == {"cover.png"}, listed
            assert (folder / "cover.png").read_bytes() == new
            assert not (folder / "cover.jpg").exists()
            assert (twelve / "cover.jpg").read_bytes() == cover
    record_requirement("ART-1", ratio, samples=12, detail=(
        f"12 FLAC tracks embedding one {len(cover)}-byte JPEG, and the same image as a folder's "
        f"cover.jpg, scanned over SFTP: {art['stored_bytes']} bytes of artwork in the cache"))

    # the SFTP server is gone: the covers still open, from the cache
    with mount_library(config=config, work=work) as mounted:
        assert (album(mounted.mountpoint, "Twelve") / "cover.jpg").read_bytes() == cover
        assert (album(mounted.mountpoint, "Folder") / "cover.png").read_bytes() == new
        assert mount_status(mounted.mountpoint)["artwork"]["fetched"] == 0
