"""Retagged tracks are resynced from the cache, not fetched again; re-encoded ones are (NFR-6.4, G5, PH-2.1).

A library of real tracks (FLAC, MP3, Ogg with covers) on an SFTP server is
mounted, scanned and read whole, so the chunk cache holds every track. Then a
fifth of the tracks are retagged on the origin the way a tagger does it (new
values; for FLAC and MP3 also a longer comment and a replaced cover), the
mount rescans through its control socket, and every retagged track is read
whole and compared with the origin. Every byte musicfs takes from the origin
for them is counted: the rescan's tag reads, delta sync's samples and missing
ranges, and the reader's fetches. A second round re-encodes two tracks (other
audio of the same length): those must be fetched in full, and read exact.
``musicfs-inspect manifest`` and ``musicfs cache stats`` say which were rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from chaos.remote import write_origin
from conformance.test_cache import cached_map
from conformance.test_control_cli import ok_json, ok_text
from fixtures.audio import AudioSpec, sample_rates
from fixtures.media import encode_audio, tag_plan, write_media_library
from fixtures.tags import write_tags
from musicfs.control.client import ControlClient
from tests.harness import mount_library, mount_status, mounted_tracks
from tests.sshserver import ssh_server

SECONDS = 150.0


def fetched(mountpoint) -> int:
    return sum(mount_status(mountpoint)["reader"]["bytes_by_origin"].values())


def rescan(mounted) -> dict:
    """A rescan through the control socket; its stored report (with the bytes its tag reads took)."""
    with ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as client:
        final = list(client.stream("POST", "/v1/origins/nas/rescan"))[-1]
    assert final["phase"] == "complete", final
    conn = sqlite3.connect(f"file:{mounted.index}?mode=ro", uri=True)
    try:
        return json.loads(conn.execute("SELECT stats FROM scans ORDER BY id DESC LIMIT 1").fetchone()[0])
    finally:
        conn.close()


def read_exact(path, original) -> None:
    with open(path, "rb") as f, open(original, "rb") as o:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(o.read()).digest(), path


@pytest.mark.req("NFR-6.4")
def test_retagged_tracks_are_rebuilt_from_the_cache_and_reencoded_ones_fetched(tmp_path, record_requirement):
    with ssh_server() as server:
        root = server.root / "music"
        written = write_media_library(root, albums=3, per_album=5, seconds=SECONDS)
        config = write_origin(tmp_path / "musicfs.toml", "nas", "sftp", server.options(path=str(root)),
                              headers=True)
        with mount_library(config=config, work=tmp_path / "work") as mounted:
            tracks = mounted_tracks(mounted.mountpoint)
            for real, path in tracks.items():  # everything cached whole
                read_exact(path, root / real)

            # a fifth retagged on the origin: one track of each album (format)
            retagged = [t for t in written if t.tags["track"] == 2]
            for track in retagged:
                ogg = track.fmt == "ogg"  # a comment that grows by a page renumbers every Ogg page
                plan = tag_plan(track, cover_key=track.album if ogg else track.album + 50,
                                comment_pad=0 if ogg else 2000)
                plan.values["title"] = "Retagged"
                write_tags(root / track.path, track.fmt, plan)
            total = sum((root / t.path).stat().st_size for t in retagged)
            before = fetched(mounted.mountpoint)
            report = rescan(mounted)
            delta = mount_status(mounted.mountpoint)["delta_sync"]
            assert (delta["rebuilt"], delta["refused"]) == (len(retagged), 0), delta
            tracks = mounted_tracks(mounted.mountpoint)
            for track in retagged:
                read_exact(tracks[track.path], root / track.path)
            took = report["bytes_fetched"] + delta["fetched_bytes"] + fetched(mounted.mountpoint) - before
            reduction = 100 * (1 - took / total)
            record_requirement("NFR-6.4", reduction, samples=len(retagged),
                               detail=f"{len(retagged)} of {len(written)} tracks (FLAC, MP3, Ogg) retagged on an "
                                      f"SFTP origin, rescanned and read whole: {took} bytes from the origin (tag "
                                      f"reads {report['bytes_fetched']}, delta sync {delta['fetched_bytes']}) for "
                                      f"{total} bytes of tracks; every track byte-exact")
            for real, path in tracks.items():
                read_exact(path, root / real)
            # musicfs-inspect says how each version was obtained: the retagged FLAC rebuilt from the cache
            flac = next(t for t in retagged if t.fmt == "flac")
            rebuilt = cached_map(mounted, tracks[flac.path])
            assert rebuilt["obtained"] == "delta" and rebuilt["reused_bytes"] > 0.9 * rebuilt["size"], \
                {k: rebuilt[k] for k in ("obtained", "reused_bytes", "size")}
            text = subprocess.run([sys.executable, "-m", "musicfs.cli.inspect", "--state-dir", str(mounted.state_dir),
                                   "manifest", str(tracks[flac.path])], capture_output=True, text=True,
                                  check=True).stdout
            assert f"rebuilt by delta sync from the previous version ({rebuilt['reused_bytes']} bytes reused" in text

            # other audio of the same length under the same names: fetched in full, read exact
            reencoded = [t for t in written if t.tags["track"] == 3 and t.fmt in ("flac", "mp3")]
            for track in reencoded:
                path = root / track.path
                path.write_bytes(encode_audio(AudioSpec(track.album * 100 + 77, SECONDS, sample_rates(track.fmt, 2)[-1],
                                                   2), track.fmt))
                write_tags(path, track.fmt, tag_plan(track))
            before = fetched(mounted.mountpoint)
            rescan(mounted)
            delta = mount_status(mounted.mountpoint)["delta_sync"]
            assert delta["refused"] == len(reencoded), delta
            tracks = mounted_tracks(mounted.mountpoint)
            for track in reencoded:
                read_exact(tracks[track.path], root / track.path)
            assert fetched(mounted.mountpoint) - before >= sum((root / t.path).stat().st_size for t in reencoded) * 0.9
            assert mounted.log_text().count("changed, and not only its tags") == len(reencoded)
            refetched = cached_map(mounted, tracks[reencoded[0].path])
            assert (refetched["obtained"], refetched["reused_bytes"], refetched["complete"]) == ("fetched", 0, True)
            stats = ok_json(mounted.state_dir, "cache", "stats")
            assert stats["manifests_delta"] == len(retagged) and stats["reused_bytes"] >= rebuilt["reused_bytes"], stats
            assert "rebuilt by delta sync" in ok_text(mounted.state_dir, "cache", "stats")
        shutil.rmtree(root)
