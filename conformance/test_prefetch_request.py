"""Prefetch on request on a real mount: `musicfs prefetch` of a search's hits and of a folder, with
progress, and what it fetched played with the origin gone (PH-3.1's on-request part, G4)."""

from __future__ import annotations

import json

import pytest

from chaos.remote import write_origin
from conformance.expected import sha256_of
from conformance.test_control_cli import cli, ok_text
from fixtures.media import short_track
from tests.harness import mount_library, mount_status, mounted_tracks
from tests.sshserver import ssh_server


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.req("PH-3.1", "NFR-7.1")
def test_prefetched_albums_play_with_the_origin_gone(tmp_path):
    with ssh_server() as server:
        root = server.root / "music"
        for album in range(2):
            for n in range(1, 4):
                short_track(root, f"A/Album {album}/{n:02d}.flac", "flac", album * 10 + n, album=f"Album {album}",
                            cover=None, seconds=8.0)
        config = write_origin(tmp_path / "musicfs.toml", "nas", "sftp", server.options(path=str(root)))
        with mount_library(config=config, work=tmp_path / "work") as mounted:
            mnt, state = mounted.mountpoint, mounted.state_dir
            tracks = mounted_tracks(mnt)
            expected = {real: sha256_of(root / real) for real in tracks}
            one = [real for real in tracks if "Album 1" in real]
            zero = [real for real in tracks if "Album 0" in real]

            # a search's hits, whole, as NDJSON: every file's progress, then a summary
            found = cli(state, "prefetch", "--query", 'album:"Album 1"', "--json")
            assert found.returncode == 0, found.stderr
            documents = lines(found.stdout)
            summary = documents[-1]
            assert summary["done"] and summary["files"] == 3 and summary["complete"] == 3 and not summary["failed"]
            sizes = {(root / real).stat().st_size for real in one}
            finals = {d["path"]: d for d in documents[:-1] if d["complete"]}
            assert {d["total"] for d in finals.values()} == sizes and all(d["cached"] == d["total"] for d in finals.values())
            assert summary["fetched"] == sum((root / real).stat().st_size for real in one)
            assert len(documents) > 4, "no progress between the first and the last document of a file"

            # a folder named by its path in the mount, heads only; the text form says what was done
            folder = tracks[zero[0]].parent
            said = ok_text(state, "prefetch", str(folder), "--strategy", "headers")
            assert "prefetched 3 of 3 files (headers)" in said, said

            # bad requests say why, and change nothing
            both = cli(state, "prefetch", str(folder), "--query", "x")
            assert both.returncode != 0 and "one of them" in both.stderr
            missing = cli(state, "prefetch", "--mount", str(mnt), "A/No Such Album")
            assert missing.returncode != 0 and "not in the mount" in missing.stderr
            assert mount_status(mnt)["prefetch"]["failures"] == 0

            server.stop()  # the origin is gone: what was prefetched plays
            for real in one:
                assert sha256_of(tracks[real]) == expected[real], real
            for real in zero:
                with open(tracks[real], "rb") as f:
                    assert f.read(64 * 1024) == (root / real).read_bytes()[:64 * 1024]
